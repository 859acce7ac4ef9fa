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

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple

import numpy as np
import trimesh
from scipy.spatial import cKDTree

from pmni_method.cameras import pixel_rays
from pmni_method.data.diligent_mv import load_diligent_mv
from pmni_method.errors import PMNIDataError
from pmni_method.export import read_mesh_source
from pmni_method.poses import pose_errors, read_poses_file, rotation_errors_deg, similarity_matrix

NormalType = Literal["interpolated", "face"]

DISTANCE_UNITS = "world units of the dataset (DiLiGenT-MV: mm)"

LOW_HIT_FRACTION = 0.5
"""Below this fraction of mask pixels hitting the mesh, a warning says the mesh may be misplaced (or full of holes)."""

SIZE_FACTOR_WARNING = 3.0
"""A mesh whose bounding-box diagonal differs from the ground truth's by more than this factor gets a warning."""


class EvaluationInputError(PMNIDataError):
    """An input to the evaluator that cannot be used. The message is one line naming the file and the problem."""


# --------------------------------------------------------------------------------------------------------------------
# Ray casting
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class RayHits:
    """First hits of a batch of rays on one mesh."""

    hit: np.ndarray
    """(N,) bool: whether each ray hit the mesh."""
    points: np.ndarray
    """(N, 3) first-hit positions; NaN where ``hit`` is False."""
    normals: np.ndarray
    """(N, 3) unit normals at the hits, on the side of the hit face that faces the ray; NaN where ``hit`` is False."""


def _intersector(mesh: trimesh.Trimesh):
    if trimesh.ray.has_embree:
        from trimesh.ray.ray_pyembree import RayMeshIntersector
    else:  # pragma: no cover - embreex is a dependency, the fallback only keeps the evaluator usable without it
        from trimesh.ray.ray_triangle import RayMeshIntersector
    return RayMeshIntersector(mesh)


def cast_first_hits(
    mesh: trimesh.Trimesh,
    origins: np.ndarray,
    directions: np.ndarray,
    normal_type: NormalType = "interpolated",
    intersector: Optional[Any] = None,
) -> RayHits:
    """First hit of each ray on ``mesh``, with the normal there oriented to the side of the face the ray sees.

    Interpolated normals near a silhouette may lean slightly away from the camera; they are left so (not flipped),
    since flipping would turn a small error into a near-180 degree one.

    Embree only tells which triangle is hit first; the hit point is recomputed in float64 from that triangle's plane
    so that millimetre-scale scenes do not inherit embree's float32 rounding.
    """
    origins = np.asarray(origins, dtype=np.float64)
    directions = np.asarray(directions, dtype=np.float64)
    n = len(origins)
    points = np.full((n, 3), np.nan)
    normals = np.full((n, 3), np.nan)
    hit = np.zeros(n, dtype=bool)
    if n == 0 or len(mesh.faces) == 0:
        return RayHits(hit=hit, points=points, normals=normals)

    intersector = intersector if intersector is not None else _intersector(mesh)
    tri = np.asarray(intersector.intersects_first(origins, directions), dtype=np.int64)
    idx = np.nonzero(tri >= 0)[0]
    tri = tri[idx]
    face_n = mesh.face_normals[tri]
    corners = mesh.triangles[tri]
    denom = np.einsum("ij,ij->i", directions[idx], face_n)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.einsum("ij,ij->i", corners[:, 0] - origins[idx], face_n) / denom
    # Degenerate faces have zero normals and grazing rays give no stable point: treat both as misses.
    ok = (np.abs(denom) > 1e-12) & np.isfinite(t) & (t > 0)
    idx, tri, face_n, corners, denom, t = idx[ok], tri[ok], face_n[ok], corners[ok], denom[ok], t[ok]
    pts = origins[idx] + t[:, None] * directions[idx]
    # The face seen decides which side faces the camera (open meshes and flipped windings show their back).
    facing = -np.sign(denom)[:, None]

    if normal_type == "face":
        nrm = face_n
    elif normal_type == "interpolated":
        # Same rule as the generator (pmni_method.synth), so a mesh evaluated against its own renders scores 0.
        bary = np.clip(trimesh.triangles.points_to_barycentric(corners, pts), 0.0, None)
        bary /= np.clip(bary.sum(axis=1, keepdims=True), 1e-300, None)
        nrm = np.einsum("ij,ijk->ik", bary, mesh.vertex_normals[mesh.faces[tri]])
        length = np.linalg.norm(nrm, axis=-1, keepdims=True)
        # Vertex normals can cancel on a fold; the face normal is the only sensible value there.
        nrm = np.where(length > 1e-8, nrm / np.clip(length, 1e-12, None), face_n)
        # Vertex normals follow the winding; make them agree with the face before orienting both.
        nrm = nrm * np.sign(np.einsum("ij,ij->i", nrm, face_n) + 1e-300)[:, None]
    else:
        raise ValueError(f"unknown normal_type {normal_type!r}; expected 'interpolated' or 'face'")
    nrm = nrm * facing

    hit[idx] = True
    points[idx] = pts
    normals[idx] = nrm
    return RayHits(hit=hit, points=points, normals=normals)


def render_view(
    mesh: trimesh.Trimesh,
    K: np.ndarray,
    c2w: np.ndarray,
    height: int,
    width: int,
    mask: Optional[np.ndarray] = None,
    normal_type: NormalType = "interpolated",
    intersector: Optional[Any] = None,
) -> Tuple[np.ndarray, RayHits]:
    """Cast one ray per pixel (per ``mask`` pixel if given) of one OpenCV camera in world units.

    Returns the (N, 2) (row, col) pixels that were cast, in row-major order, and their hits.
    """
    if mask is None:
        rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
        pixels = np.stack([rows.ravel(), cols.ravel()], axis=-1)
    else:
        pixels = np.argwhere(np.asarray(mask, dtype=bool))
    origins, dirs = pixel_rays(K, c2w, height, width, pixels=pixels)
    return pixels, cast_first_hits(mesh, origins, dirs, normal_type=normal_type, intersector=intersector)


def render_normal_maps(
    mesh: trimesh.Trimesh,
    K: np.ndarray,
    c2w: np.ndarray,
    height: int,
    width: int,
    normal_type: NormalType = "interpolated",
) -> Tuple[np.ndarray, np.ndarray]:
    """World-frame normal maps (V, H, W, 3), zero where missed, and hit masks (V, H, W) of ``mesh`` in every view."""
    K = np.broadcast_to(np.asarray(K, dtype=np.float64), (len(c2w), 3, 3))
    intersector = _intersector(mesh)
    normal_maps = np.zeros((len(c2w), height, width, 3), dtype=np.float64)
    masks = np.zeros((len(c2w), height, width), dtype=bool)
    for v in range(len(c2w)):
        pixels, hits = render_view(mesh, K[v], c2w[v], height, width, normal_type=normal_type, intersector=intersector)
        sel = pixels[hits.hit]
        masks[v, sel[:, 0], sel[:, 1]] = True
        normal_maps[v, sel[:, 0], sel[:, 1]] = hits.normals[hits.hit]
    return normal_maps, masks


def sample_visible_surface(
    mesh: trimesh.Trimesh, K: np.ndarray, c2w: np.ndarray, masks: np.ndarray
) -> np.ndarray:
    """Visible-surface samples: first hits of one ray per foreground pixel of every view, stacked (M, 3)."""
    masks = np.asarray(masks, dtype=bool)
    K = np.broadcast_to(np.asarray(K, dtype=np.float64), (len(masks), 3, 3))
    intersector = _intersector(mesh)
    out = []
    for v in range(len(masks)):
        _, hits = render_view(
            mesh, K[v], c2w[v], masks.shape[1], masks.shape[2], mask=masks[v], normal_type="face",
            intersector=intersector,
        )
        out.append(hits.points[hits.hit])
    return np.concatenate(out, axis=0) if out else np.zeros((0, 3))


# --------------------------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------------------------


def _finite_or_none(x: float) -> Optional[float]:
    # Strict JSON has no NaN / Infinity, and an undefined metric is better reported as absent than as a number.
    return float(x) if math.isfinite(x) else None


def chamfer_fscore(pred_pts: np.ndarray, gt_pts: np.ndarray, threshold: float = 0.5) -> Dict[str, Any]:
    """Chamfer distance and F-score between two point sets, in their (world) units.

    accuracy = mean distance pred -> gt, completeness = mean distance gt -> pred, chamfer = their mean;
    precision / recall = fraction of pred / gt points closer than ``threshold`` to the other set.
    Metrics that are undefined because a set is empty are ``None``; precision, recall and F-score are then 0.
    """
    pred_pts = np.asarray(pred_pts, dtype=np.float64).reshape(-1, 3)
    gt_pts = np.asarray(gt_pts, dtype=np.float64).reshape(-1, 3)
    out: Dict[str, Any] = {
        "threshold": float(threshold),
        "num_pred_points": int(len(pred_pts)),
        "num_gt_points": int(len(gt_pts)),
    }
    if len(pred_pts) == 0 or len(gt_pts) == 0:
        out.update(accuracy=None, completeness=None, chamfer=None, precision=0.0, recall=0.0, fscore=0.0)
        return out
    d_pred, _ = cKDTree(gt_pts).query(pred_pts, k=1, workers=-1)
    d_gt, _ = cKDTree(pred_pts).query(gt_pts, k=1, workers=-1)
    accuracy = float(d_pred.mean())
    completeness = float(d_gt.mean())
    precision = float((d_pred < threshold).mean())
    recall = float((d_gt < threshold).mean())
    fscore = 2.0 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    out.update(
        accuracy=accuracy,
        completeness=completeness,
        chamfer=0.5 * (accuracy + completeness),
        precision=precision,
        recall=recall,
        fscore=float(fscore),
    )
    return out


def _angles_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # atan2(|a x b|, a.b) stays accurate near 0 deg where arccos(a.b) loses half the digits.
    a = a / np.clip(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12, None)
    b = b / np.clip(np.linalg.norm(b, axis=-1, keepdims=True), 1e-12, None)
    return np.degrees(np.arctan2(np.linalg.norm(np.cross(a, b), axis=-1), np.einsum("ij,ij->i", a, b)))


@dataclass
class ViewNormalStats:
    """Per-view counts behind the normal and silhouette metrics."""

    num_mask: int
    """Foreground pixels of the GT mask with a valid GT normal."""
    num_hit: int
    """Of those, pixels where the reconstructed mesh was hit."""
    angle_sum: float
    """Sum of angular errors (degrees) over the hit pixels."""
    intersection: int
    """Pixels both in the GT mask and hit by the reconstruction (whole image)."""
    union: int
    """Pixels in the GT mask or hit by the reconstruction (whole image)."""


def view_normal_stats(
    mesh: trimesh.Trimesh,
    K: np.ndarray,
    c2w: np.ndarray,
    gt_normals: np.ndarray,
    mask: np.ndarray,
    normal_type: NormalType = "interpolated",
    intersector: Optional[Any] = None,
) -> Tuple[ViewNormalStats, np.ndarray]:
    """Compare one view's rendered normals with its GT world normal map.

    Every pixel is cast (not only the mask) so that reconstructed surface in the background lowers the IoU.
    Also returns the first hits at the mask pixels, (M, 3): the view's visible-surface samples of ``mesh``, the
    same points :func:`sample_visible_surface` gives, so the evaluator casts the prediction only once.
    """
    mask = np.asarray(mask, dtype=bool)
    height, width = mask.shape
    pixels, hits = render_view(mesh, K, c2w, height, width, normal_type=normal_type, intersector=intersector)
    hit_map = hits.hit.reshape(height, width)
    pred_normals = hits.normals.reshape(height, width, 3)
    gt_normals = np.asarray(gt_normals, dtype=np.float64)
    valid = mask & (np.linalg.norm(gt_normals, axis=-1) > 0.5)
    both = valid & hit_map
    angles = _angles_deg(pred_normals[both], gt_normals[both])
    stats = ViewNormalStats(
        num_mask=int(valid.sum()),
        num_hit=int(both.sum()),
        angle_sum=float(angles.sum()),
        intersection=int((mask & hit_map).sum()),
        union=int((mask | hit_map).sum()),
    )
    return stats, hits.points.reshape(height, width, 3)[mask & hit_map]


def _summarise_normals(stats: Sequence[ViewNormalStats]) -> Dict[str, Any]:
    num_mask = sum(s.num_mask for s in stats)
    num_hit = sum(s.num_hit for s in stats)
    inter = sum(s.intersection for s in stats)
    union = sum(s.union for s in stats)
    return {
        "mae_deg": (sum(s.angle_sum for s in stats) / num_hit) if num_hit else None,
        "hit_fraction": (num_hit / num_mask) if num_mask else None,
        "num_mask_pixels": int(num_mask),
        "num_hit_pixels": int(num_hit),
        "silhouette_iou": (inter / union) if union else None,
    }


def normal_metrics(
    mesh: trimesh.Trimesh,
    K: np.ndarray,
    c2w: np.ndarray,
    gt_normals: np.ndarray,
    masks: np.ndarray,
    view_ids: Optional[Sequence[int]] = None,
    heldout_views: Sequence[int] = (),
    normal_type: NormalType = "interpolated",
) -> Dict[str, Any]:
    """Normal mean angular error, hit fraction and silhouette IoU over all views and over the held-out views.

    ``heldout_views`` are view ids (entries of ``view_ids``, which defaults to ``0..V-1``). Totals pool pixels over
    views (a view with more foreground weighs more), as in per-pixel MAE tables.
    """
    per_view, _ = _normal_pass(mesh, K, c2w, gt_normals, masks, normal_type)
    return _normal_report(per_view, len(masks), view_ids, heldout_views, normal_type)


def _normal_pass(
    mesh: trimesh.Trimesh,
    K: np.ndarray,
    c2w: np.ndarray,
    gt_normals: np.ndarray,
    masks: np.ndarray,
    normal_type: NormalType,
) -> Tuple[List[ViewNormalStats], np.ndarray]:
    """Per-view normal statistics and the stacked visible-surface samples of ``mesh``, from one cast per pixel."""
    masks = np.asarray(masks, dtype=bool)
    K = np.broadcast_to(np.asarray(K, dtype=np.float64), (len(masks), 3, 3))
    intersector = _intersector(mesh)
    per_view: List[ViewNormalStats] = []
    points: List[np.ndarray] = []
    for v in range(len(masks)):
        stats, pts = view_normal_stats(mesh, K[v], c2w[v], gt_normals[v], masks[v], normal_type, intersector)
        per_view.append(stats)
        points.append(pts)
    return per_view, np.concatenate(points, axis=0) if points else np.zeros((0, 3))


def _normal_report(
    per_view: Sequence[ViewNormalStats],
    num_views: int,
    view_ids: Optional[Sequence[int]],
    heldout_views: Sequence[int],
    normal_type: NormalType,
) -> Dict[str, Any]:
    view_ids = list(range(num_views)) if view_ids is None else [int(v) for v in view_ids]
    heldout = set(int(v) for v in heldout_views)
    return {
        "normal_type": normal_type,
        "all": _summarise_normals(per_view),
        "heldout": _summarise_normals([s for vid, s in zip(view_ids, per_view) if vid in heldout]) if heldout else None,
        "heldout_views": sorted(heldout),
        "per_view": [{"view_id": vid, **_summarise_normals([s])} for vid, s in zip(view_ids, per_view)],
    }


# --------------------------------------------------------------------------------------------------------------------
# Alignment
# --------------------------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------------------------
# Camera poses
# --------------------------------------------------------------------------------------------------------------------


def evaluate_poses(
    poses_path: Path | str, true_c2w_world: np.ndarray, dataset_view_ids: Sequence[int]
) -> Dict[str, Any]:
    """Errors of the poses in ``poses_path`` against the true world-unit OpenCV poses (one per dataset view).

    The file may hold any subset of the views (e.g. pmni-export's training views) in any format
    :func:`pmni_method.poses.read_poses_file` reads, in any frame and unit: the similarity alignment of the camera
    centres absorbs both, and errors come out in the dataset's world units. Keys are those of
    :func:`pmni_method.poses.pose_errors` plus ``view_ids`` and ``poses_file``; ``alignment`` maps the estimate's
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


# --------------------------------------------------------------------------------------------------------------------
# Whole evaluation
# --------------------------------------------------------------------------------------------------------------------


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
        per_view, pred_pts = _normal_pass(mesh, K, c2w, gt_normals, masks, normal_type)
        geometry = chamfer_fscore(pred_pts, gt_pts, threshold)
        geometry["gt_bbox_diagonal"] = diag
        geometry["chamfer_rel_bbox_percent"] = (
            100.0 * geometry["chamfer"] / diag if geometry["chamfer"] is not None and diag > 0 else None
        )
        return geometry, _normal_report(per_view, len(masks), view_ids, heldout_views, normal_type), pred_pts

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
) -> Dict[str, Any]:
    """Evaluate the mesh at ``mesh_path`` (world units) against the dataset in ``data_dir`` and its ``mesh_Gt.ply``.

    Cameras are the TRUE poses (``cameras_gt.npz`` when the dataset has one), so a run trained from perturbed poses
    is judged against the real geometry. ``heldout_views`` are view ids as in the file names.

    ``poses``: a file of estimated poses (e.g. pmni-export's ``<mesh>.poses.json``); their errors are reported
    under ``"poses"`` (:func:`evaluate_poses`) and, with ``align_to_poses``, the mesh is moved by the same
    similarity before it is measured (give either ``alignment`` or aligning ``poses``, not both).
    ``refine_alignment`` (default: whenever the mesh is aligned) adds the metrics after a further ICP similarity
    (:func:`evaluate_arrays`): a pose-free run's shape error apart from the error of its camera-based alignment.
    Raises :class:`~pmni_method.data.types.PMNIDataError` (one-line message) on unusable input, including (with
    ``require_hits``) a mesh that no mask pixel hits: wrong units or frame. ``"source"`` is what pmni-export
    recorded in the mesh about its run (checkpoint step, whether the run finished), or None; ``"warnings"`` lists
    one-line warnings (an unfinished run, a mesh that looks misplaced).
    """
    mesh_path, data_dir = Path(mesh_path), Path(data_dir)
    if not data_dir.is_dir():
        raise EvaluationInputError(f"{data_dir}: dataset folder not found")
    gt_path = data_dir / "mesh_Gt.ply"
    if not gt_path.is_file():
        raise EvaluationInputError(f"{gt_path}: ground-truth mesh not found (evaluation needs mesh_Gt.ply)")
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
    gt_normals = norm.normals_to_world(np.asarray(data.normals, dtype=np.float64))
    pose_report = None
    if poses is not None:
        if align_to_poses and alignment is not None:
            raise EvaluationInputError("give either an alignment or a poses file to align by, not both")
        pose_report = evaluate_poses(poses, c2w_world, data.view_ids)
        if align_to_poses:
            alignment = np.asarray(pose_report["alignment"], dtype=np.float64)

    metrics = evaluate_arrays(
        pred_mesh,
        gt_mesh,
        data.K,
        c2w_world,
        data.masks,
        gt_normals,
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
        "downscale_factor": int(downscale_factor),
        "source": source,
        **metrics,
    }
    metrics["warnings"] = data_warnings + source_warnings(source, str(mesh_path)) + metrics["warnings"]
    if pose_report is not None:
        metrics["poses"] = {**pose_report, "mesh_aligned_by_poses": bool(align_to_poses)}
    return metrics


def _fmt(x: Optional[float], spec: str) -> str:
    return "-" if x is None else format(x, spec)


def print_metrics(metrics: Dict[str, Any], console: Optional[Any] = None) -> None:
    """Print the metrics from :func:`evaluate` / :func:`evaluate_arrays` as a rich table."""
    from rich.console import Console
    from rich.table import Table

    console = console if console is not None else Console()
    geo = metrics["geometry"]
    nrm = metrics["normals"]
    title = f"pmni-eval: {metrics['mesh']}" if "mesh" in metrics else "pmni-eval"
    table = Table(
        title=title,
        caption="distances in the dataset's world units (DiLiGenT-MV: mm); normal MAE over pixels the mesh hits",
        header_style="bold",
    )
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("unit", style="dim")
    table.add_row("Chamfer distance", _fmt(geo["chamfer"], ".4f"), "world")
    table.add_row("  accuracy (pred -> GT)", _fmt(geo["accuracy"], ".4f"), "world")
    table.add_row("  completeness (GT -> pred)", _fmt(geo["completeness"], ".4f"), "world")
    table.add_row("Chamfer / GT bbox diagonal", _fmt(geo["chamfer_rel_bbox_percent"], ".4f"), "%")
    table.add_row(f"F-score @ {geo['threshold']:g}", _fmt(geo["fscore"], ".4f"), "0..1")
    table.add_row("  precision", _fmt(geo["precision"], ".4f"), "0..1")
    table.add_row("  recall", _fmt(geo["recall"], ".4f"), "0..1")
    table.add_row("surface samples pred / GT", f"{geo['num_pred_points']} / {geo['num_gt_points']}", "points")
    source = metrics.get("source")
    if source:
        table.add_row(
            "mesh from checkpoint step",
            f"{source.get('step', '?')} of {source.get('max_num_iterations', '?')}",
            "run finished" if source.get("finished") else "run NOT finished",
        )
    for key, label in (("all", "all views"), ("heldout", f"held-out {nrm.get('heldout_views', [])}")):
        s = nrm.get(key)
        if s is None:
            continue
        table.add_row(f"Normal MAE, {label}", _fmt(s["mae_deg"], ".3f"), f"deg ({nrm['normal_type']})")
        table.add_row("  mask pixels hit", _fmt(s["hit_fraction"], ".4f"), "0..1")
        table.add_row("  silhouette IoU", _fmt(s["silhouette_iou"], ".4f"), "0..1")
    poses = metrics.get("poses")
    if poses is not None:
        table.add_row(
            f"Rotation error, mean / median ({len(poses['view_ids'])} views)",
            f"{poses['rotation_deg_mean']:.3f} / {poses['rotation_deg_median']:.3f}",
            "deg",
        )
        table.add_row("  relative rotation of view pairs, mean", f"{poses['relative_rotation_deg_mean']:.3f}", "deg")
        table.add_row(
            "Translation error, mean / median",
            f"{poses['translation_mean']:.4g} / {poses['translation_median']:.4g}",
            "world",
        )
        table.add_row(
            "  relative to the orbit radius",
            f"{100 * poses['translation_relative_mean']:.3f} / {100 * poses['translation_relative_median']:.3f}",
            f"% of {poses['orbit_radius']:.4g}",
        )
        table.add_row(
            "  alignment scale (estimate -> true)",
            f"{poses['alignment_scale']:.4f}",
            "mesh aligned" if poses["mesh_aligned_by_poses"] else "mesh not aligned",
        )
    refined = metrics.get("refined_alignment")
    if refined is not None:
        g, n = refined["geometry"], refined["normals"]["all"]
        table.add_row("After ICP refinement of the alignment", "", "")
        table.add_row("  Chamfer distance", _fmt(g["chamfer"], ".4f"), "world")
        table.add_row("  Chamfer / GT bbox diagonal", _fmt(g["chamfer_rel_bbox_percent"], ".4f"), "%")
        table.add_row(f"  F-score @ {g['threshold']:g}", _fmt(g["fscore"], ".4f"), "0..1")
        table.add_row("  Normal MAE, all views", _fmt(n["mae_deg"], ".3f"), "deg")
        table.add_row("  silhouette IoU", _fmt(n["silhouette_iou"], ".4f"), "0..1")
        table.add_row(
            "  ICP move: rotation / translation / scale",
            f"{refined['icp_rotation_deg']:.3f} / {refined['icp_translation']:.4g} / {refined['icp_scale']:.4f}",
            "deg / world / -",
        )
    console.print(table)
    if poses is not None:
        per_view = Table(title="pose error per view (after similarity alignment)", header_style="bold")
        for column in ("view", "rotation (deg)", "translation (world)", "translation / orbit radius (%)"):
            per_view.add_column(column, justify="right")
        for v, r, t, rel in zip(
            poses["view_ids"], poses["rotation_deg"], poses["translation"], poses["translation_relative"]
        ):
            per_view.add_row(str(v), f"{r:.3f}", f"{t:.4g}", f"{100 * rel:.3f}")
        console.print(per_view)
