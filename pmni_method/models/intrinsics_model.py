"""Refinement of the shared calibration: one focal-length scale and one principal-point shift for every view.

Real calibrations (a Metashape or COLMAP solve, a lens's nominal focal length) are off by about 1 % in focal length
and a few pixels in the principal point. On the realistic bunny (``pmni-synth --realistic``) that error alone cost
more than the normal maps' own errors: 900 steps scored a mesh normal MAE of 7.04 degrees against 4.73 with exact
intrinsics and the same maps. One calibration for all views is three numbers that every ray of every view
constrains, so they can be learned with the surface.

The correction acts on camera-space ray directions, before the pose correction: a ray through normalised image
coordinates ``(x, y)`` (``(u - cx) / f``) of the loaded intrinsics turns into the one through
``((x - a_x) / s, (y - a_y) / s)``, i.e. ``f' = s f`` and ``c' = c + a f``. Both parameters are dimensionless, so
they mean the same on every level of the resolution schedule. torch only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple, Type

import numpy as np
import torch
from torch import Tensor, nn


@dataclass
class IntrinsicsModelConfig:
    """Configuration of :class:`IntrinsicsModel`."""

    _target: Type = field(default_factory=lambda: IntrinsicsModel)
    enabled: bool = False
    """Refine the focal length (one scale) and the principal point (one shift) shared by every view (optimiser
    group ``intrinsics``: the preset's ``intrinsics_optim``, learning from 20 % of the run on)."""


class IntrinsicsModel(nn.Module):
    """A learned focal scale ``s = exp(log_focal_scale)`` and principal shift ``a`` (in focal lengths) shared by
    all views, applied to rays of the loaded (initial) poses ``c2w_init`` [V, 4, 4]."""

    def __init__(self, config: IntrinsicsModelConfig, c2w_init: np.ndarray | Tensor) -> None:
        super().__init__()
        self.config = config
        rotations = torch.as_tensor(np.asarray(c2w_init, dtype=np.float32)[:, :3, :3])
        self.register_buffer("rotations", rotations, persistent=False)
        self.log_focal_scale = nn.Parameter(torch.zeros(()))
        self.principal_shift = nn.Parameter(torch.zeros(2))

    @property
    def enabled(self) -> bool:
        return bool(self.config.enabled)

    def param_groups(self) -> Dict[str, List[nn.Parameter]]:
        """The optimiser group ``intrinsics`` (empty dict when refinement is off)."""
        return {"intrinsics": [self.log_focal_scale, self.principal_shift]} if self.enabled else {}

    def correct_rays(self, directions: Tensor, camera_indices: Tensor) -> Tuple[Tensor, Tensor]:
        """Unit world directions [N, 3] of rays cast with the loaded intrinsics and the initial rotations -> the
        directions under the refined intrinsics [N, 3] and their ``directions_norm`` [N, 1] (the norm of the z = 1
        camera direction: camera z of a point at distance t is t / norm)."""
        R = self.rotations[camera_indices.reshape(-1)].to(directions)
        cam = torch.einsum("nji,nj->ni", R, directions)  # R^T d
        xy = cam[:, :2] / cam[:, 2:3]
        xy = (xy - self.principal_shift.to(xy)) * torch.exp(-self.log_focal_scale).to(xy)
        unnormalised = torch.cat([xy, torch.ones_like(xy[:, :1])], dim=-1)
        norm = unnormalised.norm(dim=-1, keepdim=True)
        return torch.einsum("nij,nj->ni", R, unnormalised / norm), norm

    def corrected_K(self, K: np.ndarray | Tensor) -> np.ndarray:
        """Intrinsics [V, 3, 3] (or [3, 3]) with the refinement applied: ``f' = s f``, ``c' = c + a f``."""
        K = np.array(K, dtype=np.float64, copy=True)
        scale = float(torch.exp(self.log_focal_scale.detach()))
        shift = self.principal_shift.detach().double().cpu().numpy()
        fx, fy, skew = K[..., 0, 0].copy(), K[..., 1, 1].copy(), K[..., 0, 1].copy()
        K[..., 0, 2] += shift[0] * fx + shift[1] * skew
        K[..., 1, 2] += shift[1] * fy
        K[..., 0, 0] *= scale
        K[..., 1, 1] *= scale
        K[..., 0, 1] *= scale
        return K

    def report(self, K: np.ndarray, true_K: Optional[np.ndarray] = None) -> Dict[str, Any]:
        """What the refinement changed in intrinsics ``K`` [V, 3, 3] (pixels of that resolution); with the true
        intrinsics ``true_K`` also how far ``K`` was from them and how far the refined ones are
        (``loaded_error_px``, ``refined_error_px``: mean focal and principal-point errors)."""
        K = np.asarray(K, dtype=np.float64)
        refined = self.corrected_K(K)
        out: Dict[str, Any] = {
            "focal_scale": float(torch.exp(self.log_focal_scale.detach())),
            "focal_change_px": float(np.mean(refined[:, 0, 0] - K[:, 0, 0])),
            "principal_shift_px": [float(v) for v in np.mean(refined[:, :2, 2] - K[:, :2, 2], axis=0)],
        }
        if true_K is not None:
            out["loaded_error_px"] = _calibration_error(K, true_K)
            out["refined_error_px"] = _calibration_error(refined, true_K)
        return out


def _calibration_error(K: np.ndarray, true_K: np.ndarray) -> Dict[str, float]:
    """Mean focal and principal-point errors (pixels) of intrinsics [V, 3, 3] against the true ones."""
    true_K = np.asarray(true_K, dtype=np.float64)
    return {
        "focal": float(np.mean(K[:, 0, 0] - true_K[:, 0, 0])),
        "principal_point": float(np.mean(np.linalg.norm(K[:, :2, 2] - true_K[:, :2, 2], axis=-1))),
    }
