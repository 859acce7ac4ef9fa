"""nerfstudio wrapper around :class:`pmni_method.models.core.PMNICore` (the method itself lives there).

It unpacks ray bundles and hands them to the core's training step (:mod:`pmni_method.models.step`); the poses are
the core's :class:`~pmni_method.models.pose_model.PoseModel`, shown to nerfstudio through
:class:`~pmni_method.nerfstudio_adapter.pose_adapter.PoseRefiner`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Literal, Optional, Tuple, Type

import torch
from torch import Tensor
from torch.nn import Parameter
from torch.optim import Optimizer, lr_scheduler

import numpy as np
from nerfstudio.cameras.camera_optimizers import CameraOptimizer
from nerfstudio.cameras.rays import RayBundle
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes, TrainingCallbackLocation
from nerfstudio.engine.schedulers import Scheduler, SchedulerConfig
from nerfstudio.model_components.renderers import RGBRenderer
from nerfstudio.models.base_model import Model, ModelConfig
from nerfstudio.utils import colormaps
from nerfstudio.utils.rich_utils import CONSOLE

from pmni_method.data.raystore import RayStore, TrainingViews
from pmni_method.data.types import MultiViewNormalData
from pmni_method.fields.sdf_field import SDFField, SDFFieldConfig
from pmni_method.models import step as core_step
from pmni_method.models.consistency import MultiViewConsistencyConfig
from pmni_method.models.core import (
    PMNICore, PMNICoreConfig, core_config_for, normal_angular_error_deg, surface_normal_errors,
)
from pmni_method.models.intrinsics_model import IntrinsicsModel, IntrinsicsModelConfig
from pmni_method.models.pose_polish import PosePolishConfig, PosePolisher
from pmni_method.models.presets import pose_free_consistency, pose_settings
from pmni_method.models.schedule import LRScheduleConfig
from pmni_method.nerfstudio_adapter.pose_adapter import PoseRefiner, PoseRefinerConfig


@dataclass
class PMNIModelConfig(ModelConfig):
    """PMNI / SuperNormal: hash-grid SDF rendered with NeuS, supervised by normal maps, masks and depth."""

    _target: Type = field(default_factory=lambda: PMNIModel)
    """Target class to instantiate."""
    enable_collider: bool = False
    """Rays are clipped to the unit sphere by the model itself; nerfstudio's near/far collider stays off."""
    core: PMNICoreConfig = field(default_factory=PMNICoreConfig)
    """The reconstruction model itself (SDF field, sampler, sharpness, losses and their schedule)."""
    init_radius_from_masks: bool = True
    """Start the SDF as the sphere with the volume of the masks' visual hull (else core.sdf_field.sphere_init_radius)."""
    camera_optimizer: PoseRefinerConfig = field(default_factory=PoseRefinerConfig)
    """Pose refinement (param group camera_opt): a left-applied SE(3) correction per training camera, one camera
    frozen; off by default (mode SE3 turns it on)."""
    normal_targets_follow_poses: Literal["auto", "always", "never"] = "auto"
    """Rotate the training normal targets with the pose corrections; auto: when the normal maps were camera-space
    (world-space maps live in the true world frame, whatever the poses)."""
    consistency: MultiViewConsistencyConfig = field(default_factory=MultiViewConsistencyConfig)
    """Multi-view normal consistency (mvc_loss); its weight per stage is in loss_schedule."""
    pose_polish: PosePolishConfig = field(default_factory=PosePolishConfig)
    """Levenberg-Marquardt pose polish against the frozen surface at a few points of the run (with pose
    refinement only; off unless pose_polish.at lists run fractions)."""
    intrinsics: IntrinsicsModelConfig = field(default_factory=IntrinsicsModelConfig)
    """Refinement of the shared calibration (param group intrinsics): one focal scale and one principal-point shift
    for all views, applied to the training rays; off by default (enabled True turns it on)."""

    @property
    def sdf_field(self) -> SDFFieldConfig:
        """The SDF network's config (``ns-export marching-cubes`` requires a model config with this attribute)."""
        return self.core.sdf_field

    @classmethod
    def from_core(cls, core: PMNICoreConfig, **overrides: Any) -> "PMNIModelConfig":
        """A model config around a core config (plus nerfstudio-side ``overrides``)."""
        return cls(core=core, **overrides)


class PMNIModel(Model):
    """nerfstudio model: unpacks ray bundles for :class:`PMNICore` and plugs it into the trainer's callbacks."""

    config: PMNIModelConfig

    def populate_modules(self) -> None:
        super().populate_modules()
        device = self.kwargs.get("device")
        data = self.training_data
        # The one switch: the dataparser's start decides what is left on auto (refinement, gauge, recentring,
        # consistency). Resolved into copies, so config.yml keeps "auto" and a reload decides the same way.
        pose_config, schedule = pose_settings(
            self.config.camera_optimizer, self.config.core.loss_schedule, "gt" if data is None else data.pose_init
        )
        self.resolved_core_config = dataclasses.replace(self.config.core, loss_schedule=schedule)
        core_config = core_config_for(self.resolved_core_config, data, device, self.config.init_radius_from_masks)
        self.core = PMNICore(core_config)
        # Used by nerfstudio's texture export (get_rgba_image): our rgb is already composited over a fixed grey.
        self.renderer_rgb = RGBRenderer(background_color="black")
        self.camera_optimizer: CameraOptimizer = pose_config.setup(
            num_cameras=self.num_train_data,
            device="cpu",
            c2w_init=None if data is None else data.c2w,
            K=None if data is None else data.K,
            masks=None if data is None else data.masks,
        )
        targets_follow_poses = self.config.normal_targets_follow_poses == "always" or (
            self.config.normal_targets_follow_poses == "auto" and data is not None and data.normal_space == "camera"
        )
        views: Optional[TrainingViews] = None
        if data is not None and any(stage.mvc > 0 for stage in schedule.stages):
            store = self.training_rays
            # The datamanager's ray store holds the views on the training device; a model built without one (tests)
            # makes its own.
            views = store.views if store is not None else TrainingViews.from_data(data)
        consistency = self.config.consistency
        # Registered only when on, so that checkpoints of runs without it keep loading. getattr: configs saved
        # before the field existed.
        intrinsics = getattr(self.config, "intrinsics", None)
        self.intrinsics: Optional[IntrinsicsModel] = None
        if intrinsics is not None and intrinsics.enabled:
            c2w = data.c2w if data is not None else np.repeat(np.eye(4)[None], self.num_train_data, axis=0)
            self.intrinsics = IntrinsicsModel(intrinsics, c2w_init=c2w)
        self.step_context = core_step.StepContext(
            poses=self.camera_optimizer.poses,
            views=views,
            consistency=pose_free_consistency(consistency) if self.camera_optimizer.poses.enabled else consistency,
            targets_follow_poses=targets_follow_poses,
            intrinsics=self.intrinsics,
        )
        self.pose_polisher: Optional[PosePolisher] = None
        # getattr: configs saved before pose polish existed load without the field.
        polish = getattr(self.config, "pose_polish", None)
        if self.pose_refinement and data is not None and polish is not None and polish.at:
            self.pose_polisher = polish.setup(total_steps=self.core.total_steps)

    @property
    def training_data(self) -> Optional[MultiViewNormalData]:
        """The training views (poses, masks, normal maps) when the model was built by our datamanager."""
        metadata = self.kwargs.get("metadata") or {}
        data = metadata.get("pmni_data")
        return data if isinstance(data, MultiViewNormalData) else None

    @property
    def training_rays(self) -> Optional[RayStore]:
        """The datamanager's training ray store (one copy of the normal maps), when it built this model."""
        store = (self.kwargs.get("metadata") or {}).get("pmni_rays")
        return store if isinstance(store, RayStore) else None

    @property
    def targets_follow_poses(self) -> bool:
        return self.step_context.targets_follow_poses

    @property
    def pose_refinement(self) -> bool:
        return isinstance(self.camera_optimizer, PoseRefiner) and self.camera_optimizer.enabled

    def refined_c2w(self) -> Optional[np.ndarray]:
        """(N, 4, 4) OpenCV camera-to-worlds (normalised frame) of the training views as refined; None when off."""
        return self.camera_optimizer.refined_c2w() if self.pose_refinement else None

    def refined_K(self, K: np.ndarray) -> np.ndarray:
        """Intrinsics ``K`` [N, 3, 3] (of any resolution) with the calibration refinement applied; as given when off."""
        return K if self.intrinsics is None else self.intrinsics.corrected_K(K)

    @property
    def field(self) -> SDFField:
        """The SDF field (``forward_geonetwork`` is what ``ns-export marching-cubes`` calls)."""
        return self.core.field

    def get_param_groups(self) -> Dict[str, List[Parameter]]:
        groups = self.core.param_groups()
        self.camera_optimizer.get_param_groups(param_groups=groups)
        if self.intrinsics is not None:
            groups.update(self.intrinsics.param_groups())
        return groups

    def get_training_callbacks(self, training_callback_attributes: TrainingCallbackAttributes) -> List[TrainingCallback]:
        # Sets the step (coarse-to-fine levels, marching step, sharpness bounds, loss stage) and rebuilds the
        # occupancy grid every sampler.update_every steps, before the step's rays are rendered.
        callbacks = [
            TrainingCallback(
                where_to_run=[TrainingCallbackLocation.BEFORE_TRAIN_ITERATION],
                func=self.core.before_train_step,
                update_every_num_iters=1,
            )
        ]
        if self.pose_polisher is not None:
            optimizers = training_callback_attributes.optimizers
            callbacks.append(
                TrainingCallback(
                    where_to_run=[TrainingCallbackLocation.AFTER_TRAIN_ITERATION],
                    func=self.polish_poses,
                    kwargs={"optimizers": optimizers},
                )
            )
        return callbacks

    def polish_poses(self, step: int, optimizers: Any = None, force: bool = False) -> Optional[Dict[str, float]]:
        """Run the pose polish if one is due after ``step`` (or ``force``); returns its statistics."""
        if self.pose_polisher is None or not (force or self.pose_polisher.due(step)):
            return None
        was_training = self.core.training
        # Deterministic rendering: finite differences of stratified samples would measure sampling noise.
        self.core.eval()

        def render(origins: Tensor, directions: Tensor, dnorm: Tensor) -> Tuple[Tensor, Tensor]:
            out = self.core.render(origins, directions, dnorm)
            return out["normal"], out["accumulation"]

        store = self.training_rays or RayStore(self.training_data)
        try:
            stats = self.pose_polisher.polish(self.camera_optimizer.poses, render, store, seed=step)
        finally:
            self.core.train(was_training)
        opt = None if optimizers is None else optimizers.optimizers.get("camera_opt")
        if opt is not None:
            # Adam's moments point along the path the poses were on before the jump; left alone they would push
            # the polished poses back for a few dozen steps.
            opt.state.clear()
        CONSOLE.log(
            f"pose polish after step {step}: {int(stats['cameras'])} cameras, residual "
            f"{stats['residual_before']:.4g} -> {stats['residual_after']:.4g}, rotation change mean "
            f"{stats['rotation_change_deg_mean']:.3f} deg, max {stats['rotation_change_deg_max']:.3f} deg"
        )
        return stats

    def get_outputs(self, ray_bundle: RayBundle) -> Dict[str, Any]:
        shape = ray_bundle.origins.shape[:-1]
        metadata = ray_bundle.metadata or {}
        rays = {
            "origins": ray_bundle.origins.reshape(-1, 3),
            "directions": ray_bundle.directions.reshape(-1, 3),
            "directions_norm": _flat(metadata.get("directions_norm"), 1),
            "nears": _flat(ray_bundle.nears),
            "fars": _flat(ray_bundle.fars),
        }
        # Only training batches index the training cameras; eval and viewer rays keep the poses they come with.
        if self.training and ray_bundle.camera_indices is not None:
            rays["camera_indices"] = ray_bundle.camera_indices.reshape(-1)
        outputs = core_step.render_rays(self.core, rays, self.step_context)
        if len(shape) != 1:
            outputs = {k: (v.reshape(*shape, v.shape[-1]) if isinstance(v, Tensor) else v) for k, v in outputs.items()}
        return outputs

    def get_metrics_dict(self, outputs: Dict[str, Any], batch: Dict[str, Tensor]) -> Dict[str, Tensor]:
        metrics = self.core.metrics(outputs, self._to_device(batch))
        if self.training:
            self.camera_optimizer.get_metrics_dict(metrics)
            if self.intrinsics is not None:
                metrics["intrinsics_focal_scale"] = float(torch.exp(self.intrinsics.log_focal_scale.detach()))
        return metrics

    def get_loss_dict(self, outputs: Dict[str, Any], batch: Dict[str, Tensor], metrics_dict=None) -> Dict[str, Tensor]:
        losses, stats = core_step.step_losses(self.core, outputs, self._to_device(batch), self.step_context)
        if metrics_dict is not None:
            # nerfstudio logs metrics before the losses exist; the consistency statistics join them here.
            metrics_dict.update(stats)
        return losses

    def get_image_metrics_and_images(
        self, outputs: Dict[str, Any], batch: Dict[str, Tensor]
    ) -> Tuple[Dict[str, float], Dict[str, Tensor]]:
        """Normal mean angular error (degrees) inside the mask, and predicted|target normal and depth images.

        ``normal_mae_deg`` scores the composited normals (an average over the opacity band);
        ``surface_normal_mae_deg`` scores the SDF's own gradient at each ray's first zero crossing (what a mesh
        of the level set shows), over masked pixels with a crossing, against the same (training-resolution) targets;
        ``surface_hit_fraction`` is the share of masked pixels with a crossing."""
        device = outputs["normal"].device
        gt = batch["normal"].to(device)
        mask = batch["fg_mask"].to(device)
        mask = (mask[..., 0] if mask.dim() == 3 else mask) > 0.5
        pred = outputs["normal"]
        err = normal_angular_error_deg(pred[mask], gt[mask]) if bool(mask.any()) else torch.zeros(0, device=device)
        surface_err = torch.zeros(0, device=device)
        hit_fraction = float("nan")
        if "surface_normal" in outputs and bool(mask.any()):
            surface_err, hit = surface_normal_errors(outputs, gt, mask)
            hit_fraction = float(hit.sum() / mask.sum())
        metrics = {
            "normal_mae_deg": float(err.mean()) if err.numel() else float("nan"),
            "surface_normal_mae_deg": float(surface_err.mean()) if surface_err.numel() else float("nan"),
            "surface_hit_fraction": hit_fraction,
            "normal_within_10deg": float((err < 10).float().mean()) if err.numel() else float("nan"),
            "mask_iou": float(
                ((outputs["accumulation"][..., 0] > 0.5) & mask).sum() / ((outputs["accumulation"][..., 0] > 0.5) | mask).sum().clamp(min=1)
            ),
        }
        gt_vis = torch.where(mask[..., None], gt * 0.5 + 0.5, torch.ones_like(gt))
        images = {
            "normal": torch.cat([gt_vis, outputs["normal_vis"]], dim=1),
            "accumulation": torch.cat([mask[..., None].float().expand_as(outputs["accumulation"]), outputs["accumulation"]], dim=1).expand(-1, -1, 3).contiguous(),
            "depth": colormaps.apply_depth_colormap(outputs["depth"], accumulation=outputs["accumulation"]),
        }
        return metrics, images

    def _to_device(self, batch: Dict[str, Tensor]) -> Dict[str, Tensor]:
        device = self.device
        return {k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in batch.items()}


def _flat(value: Optional[Tensor], width: Optional[int] = None) -> Optional[Tensor]:
    """A per-ray tensor flattened to [N] (or [N, width]); None stays None."""
    if value is None:
        return None
    return value.reshape(-1) if width is None else value.reshape(-1, width)


@dataclass
class WarmupCosineSchedulerConfig(LRScheduleConfig, SchedulerConfig):
    """nerfstudio's scheduler config for the core's LR schedule (linear warm-up, cosine decay; Python floats, so
    checkpoints load under torch>=2.6). The fields are :class:`LRScheduleConfig`'s."""

    _target: Type = field(default_factory=lambda: WarmupCosineScheduler)
    """Target class to instantiate."""

    @classmethod
    def from_schedule(cls, schedule: LRScheduleConfig) -> "WarmupCosineSchedulerConfig":
        return cls(**{f.name: getattr(schedule, f.name) for f in dataclasses.fields(LRScheduleConfig)})

    @property
    def max_steps(self) -> int:
        """nerfstudio's name for the run length (``total_steps``)."""
        return self.total_steps

    @max_steps.setter
    def max_steps(self, value: int) -> None:
        self.total_steps = int(value)

    def __setstate__(self, state: Dict[str, Any]) -> None:
        # config.yml files written before the two schedule classes merged name the run length max_steps.
        state = dict(state)
        if "max_steps" in state:
            state.setdefault("total_steps", state.pop("max_steps"))
        self.__dict__.update(state)


class WarmupCosineScheduler(Scheduler):
    """Scheduler for :class:`WarmupCosineSchedulerConfig`."""

    config: WarmupCosineSchedulerConfig

    def get_scheduler(self, optimizer: Optimizer, lr_init: float) -> lr_scheduler.LRScheduler:
        return lr_scheduler.LambdaLR(optimizer, lr_lambda=self.config.factor)
