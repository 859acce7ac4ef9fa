"""The camera model in torch (differentiable, batched): the conventions of :mod:`pmni_method.cameras`.

OpenCV axes (x right, y down, z forward), pixel centres at integer coordinates, camera-to-world matrices
``c2w [N, 4, 4]``. The ray store, the pose model and the consistency term all go through these functions, so that
there is one torch copy of each convention. Nothing here imports nerfstudio.
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from pmni_method.cameras import CV_TO_GL


def pixel_directions(K: Tensor, rows: Tensor, cols: Tensor) -> Tuple[Tensor, Tensor]:
    """Unit camera-space directions [N, 3] through pixels (rows [N], cols [N]) of cameras K [N, 3, 3], and the
    norm [N, 1] of the z = 1 direction (camera z of a point at distance t along the ray is t / norm)."""
    y = (rows.to(K.dtype) - K[:, 1, 2]) / K[:, 1, 1]
    # The skew term K[0, 1] couples the row into the column coordinate.
    x = (cols.to(K.dtype) - K[:, 0, 2] - K[:, 0, 1] * y) / K[:, 0, 0]
    dirs = torch.stack([x, y, torch.ones_like(x)], dim=-1)
    norm = dirs.norm(dim=-1, keepdim=True)
    return dirs / norm, norm


def unproject(c2w: Tensor, directions_cam: Tensor) -> Tuple[Tensor, Tensor]:
    """World rays of camera-space directions [N, 3] under c2w [N, 4, 4]: origins [N, 3], directions [N, 3]."""
    return c2w[:, :3, 3], torch.einsum("nij,nj->ni", c2w[:, :3, :3], directions_cam)


def project(points: Tensor, c2w: Tensor, K: Tensor) -> Tuple[Tensor, Tensor]:
    """Pixel coordinates ``(u, v)`` [M, 2] (column, row) and camera z [M] of points [M, 3] in cameras given per
    point (c2w [M, 4, 4], K [M, 3, 3]); ``uv`` is finite (but meaningless) where z <= 0."""
    R, c = c2w[:, :3, :3], c2w[:, :3, 3]
    cam = torch.einsum("mji,mj->mi", R, points - c)  # R^T (x - c)
    z = cam[:, 2]
    uvw = torch.einsum("mij,mj->mi", K, cam)
    # z is only used as a divisor where it is positive; the substitute keeps the other entries finite.
    uv = uvw[:, :2] / torch.where(z > 1e-6, z, torch.ones_like(z))[:, None]
    return uv, z


def transform_rays(L: Tensor, origins: Tensor, directions: Tensor) -> Tuple[Tensor, Tensor]:
    """Rays [N, 3] moved by rigid left transforms L [N, 4, 4]: ``(R o + t, R d)``."""
    R, t = L[:, :3, :3], L[:, :3, 3]
    return torch.einsum("nij,nj->ni", R, origins) + t, torch.einsum("nij,nj->ni", R, directions)


def opencv_to_nerfstudio_c2w(c2w: Tensor) -> Tensor:
    """OpenCV camera-to-worlds [N, 4, 4] -> the same cameras in nerfstudio's OpenGL axes, [N, 4, 4]."""
    flip = torch.as_tensor(CV_TO_GL, dtype=c2w.dtype, device=c2w.device)
    out = c2w.clone()
    out[:, :3, :3] = out[:, :3, :3] @ flip
    return out


def rigid_inverse(T: Tensor) -> Tensor:
    """Inverse [N, 4, 4] of rigid transforms T [N, 4, 4] (transpose of the rotation, no general solve)."""
    R, t = T[:, :3, :3], T[:, :3, 3:]
    Rt = R.transpose(1, 2)
    return torch.cat([torch.cat([Rt, -Rt @ t], dim=-1), T[:, 3:, :]], dim=1)
