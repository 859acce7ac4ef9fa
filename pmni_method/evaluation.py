"""Evaluation of a reconstructed mesh against a multi-view normal dataset (SuperNormal / PMNI protocol).

Geometry is compared on the *visible surface*: one ray is cast through the centre of every foreground pixel of
every view and the first hit is kept, separately for the ground-truth and the reconstructed mesh (each mesh keeps
its own hits for the same rays). This ignores parts no camera can see (e.g. the underside of DiLiGenT-MV objects),
which the GT scan does not cover reliably either. Chamfer distance, precision, recall and F-score are then computed
between the two point sets in world units (DiLiGenT-MV: millimetres).

Normals are compared per pixel: the reconstructed mesh is ray cast through every pixel inside the GT mask, its
normal at the first hit (flipped to face the camera) is compared with the GT normal map. Mask pixels where the
reconstruction is not hit cannot be given an angle; they are reported through ``hit_fraction`` and left out of the
mean angular error, so a mesh with holes must be judged on both numbers.

Camera poses (pose-free runs): estimated poses are similarity-aligned to the true ones by their camera centres
(Umeyama); rotation and translation errors are reported per view, and the same alignment is applied to the mesh
before geometry is measured, since a pose-free reconstruction lives in its own frame.

Nothing here imports nerfstudio: the evaluator runs on meshes and arrays only.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import trimesh

from pmni_method.alignment import apply_alignment, evaluate_poses, icp_similarity, object_alignment
from pmni_method.cameras import downscale_intrinsics
from pmni_method.data.camera_file import read_cameras
from pmni_method.data.diligent_mv import load_diligent_mv
from pmni_method.data.layout import GT_CAMERAS_FILE, GT_MESH_FILE, TRUE_MASK_DIR, TRUE_WORLD_NORMAL_DIR
from pmni_method.data.types import MultiViewNormalData
from pmni_method.npz import read_npz
from pmni_method.errors import EvaluationInputError
from pmni_method.export import read_mesh_source
from pmni_method.metrics import chamfer_fscore, normal_pass, normal_report
from pmni_method.poses.maths import rotation_errors_deg
from pmni_method.raycast import NormalType, sample_visible_surface

DISTANCE_UNITS = "world units of the dataset (DiLiGenT-MV: mm)"

LOW_HIT_FRACTION = 0.5
"""Below this fraction of mask pixels hitting the mesh, a warning says the mesh may be misplaced (or full of holes)."""

SIZE_FACTOR_WARNING = 3.0
"""A mesh whose bounding-box diagonal differs from the ground truth's by more than this factor gets a warning."""


def poses_beside(mesh_path: Path | str) -> Path:
    """The poses file pmni-export (and the plain training loop) writes beside a mesh: ``bunny.ply`` ->
    ``bunny.poses.json``."""
    mesh_path = Path(mesh_path)
    return mesh_path.with_name(mesh_path.stem + ".poses.json")


def refined_poses_beside(mesh_path: Path | str) -> Optional[Path]:
    """The poses file beside ``mesh_path`` when it holds refined (pose-free) poses, else None.

    A pose-free mesh lives in the frame its gauge fixed (the frozen camera's start pose, or the mean of the start
    poses), which is off the true frame by about the start's error: for 5 degrees and 5 % of pose noise a perfect
    bunny lands so far off that 18 % of the held-out mask pixels hit it and their normal error reads 55 degrees.
    Such a mesh can only be scored after the alignment its own refined poses give."""
    path = poses_beside(mesh_path)
    if not path.is_file():
        return None
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # not ours to judge here; an explicit --poses gets the reader's one-line errors
    refined = isinstance(entries, list) and any(isinstance(e, dict) and e.get("refined") is True for e in entries)
    return path if refined else None


def load_mesh(path: Path | str) -> trimesh.Trimesh:
    """Load a triangle mesh, raising :class:`EvaluationInputError` with one line if it cannot be used."""
    path = Path(path)
    if not path.is_file():
        raise EvaluationInputError(f"{path}: mesh file not found")
    try:
        # Unprocessed first: trimesh's processing silently drops faces on NaN/Inf vertices, which would score a
        # broken mesh as if it were whole.
        mesh = trimesh.load(path, force="mesh", process=False)
    except Exception as e:  # trimesh's parsers raise anything from ValueError to IndexError on corrupt files
        detail = " ".join(str(e).split())[:200] or type(e).__name__
        raise EvaluationInputError(f"{path}: cannot read mesh ({detail})") from None
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
        raise EvaluationInputError(f"{path}: file holds no triangles")
    bad = int((~np.isfinite(np.asarray(mesh.vertices, dtype=np.float64))).any(axis=1).sum())
    if bad:
        raise EvaluationInputError(f"{path}: {bad} of {len(mesh.vertices)} vertices are not finite (NaN or Inf)")
    # Processing merges vertices split at UV seams, so vertex normals are smooth across them (as in synth).
    mesh.process()
    if len(mesh.faces) == 0:
        raise EvaluationInputError(f"{path}: file holds no triangles")
    return mesh


def _format_bbox(bounds: np.ndarray) -> str:
    lo, hi = np.asarray(bounds, dtype=np.float64)
    return "[" + ", ".join(f"{x:.3g}" for x in lo) + "]..[" + ", ".join(f"{x:.3g}" for x in hi) + "]"


def check_placement(
    pred_mesh: trimesh.Trimesh,
    gt_mesh: trimesh.Trimesh,
    num_hit: int,
    num_mask: int,
    label: str = "mesh",
    require_hits: bool = True,
) -> List[str]:
    """Warnings (one line each, starting with ``label``) for a mesh that looks misplaced against the ground truth.

    A mesh in the wrong units or frame still "scores" (Chamfer undefined, F-score 0), which reads as a bad
    reconstruction rather than a wrong input; with ``require_hits``, a mesh that none of the ``num_mask`` mask
    pixels' rays hit raises :class:`EvaluationInputError` instead. Bounding boxes are in world units.
    """
    boxes = f"its bounding box {_format_bbox(pred_mesh.bounds)} vs the ground truth's {_format_bbox(gt_mesh.bounds)}"
    if num_mask > 0 and num_hit == 0 and require_hits:
        raise EvaluationInputError(
            f"{label}: the mesh is hit by 0 of {num_mask} mask pixels; {boxes}: wrong units or frame?"
        )
    warnings: List[str] = []
    if num_mask > 0 and num_hit < LOW_HIT_FRACTION * num_mask:
        warnings.append(
            f"{label}: only {num_hit} of {num_mask} mask pixels ({100.0 * num_hit / num_mask:.3g} %) hit the mesh; "
            f"{boxes}: wrong units or frame, or large holes?"
        )
    pred_diag = float(np.linalg.norm(np.ptp(pred_mesh.bounds, axis=0)))
    gt_diag = float(np.linalg.norm(np.ptp(gt_mesh.bounds, axis=0)))
    if pred_diag > 0 and gt_diag > 0:
        factor = pred_diag / gt_diag
        if not 1.0 / SIZE_FACTOR_WARNING <= factor <= SIZE_FACTOR_WARNING:
            warnings.append(
                f"{label}: its bounding-box diagonal is {factor:.3g} times the ground truth's "
                f"({pred_diag:.4g} vs {gt_diag:.4g} world units): wrong units?"
            )
    return warnings


def source_warnings(source: Optional[Dict[str, Any]], label: str = "mesh") -> List[str]:
    """A warning for a mesh that pmni-export made from a run that did not finish (see ``read_mesh_source``)."""
    if not source or source.get("finished", True):
        return []
    step, total = source.get("step", "?"), source.get("max_num_iterations", "?")
    return [f"{label}: the mesh comes from a run that did not finish (checkpoint step {step} of {total})"]


def evaluate_arrays(
    pred_mesh: trimesh.Trimesh,
    gt_mesh: trimesh.Trimesh,
    K: np.ndarray,
    c2w: np.ndarray,
    masks: np.ndarray,
    gt_normals: np.ndarray,
    threshold: float = 0.5,
    view_ids: Optional[Sequence[int]] = None,
    heldout_views: Sequence[int] = (),
    alignment: Optional[np.ndarray] = None,
    normal_type: NormalType = "interpolated",
    refine_alignment: bool = False,
    require_hits: bool = False,
    mesh_label: str = "mesh",
) -> Dict[str, Any]:
    """All metrics from meshes and per-view arrays, everything in world units and world-frame OpenCV cameras.

    ``alignment`` (4x4 similarity, world frame) is applied to ``pred_mesh`` before anything is measured. With
    ``refine_alignment`` the metrics are also reported (under ``refined_alignment``) after an ICP similarity
    (:func:`icp_similarity`) of the aligned mesh onto the true one: the shape's own error, without the alignment's.
    ``warnings`` lists placement problems (:func:`check_placement`, naming the mesh ``mesh_label``); with
    ``require_hits`` a mesh no mask pixel hits raises :class:`EvaluationInputError` instead of scoring empty.
    """
    pred_mesh = apply_alignment(pred_mesh, alignment)
    masks = np.asarray(masks, dtype=bool)
    gt_pts = sample_visible_surface(gt_mesh, K, c2w, masks)
    diag = float(np.linalg.norm(gt_mesh.bounds[1] - gt_mesh.bounds[0]))

    def measure(mesh: trimesh.Trimesh) -> Tuple[Dict[str, Any], Dict[str, Any], np.ndarray]:
        per_view, pred_pts = normal_pass(mesh, K, c2w, gt_normals, masks, normal_type)
        geometry = chamfer_fscore(pred_pts, gt_pts, threshold)
        geometry["gt_bbox_diagonal"] = diag
        geometry["chamfer_rel_bbox_percent"] = (
            100.0 * geometry["chamfer"] / diag if geometry["chamfer"] is not None and diag > 0 else None
        )
        return geometry, normal_report(per_view, len(masks), view_ids, heldout_views, normal_type), pred_pts

    geometry, normals, pred_pts = measure(pred_mesh)
    if alignment is not None:
        mesh_label = f"{mesh_label} (after the alignment)"
    warnings = check_placement(
        pred_mesh, gt_mesh, len(pred_pts), int(masks.sum()), label=mesh_label, require_hits=require_hits
    )
    refined = None
    if refine_alignment:
        # Samples of the whole surface, not only what the true cameras see of it: a far-off alignment hits little.
        icp = icp_similarity(trimesh.sample.sample_surface(pred_mesh, 4000, seed=0)[0], gt_mesh)
        icp_scale = float(np.cbrt(np.linalg.det(icp[:3, :3])))
        geometry_icp, normals_icp, _ = measure(apply_alignment(pred_mesh, icp))
        refined = {
            "icp": icp.tolist(),
            "icp_scale": icp_scale,
            "icp_rotation_deg": float(rotation_errors_deg(icp[:3, :3] / icp_scale, np.eye(3))),
            "icp_translation": float(np.linalg.norm(icp[:3, 3])),
            "geometry": geometry_icp,
            "normals": normals_icp,
        }
    out = {
        "units": {
            "distance": DISTANCE_UNITS,
            "angle": "degrees",
            "chamfer_rel_bbox_percent": "percent of the GT mesh bounding-box diagonal",
            "fractions": "0..1",
        },
        "num_views": int(len(masks)),
        "alignment": None if alignment is None else np.asarray(alignment, dtype=np.float64).tolist(),
        "geometry": geometry,
        "normals": normals,
        "warnings": warnings,
    }
    if refined is not None:
        out["refined_alignment"] = refined
    return out


@dataclass
class ReferenceMaps:
    """What the reconstruction is scored against: the true maps, masks and intrinsics where the dataset has them."""

    K: np.ndarray
    """[V, 3, 3] intrinsics at the evaluation resolution (the true ones of ``cameras_gt.npz`` when present)."""
    masks: np.ndarray
    """[V, H, W] bool reference masks."""
    normals_world: np.ndarray
    """[V, H, W, 3] reference normals, world frame."""
    label: str
    """Where the maps come from, for the report."""
    input_error: Optional[Dict[str, Any]] = None
    """How far the stored (training) maps and masks are from these, when they differ."""


def true_inputs(
    data_dir: Path, data: MultiViewNormalData, downscale_factor: int = 1
) -> Optional[Tuple[MultiViewNormalData, bool]]:
    """``data`` as it truly is, where the dataset keeps the truth beside perturbed inputs (``pmni-synth
    --realistic`` and the like): the true maps and masks, and the true intrinsics of ``cameras_gt.npz`` when it
    has them (the second element says whether it did); poses stay ``data``'s (``gt_c2w`` holds the true ones).
    None without true maps."""
    if not ((data_dir / TRUE_WORLD_NORMAL_DIR).is_dir() and (data_dir / TRUE_MASK_DIR).is_dir()):
        return None
    true = load_diligent_mv(
        data_dir, normal_dir=TRUE_WORLD_NORMAL_DIR, mask_dir=TRUE_MASK_DIR, downscale_factor=downscale_factor,
        load_depth=False, data_checks="off",
    )
    if true.view_ids != data.view_ids:
        raise EvaluationInputError(f"{data_dir / TRUE_WORLD_NORMAL_DIR}: views {true.view_ids} differ from {data.view_ids}")
    K = true_intrinsics(data_dir, data, downscale_factor)
    # Without cameras_gt.npz the true maps were loaded with the stored cameras, data's own K.
    return (replace(true, K=K), True) if K is not None else (true, False)


def true_intrinsics(data_dir: Path, data: MultiViewNormalData, downscale_factor: int = 1) -> Optional[np.ndarray]:
    """The true intrinsics [V, 3, 3] of ``data``'s views at its resolution, from ``cameras_gt.npz`` (None without
    one, or when it lacks a view)."""
    gt_cameras = Path(data_dir) / GT_CAMERAS_FILE
    if not gt_cameras.is_file():
        return None
    arrays = read_npz(gt_cameras)
    if not all(f"world_mat_{v}" in arrays for v in data.view_ids):
        return None
    K_full = read_cameras(gt_cameras, arrays, data.view_ids, scale_mat=data.normalisation.scale_mat)[0]
    return downscale_intrinsics(K_full, downscale_factor) if downscale_factor > 1 else K_full


def reference_maps(data_dir: Path, data: MultiViewNormalData, downscale_factor: int = 1) -> ReferenceMaps:
    """The maps a mesh is scored against. A dataset with input errors keeps the truth beside the stored maps
    (:func:`true_inputs`): scoring against the stored maps would reward reproducing their errors."""
    norm = data.normalisation
    stored_normals = norm.normals_to_world(np.asarray(data.normals, dtype=np.float64))
    truth = true_inputs(data_dir, data, downscale_factor)
    if truth is None:
        return ReferenceMaps(data.K, np.asarray(data.masks, dtype=bool), stored_normals, "stored maps (no true maps)")
    true, true_intrinsics = truth
    label = f"true maps ({TRUE_WORLD_NORMAL_DIR}/, {TRUE_MASK_DIR}/)"
    if true_intrinsics:
        label += f", true intrinsics ({GT_CAMERAS_FILE})"
    true_masks = np.asarray(true.masks, dtype=bool)
    true_normals = true.normalisation.normals_to_world(np.asarray(true.normals, dtype=np.float64))
    return ReferenceMaps(true.K, true_masks, true_normals, label, input_error(stored_normals, data.masks, true_normals, true_masks))


def input_error(
    stored_normals: np.ndarray, stored_masks: np.ndarray, true_normals: np.ndarray, true_masks: np.ndarray
) -> Dict[str, Any]:
    """The stored maps' own error against the truth: the bar a multi-view reconstruction should get below."""
    stored_masks = np.asarray(stored_masks, dtype=bool)
    both = stored_masks & true_masks
    a = stored_normals[both]
    b = true_normals[both]
    cos = np.sum(a * b, axis=-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-12)
    angles = np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))
    union = int((stored_masks | true_masks).sum())
    return {
        "normal_mae_deg": float(angles.mean()) if len(angles) else None,
        "normal_median_deg": float(np.median(angles)) if len(angles) else None,
        "mask_iou": float(both.sum() / union) if union else None,
        "pixels_compared": int(both.sum()),
    }


def evaluate(
    mesh_path: Path | str,
    data_dir: Path | str,
    threshold: float = 0.5,
    heldout_views: Sequence[int] = (),
    alignment: Optional[np.ndarray] = None,
    normal_type: NormalType = "interpolated",
    downscale_factor: int = 1,
    poses: Optional[Path | str] = None,
    align_to_poses: bool = True,
    refine_alignment: Optional[bool] = None,
    require_hits: bool = True,
    find_poses: bool = True,
) -> Dict[str, Any]:
    """Evaluate the mesh at ``mesh_path`` (world units) against the dataset in ``data_dir`` and its ``mesh_Gt.ply``.

    Cameras are the TRUE poses (``cameras_gt.npz`` when the dataset has one), so a run trained from perturbed poses
    is judged against the real geometry. Normals, masks and intrinsics are likewise the true ones when the dataset
    keeps them beside perturbed inputs (:func:`reference_maps`); ``"input_maps_error"`` then says how far the
    training maps were from them. ``heldout_views`` are view ids as in the file names.

    ``poses``: a file of estimated poses (e.g. pmni-export's ``<mesh>.poses.json``); their errors are reported
    under ``"poses"`` (:func:`evaluate_poses`) and, with ``align_to_poses``, the mesh is moved by the similarity
    that maps what those cameras see at the object onto what the true ones see (:func:`object_alignment`, under
    ``"poses"``'s ``mesh_alignment``) before it is measured (give either ``alignment`` or aligning ``poses``, not both). With
    ``find_poses`` and neither given, refined poses beside the mesh (:func:`refined_poses_beside`: a pose-free run's)
    are used as ``poses``, with a warning that says so.
    ``refine_alignment`` (default: whenever the mesh is aligned) adds the metrics after a further ICP similarity
    (:func:`evaluate_arrays`): a pose-free run's shape error apart from the error of its camera-based alignment.
    Raises :class:`~pmni_method.errors.PMNIDataError` (one-line message) on unusable input, including (with
    ``require_hits``) a mesh that no mask pixel hits: wrong units or frame. ``"source"`` is what pmni-export
    recorded in the mesh about its run (checkpoint step, whether the run finished), or None; ``"warnings"`` lists
    one-line warnings (an unfinished run, a mesh that looks misplaced).
    """
    mesh_path, data_dir = Path(mesh_path), Path(data_dir)
    if not data_dir.is_dir():
        raise EvaluationInputError(f"{data_dir}: dataset folder not found")
    gt_path = data_dir / GT_MESH_FILE
    if not gt_path.is_file():
        raise EvaluationInputError(f"{gt_path}: ground-truth mesh not found (evaluation needs {GT_MESH_FILE})")
    if not (threshold > 0 and math.isfinite(threshold)):
        raise EvaluationInputError(f"threshold {threshold}: must be a positive number (world units)")
    pred_mesh = load_mesh(mesh_path)
    gt_mesh = load_mesh(gt_path)

    # The reference data only warns here: a run trained past the checks (--data-checks warn) must still be scored.
    data_warnings: List[str] = []
    data = load_diligent_mv(
        data_dir, downscale_factor=downscale_factor, load_depth=False, data_checks="warn", warn=data_warnings.append
    )
    missing = sorted(set(int(v) for v in heldout_views) - set(data.view_ids))
    if missing:
        raise EvaluationInputError(f"{data_dir}: held-out view ids {missing} are not in the dataset (has {data.view_ids})")
    norm = data.normalisation
    c2w_norm = data.gt_c2w if data.gt_c2w is not None else data.c2w
    c2w_world = norm.c2w_to_world(c2w_norm)
    reference = reference_maps(data_dir, data, downscale_factor)
    pose_report = None
    found_poses = refined_poses_beside(mesh_path) if find_poses and poses is None and alignment is None else None
    if found_poses is not None:
        poses, align_to_poses = found_poses, True
        data_warnings.append(
            f"{mesh_path}: scored after the alignment of the refined poses in {found_poses} (a pose-free mesh lives in "
            "its own frame); pass --poses or --alignment to choose another, --no-find-poses to score it as it is"
        )
    if poses is not None:
        if align_to_poses and alignment is not None:
            raise EvaluationInputError("give either an alignment or a poses file to align by, not both")
        pose_report = evaluate_poses(poses, c2w_world, data.view_ids)
        if align_to_poses:
            # Not the centres' fit of the pose errors: see object_alignment (bunny, 1.3 deg of pose error: Chamfer
            # 3.6 % of the diagonal and 42 deg normal error after the centres' fit, 0.35 % and 9.8 deg after this, as
            # after ICP: 0.33 % and 9.9).
            lo, hi = np.asarray(pred_mesh.bounds, dtype=np.float64)
            alignment = object_alignment(
                pose_report["estimated_c2w"], c2w_world[[data.view_ids.index(v) for v in pose_report["view_ids"]]],
                centre=(lo + hi) / 2.0, radius=float(np.linalg.norm(hi - lo)) / 4.0,
            )
            pose_report["mesh_alignment"] = alignment.tolist()
        pose_report.pop("estimated_c2w")

    metrics = evaluate_arrays(
        pred_mesh,
        gt_mesh,
        reference.K,
        c2w_world,
        reference.masks,
        reference.normals_world,
        threshold=threshold,
        view_ids=data.view_ids,
        heldout_views=heldout_views,
        alignment=alignment,
        normal_type=normal_type,
        refine_alignment=(alignment is not None) if refine_alignment is None else refine_alignment,
        require_hits=require_hits,
        mesh_label=str(mesh_path),
    )
    source = read_mesh_source(mesh_path)
    metrics = {
        "mesh": str(mesh_path),
        "data": str(data_dir),
        "gt_mesh": str(gt_path),
        "reference_poses": "cameras_gt (true poses)" if data.gt_c2w is not None else "cameras_sphere",
        "reference_maps": reference.label,
        "input_maps_error": reference.input_error,
        "downscale_factor": int(downscale_factor),
        "source": source,
        **metrics,
    }
    metrics["warnings"] = data_warnings + source_warnings(source, str(mesh_path)) + metrics["warnings"]
    if pose_report is not None:
        metrics["poses"] = {
            **pose_report,
            "mesh_aligned_by_poses": bool(align_to_poses),
            "found_beside_mesh": found_poses is not None,
        }
    return metrics
