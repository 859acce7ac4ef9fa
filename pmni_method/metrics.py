"""Geometry and normal metrics of a reconstruction: Chamfer distance / F-score, normal angular error, silhouette IoU.

Distances are in the units of the points given (the evaluator passes world units: DiLiGenT-MV millimetres).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import trimesh
from scipy.spatial import cKDTree

from pmni_method.raycast import NormalType, make_intersector, render_view


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
    same points :func:`pmni_method.raycast.sample_visible_surface` gives, so the evaluator casts the prediction only once.
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
    per_view, _ = normal_pass(mesh, K, c2w, gt_normals, masks, normal_type)
    return normal_report(per_view, len(masks), view_ids, heldout_views, normal_type)


def normal_pass(
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
    intersector = make_intersector(mesh)
    per_view: List[ViewNormalStats] = []
    points: List[np.ndarray] = []
    for v in range(len(masks)):
        stats, pts = view_normal_stats(mesh, K[v], c2w[v], gt_normals[v], masks[v], normal_type, intersector)
        per_view.append(stats)
        points.append(pts)
    return per_view, np.concatenate(points, axis=0) if points else np.zeros((0, 3))


def normal_report(
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
