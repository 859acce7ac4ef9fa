"""pmni-synth's input errors as one bundle: option resolution (``--realistic``), intrinsics errors, and the per-view
application and statistics of the normal and mask errors (see :mod:`pmni_method.synth_errors` and
:mod:`pmni_method.synth_masks` for the models).

Whenever the stored normal maps or masks differ from the truth, the true ones are written too (:data:`TRUE_DIRS`);
whenever the stored cameras differ (poses or intrinsics), ``cameras_gt.npz`` holds the true ``K [R | t]``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from pmni_method import cameras
from pmni_method.data.layout import TRUE_CAMERA_NORMAL_DIR, TRUE_MASK_DIR, TRUE_WORLD_NORMAL_DIR
from pmni_method.synth_errors import (
    CONCAVITY_DEFINITION,
    INTRINSICS,
    MASK,
    NORMAL_ERROR_DEFINITION,
    NormalErrorSettings,
    angular_errors_deg,
    apply_tilt,
    normal_error_tilts,
    summarise_angles,
    view_rng,
)
from pmni_method.synth_masks import (
    MASK_ERROR_DEFINITION,
    MASK_STATISTICS_DEFINITION,
    MaskErrorSettings,
    mask_statistics,
    nearest_fill,
    perturb_mask,
)
from pmni_method.synth_render import ViewRender, lean_toward_camera

TRUE_DIRS = (TRUE_WORLD_NORMAL_DIR, TRUE_CAMERA_NORMAL_DIR, TRUE_MASK_DIR)

REALISTIC: Dict[str, Any] = {
    "normal_bias_deg": 5.5,
    "grazing_error_deg": 14.0,
    "concavity_error_deg": 10.0,
    "mask_offset_px": 0.5,
    "mask_boundary_jitter_px": 1.5,
    "mask_holes": 1,
    "mask_spurs": 1,
    "focal_error": 0.01,
    "principal_point_error_px": 2.0,
}
"""What ``--realistic`` sets for every error option left unset (SDM-UniPS-like; see the README for what it gives)."""

ERROR_OPTIONS = tuple(REALISTIC)

INTRINSICS_ERROR_DEFINITION = (
    "stored fx = fy = f (1 + s focal_error), s = +-1 with equal odds; stored principal point = true + "
    "principal_point_error_px (cos a, sin a), a ~ U(0, 2 pi); one draw for all views (one calibration) unless "
    "intrinsics_per_view; the true K is in cameras_gt.npz (with the true poses) and under K"
)

JOINT_CALIBRATION_DEFINITION = (
    "with joint_calibration the stored poses carry the error too, as a calibration against a target at the object "
    "makes it: each camera centre C moves to c + (f_stored / f_true) (C - c) about the object's bounding-sphere "
    "centre c, and the camera turns by the least rotation that brings c back to the pixel where the true camera "
    "sees it (the object's image position and size stay right; only perspective differs)"
)


@dataclass(frozen=True)
class InputErrors:
    """Every input error of one dataset, resolved (``--realistic`` applied, unset options 0)."""

    seed: int
    normals: NormalErrorSettings = field(default_factory=NormalErrorSettings)
    masks: MaskErrorSettings = field(default_factory=MaskErrorSettings)
    focal_error: float = 0.0
    principal_point_error_px: float = 0.0
    intrinsics_per_view: bool = False
    joint_calibration: bool = False

    @property
    def intrinsics_active(self) -> bool:
        return self.focal_error != 0 or self.principal_point_error_px != 0


def resolve(config: Any) -> InputErrors:
    """The errors a :class:`~pmni_method.synth.SynthConfig` asks for: set options win over ``--realistic``."""
    values = {name: getattr(config, name) for name in ERROR_OPTIONS}
    for name, value in values.items():
        if value is None:
            values[name] = REALISTIC[name] if config.realistic else 0
    return InputErrors(
        seed=config.seed if config.error_seed is None else config.error_seed,
        normals=NormalErrorSettings(
            bias_deg=float(values["normal_bias_deg"]),
            bias_cells=int(config.normal_bias_cells),
            grazing_deg=float(values["grazing_error_deg"]),
            concavity_deg=float(values["concavity_error_deg"]),
        ),
        masks=MaskErrorSettings(
            offset_px=float(values["mask_offset_px"]),
            jitter_px=float(values["mask_boundary_jitter_px"]),
            holes=int(values["mask_holes"]),
            spurs=int(values["mask_spurs"]),
            blob_radius_px=float(config.mask_blob_radius_px),
        ),
        focal_error=float(values["focal_error"]),
        principal_point_error_px=float(values["principal_point_error_px"]),
        intrinsics_per_view=bool(config.intrinsics_per_view),
        joint_calibration=bool(config.joint_calibration),
    )


def option_problems(config: Any) -> List[tuple]:
    """(ok, option, problem) checks of the error options, for :func:`pmni_method.synth.validate_config`."""
    checks = []
    for name in ERROR_OPTIONS:
        value = getattr(config, name)
        if value is None:
            continue
        signed = name == "mask_offset_px"  # negative offsets erode
        ok = np.isfinite(value) and (value >= 0 or signed)
        checks.append((ok, "--" + name.replace("_", "-"), "must be finite" if signed else "must be >= 0"))
    checks.append((config.normal_bias_cells >= 2, "--normal-bias-cells", "must be at least 2"))
    radius_ok = np.isfinite(config.mask_blob_radius_px) and config.mask_blob_radius_px > 0
    checks.append((radius_ok, "--mask-blob-radius-px", "must be positive"))
    focal = getattr(config, "focal_error")
    checks.append((focal is None or focal < 1, "--focal-error", "must be < 1 (a fraction of the focal length)"))
    return checks


def stored_intrinsics(K: np.ndarray, num_views: int, errors: InputErrors) -> np.ndarray:
    """(N, 3, 3) intrinsics of the stored cameras (see :data:`INTRINSICS_ERROR_DEFINITION`)."""
    rng = view_rng(errors.seed, INTRINSICS, 0)
    out = np.repeat(np.asarray(K, dtype=np.float64)[None], num_views, axis=0)
    draws = 1 if not errors.intrinsics_per_view else num_views
    signs = rng.choice([-1.0, 1.0], size=draws)
    angles = rng.uniform(0.0, 2.0 * np.pi, size=draws)
    for i in range(num_views):
        j = i if errors.intrinsics_per_view else 0
        out[i, 0, 0] *= 1.0 + signs[j] * errors.focal_error
        out[i, 1, 1] *= 1.0 + signs[j] * errors.focal_error
        out[i, 0, 2] += errors.principal_point_error_px * np.cos(angles[j])
        out[i, 1, 2] += errors.principal_point_error_px * np.sin(angles[j])
    return out


def calibrated_poses(c2w: np.ndarray, K: np.ndarray, stored_K: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """(N, 4, 4) camera-to-worlds that carry the intrinsics error ``K`` -> ``stored_K`` [N, 3, 3] the way a joint
    calibration does (:data:`JOINT_CALIBRATION_DEFINITION`), from the true ``c2w`` [N, 4, 4]."""
    centre = np.asarray(centre, dtype=np.float64)
    out = np.array(c2w, dtype=np.float64, copy=True)
    for i, (pose, K_i) in enumerate(zip(np.asarray(c2w, dtype=np.float64), stored_K)):
        # Where the true camera sees the centre, and the stored intrinsics' ray through that pixel.
        (pixel,), _ = cameras.project_points(K, pose, centre[None])
        seen = np.linalg.solve(K, np.append(pixel, 1.0))
        stored = np.linalg.solve(K_i, np.append(pixel, 1.0))
        # R' = R Q with Q stored = seen: the stored camera's ray through the pixel points where the true one's did.
        out[i, :3, :3] = pose[:3, :3] @ cameras.rotation_between(stored, seen)
        out[i, :3, 3] = centre + K_i[0, 0] / K[0, 0] * (pose[:3, 3] - centre)
    return out


def reprojection_px(
    K: np.ndarray, c2w: np.ndarray, stored_K: np.ndarray, stored_c2w: np.ndarray, points: np.ndarray
) -> Dict[str, float]:
    """Mean and max pixel distance between ``points`` [M, 3] projected by the true and by the stored cameras."""
    dists = [
        np.linalg.norm(cameras.project_points(K_s, c_s, points)[0] - cameras.project_points(K, c, points)[0], axis=-1)
        for c, K_s, c_s in zip(c2w, stored_K, stored_c2w)
    ]
    both = np.concatenate(dists)
    return {"mean": float(both.mean()), "max": float(both.max())}


@dataclass
class StoredView:
    """One view's maps as stored, the truth beside them, and how far apart they are."""

    normals: np.ndarray
    """(H, W, 3) stored world normals, 0 outside the stored mask."""
    mask: np.ndarray
    """(H, W) stored mask."""
    stats: Dict[str, Any]
    """Per-view statistics recorded in synth.json."""
    angles: np.ndarray
    """Angular errors (deg) of the stored normals over the pixels in both masks."""


NormalNoise = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""``noise(normals (M, 3), ray directions (M, 3)) -> normals``: the legacy per-pixel noise, applied last."""


def apply_view_errors(
    errors: InputErrors,
    view: ViewRender,
    K: np.ndarray,
    c2w: np.ndarray,
    index: int,
    radius: float,
    noise: Optional[NormalNoise] = None,
) -> StoredView:
    """Apply the normal and mask errors to one true render (true camera ``K``, ``c2w``; view ``index``)."""
    mask = view.mask
    normals = np.array(view.normals, copy=True)
    # A view that does not see the object (an open mesh edge-on) has nothing to perturb: its statistics are None.
    stats: Dict[str, Any] = {"terms_mean_tilt_deg": None, "mask": None}
    _, dirs = cameras.pixel_rays(K, c2w, *mask.shape, np.argwhere(mask))
    if errors.normals.active and mask.any():
        cam = cameras.world_normals_to_camera(view.normals, c2w)
        tilts = normal_error_tilts(errors.normals, cam, mask, view.depth, float(K[0, 0]), radius, errors.seed, index)
        stats["terms_mean_tilt_deg"] = {
            k: float(np.degrees(np.linalg.norm(t, axis=-1)).mean()) for k, t in tilts.items()
        }
        perturbed = apply_tilt(cam[mask], sum(tilts.values()))
        normals[mask] = lean_toward_camera(cameras.camera_normals_to_world(perturbed, c2w), dirs)
    if noise is not None:
        normals[mask] = noise(normals[mask], dirs)
    stored_mask = mask
    if errors.masks.active and mask.any():
        stored_mask = perturb_mask(mask, errors.masks, view_rng(errors.seed, MASK, index))
        normals = nearest_fill(normals, mask, stored_mask)
        added = stored_mask & ~mask
        if added.any():
            _, added_dirs = cameras.pixel_rays(K, c2w, *mask.shape, np.argwhere(added))
            normals[added] = lean_toward_camera(normals[added], added_dirs)
        normals = normals * stored_mask[..., None]
        stats["mask"] = mask_statistics(stored_mask, mask)
    both = stored_mask & mask
    # Measured on the float32 values the files hold, so that a reader recomputes exactly these numbers.
    angles = angular_errors_deg(normals.astype(np.float32)[both], view.normals.astype(np.float32)[both])
    stats["normals"] = summarise_angles(angles)
    return StoredView(normals=normals, mask=stored_mask, stats=stats, angles=angles)


def _mean_over_views(per_view: List[Optional[Dict[str, Any]]]) -> Dict[str, float]:
    """Per-key means over the views that have statistics (views that miss the object have None)."""
    seen = [v for v in per_view if v is not None]
    return {k: float(np.mean([v[k] for v in seen])) for k in seen[0]} if seen else {}


def report(
    errors: InputErrors,
    stats: List[Dict[str, Any]],
    angles: List[np.ndarray],
    K_true: np.ndarray,
    K_stored: np.ndarray,
    write_truth: bool,
    reprojection: Optional[Dict[str, float]] = None,
) -> Dict[str, Any]:
    """The ``input_errors`` entry of synth.json: settings, definitions and the statistics actually produced.

    ``stats`` and ``angles`` are the :class:`StoredView` fields of every view; ``reprojection`` is
    :func:`reprojection_px` of the mesh's vertices by the calibration's stored cameras (before any pose noise).
    """
    normals: Dict[str, Any] = {
        "pixels": "inside both the stored and the true mask; stored vs true world-space maps as written (float32)",
        "overall": summarise_angles(np.concatenate(angles)) if angles else {},
        "per_view": [v["normals"] for v in stats],
    }
    if errors.normals.active:
        terms = [v["terms_mean_tilt_deg"] for v in stats]
        normals["terms_mean_tilt_deg"] = _mean_over_views(terms)
        normals["terms_mean_tilt_deg_per_view"] = terms
    out: Dict[str, Any] = {
        "settings": {
            "seed": errors.seed,
            "normals": asdict(errors.normals),
            "masks": asdict(errors.masks),
            "focal_error": errors.focal_error,
            "principal_point_error_px": errors.principal_point_error_px,
            "intrinsics_per_view": errors.intrinsics_per_view,
            "joint_calibration": errors.joint_calibration,
        },
        "definitions": {
            "normals": NORMAL_ERROR_DEFINITION,
            "concavity": CONCAVITY_DEFINITION,
            "masks": MASK_ERROR_DEFINITION,
            "mask_statistics": MASK_STATISTICS_DEFINITION,
            "intrinsics": INTRINSICS_ERROR_DEFINITION,
            "joint_calibration": JOINT_CALIBRATION_DEFINITION,
        },
        "maps_perturbed": bool(write_truth),
        "normals": normals,
        "intrinsics": {
            "K_true": np.asarray(K_true).tolist(),
            "K_stored": np.asarray(K_stored).tolist(),
            "focal_offset_px": (K_stored[:, 0, 0] - K_true[0, 0]).tolist(),
            "principal_point_offset_px": (K_stored[:, :2, 2] - K_true[None, :2, 2]).tolist(),
            "reprojection_px": reprojection,
        },
        "truth": {
            "mesh": "mesh_Gt.ply",
            "cameras": "cameras_gt.npz if present, else cameras_sphere.npz",
            "world_normals": TRUE_WORLD_NORMAL_DIR if write_truth else "normal_world_space_GT",
            "camera_normals": TRUE_CAMERA_NORMAL_DIR if write_truth else "normal_camera_space_GT",
            "masks": TRUE_MASK_DIR if write_truth else "mask",
        },
    }
    if errors.masks.active:
        per_view = [v["mask"] for v in stats]
        out["masks"] = {"overall": _mean_over_views(per_view), "per_view": per_view}
    return out


def truth_needed(errors: InputErrors, legacy_noise_deg: float) -> bool:
    """Whether the stored normal maps or masks differ from the true ones (then the true ones are written too)."""
    return errors.normals.active or errors.masks.active or legacy_noise_deg > 0


def mask_overall_note(stats: Optional[Dict[str, Any]]) -> str:
    """One line for the CLI summary."""
    if not stats:
        return ""
    o = stats["overall"]
    return f"mask IoU {o['iou']:.3f}, boundary error {o['boundary_error_mean_px']:.2f} px"
