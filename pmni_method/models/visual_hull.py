"""Silhouette carving: how big the object is, before any training, from the masks and the initial cameras."""

from __future__ import annotations

import numpy as np

from pmni_method.cameras import project_points


def visual_hull_occupancy(
    K: np.ndarray, c2w: np.ndarray, masks: np.ndarray, resolution: int = 64
) -> np.ndarray:
    """Boolean (R, R, R) grid over [-1, 1]^3: inside the unit sphere and inside every view's mask.

    A point that projects outside an image or behind a camera is not carved by that view, so partial views only
    ever keep too much, never too little.
    """
    axis = (np.arange(resolution) + 0.5) / resolution * 2.0 - 1.0
    pts = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1).reshape(-1, 3)
    keep = np.linalg.norm(pts, axis=-1) < 1.0
    height, width = masks.shape[1:3]
    for k, pose, mask in zip(K, c2w, masks):
        uv, z = project_points(k, pose, pts)
        col, row = np.round(uv[:, 0]).astype(np.int64), np.round(uv[:, 1]).astype(np.int64)
        seen = (z > 0) & (col >= 0) & (col < width) & (row >= 0) & (row < height)
        outside = np.zeros(len(pts), dtype=bool)
        outside[seen] = ~mask[row[seen], col[seen]]
        keep &= ~outside
    return keep.reshape(resolution, resolution, resolution)


def visual_hull_radius(K: np.ndarray, c2w: np.ndarray, masks: np.ndarray, resolution: int = 64) -> float:
    """Radius of the sphere with the visual hull's volume (normalised units)."""
    occupied = visual_hull_occupancy(K, c2w, masks, resolution)
    volume = occupied.mean() * 8.0
    return float((3.0 * volume / (4.0 * np.pi)) ** (1.0 / 3.0))
