"""Every pixel of every training view as a ray, with its targets, sampled in batches (no nerfstudio needed).

The normal maps, masks and depths are held here once, as :class:`TrainingViews` on the training device; the
consistency term and the pose polish read the same tensors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import numpy as np
import torch
from torch import Tensor

from pmni_method.cameras_torch import pixel_directions, unproject
from pmni_method.data.types import MultiViewNormalData


@dataclass
class TrainingViews:
    """The training views as tensors: what the ray store draws from and the consistency term samples."""

    normals: Tensor
    """(V, H, W, 3) unit normals in the normalised frame as loaded (under the initial poses); 0 outside masks."""
    masks: Tensor
    """(V, H, W) bool foreground masks."""
    K: Tensor
    """(V, 3, 3) OpenCV intrinsics (pixel centres at integers)."""
    c2w: Optional[Tensor] = None
    """(V, 4, 4) OpenCV camera-to-worlds the views start from (normalised frame); None when unknown."""
    depths: Optional[Tensor] = None
    """(V, H, W) camera-z depth, any per-view scale, 0 where unknown; None when the dataset has none."""

    @classmethod
    def from_data(cls, data: MultiViewNormalData, device: torch.device | str = "cpu") -> "TrainingViews":
        # as_tensor: on CPU the float32 arrays of the loader are shared, not copied.
        return cls(
            normals=torch.as_tensor(data.normals, dtype=torch.float32, device=device),
            masks=torch.as_tensor(data.masks, dtype=torch.bool, device=device),
            K=torch.as_tensor(data.K, dtype=torch.float32, device=device),
            c2w=torch.as_tensor(data.c2w, dtype=torch.float32, device=device),
            depths=None if data.depths is None else torch.as_tensor(data.depths, dtype=torch.float32, device=device),
        )

    _outside: Optional[Tensor] = field(default=None, repr=False, compare=False)

    @property
    def num_views(self) -> int:
        return int(self.masks.shape[0])

    def mask_outside_distance(self) -> Tensor:
        """(V, H, W) distance in pixels from each pixel to its view's mask (0 inside; computed once)."""
        if self._outside is None:
            self._outside = mask_outside_distance(self.masks.cpu().numpy()).to(self.masks.device)
        return self._outside


class RayStore:
    """Per-pixel targets of all training views and the ray of each pixel under the poses the views start from.

    Pose corrections are applied to the drawn rays by the training step (:mod:`pmni_method.models.step`), not
    here. ``fg_fraction`` of each batch is drawn from inside the masks (where the normal loss lives); the rest is
    drawn uniformly over all pixels, so background rays keep the mask loss honest.

    With ``patch_size`` k >= 2, :meth:`sample` draws whole k x k pixel patches of one view instead
    (:meth:`sample_patches`, for the core's patch rendering); the share inside the masks counts patches.
    """

    def __init__(
        self,
        data: MultiViewNormalData,
        device: torch.device | str = "cpu",
        fg_fraction: float = 0.5,
        seed: int = 0,
        patch_size: int = 1,
    ) -> None:
        self.device = torch.device(device)
        self.fg_fraction = float(fg_fraction)
        self.patch_size = int(patch_size)
        if self.patch_size > min(data.height, data.width):
            raise ValueError(f"patch size {self.patch_size} exceeds the {data.width}x{data.height} images")
        self.views = TrainingViews.from_data(data, self.device)
        self.num_views, self.height, self.width = data.num_views, data.height, data.width
        self.K = self.views.K
        self.c2w = self.views.c2w
        # Flat views of the same storage (view-major, row-major), no copies.
        self.normals = self.views.normals.reshape(-1, 3)
        self.fg_mask = self.views.masks.reshape(-1)
        self.depth: Optional[Tensor] = None if self.views.depths is None else self.views.depths.reshape(-1)
        self.fg_indices = torch.nonzero(self.fg_mask).squeeze(-1)
        self.boundary_px = mask_boundary_distance(data.masks).reshape(-1).to(self.device)
        self.generator = torch.Generator(device="cpu").manual_seed(seed)

    @property
    def num_pixels(self) -> int:
        return self.num_views * self.height * self.width

    def _draw(self, num_rays: int) -> Tensor:
        num_fg = int(round(num_rays * self.fg_fraction)) if len(self.fg_indices) else 0
        fg = self.fg_indices[
            torch.randint(len(self.fg_indices), (num_fg,), generator=self.generator).to(self.device)
        ] if num_fg else self.fg_indices[:0]
        rest = torch.randint(self.num_pixels, (num_rays - num_fg,), generator=self.generator).to(self.device)
        return torch.cat([fg, rest])

    def rays_for(self, flat_indices: Tensor) -> Dict[str, Tensor]:
        """Rays and targets of given flat pixel indices [N] (view-major, row-major)."""
        hw = self.height * self.width
        cam = flat_indices // hw
        row = (flat_indices % hw) // self.width
        col = flat_indices % self.width
        dirs_cam, directions_norm = pixel_directions(self.K[cam], row, col)
        origins, dirs = unproject(self.c2w[cam], dirs_cam)
        out = {
            "origins": origins,
            "directions": dirs,
            # Same meaning as nerfstudio's metadata["directions_norm"]: camera z of a point at distance t is t / norm.
            "directions_norm": directions_norm,
            "camera_indices": cam,
            "indices": torch.stack([cam, row, col], dim=-1),
            "normal": self.normals[flat_indices],
            "fg_mask": self.fg_mask[flat_indices].float().unsqueeze(-1),
            "mask_boundary_px": self.boundary_px[flat_indices].unsqueeze(-1),
        }
        if self.depth is not None:
            out["depth"] = self.depth[flat_indices].unsqueeze(-1)
        return out

    def sample(self, num_rays: int) -> Dict[str, Tensor]:
        """A random batch of ``num_rays`` rays with their targets (whole patches when ``patch_size`` >= 2)."""
        if self.patch_size > 1:
            return self.sample_patches(max(1, num_rays // (self.patch_size**2)), self.patch_size)
        return self.rays_for(self._draw(num_rays))

    def patch_indices(self, anchors: Tensor, patch_size: int) -> Tensor:
        """Flat pixel indices [P * k^2] of the k x k patches around flat anchor pixels [P]: patch-major, row-major
        inside a patch, the anchor at offset (k - 1) // 2 (the centre for odd k). Anchors too close to an image
        border are moved inward, so every patch lies in its anchor's view."""
        k = int(patch_size)
        hw = self.height * self.width
        cam = anchors // hw
        lo = (k - 1) // 2
        row = ((anchors % hw) // self.width).clamp(lo, self.height - k + lo)
        col = (anchors % self.width).clamp(lo, self.width - k + lo)
        off = torch.arange(k, device=anchors.device) - lo
        rows = row[:, None, None] + off[None, :, None]
        cols = col[:, None, None] + off[None, None, :]
        return (cam[:, None, None] * hw + rows * self.width + cols).reshape(-1)

    def sample_patches(self, num_patches: int, patch_size: int) -> Dict[str, Tensor]:
        """``num_patches`` random k x k patches (k = ``patch_size``), each from one view, as rays with targets
        (layout of :meth:`patch_indices`); ``fg_fraction`` of the anchors lie inside the masks."""
        return self.rays_for(self.patch_indices(self._draw(num_patches), patch_size))

    def image_indices(self, view: int) -> Tensor:
        """Flat indices of every pixel of one view, row-major (for rendering whole images)."""
        start = view * self.height * self.width
        return torch.arange(start, start + self.height * self.width, device=self.device)


def mask_boundary_distance(masks: Any) -> Tensor:
    """Each pixel's distance in pixels [V, H, W] to the nearest pixel of the other label in its view's mask (1 next
    to the boundary, on both sides): segmenter masks are least reliable there."""
    from scipy.ndimage import distance_transform_edt  # pylint: disable=import-outside-toplevel

    masks = np.asarray(masks, dtype=bool)
    out = np.empty(masks.shape, dtype=np.float32)
    for i, mask in enumerate(masks):
        # A view that is all foreground (or all background) has no boundary: its pixels count as far from one.
        if mask.all() or not mask.any():
            out[i] = np.float32(np.inf)
            continue
        out[i] = np.where(mask, distance_transform_edt(mask), distance_transform_edt(~mask))
    return torch.from_numpy(out)


def mask_outside_distance(masks: Any) -> Tensor:
    """Each pixel's distance in pixels [V, H, W] to the nearest foreground pixel of its view (0 inside the mask, 1
    next to it); every pixel of a view with an empty mask is as far as the image diagonal."""
    masks = np.asarray(masks, dtype=bool)
    out = torch.where(torch.from_numpy(masks), torch.zeros(()), mask_boundary_distance(masks))
    return torch.nan_to_num(out, posinf=float(np.hypot(*masks.shape[1:])))
