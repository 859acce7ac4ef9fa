"""Load-time plausibility checks: data in a wrong convention is refused before it trains for hours to a wrong surface.

Two kinds of wrong data load without any file-level error and then train silently:

* normal maps that face away from their cameras: sign-flipped maps, camera-space maps in another axis convention
  (pmni's camera space is x right, y up, z toward the camera; see :mod:`pmni_method.cameras`), world-space maps
  read as camera-space ones;
* a ``scale_mat`` whose unit sphere does not contain the object: the model clips every ray to that sphere, so mask
  pixels whose rays miss it can never be rendered as foreground.

Each check measures a few numbers per view from arrays the loader holds anyway (vectorised numpy, no rendering),
and :class:`PlausibilityChecks` turns them into errors (clearly wrong: :class:`PMNIDataError`, one line) and
warnings (borderline: one line each). The thresholds below come from measurements on pmni-synth datasets; each
constant says what was measured. Nothing here imports nerfstudio or torch.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Literal, Optional, Sequence, Tuple

import numpy as np
import scipy.ndimage

from pmni_method import cameras
from pmni_method.errors import PMNIDataError, PMNIDataWarning

DataChecks = Literal["error", "warn", "off"]
DATA_CHECKS: Tuple[str, ...] = ("error", "warn", "off")
OVERRIDE_HINT = "--data-checks warn loads it anyway"
"""How to override a refusal; part of every refusal message."""

AWAY_ERROR_FRACTION = 0.5
"""A view with more mask pixels than this whose normals face away from the camera is refused. Wrong conventions
measured 99-100% in every view (sign flip, OpenCV camera axes, z flip) or 0.4-99.8% across views with a median of
39-60% (world-space maps read as camera space and the reverse); good data 0%."""
AWAY_WARN_FRACTION = 0.10
"""More away-facing mask pixels than this in a view gives a warning. Good pmni-synth data measured 0% (it keeps
noise facing the camera); normals tilted by |N(0, s)| without that care measured at most 1.5% (s = 10 degrees, about
the error of SDM-UniPS normals), 5.2% (20) and 8.2% (30)."""
SILHOUETTE_ERROR_AGREEMENT = -0.5
"""A view whose normals point into the mask along an image axis at its silhouette (agreement below this) is
refused: that axis of the map is flipped. A flipped axis measured -0.96 to -1.00 (80x64 to 612x512 images)."""
SILHOUETTE_WARN_AGREEMENT = 0.3
"""Agreement of an image axis below this (but not below the error level) gives a warning. Good data measured
+0.89 or more (80x64 bunny; +0.97 at 612x512, also with masks eroded by 2 pixels or flat normals), +0.76 or more
with 30 degrees of normal noise."""
MIN_SILHOUETTE_PIXELS = 32
"""Fewer silhouette pixels with a clear direction along an axis than this leave that axis of the view unjudged."""
MISS_ERROR_FRACTION = 0.05
"""A view with more mask pixels than this whose rays miss the unit sphere is refused. Good data measured 0% (sphere
margins 1.01 to 8, centre offsets up to 0.1 radius); sphere radius x0.5 (a case seen: 44% missed): 43-55% per view;
x0.7: up to 15-17%; x0.8: up to 3.7-5.1%; stored poses with |N(0, 1)| degrees of rotation error: up to 10-14%."""
MISS_WARN_FRACTION = 0.001
"""More missing mask rays than this in a view gives a warning (radius x0.9: up to 0.3-0.75%)."""
SMALL_EXTENT_WARN = 0.25
"""Warn when the mask rays of all views stay within this distance of the sphere centre (normalised units): the
unit sphere is then far larger than the object and most of the grid's resolution is spent on empty space. The
object's bounding sphere with pmni-synth's margin 1.05 measured 0.95; sphere radius x2: 0.47, x4: 0.24, x8: 0.12."""
MAX_PIXELS_PER_VIEW = 16384
"""Mask pixels used per view by the pixel checks: a regular subsample beyond that keeps load time flat, and still
puts 16 pixels on the lowest threshold (0.1%)."""

_CONVENTION_HINTS = {
    "camera": "sign-flipped normals, camera-space maps in another axis convention (pmni: x right, y up, z toward the "
    "camera; OpenCV's y down, z forward is not it), or world-space maps read as camera space (--normal-space)?",
    "world": "sign-flipped normals, world-space maps in another frame than the cameras, or camera-space maps read "
    "as world space (--normal-space)?",
}


# -------------------------------------------------------------------------------------------- measurements


def _mask_pixels(mask: np.ndarray, limit: int = MAX_PIXELS_PER_VIEW) -> Tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of the mask's pixels, every k-th one when there are more than ``limit``."""
    rows, cols = np.nonzero(mask)
    step = max(1, int(np.ceil(len(rows) / limit)))
    return rows[::step], cols[::step]


def _camera_rays(K: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Unit ray directions (M, 3) through pixel centres, in OpenCV camera axes."""
    uv1 = np.stack([cols, rows, np.ones(len(rows))], axis=-1).astype(np.float64)
    dirs = uv1 @ np.linalg.inv(K).T
    return dirs / np.linalg.norm(dirs, axis=-1, keepdims=True)


def _camera_normals(
    normals: np.ndarray, rows: np.ndarray, cols: np.ndarray, c2w_world: Optional[np.ndarray]
) -> np.ndarray:
    """The normals at (rows, cols) in pmni camera axes; world-space maps are turned by their OpenCV camera-to-world."""
    picked = normals[rows, cols].astype(np.float64)
    return picked if c2w_world is None else cameras.world_normals_to_camera(picked, c2w_world)


def away_facing_fraction(
    normals: np.ndarray, mask: np.ndarray, K: np.ndarray, c2w_world: Optional[np.ndarray] = None
) -> float:
    """Fraction of mask pixels whose normal faces away from the camera: ``n . (-ray) <= 0``.

    ``normals`` (H, W, 3) are in pmni's camera axes (x right, y up, z toward the camera), or world-space normals
    when ``c2w_world`` (the view's OpenCV camera-to-world) is given. The per-pixel ray, not the optical axis,
    decides: under perspective a visible normal may have ``n_z < 0`` near the silhouette.
    """
    rows, cols = _mask_pixels(mask)
    if len(rows) == 0:
        return 0.0
    to_camera = -(_camera_rays(K, rows, cols) @ cameras.CV_TO_GL)  # OpenCV ray -> pmni axes (CV_TO_GL is symmetric)
    facing = np.sum(_camera_normals(normals, rows, cols, c2w_world) * to_camera, axis=-1)
    return float(np.mean(facing <= 0.0))


def silhouette_agreement(
    normals: np.ndarray,
    mask: np.ndarray,
    K: np.ndarray,
    c2w_world: Optional[np.ndarray] = None,
    sigma: float = 1.5,
) -> Tuple[Optional[float], Optional[float]]:
    """How well the normals at the mask's silhouette point out of the mask, per image axis (u right, v down).

    On an occluding contour the normal is perpendicular to the ray, and its image-plane part ``(n_x / f_x,
    n_y / f_y)`` (OpenCV axes) is the outward normal of the silhouette curve, under perspective too. Per axis the
    agreement is ``sum(a) / sum(|a|)`` with ``a`` the product of that component and the outward direction of the
    mask: +1 for outward normals, -1 when that axis of the map is flipped (e.g. y down instead of y up), which the
    away-facing fraction cannot see. None where a view has too few silhouette pixels along the axis. ``normals``
    and ``c2w_world`` as in :func:`away_facing_fraction`.
    """
    h, w = mask.shape
    rows, cols = np.nonzero(mask)
    if len(rows) == 0:
        return None, None
    # Work on the mask's bounding box (plus room for the blur): masks cover a fraction of DiLiGenT-size images.
    pad = int(np.ceil(4 * sigma)) + 2
    r0, r1 = max(rows.min() - pad, 0), min(rows.max() + pad + 1, h)
    c0, c1 = max(cols.min() - pad, 0), min(cols.max() + pad + 1, w)
    crop = mask[r0:r1, c0:c1]
    # Inner silhouette: mask pixels with a background 4-neighbour. The image border is no silhouette (the frame
    # cuts the object there), hence border_value=1 and the explicit border exclusion.
    edge = crop & ~scipy.ndimage.binary_erosion(crop, border_value=1)
    rr, cc = np.nonzero(edge)
    rr, cc = rr + r0, cc + c0
    inside = (rr > 0) & (rr < h - 1) & (cc > 0) & (cc < w - 1)
    rr, cc = rr[inside], cc[inside]
    # Outward direction of the silhouette: down the gradient of the blurred mask.
    smooth = scipy.ndimage.gaussian_filter(crop.astype(np.float32), sigma=sigma, mode="nearest")
    grad_v, grad_u = np.gradient(smooth)
    out_u, out_v = -grad_u[rr - r0, cc - c0], -grad_v[rr - r0, cc - c0]
    n = _camera_normals(normals, rr, cc, c2w_world)
    # pmni camera axes -> OpenCV image axes: u follows x, v follows -y.
    a_u = n[:, 0] / K[0, 0] * out_u
    a_v = -n[:, 1] / K[1, 1] * out_v

    def agreement(a: np.ndarray, out: np.ndarray) -> Optional[float]:
        # Count only pixels where the silhouette has a clear direction along this axis.
        strong = np.abs(out) > 0.05
        total = np.abs(a[strong]).sum()
        if strong.sum() < MIN_SILHOUETTE_PIXELS or total <= 0.0:
            return None
        return float(a[strong].sum() / total)

    return agreement(a_u, out_u), agreement(a_v, out_v)


def sphere_ray_distances(mask: np.ndarray, K: np.ndarray, c2w: np.ndarray) -> np.ndarray:
    """Closest distance (normalised units) of each mask pixel's ray to the sphere centre, in front of the camera.

    ``c2w`` is an OpenCV camera-to-world in the normalised frame. A ray misses the unit sphere where this exceeds
    1, and the object point seen through that pixel lies at least this far from the centre.
    """
    rows, cols = _mask_pixels(mask)
    dirs = _camera_rays(K, rows, cols) @ np.asarray(c2w)[:3, :3].T
    centre = np.asarray(c2w)[:3, 3]
    # Closest approach along the ray, at t >= 0: behind the camera the ray's nearest point is the camera itself.
    t = np.clip(-(dirs @ centre), 0.0, None)
    return np.linalg.norm(centre + t[:, None] * dirs, axis=-1)


# ------------------------------------------------------------------------------------------------ verdicts


def _pct(x: float) -> str:
    return f"{100.0 * x:.1f}%" if x < 0.1 else f"{100.0 * x:.0f}%"


def _views(names: Sequence[str], limit: int = 6) -> str:
    text = ", ".join(names[:limit])
    return text + (f", ... ({len(names)} in all)" if len(names) > limit else "")


@dataclass
class _Finding:
    severity: Literal["error", "warning"]
    line: str


@dataclass
class PlausibilityChecks:
    """Collects per-view measurements while a dataset loads, then refuses, warns or stays silent (:meth:`finish`).

    ``mode``: ``"error"`` raises :class:`PMNIDataError` (one line) on clearly wrong data and warns on borderline
    data; ``"warn"`` reports both as warnings; ``"off"`` measures nothing.
    """

    mode: DataChecks = "error"
    _away: List[Tuple[Path, float]] = field(default_factory=list)
    _silhouette: List[Tuple[Path, Optional[float], Optional[float]]] = field(default_factory=list)
    _findings: List[_Finding] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.mode not in DATA_CHECKS:
            raise PMNIDataError(f"data_checks: {self.mode!r} is not one of {', '.join(DATA_CHECKS)}")

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    def add_view_normals(
        self, path: Path, normals: np.ndarray, mask: np.ndarray, K: np.ndarray, c2w_world: Optional[np.ndarray]
    ) -> None:
        """Measure one view's orientation. ``normals`` are unit normals in camera space (pmni axes) when
        ``c2w_world`` is None, else world-space normals seen by that OpenCV camera-to-world (world frame)."""
        if not self.enabled:
            return
        self._away.append((Path(path), away_facing_fraction(normals, mask, K, c2w_world)))
        self._silhouette.append((Path(path), *silhouette_agreement(normals, mask, K, c2w_world)))

    def check_orientation(self, space: Literal["world", "camera"]) -> None:
        """Judge the views measured by :meth:`add_view_normals`; ``space`` is the frame the maps were given in."""
        if not self._away:
            return
        worst_path, worst = max(self._away, key=lambda pf: pf[1])
        for limit, severity in ((AWAY_ERROR_FRACTION, "error"), (AWAY_WARN_FRACTION, "warning")):
            listed = [p.name for p, f in self._away if f > limit]
            if listed:
                text = (
                    f"{worst_path}: {_pct(worst)} of the mask pixels have normals facing away from the camera "
                    f"({len(listed)} of {len(self._away)} views over {_pct(limit)}: {_views(listed)}); "
                )
                cause = _CONVENTION_HINTS[space] if severity == "error" else "very noisy normals or a wrong mask?"
                self._add(severity, text + cause)  # type: ignore[arg-type]
                if severity == "error":
                    # Normals facing away point into the mask as well; one line says it all.
                    return
                break
        for axis, name, flipped in ((1, "x", "x points left"), (2, "y", "y points down")):
            scores = [(s[0], s[axis]) for s in self._silhouette if s[axis] is not None]
            for limit, severity in ((SILHOUETTE_ERROR_AGREEMENT, "error"), (SILHOUETTE_WARN_AGREEMENT, "warning")):
                listed = [p.name for p, a in scores if a < limit]  # type: ignore[operator]
                if listed:
                    worst_path, worst_score = min(scores, key=lambda pa: pa[1])  # type: ignore[arg-type,return-value]
                    text = (
                        f"{worst_path}: at the silhouette the normals' {name} components point into the mask "
                        f"(agreement {worst_score:+.2f}, +1 = outward; {len(listed)} of {len(scores)} views below "
                        f"{limit:+.1f}: {_views(listed)}); "
                    )
                    if severity == "error":
                        cause = f"the maps' {name} axis looks flipped ({flipped}; pmni: x right, y up)"
                    else:
                        cause = "noisy normals at the silhouette, or masks that do not fit the normal maps?"
                    self._add(severity, text + cause)  # type: ignore[arg-type]
                    break

    def check_scale(
        self,
        camera_path: Path,
        mask_paths: Sequence[Path],
        view_ids: Sequence[int],
        masks: np.ndarray,
        K: np.ndarray,
        c2w: np.ndarray,
    ) -> None:
        """Judge ``scale_mat`` from the masks and poses (OpenCV, normalised frame) the normalised frame was built
        from: every mask ray must enter the unit sphere, and the object should not be lost inside it."""
        if not self.enabled:
            return
        inside = [v for v, pose in zip(view_ids, c2w) if np.linalg.norm(pose[:3, 3]) <= 1.0]
        if inside:
            dist = min(np.linalg.norm(pose[:3, 3]) for pose in c2w)
            self._add(
                "error",
                f"{camera_path}: the cameras of views {_views([str(v) for v in inside])} lie inside the unit sphere of "
                f"scale_mat (closest at {dist:.2f} sphere radii from its centre); scale_mat must map the unit sphere "
                "onto a ball around the object only",
            )
            return
        misses, extent = [], 0.0
        for path, mask, k, pose in zip(mask_paths, masks, K, c2w):
            distances = sphere_ray_distances(mask, k, pose)
            misses.append((Path(path), float(np.mean(distances > 1.0))))
            extent = max(extent, float(distances.max()))
        worst_path, worst = max(misses, key=lambda pf: pf[1])
        # A scale_mat that is too small fails most views alike; a few failing views point at their poses or masks.
        widespread = 2 * sum(f > MISS_WARN_FRACTION for _, f in misses) > len(misses)
        for limit, severity in ((MISS_ERROR_FRACTION, "error"), (MISS_WARN_FRACTION, "warning")):
            listed = [p.name for p, f in misses if f > limit]
            if not listed:
                continue
            if severity == "warning":
                cause = "the object reaches out of the sphere there and will be clipped"
            elif widespread:
                cause = "the sphere does not contain the object (scale_mat too small or off-centre?)"
            else:
                cause = "the poses or masks of these views do not fit the others"
            self._add(
                severity,  # type: ignore[arg-type]
                f"{camera_path}: {_pct(worst)} of the mask pixels of {worst_path.name} cast rays that miss the unit "
                f"sphere of scale_mat ({len(listed)} of {len(misses)} views over {_pct(limit)}: {_views(listed)}); "
                + cause,
            )
            return
        if extent < SMALL_EXTENT_WARN:
            self._add(
                "warning",
                f"{camera_path}: the mask rays of all views pass within {extent:.2f} of the centre of scale_mat's "
                "unit sphere: the sphere is far larger than the object, which wastes most of the grid's resolution",
            )

    def _add(self, severity: Literal["error", "warning"], line: str) -> None:
        self._findings.append(_Finding(severity, line))

    def finish(self, warn: Optional[Callable[[str], None]] = None) -> None:
        """Raise the first error in mode "error"; otherwise report every finding, one line each, through ``warn``.

        ``warn`` defaults to :func:`warnings.warn` with :class:`PMNIDataWarning` (the dataparser prints them as
        yellow lines instead).
        """
        if self.mode == "error":
            errors = [f for f in self._findings if f.severity == "error"]
            if errors:
                raise PMNIDataError(f"{errors[0].line} ({OVERRIDE_HINT})")
        report = warn if warn is not None else (lambda line: warnings.warn(line, PMNIDataWarning, stacklevel=4))
        for finding in self._findings:
            report(finding.line)
