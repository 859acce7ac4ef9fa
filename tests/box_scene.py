"""A rounded box with exact renders: the scene of the pose refinement and consistency tests."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import List, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from pmni_method import cameras
from pmni_method.data.types import MultiViewNormalData
from pmni_method.models.core import PMNICore
from pmni_method.models.presets import core_preset


# A rounded box with three different sides. Its faces are flat, so turning a camera about the object rotates the
# normals it sees by the full angle; a smooth blob (a sphere, an ellipsoid) shows such orbit errors only through its
# small departure from a sphere, far below a pixel at this resolution.
HALF_SIZES = (0.55, 0.4, 0.28)
ROUNDING = 0.12


def box_sdf(x: Tensor) -> Tensor:
    """Exact SDF [M, 1] of the rounded box centred at the origin."""
    q = x.abs() - (torch.tensor(HALF_SIZES, dtype=x.dtype, device=x.device) - ROUNDING)
    outside = q.clamp(min=0.0).norm(dim=-1, keepdim=True)
    inside = q.max(dim=-1, keepdim=True).values.clamp(max=0.0)
    return outside + inside - ROUNDING


def spheres_sdf(x: Tensor, spheres: List[Tuple[Tuple[float, float, float], float]]) -> Tensor:
    centres = torch.tensor([c for c, _ in spheres], dtype=x.dtype, device=x.device)
    radii = torch.tensor([r for _, r in spheres], dtype=x.dtype, device=x.device)
    return ((x[:, None, :] - centres[None]).norm(dim=-1) - radii[None]).min(dim=1, keepdim=True).values


class BoxField(nn.Module):
    """The exact geometry as an analytic field with the interface PMNICore renders through (no parameters)."""

    def __init__(self) -> None:
        super().__init__()
        self._levels = 1

    @property
    def num_active_levels(self) -> int:
        return self._levels

    def set_active_levels(self, num_active: int) -> None:
        self._levels = num_active

    def sdf(self, x: Tensor) -> Tensor:
        return box_sdf(x)

    def sdf_and_gradient(self, x: Tensor, create_graph: bool = True) -> Tuple[Tensor, Tensor]:
        with torch.enable_grad():
            xg = x if x.requires_grad else x.detach().requires_grad_(True)
            sdf = box_sdf(xg)
            (grad,) = torch.autograd.grad(sdf, xg, torch.ones_like(sdf), create_graph=create_graph)
        return (sdf, grad) if create_graph else (sdf.detach(), grad.detach())


def hit_box(origins: np.ndarray, directions: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """First hits [N, 3] (NaN on a miss) and outward unit normals [N, 3] of rays on the box, by sphere tracing."""
    o = torch.as_tensor(origins, dtype=torch.float64)
    d = torch.as_tensor(directions, dtype=torch.float64)
    t = torch.zeros(len(o), dtype=torch.float64)
    for _ in range(400):
        t = t + box_sdf(o + t[:, None] * d)[:, 0]
    points = (o + t[:, None] * d).requires_grad_(True)
    sdf = box_sdf(points)
    (grad,) = torch.autograd.grad(sdf.sum(), points)
    # Grazing rays creep up on the surface; 1e-6 is a thousandth of a pixel's footprint here.
    hit = sdf[:, 0].detach().abs() < 1e-6
    points = torch.where(hit[:, None], points.detach(), torch.full_like(points, float("nan")))
    return points.numpy(), (grad / grad.norm(dim=-1, keepdim=True)).numpy()


def box_dataset(num_views: int = 8, size: int = 40) -> MultiViewNormalData:
    """Exact renders of the box filling most of the image, from cameras at distance 3 (world normals, true poses).

    Views sit between the box's side faces (azimuth 45 degrees + k 360 / N) and 25 degrees above or below it, so no
    face is seen edge-on: NeuS's opacity along a ray grazing a flat face is a soft ramp, which would bias the
    silhouette, and so the poses, by a degree.
    """
    elevation = np.where(np.arange(num_views) % 2 == 0, 25.0, -25.0)
    c2w = cameras.ring_poses(num_views, radius=3.0, elevation_deg=elevation, start_azimuth_deg=45.0)
    focal = 1.8 * size
    K = np.array([[focal, 0.0, (size - 1) / 2.0], [0.0, focal, (size - 1) / 2.0], [0.0, 0.0, 1.0]])
    normals = np.zeros((num_views, size, size, 3), np.float32)
    masks = np.zeros((num_views, size, size), bool)
    for v in range(num_views):
        points, n = hit_box(*cameras.pixel_rays(K, c2w[v], size, size))
        hit = np.isfinite(points[:, 0])
        normals[v].reshape(-1, 3)[hit] = n[hit]
        masks[v].reshape(-1)[hit] = True
    return MultiViewNormalData(
        data_dir=Path("."), view_ids=list(range(num_views)), K=np.repeat(K[None], num_views, 0), c2w=c2w,
        normals=normals, masks=masks, normalisation=cameras.Normalisation(np.eye(4)), normal_space="camera",
    )


def with_initial_poses(data: MultiViewNormalData, c2w_init: np.ndarray) -> MultiViewNormalData:
    """The dataset as the loader gives camera-space maps under other starting poses: normals rotated with them."""
    R = c2w_init[:, :3, :3] @ np.swapaxes(data.c2w[:, :3, :3], 1, 2)
    normals = np.einsum("vij,vhwj->vhwi", R, data.normals).astype(np.float32)
    out = data.subset(list(range(data.num_views)))
    out.c2w, out.normals, out.gt_c2w = c2w_init, normals, data.c2w
    return out


def frozen_geometry_core() -> PMNICore:
    config = core_preset("pmni-fast").core
    # A fine marching step (and the sharpness it allows): a coarse one blurs normals on curved parts by ~1 degree,
    # which would show up as pose bias against the exact renders.
    step = 2.0 / 1024
    config = dataclasses.replace(
        config, sampler=dataclasses.replace(config.sampler, step_size_start=step, step_size_end=step)
    )
    core = PMNICore(config)
    core.field = BoxField()
    core.set_step(core.total_steps - 1)  # finest marching step and the late-stage loss weights
    core.update_grid()
    core.train()
    return core
