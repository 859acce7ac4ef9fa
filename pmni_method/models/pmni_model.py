"""nerfstudio wrapper around :class:`pmni_method.models.core.PMNICore` (the method itself lives there)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Literal, Tuple, Type

import torch
from torch import Tensor
from torch.nn import Parameter
from torch.optim import Optimizer, lr_scheduler

from nerfstudio.cameras.camera_optimizers import CameraOptimizer, CameraOptimizerConfig
from nerfstudio.cameras.rays import RayBundle
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes, TrainingCallbackLocation
from nerfstudio.engine.schedulers import Scheduler, SchedulerConfig
from nerfstudio.model_components.renderers import RGBRenderer
from nerfstudio.models.base_model import Model, ModelConfig
from nerfstudio.utils import colormaps

from pmni_method.fields.sdf_field import SDFField, SDFFieldConfig
from pmni_method.models.core import PMNICore, PMNICoreConfig, normal_angular_error_deg
from pmni_method.models.rendering import Backend
from pmni_method.models.sampler import OccupancySamplerConfig
from pmni_method.models.schedule import LossScheduleConfig, LRScheduleConfig


@dataclass
class PMNIModelConfig(ModelConfig):
    """PMNI / SuperNormal: hash-grid SDF rendered with NeuS, supervised by normal maps, masks and depth."""

    _target: Type = field(default_factory=lambda: PMNIModel)
    """Target class to instantiate."""
    enable_collider: bool = False
    """Rays are clipped to the unit sphere by the model itself; nerfstudio's near/far collider stays off."""
    sdf_field: SDFFieldConfig = field(default_factory=SDFFieldConfig)
    """SDF network (hash grid + MLP); ns-export looks for this field."""
    sampler: OccupancySamplerConfig = field(default_factory=OccupancySamplerConfig)
    """Occupancy grid and ray marcher."""
    loss_schedule: LossScheduleConfig = field(default_factory=LossScheduleConfig)
    """Staged loss weights; set its total_steps to the trainer's max_num_iterations."""
    init_variance: float = 0.3
    """Initial value of the learned scalar v; the sharpness is s = exp(10 v)."""
    inv_s_min: float = 10.0
    """Floor on the sharpness s."""
    inv_s_max: float = 4096.0
    """Absolute ceiling on the sharpness s."""
    inv_s_step_factor: float = 2.0
    """Ceiling s <= factor / marching step (sharpness cannot outrun the sampling)."""
    inv_s_floor_factor: float = 1.0
    """Floor s >= factor / marching step (bounds the sampled band)."""
    prune_transmittance: float = 0.0
    """Drop samples whose estimated transmittance is below this before the differentiable pass (0 disables)."""
    cos_anneal_end: float = 0.0
    """Fraction of the run over which NeuS's cosine annealing goes from 0 to 1 (0: no annealing)."""
    c2f_start_levels: int = 4
    """Hash levels active at the start (coarse-to-fine)."""
    c2f_end: float = 0.5
    """Fraction of the run at which all hash levels are active."""
    normalize_gradients: bool = True
    """Composite unit SDF gradients into the rendered normal."""
    normal_loss_type: Literal["l2", "l1"] = "l2"
    """Normal loss: squared (l2) or absolute (l1) difference of world-frame normals inside the mask."""
    mask_eps: float = 1e-3
    """Accumulation is clamped to [eps, 1 - eps] inside the mask BCE."""
    depth_min_pixels: int = 4
    """A view takes part in the depth loss only with at least this many masked, valid-depth pixels in the batch."""
    eikonal_random_points: int = 0
    """Extra eikonal points drawn uniformly in the unit sphere each step."""
    compositing_backend: Backend = "auto"
    """Per-ray compositing: nerfacc on CUDA ("auto") or pure torch."""
    background_shade: float = 0.0
    """Grey level behind the object in the shaded rgb output."""
    camera_optimizer: CameraOptimizerConfig = field(default_factory=lambda: CameraOptimizerConfig(mode="off"))
    """Pose refinement (param group camera_opt); off by default."""

    def core_config(self) -> PMNICoreConfig:
        """The nerfstudio-free configuration these fields describe."""
        names = [f.name for f in dataclasses.fields(PMNICoreConfig)]
        return PMNICoreConfig(**{name: getattr(self, name) for name in names})

    @classmethod
    def from_core(cls, core: PMNICoreConfig, **overrides: Any) -> "PMNIModelConfig":
        """A model config carrying every field of a core config (plus nerfstudio-side ``overrides``)."""
        values = {f.name: getattr(core, f.name) for f in dataclasses.fields(PMNICoreConfig)}
        values.update(overrides)
        return cls(**values)


class PMNIModel(Model):
    """nerfstudio model: unpacks ray bundles for :class:`PMNICore` and plugs it into the trainer's callbacks."""

    config: PMNIModelConfig

    def populate_modules(self) -> None:
        super().populate_modules()
        self.core = PMNICore(self.config.core_config())
        # Used by nerfstudio's texture export (get_rgba_image): our rgb is already composited over a fixed grey.
        self.renderer_rgb = RGBRenderer(background_color="black")
        self.camera_optimizer: CameraOptimizer = self.config.camera_optimizer.setup(
            num_cameras=self.num_train_data, device="cpu"
        )

    @property
    def field(self) -> SDFField:
        """The SDF field (``forward_geonetwork`` is what ``ns-export marching-cubes`` calls)."""
        return self.core.field

    def get_param_groups(self) -> Dict[str, List[Parameter]]:
        groups = self.core.param_groups()
        self.camera_optimizer.get_param_groups(param_groups=groups)
        return groups

    def get_training_callbacks(self, training_callback_attributes: TrainingCallbackAttributes) -> List[TrainingCallback]:
        # Sets the step (coarse-to-fine levels, marching step, sharpness bounds, loss stage) and rebuilds the
        # occupancy grid every sampler.update_every steps, before the step's rays are rendered.
        return [
            TrainingCallback(
                where_to_run=[TrainingCallbackLocation.BEFORE_TRAIN_ITERATION],
                func=self.core.before_train_step,
                update_every_num_iters=1,
            )
        ]

    def get_outputs(self, ray_bundle: RayBundle) -> Dict[str, Any]:
        if self.training:
            self.camera_optimizer.apply_to_raybundle(ray_bundle)
        shape = ray_bundle.origins.shape[:-1]
        origins = ray_bundle.origins.reshape(-1, 3)
        directions = ray_bundle.directions.reshape(-1, 3)
        metadata = ray_bundle.metadata or {}
        dnorm = metadata.get("directions_norm")
        dnorm = dnorm.reshape(-1, 1) if dnorm is not None else None
        nears = ray_bundle.nears.reshape(-1) if ray_bundle.nears is not None else None
        fars = ray_bundle.fars.reshape(-1) if ray_bundle.fars is not None else None
        outputs = self.core.render(origins, directions, dnorm, nears, fars)
        if len(shape) != 1:
            outputs = {k: (v.reshape(*shape, v.shape[-1]) if isinstance(v, Tensor) else v) for k, v in outputs.items()}
        return outputs

    def get_metrics_dict(self, outputs: Dict[str, Any], batch: Dict[str, Tensor]) -> Dict[str, Tensor]:
        metrics = self.core.metrics(outputs, self._to_device(batch))
        if self.training:
            self.camera_optimizer.get_metrics_dict(metrics)
        return metrics

    def get_loss_dict(self, outputs: Dict[str, Any], batch: Dict[str, Tensor], metrics_dict=None) -> Dict[str, Tensor]:
        loss_dict = self.core.losses(outputs, self._to_device(batch))
        if self.training:
            self.camera_optimizer.get_loss_dict(loss_dict)
        return loss_dict

    def get_image_metrics_and_images(
        self, outputs: Dict[str, Any], batch: Dict[str, Tensor]
    ) -> Tuple[Dict[str, float], Dict[str, Tensor]]:
        """Normal mean angular error (degrees) inside the mask, and predicted|target normal and depth images."""
        device = outputs["normal"].device
        gt = batch["normal"].to(device)
        mask = batch["fg_mask"].to(device)
        mask = (mask[..., 0] if mask.dim() == 3 else mask) > 0.5
        pred = outputs["normal"]
        err = normal_angular_error_deg(pred[mask], gt[mask]) if bool(mask.any()) else torch.zeros(0, device=device)
        metrics = {
            "normal_mae_deg": float(err.mean()) if err.numel() else float("nan"),
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


@dataclass
class WarmupCosineSchedulerConfig(SchedulerConfig):
    """Linear warm-up then cosine decay (NeuS); returns Python floats, so checkpoints load under torch>=2.6."""

    _target: Type = field(default_factory=lambda: WarmupCosineScheduler)
    """Target class to instantiate."""
    warmup_steps: int = 500
    """Steps of linear warm-up."""
    warmup_start_factor: float = 0.01
    """Learning-rate multiplier at step 0."""
    final_factor: float = 0.05
    """Learning-rate multiplier at max_steps."""
    max_steps: int = 30000
    """Length of the run."""


class WarmupCosineScheduler(Scheduler):
    """Scheduler for :class:`WarmupCosineSchedulerConfig`."""

    config: WarmupCosineSchedulerConfig

    def get_scheduler(self, optimizer: Optimizer, lr_init: float) -> lr_scheduler.LRScheduler:
        schedule = LRScheduleConfig(
            warmup_steps=self.config.warmup_steps,
            warmup_start_factor=self.config.warmup_start_factor,
            final_factor=self.config.final_factor,
            total_steps=self.config.max_steps,
        )
        return lr_scheduler.LambdaLR(optimizer, lr_lambda=schedule.factor)
