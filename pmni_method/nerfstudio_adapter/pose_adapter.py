"""nerfstudio's ``CameraOptimizer`` over pmni's pose model (:mod:`pmni_method.models.pose_model`).

The maths lives in :class:`~pmni_method.models.pose_model.PoseModel`; this adapter only translates. nerfstudio's
viewer moves training frustums by ``c2w_orig @ delta`` with ``delta = camera_optimizer(idxs)`` (a right-applied
delta in nerfstudio's OpenGL axes), so :meth:`PoseRefiner.forward` returns exactly that delta, ``C^-1 L C`` with
``C`` the nerfstudio camera-to-world of the initial pose. As in nerfacto, the model applies the correction to the
training rays first thing and adds the regulariser last (both inside :mod:`pmni_method.models.step`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, Literal, Optional, Type, Union

import numpy as np
import torch
from jaxtyping import Float, Int
from nerfstudio.cameras.camera_optimizers import CameraOptimizer, CameraOptimizerConfig
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.cameras.rays import RayBundle
from torch import Tensor

from pmni_method import cameras_torch
from pmni_method.models.pose_model import PoseModel, PoseModelConfig
from pmni_method.models.presets import resolve_pose_model

# Keys a checkpoint written before the pose model moved into the core holds directly under camera_optimizer.
_PRE_CORE_KEYS = ("xi", "start", "xi_scale")


@dataclass
class PoseRefinerConfig(PoseModelConfig, CameraOptimizerConfig):
    """nerfstudio's camera-optimizer config with the pose model's fields and defaults (the ``camera-optimizer.*``
    flags); the pose model comes first in the bases so that its defaults win."""

    _target: Type = field(default_factory=lambda: PoseRefiner)
    """Target class to instantiate."""
    mode: Literal["auto", "off", "SE3"] = "auto"
    """auto: SE3 for any start but --pose-init gt (pose-free), else off; off: poses stay as loaded; SE3: one
    left-applied se(3) correction per training camera (param group camera_opt)."""
    gauge: Literal["auto", "frozen-camera", "mean"] = "auto"
    """How the unobservable global motion is fixed: frozen-camera (PMNI: one camera never moves), mean (every camera
    moves, corrections taken relative to their mean); auto: mean from a ring start, frozen-camera otherwise."""
    recentre_on_masks: Optional[bool] = None
    """Turn each camera about its centre so that its mask centroid looks at the object centre before training;
    None: on for a pose-free start (any but gt)."""


class PoseRefiner(CameraOptimizer):
    """A :class:`PoseModel` (attribute ``poses``) behind nerfstudio's CameraOptimizer API."""

    config: PoseRefinerConfig

    def __init__(
        self,
        config: PoseRefinerConfig,
        num_cameras: int,
        device: Union[torch.device, str],
        c2w_init: Optional[Union[np.ndarray, Tensor]] = None,
        K: Optional[np.ndarray] = None,
        masks: Optional[np.ndarray] = None,
        non_trainable_camera_indices: Optional[Int[Tensor, "num_non_trainable_cameras"]] = None,
        **kwargs: Any,
    ) -> None:
        # PMNIModel decides "auto" from the data's start; a refiner set up without one is a calibrated one.
        config = resolve_pose_model(config, "gt")
        # The parent would create its own (N, 6) pose_adjustment for "SE3"; ours live in the pose model.
        super().__init__(dataclasses.replace(config, mode="off"), num_cameras, device, non_trainable_camera_indices)
        self.config = config
        self.poses = PoseModel(
            config,
            c2w_init=c2w_init,
            K=K,
            masks=masks,
            num_cameras=num_cameras,
            non_trainable_camera_indices=non_trainable_camera_indices,
        )

    @property
    def enabled(self) -> bool:
        return self.poses.enabled

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Runs trained before the pose model moved into the core saved its tensors directly under this module.
        for key in _PRE_CORE_KEYS:
            if prefix + key in state_dict and prefix + "poses." + key not in state_dict:
                state_dict[prefix + "poses." + key] = state_dict.pop(prefix + key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def refined_c2w(self) -> np.ndarray:
        """(N, 4, 4) float64 OpenCV camera-to-worlds of all training cameras as currently refined."""
        return self.poses.refined_c2w()

    # ------------------------------------------------------------------ nerfstudio API
    def forward(self, indices: Int[Tensor, "camera_indices"]) -> Float[Tensor, "camera_indices 3 4"]:
        """Right-applied deltas in nerfstudio axes: ``c2w_ns_current = c2w_ns_init @ delta`` (what the viewer uses)."""
        indices = indices.reshape(-1).long()
        poses = self.poses
        if not poses.enabled:
            return torch.eye(4, device=indices.device)[None, :3, :4].tile(indices.shape[0], 1, 1)
        L = poses.left_transforms(indices).double()
        C = cameras_torch.opencv_to_nerfstudio_c2w(poses.c2w_init[indices.to(poses.c2w_init.device)].double())
        delta = cameras_torch.rigid_inverse(C) @ L @ C
        # C^-1 C is the identity only up to rounding; an uncorrected camera gets the exact identity.
        unchanged = (poses.free[indices.to(poses.free.device)] == 0) & torch.all(
            poses.start[indices.to(poses.start.device)] == torch.eye(4, device=poses.start.device), dim=(-2, -1)
        )[:, None]
        delta = torch.where(unchanged[..., None], torch.eye(4, dtype=delta.dtype, device=delta.device), delta)
        return delta[:, :3, :4].to(poses.xi.dtype)

    def apply_to_raybundle(self, raybundle: RayBundle) -> None:
        """Move a training ray bundle to the current poses (its ``camera_indices`` index the training cameras)."""
        if not self.enabled:
            return
        shape = raybundle.origins.shape
        origins, directions, _ = self.poses.correct_rays(
            raybundle.origins.reshape(-1, 3), raybundle.directions.reshape(-1, 3), raybundle.camera_indices.reshape(-1)
        )
        raybundle.origins = origins.reshape(shape)
        raybundle.directions = directions.reshape(shape)

    def apply_to_camera(self, camera: Cameras) -> Tensor:
        """Corrected nerfstudio camera-to-world (1, 3, 4) of a training camera (``metadata["cam_idx"]``)."""
        if not self.enabled or camera.metadata is None or "cam_idx" not in camera.metadata:
            return camera.camera_to_worlds
        L = self.poses.left_transforms(torch.tensor([int(camera.metadata["cam_idx"])])).to(camera.camera_to_worlds)
        # The OpenCV -> OpenGL axis flip acts on the right, so a left correction applies to nerfstudio's c2w as is.
        c2w = camera.camera_to_worlds.reshape(-1, 3, 4)
        return torch.cat([L[:, :3, :3] @ c2w[:, :, :3], L[:, :3, :3] @ c2w[:, :, 3:] + L[:, :3, 3:]], dim=-1)

    def get_loss_dict(self, loss_dict: Dict[str, Tensor]) -> None:
        """The pose model's optional L2 penalty (the core step adds it; kept for nerfstudio's API)."""
        reg = self.poses.regulariser()
        if reg is not None:
            loss_dict["camera_opt_regularizer"] = reg

    @torch.no_grad()
    def get_metrics_dict(self, metrics_dict: Dict[str, Tensor]) -> None:
        """How far the cameras have moved from where they started."""
        metrics_dict.update(self.poses.motion_metrics())

    def get_param_groups(self, param_groups: Dict[str, list]) -> None:
        """``camera_opt``: the se(3) corrections (nothing when off)."""
        param_groups.update(self.poses.param_groups())
