"""The normalised frame of a capture that has poses but no ``scale_mat``: the bounding sphere of the masks' visual hull.

A ``transforms.json`` capture (COLMAP, Metashape, Polycam...) puts its cameras in a frame and unit of its own. pmni
trains inside the unit sphere, so the loader needs a sphere that holds the object, and not much more (the grid's
resolution is spread over it). The masks carve it: a coarse voxel grid in the capture's frame keeps the voxels that
every view sees inside its mask, and the sphere around the survivors, with a margin, becomes ``scale_mat``
(unit sphere -> capture frame). The visual hull contains the object whatever its shape, so the sphere does too, up
to the voxel size (which the radius allows for) and the masks' accuracy (which the margin allows for).

Rough poses (a pose-free start) carve too much: inconsistent silhouette cones meet in less than the object, or in
nothing (1 degree of rotation noise on the 8-view test bunny left a sphere that 39 % of a view's mask rays missed).
:func:`capture_scale_mat` then falls back to the sphere about the mask rays' meeting point that every mask ray
enters, which holds the object wherever refinement moves the cameras.

numpy and scipy only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from pmni_method.errors import PMNIDataError
from pmni_method.data.plausibility import MISS_WARN_FRACTION, sphere_ray_distances
from pmni_method.poses.from_masks import carve, centroid_rays, nearest_point_to_rays, silhouette_half_angles

HULL_RESOLUTION = 64
"""Voxels per side of the carving grid."""
HULL_MARGIN = 1.1
"""The sphere's radius over the radius of the sphere around the carved voxels (pmni-synth writes 1.05 about the
true object; the hull is a little larger than the object, the margin covers mask errors of a few pixels)."""
_MAX_GROWTH = 6
"""How many times the search box may double before the hull is declared unbounded."""


def _grid(centre: np.ndarray, half: float, resolution: int) -> np.ndarray:
    axis = (np.arange(resolution) + 0.5) / resolution * 2.0 - 1.0
    offsets = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1).reshape(-1, 3)
    return centre + half * offsets


def hull_scale_mat(
    path: Path,
    K: np.ndarray,
    c2w: np.ndarray,
    masks: Sequence[np.ndarray],
    margin: float = HULL_MARGIN,
    resolution: int = HULL_RESOLUTION,
) -> np.ndarray:
    """``scale_mat`` (4x4, unit sphere -> capture frame, uniform scale, no rotation) bounding the visual hull.

    ``K`` (N, 3, 3) and ``c2w`` (N, 4, 4) are OpenCV intrinsics and camera-to-worlds in the capture's frame. The
    search starts around the point nearest to every mask-centroid ray, in a box twice the size the silhouettes'
    angular sizes suggest, doubles the box while the hull reaches its faces, then carves once more in a box fitted
    to the hull. ``path`` names the file in the error raised when the masks and poses have no common hull.
    """
    if not (np.isfinite(margin) and margin >= 1.0):
        raise PMNIDataError(f"{path}: sphere margin must be a number >= 1, not {margin}")
    origins, directions = centroid_rays(c2w, K, masks)
    try:
        centre = nearest_point_to_rays(origins, directions)
    except PMNIDataError as e:
        raise PMNIDataError(f"{path}: {e}") from None
    distances = np.linalg.norm(origins - centre, axis=1)
    # The silhouette's angular size times the distance is about the object's radius.
    half = 2.0 * float(np.max(distances * np.sin(np.minimum(silhouette_half_angles(K, masks), np.pi / 2))))
    if not (np.isfinite(half) and half > 0):
        raise PMNIDataError(f"{path}: the cameras sit where their mask rays meet; no object can be placed")
    for _ in range(_MAX_GROWTH):
        kept = carve(K, c2w, masks, _grid(centre, half, resolution)).reshape((resolution,) * 3)
        if not kept.any():
            raise PMNIDataError(
                f"{path}: no point projects into every view's mask (empty visual hull): the poses and masks do not "
                "agree (wrong pose convention, or masks of another capture?)"
            )
        faces = (kept[0], kept[-1], kept[:, 0], kept[:, -1], kept[:, :, 0], kept[:, :, -1])
        if not any(f.any() for f in faces):
            break
        half *= 2.0
    else:
        raise PMNIDataError(
            f"{path}: the masks' visual hull is unbounded (every view's mask touches the image border, or the views "
            "do not surround the object); pmni needs views whose masks hold the whole object"
        )
    # Refit: a box around the survivors with one coarse voxel to spare, carved at full resolution again.
    voxel = 2.0 * half / resolution
    points = _grid(centre, half, resolution)[kept.reshape(-1)]
    lo, hi = points.min(axis=0) - voxel, points.max(axis=0) + voxel
    centre, half = (lo + hi) / 2.0, float((hi - lo).max()) / 2.0
    grid = _grid(centre, half, resolution)
    kept_fine = carve(K, c2w, masks, grid)
    points = grid[kept_fine] if kept_fine.any() else points
    voxel = 2.0 * half / resolution
    lo, hi = points.min(axis=0), points.max(axis=0)
    centre = (lo + hi) / 2.0
    # Voxel centres were tested: the object may reach half a voxel diagonal past the farthest one.
    radius = float(np.linalg.norm(points - centre, axis=1).max()) + np.sqrt(3.0) / 2.0 * voxel
    scale_mat = np.eye(4)
    scale_mat[:3, :3] *= margin * radius
    scale_mat[:3, 3] = centre
    return scale_mat


def _ray_distances(K: np.ndarray, c2w: np.ndarray, masks: Sequence[np.ndarray], centre: np.ndarray) -> list:
    """Per view, the closest approach of each mask pixel's ray to ``centre`` (capture units)."""
    out = []
    for k, pose, mask in zip(K, c2w, masks):
        moved = np.array(pose, dtype=np.float64, copy=True)
        moved[:3, 3] -= centre
        out.append(sphere_ray_distances(mask, k, moved))
    return out


def capture_scale_mat(
    path: Path,
    K: np.ndarray,
    c2w: np.ndarray,
    masks: Sequence[np.ndarray],
    margin: float = HULL_MARGIN,
    resolution: int = HULL_RESOLUTION,
) -> tuple:
    """``(scale_mat, note)``: the visual hull's sphere (:func:`hull_scale_mat`) when every view's mask rays enter it
    (all but :data:`~pmni_method.data.plausibility.MISS_WARN_FRACTION`), else the sphere about the point nearest to
    the mask-centroid rays that every mask ray enters, times ``margin``. ``note`` is None for the first, else one
    line saying why the poses did not carve a usable hull."""
    try:
        scale_mat = hull_scale_mat(path, K, c2w, masks, margin, resolution)
    except PMNIDataError as e:
        reason = str(e).split(": ", 1)[-1].split(":")[0]
    else:
        radius, centre = float(scale_mat[0, 0]), scale_mat[:3, 3]
        worst = max(float(np.mean(d > radius)) for d in _ray_distances(K, c2w, masks, centre))
        if worst <= MISS_WARN_FRACTION:
            return scale_mat, None
        reason = f"{100.0 * worst:.1f}% of a view's mask rays miss the sphere about the masks' visual hull"
    origins, directions = centroid_rays(c2w, K, masks)
    try:
        centre = nearest_point_to_rays(origins, directions)
    except PMNIDataError as e:
        raise PMNIDataError(f"{path}: {e}") from None
    radius = max(float(d.max()) for d in _ray_distances(K, c2w, masks, centre))
    if not (np.isfinite(radius) and radius > 0):
        raise PMNIDataError(f"{path}: the mask rays do not pass near one point; no object can be placed")
    scale_mat = np.eye(4)
    scale_mat[:3, :3] *= margin * radius
    scale_mat[:3, 3] = centre
    note = (
        f"{path}: the poses and masks disagree ({reason}); normalised by the sphere every mask ray enters instead, "
        "which is larger than the object (rough poses? --pose-init file refines them)"
    )
    return scale_mat, note
