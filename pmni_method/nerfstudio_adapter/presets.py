"""nerfstudio objects of the presets in :mod:`pmni_method.models.presets`: model config, optimisers, run settings,
and the pose-free flag set on a ``TrainerConfig``."""

from __future__ import annotations

from typing import Any, Dict, Optional

from nerfstudio.engine.optimizers import AdamOptimizerConfig

from pmni_method.models.presets import (
    POSE_FREE_MVC_WEIGHT,
    core_preset,
    pose_free_consistency,
    pose_free_gauge,
    pose_free_stages,
)
from pmni_method.nerfstudio_adapter.model import PMNIModelConfig, WarmupCosineSchedulerConfig


def model_config(name: str) -> Any:
    """The ``PMNIModelConfig`` of a preset."""
    preset = core_preset(name)
    return PMNIModelConfig.from_core(preset.core, eval_num_rays_per_chunk=preset.eval_num_rays_per_chunk)


def optimizers(name: str) -> Dict[str, Dict[str, Any]]:
    """nerfstudio ``optimizers`` dict (group -> optimizer + scheduler) of a preset; schedulers return floats."""
    preset = core_preset(name)
    out: Dict[str, Dict[str, Any]] = {}
    # camera_opt is only used when the model's camera_optimizer is switched on (nerfstudio ignores groups the
    # model lacks).
    groups = dict(preset.optim, camera_opt=preset.pose_optim)
    for group, opt in groups.items():
        sched = preset.pose_lr_schedule if group == "camera_opt" else preset.lr_schedule
        out[group] = {
            "optimizer": AdamOptimizerConfig(lr=opt.lr, eps=opt.eps),
            "scheduler": WarmupCosineSchedulerConfig.from_schedule(sched),
        }
    return out


def run_settings(name: str) -> Dict[str, int]:
    """Iterations and batch sizes of a preset, for the TrainerConfig / datamanager."""
    preset = core_preset(name)
    return {
        "max_num_iterations": preset.max_num_iterations,
        "train_num_rays_per_batch": preset.train_num_rays_per_batch,
        "eval_num_rays_per_chunk": preset.eval_num_rays_per_chunk,
    }


def make_pose_free(
    config: Any,
    pose_init: str = "noisy",
    normal_dir: str = "normal_camera_space_GT",
    mvc_weight: float = POSE_FREE_MVC_WEIGHT,
    gauge: Optional[str] = None,
) -> Any:
    """Turn a pmni ``TrainerConfig`` into a pose-free run (the flag set in this module's docstring), in place.

    Pose refinement on (left SE(3) per camera; ``gauge`` ``frozen-camera`` freezes camera 0 as PMNI does, ``mean``
    moves every camera relative to their mean; None: ``mean`` for a ring start, ``frozen-camera`` otherwise), every
    camera first recentred on its mask, poses started from ``pose_init`` (``noisy``, ``ring`` or ``file``; ``gt``
    refines calibrated poses), camera-space normal maps from ``normal_dir`` so that the normal targets turn with the
    poses, and the multi-view consistency term at ``mvc_weight`` in every stage that trains normals, sampled as
    ``presets.pose_free_consistency`` says.
    """
    model = config.pipeline.model
    model.camera_optimizer.mode = "SE3"
    model.camera_optimizer.recentre_on_masks = True
    model.camera_optimizer.gauge = pose_free_gauge(pose_init) if gauge is None else gauge
    schedule = model.core.loss_schedule
    schedule.stages = pose_free_stages(schedule.stages, mvc_weight)
    model.consistency = pose_free_consistency(model.consistency)
    parser = config.pipeline.datamanager.dataparser
    parser.pose_init = pose_init
    parser.normal_dir = normal_dir
    return config
