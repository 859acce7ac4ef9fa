"""nerfstudio objects of the presets in :mod:`pmni_method.models.presets`: model config, optimisers, run settings,
and a pose-free start on a ``TrainerConfig``."""

from __future__ import annotations

from typing import Any, Dict, Optional

from nerfstudio.engine.optimizers import AdamOptimizerConfig

from pmni_method.data.layout import CAMERA_NORMAL_DIR
from pmni_method.models.presets import core_preset
from pmni_method.nerfstudio_adapter.model import PMNIModelConfig, WarmupCosineSchedulerConfig


def model_config(name: str) -> Any:
    """The ``PMNIModelConfig`` of a preset."""
    preset = core_preset(name)
    return PMNIModelConfig.from_core(preset.core, eval_num_rays_per_chunk=preset.eval_num_rays_per_chunk)


def optimizers(name: str) -> Dict[str, Dict[str, Any]]:
    """nerfstudio ``optimizers`` dict (group -> optimizer + scheduler) of a preset; schedulers return floats."""
    preset = core_preset(name)
    out: Dict[str, Dict[str, Any]] = {}
    # camera_opt and intrinsics are only used when the model's pose or calibration refinement is switched on
    # (nerfstudio ignores groups the model lacks).
    for group, opt in preset.group_optims().items():
        sched = preset.group_lr_schedule(group)
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
    normal_dir: str = CAMERA_NORMAL_DIR,
    mvc_weight: Optional[float] = None,
    gauge: Optional[str] = None,
) -> Any:
    """Turn a pmni ``TrainerConfig`` into a pose-free run, in place: what ``--pose-init`` on the command line does.

    The start (``noisy``, ``ring`` or ``file``; ``gt`` stays calibrated) and camera-space normal maps from
    ``normal_dir`` (so that the normal targets turn with the poses) are all it sets; the model decides the rest from
    the start (:func:`pmni_method.models.presets.pose_settings`). ``gauge`` and ``mvc_weight`` override that choice.
    """
    parser = config.pipeline.datamanager.dataparser
    parser.pose_init = pose_init
    parser.normal_dir = normal_dir
    if gauge is not None:
        config.pipeline.model.camera_optimizer.gauge = gauge
    if mvc_weight is not None:
        config.pipeline.model.core.loss_schedule.pose_free_mvc = float(mvc_weight)
    return config
