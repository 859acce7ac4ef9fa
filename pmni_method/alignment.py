"""Aligning a reconstruction with the ground truth: a given similarity, the one the camera poses imply, or ICP.

A pose-free reconstruction lives in its own frame; these maps bring it into the dataset's world frame before it is
measured.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import numpy as np
import trimesh

from pmni_method.errors import EvaluationInputError
from pmni_method.poses.files import read_poses_file
from pmni_method.poses.maths import pose_errors, similarity_matrix


def apply_alignment(mesh: trimesh.Trimesh, alignment: Optional[np.ndarray]) -> trimesh.Trimesh:
    """A copy of ``mesh`` moved by a 4x4 world-frame similarity (``mesh`` itself if ``alignment`` is None)."""
    if alignment is None:
        return mesh
    T = np.asarray(alignment, dtype=np.float64)
    if T.shape != (4, 4) or not np.all(np.isfinite(T)):
        raise ValueError(f"alignment must be a finite 4x4 matrix, got shape {T.shape}")
    out = mesh.copy()
    out.apply_transform(T)
    return out


def evaluate_poses(
    poses_path: Path | str, true_c2w_world: np.ndarray, dataset_view_ids: Sequence[int]
) -> Dict[str, Any]:
    """Errors of the poses in ``poses_path`` against the true world-unit OpenCV poses (one per dataset view).

    The file may hold any subset of the views (e.g. pmni-export's training views) in any format
    :func:`pmni_method.poses.files.read_poses_file` reads, in any frame and unit: the similarity alignment of the camera
    centres absorbs both, and errors come out in the dataset's world units. Keys are those of
    :func:`pmni_method.poses.maths.pose_errors` plus ``view_ids`` and ``poses_file``; ``alignment`` maps the estimate's
    frame onto the true one (apply it to a mesh that lives in the estimate's frame).
    """
    poses_path = Path(poses_path)
    dataset_view_ids = [int(v) for v in dataset_view_ids]
    # Keyed files (npz, JSON) name their views; plain arrays hold one pose per dataset view.
    ids, estimated = read_poses_file(poses_path, ordered_view_ids=dataset_view_ids)
    unknown = sorted(set(ids) - set(dataset_view_ids))
    if unknown:
        raise EvaluationInputError(f"{poses_path}: views {unknown} are not in the dataset (has {dataset_view_ids})")
    true = np.asarray(true_c2w_world, dtype=np.float64)[[dataset_view_ids.index(v) for v in ids]]
    try:
        errors = pose_errors(estimated, true)
    except ValueError as e:
        raise EvaluationInputError(f"{poses_path}: {e}") from None
    return {"poses_file": str(poses_path), "view_ids": ids, **errors}


def icp_similarity(
    source: np.ndarray,
    target: trimesh.Trimesh,
    iterations: int = 50,
    trim: float = 0.9,
) -> np.ndarray:
    """The 4x4 similarity that best moves ``source`` points onto the surface of ``target`` (trimmed point-to-plane
    ICP, started by matching centroids).

    Each iteration pairs every source point with its closest point on the target's triangles (not with target
    samples, whose spacing would bias the fit), keeps the ``trim`` fraction of closest pairs (parts one surface
    lacks should not pull) and solves the linearised point-to-plane problem for a small rotation, translation and
    scale change (point-to-point ICP crawls along flat faces). Each iteration's cost grows with ``len(source)``.
    """
    src = np.asarray(source, dtype=np.float64)
    # Start with the centroids matched: ICP's closest-point pairing only works from a roughly overlapping start.
    T = np.eye(4)
    T[:3, 3] = np.asarray(target.center_mass if target.is_watertight else target.centroid) - src.mean(axis=0)
    for _ in range(iterations):
        moved = src @ T[:3, :3].T + T[:3, 3]
        closest, dist, faces = trimesh.proximity.closest_point(target, moved)
        keep = dist <= np.quantile(dist, trim)
        p, q, n = moved[keep], closest[keep], target.face_normals[faces[keep]]
        # Residual (p + w x p + d p + t - q) . n, linear in the rotation w, translation t and scale change d.
        A = np.concatenate([np.cross(p, n), n, np.sum(p * n, axis=1, keepdims=True)], axis=1)
        b = -np.sum((p - q) * n, axis=1)
        x, *_ = np.linalg.lstsq(A, b, rcond=None)
        angle = float(np.linalg.norm(x[:3]))
        R = trimesh.transformations.rotation_matrix(angle, x[:3] / angle)[:3, :3] if angle > 0 else np.eye(3)
        step = similarity_matrix(1.0 + float(x[6]), R, x[3:6])
        T = step @ T
        if np.abs(x).max() < 1e-10:
            break
    return T
