"""Every pixel of every training view as a ray, with its targets, sampled in batches (no nerfstudio needed)."""

from __future__ import annotations

from typing import Dict, Optional


import torch

from pmni_method.cameras import CV_TO_GL
from pmni_method.data.types import MultiViewNormalData


class RayStore:
    """Per-pixel targets of all training views plus the camera-space ray of each pixel.

    World-space rays are built at sampling time from the *current* camera-to-worlds, so that pose refinement
    only has to hand in updated poses. ``fg_fraction`` of each batch is drawn from inside the masks (where the
    normal loss lives); the rest is drawn uniformly over all pixels, so background rays keep the mask loss honest.
    """

    def __init__(
        self,
        data: MultiViewNormalData,
        device: torch.device | str = "cpu",
        fg_fraction: float = 0.5,
        seed: int = 0,
    ) -> None:
        self.device = torch.device(device)
        self.fg_fraction = float(fg_fraction)
        n, h, w = data.num_views, data.height, data.width
        self.num_views, self.height, self.width = n, h, w
        self.K = torch.as_tensor(data.K, dtype=torch.float32, device=self.device)
        self.c2w = torch.as_tensor(data.c2w, dtype=torch.float32, device=self.device)
        self.normals = torch.as_tensor(data.normals.reshape(-1, 3), dtype=torch.float32, device=self.device)
        self.fg_mask = torch.as_tensor(data.masks.reshape(-1), dtype=torch.bool, device=self.device)
        self.depth: Optional[torch.Tensor] = None
        if data.depths is not None:
            self.depth = torch.as_tensor(data.depths.reshape(-1), dtype=torch.float32, device=self.device)
        self.fg_indices = torch.nonzero(self.fg_mask).squeeze(-1)
        self.generator = torch.Generator(device="cpu").manual_seed(seed)

    @property
    def num_pixels(self) -> int:
        return self.num_views * self.height * self.width

    def _draw(self, num_rays: int) -> torch.Tensor:
        num_fg = int(round(num_rays * self.fg_fraction)) if len(self.fg_indices) else 0
        fg = self.fg_indices[
            torch.randint(len(self.fg_indices), (num_fg,), generator=self.generator).to(self.device)
        ] if num_fg else self.fg_indices[:0]
        rest = torch.randint(self.num_pixels, (num_rays - num_fg,), generator=self.generator).to(self.device)
        return torch.cat([fg, rest])

    def rays_for(
        self, flat_indices: torch.Tensor, c2w: Optional[torch.Tensor] = None
    ) -> Dict[str, torch.Tensor]:
        """Rays and targets of given flat pixel indices (view-major, row-major), under optional current poses."""
        c2w = self.c2w if c2w is None else c2w
        hw = self.height * self.width
        cam = flat_indices // hw
        row = (flat_indices % hw) // self.width
        col = flat_indices % self.width
        K = self.K[cam]
        # OpenCV pixel centres sit at integer coordinates.
        x = (col.float() - K[:, 0, 2] - K[:, 0, 1] * (row.float() - K[:, 1, 2]) / K[:, 1, 1]) / K[:, 0, 0]
        y = (row.float() - K[:, 1, 2]) / K[:, 1, 1]
        dirs_cam = torch.stack([x, y, torch.ones_like(x)], dim=-1)
        directions_norm = dirs_cam.norm(dim=-1, keepdim=True)
        rot = c2w[cam, :3, :3]
        dirs = torch.einsum("nij,nj->ni", rot, dirs_cam / directions_norm)
        out = {
            "origins": c2w[cam, :3, 3],
            "directions": dirs,
            # Same meaning as nerfstudio's metadata["directions_norm"]: camera z of a point at distance t is t / norm.
            "directions_norm": directions_norm,
            "camera_indices": cam,
            "indices": torch.stack([cam, row, col], dim=-1),
            "normal": self.normals[flat_indices],
            "fg_mask": self.fg_mask[flat_indices].float().unsqueeze(-1),
        }
        if self.depth is not None:
            out["depth"] = self.depth[flat_indices].unsqueeze(-1)
        return out

    def sample(self, num_rays: int, c2w: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """A random batch of ``num_rays`` rays with their targets."""
        return self.rays_for(self._draw(num_rays), c2w)

    def image_indices(self, view: int) -> torch.Tensor:
        """Flat indices of every pixel of one view, row-major (for rendering whole images)."""
        start = view * self.height * self.width
        return torch.arange(start, start + self.height * self.width, device=self.device)


def nerfstudio_camera_to_worlds(c2w_cv: torch.Tensor) -> torch.Tensor:
    """OpenCV camera-to-worlds (N, 4, 4) -> nerfstudio's (N, 3, 4) OpenGL-axes form (torch twin of cameras.py)."""
    flip = torch.as_tensor(CV_TO_GL, dtype=c2w_cv.dtype, device=c2w_cv.device)
    out = c2w_cv[:, :3, :4].clone()
    out[:, :3, :3] = out[:, :3, :3] @ flip
    return out


