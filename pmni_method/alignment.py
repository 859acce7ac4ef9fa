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
    :func:`pmni_method.poses.maths.pose_errors` plus ``view_ids``, ``poses_file`` and ``estimated_c2w`` (the poses
    read, world units); ``alignment`` is the camera centres' similarity (estimate's frame -> true one) the errors are
    measured after (a mesh is better moved by :func:`object_alignment`).
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
    # The poses themselves go along for object_alignment; evaluate drops them before reporting.
    return {"poses_file": str(poses_path), "view_ids": ids, **errors, "estimated_c2w": np.asarray(estimated)}


class _SurfaceIndex:
    """Closest points on a mesh's triangles, found through a k-d tree of dense surface samples.

    trimesh's exact query (an R-tree of face boxes) took about 1.1 s for 4000 points on the bunny, so an ICP of
    50 rounds took about a minute. Here the ``k`` samples nearest to a point name candidate faces and the closest point
    on each candidate triangle is computed exactly: the result is trimesh's unless none of the ``k`` samples lies
    on the closest face. Stanford bunny (69k faces), 4000 points 1 % of its size off the surface, 200k samples,
    k = 8: 0.06 s instead of 1.1 s; 4.6 % of the distances differ from trimesh's, by 2.6e-6 of the mesh's size
    on average and 9e-4 at most.
    """

    COARSE_SAMPLES = 4096
    """Samples of the coarse tree, which names the candidate faces of points far from the surface."""
    FAR = 4.0
    """A point is far when its nearest coarse sample is more than this many coarse sample spacings away."""

    def __init__(self, mesh: trimesh.Trimesh, samples: int, k: int = 8, seed: int = 0) -> None:
        from scipy.spatial import cKDTree  # pylint: disable=import-outside-toplevel

        points, self._sample_face = trimesh.sample.sample_surface(mesh, samples, seed=seed)
        self._tree = cKDTree(points)
        # A point far from a surface is almost equally far from a great many samples, and a k-d tree then visits
        # nearly all of them: 4000 points near the centre of a sphere took 80 s in the 200k-sample tree. The
        # samples are independent draws, so the first few thousand are a coarse sampling of the whole surface.
        coarse = min(self.COARSE_SAMPLES, samples)
        self._coarse_tree = cKDTree(points[:coarse])
        self._coarse_face = self._sample_face[:coarse]
        self._coarse_spacing = float(np.sqrt(mesh.area / coarse))
        self._triangles = np.asarray(mesh.triangles, dtype=np.float64)
        self.k = k

    def closest(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Closest points (N, 3), their distances (N,) and faces (N,), like ``trimesh.proximity.closest_point``.

        Far points take their candidate faces from the coarse samples: the answer is then at most one coarse
        spacing farther than the true closest point, a quarter of its distance at most (an ICP's first rounds).
        """
        points = np.asarray(points, dtype=np.float64)
        n, k = len(points), self.k
        coarse_distance, _ = self._coarse_tree.query(points, k=1)
        far = coarse_distance > self.FAR * self._coarse_spacing
        faces = np.empty((n, k), dtype=np.int64)
        for subset, tree, sample_face in ((~far, self._tree, self._sample_face), (far, self._coarse_tree, self._coarse_face)):
            if subset.any():
                _, idx = tree.query(points[subset], k=k)
                faces[subset] = sample_face[idx.reshape(int(subset.sum()), -1)]
        candidates = trimesh.triangles.closest_point(
            self._triangles[faces.ravel()], np.repeat(points, k, axis=0)
        ).reshape(n, k, 3)
        dist = np.linalg.norm(candidates - points[:, None, :], axis=-1)
        best = np.argmin(dist, axis=1)
        rows = np.arange(n)
        return candidates[rows, best], dist[rows, best], faces[rows, best]


def icp_similarity(
    source: np.ndarray,
    target: trimesh.Trimesh,
    iterations: int = 50,
    trim: float = 0.9,
    target_samples: int = 200_000,
) -> np.ndarray:
    """The 4x4 similarity that best moves ``source`` points onto the surface of ``target`` (trimmed point-to-plane
    ICP, started by matching centroids).

    Each iteration pairs every source point with its closest point on the target's triangles (not with target
    samples, whose spacing would bias the fit; ``target_samples`` surface samples only find the candidate
    triangles), keeps the ``trim`` fraction of closest pairs (parts one surface lacks should not pull) and solves
    the linearised point-to-plane problem for a small rotation, translation and scale change (point-to-point ICP
    crawls along flat faces).
    """
    src = np.asarray(source, dtype=np.float64)
    index = _SurfaceIndex(target, target_samples)
    # Start with the centroids matched: ICP's closest-point pairing only works from a roughly overlapping start.
    T = np.eye(4)
    T[:3, 3] = np.asarray(target.center_mass if target.is_watertight else target.centroid) - src.mean(axis=0)
    for _ in range(iterations):
        moved = src @ T[:3, :3].T + T[:3, 3]
        closest, dist, faces = index.closest(moved)
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


def object_alignment(
    c2w_est: np.ndarray,
    c2w_gt: np.ndarray,
    centre: np.ndarray,
    radius: float,
    with_scale: bool = True,
    iterations: int = 40,
) -> np.ndarray:
    """The 4x4 similarity (estimate's frame -> true frame) that best maps what each estimated camera sees at the
    object onto what its true camera sees there; ``centre`` and ``radius`` (estimate's frame) bound the object.

    :func:`pmni_method.poses.maths.align_cameras` fits the camera centres. Far cameras and a narrow field of view
    make a camera's turn and its sideways shift look alike, so a pose-free run's centres may be off by a good part
    of the object while its views of the object are right; a fit of the centres then misplaces the mesh by that
    much (bunny, cameras 16.5 object radii away, 1.3 degrees of rotation error: Chamfer 3.6 % of the diagonal and
    42 degrees of normal error after the centres' fit, 0.35 % and 9.8 degrees after this one; ICP gives 0.33 %). Here each camera contributes seven points in its own frame, at the object's depth along its axis and
    ``radius`` to either side along each axis, paired with the true camera's points at its depth of the object
    centre as the current fit maps it (offsets scaled by the centres' scale), refitted ``iterations`` times from the
    centres' fit (the centre's guess converges about twofold per round; a round costs microseconds). Exact when the
    estimate is a similarity of the truth.
    """
    from pmni_method.poses.maths import umeyama  # pylint: disable=import-outside-toplevel

    est = np.asarray(c2w_est, dtype=np.float64)
    gt = np.asarray(c2w_gt, dtype=np.float64)
    _, T = align_cameras_checked(est, gt)
    centre = np.asarray(centre, dtype=np.float64)
    offsets = np.concatenate([np.zeros((1, 3)), radius * np.eye(3), -radius * np.eye(3)])
    # The scale is the centres' (the cameras' distances are all that tells it); the object's points fit the rest.
    scale = float(np.cbrt(np.linalg.det(T[:3, :3]))) if with_scale else 1.0
    keep = np.ones(len(est), dtype=bool)
    for _ in range(iterations):
        # Each camera's points sit at its own depth of the object centre: the estimate's, and that of the current
        # guess of where the centre is in the true frame (a far camera's distance is the poorly known part).
        centre_true = T[:3, :3] @ centre + T[:3, 3]
        src, dst = [], []
        for e, g in zip(est, gt):
            src.append((offsets + [0.0, 0.0, (centre - e[:3, 3]) @ e[:3, 2]]) @ e[:3, :3].T + e[:3, 3])
            dst.append((scale * offsets + [0.0, 0.0, (centre_true - g[:3, 3]) @ g[:3, 2]]) @ g[:3, :3].T + g[:3, 3])
        src_all, dst_all = scale * np.stack(src), np.stack(dst)
        _, R, t = umeyama(src_all[keep].reshape(-1, 3), dst_all[keep].reshape(-1, 3), with_scale=False)
        # Trimming: a camera far worse than the typical one (a failed view) should not move the mesh.
        residual = np.linalg.norm(src_all @ R.T + t - dst_all, axis=-1).mean(axis=1)
        trimmed = residual <= 3.0 * np.median(residual) + 1e-9 * radius
        if trimmed.sum() >= 3:
            keep = trimmed
        T = similarity_matrix(scale, R, t)
    return T


def align_cameras_checked(c2w_est: np.ndarray, c2w_gt: np.ndarray):
    """:func:`pmni_method.poses.maths.align_cameras` with its ``ValueError`` as an :class:`EvaluationInputError`."""
    from pmni_method.poses.maths import align_cameras  # pylint: disable=import-outside-toplevel

    try:
        return align_cameras(c2w_est, c2w_gt)
    except ValueError as e:
        raise EvaluationInputError(str(e)) from None
