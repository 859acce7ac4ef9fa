"""First hits of rays on a triangle mesh: the one ray caster of the dataset generator and the evaluator.

Sharing it means a mesh evaluated against its own renders scores exactly 0: both see the same first hits and the
same normals there (barycentric-interpolated vertex normals, or face normals).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Literal, Optional, Tuple

import numpy as np
import trimesh

from pmni_method.cameras import pixel_rays

NormalType = Literal["interpolated", "face"]


@dataclass
class RayHits:
    """First hits of a batch of rays on one mesh."""

    hit: np.ndarray
    """(N,) bool: whether each ray hit the mesh."""
    points: np.ndarray
    """(N, 3) first-hit positions; NaN where ``hit`` is False."""
    normals: np.ndarray
    """(N, 3) unit normals at the hits, on the side of the hit face that faces the ray; NaN where ``hit`` is False."""
    distances: np.ndarray
    """(N,) distance along each (unit) ray direction to its hit; NaN where ``hit`` is False."""


def make_intersector(mesh: trimesh.Trimesh):
    """Embree ray caster when available (fast); trimesh's pure-numpy one otherwise (slow: warns)."""
    if trimesh.ray.has_embree:
        from trimesh.ray.ray_pyembree import RayMeshIntersector

        return RayMeshIntersector(mesh)
    # embreex is a dependency; the fallback only keeps the generator and the evaluator usable without it.
    warnings.warn("embree is not available (pip install embreex): falling back to trimesh's slow ray caster")
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
    distances = np.full(n, np.nan)
    hit = np.zeros(n, dtype=bool)
    if n == 0 or len(mesh.faces) == 0:
        return RayHits(hit=hit, points=points, normals=normals, distances=distances)

    intersector = intersector if intersector is not None else make_intersector(mesh)
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
    distances[idx] = t
    return RayHits(hit=hit, points=points, normals=normals, distances=distances)


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
    intersector = make_intersector(mesh)
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
    intersector = make_intersector(mesh)
    out = []
    for v in range(len(masks)):
        _, hits = render_view(
            mesh, K[v], c2w[v], masks.shape[1], masks.shape[2], mask=masks[v], normal_type="face",
            intersector=intersector,
        )
        out.append(hits.points[hits.hit])
    return np.concatenate(out, axis=0) if out else np.zeros((0, 3))
