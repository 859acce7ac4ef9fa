"""Silhouette carving: how big the object is, before any training, from the masks and the initial cameras."""

from __future__ import annotations

import numpy as np

from pmni_method.poses.from_masks import carve


def visual_hull_occupancy(
    K: np.ndarray, c2w: np.ndarray, masks: np.ndarray, resolution: int = 64
) -> np.ndarray:
    """Boolean (R, R, R) grid over [-1, 1]^3: inside the unit sphere and kept by every view
    (:func:`pmni_method.poses.from_masks.carve`, which also decides what a view that misses part of the object
    may carve)."""
    axis = (np.arange(resolution) + 0.5) / resolution * 2.0 - 1.0
    pts = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1).reshape(-1, 3)
    keep = np.linalg.norm(pts, axis=-1) < 1.0
    keep[keep] = carve(K, c2w, masks, pts[keep])
    return keep.reshape(resolution, resolution, resolution)


def visual_hull_radius(K: np.ndarray, c2w: np.ndarray, masks: np.ndarray, resolution: int = 64) -> float:
    """Radius of the sphere with the visual hull's volume (normalised units)."""
    occupied = visual_hull_occupancy(K, c2w, masks, resolution)
    volume = occupied.mean() * 8.0
    return float((3.0 * volume / (4.0 * np.pi)) ** (1.0 / 3.0))
