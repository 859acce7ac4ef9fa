"""Pose maths: similarity fits, rotation angles, camera alignment and pose-error metrics.

Every pose is an OpenCV camera-to-world (x right, y down, z forward; see :mod:`pmni_method.cameras`). Only numpy
(and nothing of pmni's data loading, nerfstudio or torch) is needed here.
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

import numpy as np


def umeyama(src: np.ndarray, dst: np.ndarray, with_scale: bool = True) -> Tuple[float, np.ndarray, np.ndarray]:
    """Least-squares similarity ``dst ~ s R src + t`` between corresponding (N, 3) points (Umeyama 1991).

    Returns ``(s, R, t)`` with ``R`` a proper rotation; ``s`` is 1 when ``with_scale`` is False.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 3 or len(src) < 3:
        raise ValueError(f"umeyama needs two (N, 3) arrays of equal shape with N >= 3, got {src.shape} and {dst.shape}")
    mu_src, mu_dst = src.mean(0), dst.mean(0)
    xs, xd = src - mu_src, dst - mu_dst
    cov = xd.T @ xs / len(src)
    U, D, Vt = np.linalg.svd(cov)
    S = np.eye(3)
    # The reflection fix keeps R a rotation when the best orthogonal fit would be a mirror.
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:
        S[2, 2] = -1.0
    R = U @ S @ Vt
    var_src = (xs**2).sum() / len(src)
    s = float(np.trace(np.diag(D) @ S) / var_src) if with_scale else 1.0
    t = mu_dst - s * R @ mu_src
    return s, R, t


def similarity_matrix(s: float, R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """4x4 matrix of ``x -> s R x + t``."""
    T = np.eye(4)
    T[:3, :3] = s * np.asarray(R, dtype=np.float64)
    T[:3, 3] = np.asarray(t, dtype=np.float64)
    return T


def camera_distances(c2w: np.ndarray, target: np.ndarray = np.zeros(3)) -> np.ndarray:
    """(N,) distance of each camera centre from ``target`` (the origin: the object centre in the normalised frame)."""
    return np.linalg.norm(np.asarray(c2w)[:, :3, 3] - np.asarray(target), axis=-1)


def orbit_radius(c2w: np.ndarray) -> float:
    """Mean distance of the camera centres from their centroid: the scale of a camera rig in its own frame."""
    centres = np.asarray(c2w, dtype=np.float64)[:, :3, 3]
    return float(np.linalg.norm(centres - centres.mean(axis=0), axis=-1).mean())


def rotation_errors_deg(R_est: np.ndarray, R_gt: np.ndarray) -> np.ndarray:
    """Geodesic angle in degrees between rotations, (..., 3, 3) each: the angle of ``R_est R_gt^T``."""
    R_est = np.asarray(R_est, dtype=np.float64)[..., :3, :3]
    R_gt = np.asarray(R_gt, dtype=np.float64)[..., :3, :3]
    rel = R_est @ np.swapaxes(R_gt, -1, -2)
    cos = (np.trace(rel, axis1=-2, axis2=-1) - 1.0) / 2.0
    # arccos is ill-conditioned near 0 and 180 degrees; atan2 of the skew part and the trace is not.
    skew = np.stack(
        [rel[..., 2, 1] - rel[..., 1, 2], rel[..., 0, 2] - rel[..., 2, 0], rel[..., 1, 0] - rel[..., 0, 1]], axis=-1
    )
    sin = np.linalg.norm(skew, axis=-1) / 2.0
    return np.degrees(np.arctan2(sin, cos))


def _check_alignable(centres: np.ndarray, what: str) -> None:
    if len(centres) < 3:
        raise ValueError(f"pose alignment needs at least 3 cameras, {what} has {len(centres)}")
    spread = centres - centres.mean(axis=0)
    sv = np.linalg.svd(spread, compute_uv=False)
    # Collinear centres leave the rotation about their line undetermined: Umeyama would return an arbitrary one.
    if sv[0] == 0 or sv[1] <= 1e-6 * sv[0]:
        raise ValueError(f"pose alignment is degenerate: the {what} camera centres are collinear or coincide")


def align_cameras(c2w_est: np.ndarray, c2w_gt: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Similarity-align estimated cameras to the true ones by Umeyama on the camera centres.

    Returns ``(aligned c2w (N, 4, 4), T (4, 4))`` with ``T: x -> s R x + t`` mapping the estimate's frame to the true
    one: centres move by ``T``, rotations by ``R`` (camera axes stay orthonormal). Raises ``ValueError`` when fewer
    than 3 cameras are given or the centres are collinear (the alignment is then not unique).
    """
    c2w_est = np.asarray(c2w_est, dtype=np.float64)
    c2w_gt = np.asarray(c2w_gt, dtype=np.float64)
    if c2w_est.shape != c2w_gt.shape or c2w_est.ndim != 3 or c2w_est.shape[1:] not in ((4, 4), (3, 4)):
        raise ValueError(f"expected two (N, 4, 4) pose arrays of equal shape, got {c2w_est.shape} and {c2w_gt.shape}")
    src, dst = c2w_est[:, :3, 3], c2w_gt[:, :3, 3]
    _check_alignable(src, "estimated")
    _check_alignable(dst, "true")
    s, R, t = umeyama(src, dst, with_scale=True)
    aligned = np.tile(np.eye(4), (len(c2w_est), 1, 1))
    aligned[:, :3, :3] = R @ c2w_est[:, :3, :3]
    aligned[:, :3, 3] = s * src @ R.T + t
    return aligned, similarity_matrix(s, R, t)


def pose_errors(c2w_est: np.ndarray, c2w_gt: np.ndarray) -> Dict[str, Any]:
    """Pose accuracy after similarity alignment (:func:`align_cameras`), in the units of ``c2w_gt``.

    Keys: ``rotation_deg`` / ``translation`` / ``translation_relative`` (per-view lists), their ``_mean`` and
    ``_median``; ``translation`` is the camera-centre distance, ``translation_relative`` that over ``orbit_radius``
    (mean distance of the true centres from their centroid); ``relative_rotation_deg_mean`` is the mean error of the
    relative rotations of all camera pairs (independent of the alignment); ``alignment`` is the 4x4 similarity (list
    of lists) that maps the estimate's frame onto the true one, to apply to a reconstruction before geometry metrics.
    """
    aligned, T = align_cameras(c2w_est, c2w_gt)
    gt = np.asarray(c2w_gt, dtype=np.float64)
    rot = rotation_errors_deg(aligned[:, :3, :3], gt[:, :3, :3])
    trans = np.linalg.norm(aligned[:, :3, 3] - gt[:, :3, 3], axis=-1)
    radius = orbit_radius(gt)
    rel = trans / radius

    def summary(name: str, values: np.ndarray) -> Dict[str, Any]:
        return {
            name: values.tolist(),
            f"{name}_mean": float(values.mean()),
            f"{name}_median": float(np.median(values)),
        }

    # Gauge-free: the angle between estimated and true relative rotations R_i^T R_j over all pairs, which no choice
    # of alignment can shift.
    R_est = np.asarray(c2w_est, dtype=np.float64)[:, :3, :3]
    i, j = np.triu_indices(len(R_est), k=1)
    relative = rotation_errors_deg(
        np.swapaxes(R_est[i], -1, -2) @ R_est[j], np.swapaxes(gt[i, :3, :3], -1, -2) @ gt[j, :3, :3]
    )
    return {
        **summary("rotation_deg", rot),
        "relative_rotation_deg_mean": float(relative.mean()) if len(relative) else 0.0,
        **summary("translation", trans),
        **summary("translation_relative", rel),
        "orbit_radius": radius,
        "alignment": T.tolist(),
        "alignment_scale": float(np.cbrt(np.linalg.det(T[:3, :3]))),
    }
