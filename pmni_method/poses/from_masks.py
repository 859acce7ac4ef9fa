"""What the masks and intrinsics alone say about the cameras: their distance from the object, and the frame of a
start that came without one (a DUSt3R / COLMAP / Metashape file in its own units).

The normalised frame's convention is that the object fills the unit sphere about the origin. A camera at distance
``d`` from that sphere's centre sees it under the half-angle ``asin(1 / d)``, so the angular size of a silhouette
bounds ``d``. Nothing here reads true poses. numpy and scipy only.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np
from scipy.spatial import ConvexHull, QhullError

from pmni_method import cameras
from pmni_method.cameras import rotation_between
from pmni_method.errors import PMNIDataError

SILHOUETTE_PERCENTILE = 90.0
"""Percentile of the views' silhouette half-angles taken as the sphere's: nearly the largest view (the sphere holds
every silhouette) but not one view with a spurious blob in its mask."""


def silhouette_half_angles(K: np.ndarray, masks: Sequence[np.ndarray]) -> np.ndarray:
    """(N,) largest angle (radians) between the ray through each view's mask centroid and a ray through its mask.

    Measured about the centroid because a pose-free start is recentred so that this ray passes through the origin
    (:func:`pmni_method.models.pose_model.recentre_on_masks`). Only the convex hull of the mask's pixels can hold the
    largest angle, which keeps this cheap at full resolution.
    """
    K = np.asarray(K, dtype=np.float64)
    out = np.zeros(len(masks))
    for i, mask in enumerate(masks):
        rows, cols = np.nonzero(np.asarray(mask))
        if len(rows) == 0:
            raise PMNIDataError(f"view {i}: empty mask; the camera distance cannot be estimated from it")
        pixels = np.stack([cols, rows], axis=1).astype(np.float64)
        try:
            hull = pixels[ConvexHull(pixels).vertices]
        except QhullError:  # a mask of one pixel, or one line of pixels
            hull = pixels
        K_inv = np.linalg.inv(K[i])

        def unit_rays(p: np.ndarray) -> np.ndarray:
            rays = np.concatenate([p, np.ones((len(p), 1))], axis=1) @ K_inv.T
            return rays / np.linalg.norm(rays, axis=1, keepdims=True)

        centre = unit_rays(pixels.mean(axis=0, keepdims=True))[0]
        out[i] = float(np.arccos(np.clip(unit_rays(hull) @ centre, -1.0, 1.0)).max())
    return out


def estimate_camera_distance(K: np.ndarray, masks: Sequence[np.ndarray], object_radius: float = 1.0) -> float:
    """Camera distance from the object centre (normalised units) at which an object of ``object_radius`` fills the
    views' silhouettes: ``object_radius / sin(alpha)``, ``alpha`` the :data:`SILHOUETTE_PERCENTILE` of
    :func:`silhouette_half_angles`.

    Measured on pmni-synth renders (true distance 16.5, whose sphere is 5 % larger than the object:
    ``--sphere-margin 1.05``): bunny 15.6 and Spot 17.5 (20 views, 10 degrees elevation); with 8 views at 10 and
    30 degrees elevation, 0.95-0.97x (bunny) and 1.06-1.08x (Spot) of the truth."""
    alpha = float(np.percentile(silhouette_half_angles(K, masks), SILHOUETTE_PERCENTILE))
    if not 0.0 < alpha < np.pi / 2:
        raise PMNIDataError(
            f"the masks span {np.rad2deg(alpha):.1f} degrees from their centroid: the camera distance cannot be "
            "estimated (pass --ring-radius)"
        )
    return float(object_radius / np.sin(alpha))


def carve(K: np.ndarray, c2w: np.ndarray, masks: Sequence[np.ndarray], points: np.ndarray) -> np.ndarray:
    """(M,) which of ``points`` (capture frame) every view keeps: it projects into the view's mask.

    A view whose mask stays off the image border sees the whole object, so it carves away what projects outside the
    image or lies behind the camera; a view whose mask touches the border may have lost part of the object past
    it, so it keeps those points (a partial view only ever keeps too much, never too little).
    """
    keep = np.ones(len(points), dtype=bool)
    for k, pose, mask in zip(K, c2w, masks):
        height, width = mask.shape
        touches_border = bool(mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())
        uv, z = cameras.project_points(k, pose, points)
        with np.errstate(invalid="ignore"):
            col, row = np.round(uv[:, 0]), np.round(uv[:, 1])
        seen = (z > 0) & (col >= 0) & (col < width) & (row >= 0) & (row < height)
        inside = np.zeros(len(points), dtype=bool)
        inside[seen] = mask[row[seen].astype(np.int64), col[seen].astype(np.int64)]
        keep &= inside | (~seen if touches_border else False)
    return keep


def centroid_rays(c2w: np.ndarray, K: np.ndarray, masks: Sequence[np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
    """(N, 3) camera centres and (N, 3) unit world directions of the rays through each mask's centroid (zero for an
    empty mask)."""
    c2w = np.asarray(c2w, dtype=np.float64)
    directions = np.zeros((len(c2w), 3))
    for i, mask in enumerate(masks):
        rows, cols = np.nonzero(np.asarray(mask))
        if len(rows) == 0:
            continue
        pixel = np.array([cols.mean(), rows.mean(), 1.0])
        ray = c2w[i, :3, :3] @ np.linalg.solve(np.asarray(K[i], dtype=np.float64), pixel)
        directions[i] = ray / np.linalg.norm(ray)
    return c2w[:, :3, 3].copy(), directions


def recentre_on_masks(c2w: np.ndarray, K: np.ndarray, masks: np.ndarray, consensus: bool = False) -> np.ndarray:
    """Left transforms (N, 4, 4) that turn each OpenCV camera about its own centre so that the ray through its mask
    centroid passes through the origin: ``A = [R_a | c - R_a c]``.

    With ``consensus`` the rays turn onto the point where they meet (least squares) instead, and the whole rig then
    shifts to put that point at the origin: ``A = [R_a | c - R_a c - p]``. The silhouettes' centroids are not the
    projections of one point, so turning every ray onto the origin pitches every camera of a true rig together
    (20-view renders: 0.47 degrees on the bunny, 0.32 on Spot); the meeting point leaves a true rig as it is (0.08
    degrees). That is right where the origin means nothing, as for a ring; a start in the dataset's frame (noisy,
    file) has the object's centre there, and its own errors would move the meeting point. Rays that do not meet (one
    camera, parallel rays) turn onto the origin."""
    c2w = np.asarray(c2w, dtype=np.float64)
    out = np.tile(np.eye(4), (len(c2w), 1, 1))
    centres, rays = centroid_rays(c2w, K, masks)
    usable = rays.any(axis=1) & (np.linalg.norm(centres, axis=1) > 1e-9)
    target = np.zeros(3)
    if consensus and usable.sum() >= 2:
        try:
            target = nearest_point_to_rays(centres[usable], rays[usable])
        except PMNIDataError:
            target = np.zeros(3)
    for i, (centre, ray) in enumerate(zip(centres, rays)):
        out[i, :3, 3] = -target
        if not usable[i] or np.linalg.norm(target - centre) < 1e-9:
            continue  # an empty mask points nowhere; a camera at the target looks at it from everywhere
        R = rotation_between(ray, target - centre)
        out[i, :3, :3] = R
        out[i, :3, 3] = centre - R @ centre - target
    return out


def nearest_point_to_rays(origins: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """The point with the least summed squared distance to the lines ``o_i + t d_i`` (unit ``d_i``)."""
    projectors = np.eye(3)[None] - directions[:, :, None] * directions[:, None, :]
    A = projectors.sum(axis=0)
    b = np.einsum("nij,nj->i", projectors, origins)
    if np.linalg.cond(A) > 1e8:
        raise PMNIDataError("the cameras' centroid rays are (nearly) parallel: they do not meet near one object")
    return np.linalg.solve(A, b)


def normalise_start(c2w: np.ndarray, K: np.ndarray, masks: Sequence[np.ndarray]) -> np.ndarray:
    """The (4, 4) similarity that takes poses in an unknown frame and unit (a poses file without a ``scale_mat``)
    into the normalised frame: the point nearest to every mask-centroid ray goes to the origin, and the cameras'
    median distance from it becomes :func:`estimate_camera_distance`. Rotation is left alone."""
    origins, directions = centroid_rays(c2w, K, masks)
    centre = nearest_point_to_rays(origins, directions)
    median = float(np.median(np.linalg.norm(origins - centre, axis=1)))
    if not median > 0:
        raise PMNIDataError("the start's cameras all sit at the point their mask rays meet")
    scale = estimate_camera_distance(K, masks) / median
    out = np.eye(4)
    out[:3, :3] *= scale
    out[:3, 3] = -scale * centre
    return out


def apply_similarity(S: np.ndarray, c2w: np.ndarray) -> np.ndarray:
    """OpenCV camera-to-worlds (N, 4, 4) moved by the similarity ``S = [s R | t]``: rotations stay orthonormal."""
    S = np.asarray(S, dtype=np.float64)
    scale = float(np.cbrt(np.linalg.det(S[:3, :3])))
    out = np.array(c2w, dtype=np.float64, copy=True)
    out[:, :3, :3] = np.einsum("ij,njk->nik", S[:3, :3] / scale, out[:, :3, :3])
    out[:, :3, 3] = out[:, :3, 3] @ S[:3, :3].T + S[:3, 3]
    return out
