"""Ray casting of one synthetic view (mask, normals facing the camera, depth) for pmni-synth."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import trimesh

from pmni_method import cameras
from pmni_method.raycast import cast_first_hits

# Smooth normals at silhouettes can lean slightly away from the viewer although the hit face faces it; they are
# pushed back to at least this cosine with the view direction (the true surface normal there is perpendicular).
MIN_FACING_COSINE = 1e-3


@dataclass
class ViewRender:
    """Ground truth of one view, before noise."""

    mask: np.ndarray
    """(H, W) bool."""
    normals: np.ndarray
    """(H, W, 3) float64 world unit normals facing the camera, 0 outside the mask."""
    depth: np.ndarray
    """(H, W) float64 camera-z depth in world units, 0 outside the mask."""


def _candidate_pixels(mesh: trimesh.Trimesh, K: np.ndarray, c2w: np.ndarray, height: int, width: int) -> np.ndarray:
    """(row, col) of the pixels inside the bounding box of the projected mesh: no other pixel can see it.

    Exact because every vertex is in front of the camera, so each triangle projects inside its vertices' hull.
    """
    uv, _ = cameras.project_points(K, c2w, mesh.vertices)
    col0, row0 = np.maximum(np.floor(uv.min(axis=0)).astype(int) - 1, 0)
    col1 = min(int(np.ceil(uv[:, 0].max())) + 1, width - 1)
    row1 = min(int(np.ceil(uv[:, 1].max())) + 1, height - 1)
    if col0 > col1 or row0 > row1:
        return np.zeros((0, 2), dtype=np.int64)
    rows, cols = np.meshgrid(np.arange(row0, row1 + 1), np.arange(col0, col1 + 1), indexing="ij")
    return np.stack([rows.ravel(), cols.ravel()], axis=-1)


def lean_toward_camera(normals: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    """Push normals that lean away from their rays' origins back to a cosine of at least ``MIN_FACING_COSINE``."""
    n = np.array(normals, copy=True)
    cosine = -np.einsum("ij,ij->i", n, dirs)
    lean = cosine < MIN_FACING_COSINE
    if np.any(lean):
        n[lean] -= (MIN_FACING_COSINE - cosine[lean])[:, None] * dirs[lean]
        n[lean] /= np.linalg.norm(n[lean], axis=1, keepdims=True)
    return n


def render_view(
    mesh: trimesh.Trimesh, intersector, K: np.ndarray, c2w: np.ndarray, height: int, width: int, flat: bool = False
) -> ViewRender:
    """Ray-cast one view: first hits only, normals oriented toward the camera."""
    mask = np.zeros((height, width), dtype=bool)
    normals = np.zeros((height, width, 3))
    depth = np.zeros((height, width))
    pixels = _candidate_pixels(mesh, K, c2w, height, width)
    if len(pixels) == 0:
        return ViewRender(mask, normals, depth)
    origins, dirs = cameras.pixel_rays(K, c2w, height, width, pixels)
    hits = cast_first_hits(mesh, origins, dirs, normal_type="face" if flat else "interpolated", intersector=intersector)
    pixels, dirs = pixels[hits.hit], dirs[hits.hit]
    rows, cols = pixels[:, 0], pixels[:, 1]
    mask[rows, cols] = True
    normals[rows, cols] = lean_toward_camera(hits.normals[hits.hit], dirs)
    depth[rows, cols] = hits.distances[hits.hit] * (dirs @ np.asarray(c2w)[:3, 2])
    return ViewRender(mask, normals, depth)
