"""nerfstudio's VanillaPipeline plus a non-finite guard and per-term logging, both plugged into the trainer's callbacks.

The trainer loop stays nerfstudio's: the guard is fed from :meth:`PMNIPipeline.get_train_loss_dict` and acts through
optimiser step pre-hooks (see :mod:`pmni_method.stability`); logging runs as an AFTER_TRAIN_ITERATION callback, so
everything goes through nerfstudio's ``writer`` (TensorBoard, W&B, Comet, and the viewer's ``viewer+...`` modes).

Logged every ``logging.steps_per_log`` steps (and at every skipped step):

* ``Loss/<term>`` each weighted loss term (``normal``, ``mask``, ``eikonal``, ``depth``, ...);
* ``Train/inv_s``, ``Train/samples_per_ray`` from the model's metrics, ``Train/loss_stage`` (index into the
  model's loss schedule) and ``Loss weight/<term>`` (the weights in force);
* ``Stability/skipped_steps`` and ``Stability/consecutive_skipped``;
* ``Poses/rotation_deg_mean``, ``Poses/translation_relative_mean`` (error of the refined poses against the true
  ones after similarity alignment) when pose refinement is on and the dataset carries true poses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Literal, Optional, Tuple, Type

import numpy as np
import torch
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes, TrainingCallbackLocation
from nerfstudio.pipelines.base_pipeline import VanillaPipeline, VanillaPipelineConfig
from nerfstudio.utils import writer
from torch import Tensor
from torch.amp.grad_scaler import GradScaler

from pmni_method.cameras import Normalisation
from pmni_method.poses.maths import pose_errors
from pmni_method.stability import NonFiniteGuard


@dataclass
class PMNIPipelineConfig(VanillaPipelineConfig):
    """VanillaPipeline with a non-finite loss/gradient guard and per-term logging."""

    _target: Type = field(default_factory=lambda: PMNIPipeline)
    """Target class to instantiate."""
    max_consecutive_skipped_steps: int = 20
    """Stop training (after saving a checkpoint) once this many steps in a row had a non-finite loss or gradient."""
    log_pose_errors: bool = True
    """Log the refined poses' error against the dataset's true poses (only with pose refinement and true poses)."""


class PMNIPipeline(VanillaPipeline):
    """VanillaPipeline whose optimiser steps are skipped, not taken, when a loss term or a gradient is not finite."""

    config: PMNIPipelineConfig

    def __init__(
        self,
        config: PMNIPipelineConfig,
        device: str,
        test_mode: Literal["test", "val", "inference"] = "val",
        world_size: int = 1,
        local_rank: int = 0,
        grad_scaler: Optional[GradScaler] = None,
    ) -> None:
        core = getattr(config.model, "core", None)
        if getattr(core, "gradient_method", "analytic") == "patch" and getattr(config.datamanager, "patch_size", 1) == 1:
            # One switch (--pipeline.model.core.gradient-method patch): patch rendering needs patch batches, so the
            # datamanager draws the model's patch size unless told another (which the training step then refuses).
            config.datamanager.patch_size = core.patch_size
        super().__init__(config, device, test_mode, world_size, local_rank, grad_scaler)
        if core is not None and hasattr(self.datamanager, "run_length"):
            # The resolution schedule's fractions are of the run length the model's schedules use (the trainer
            # scaled them to max_num_iterations before the pipeline was built; a resume keeps the full length).
            self.datamanager.run_length = int(self.model.core.total_steps)
        self.guard: Optional[NonFiniteGuard] = None
        self._steps_per_log = 10
        self._last_losses: Dict[str, Tensor] = {}
        self._last_metrics: Dict[str, Any] = {}

    def get_train_loss_dict(self, step: int):
        model_outputs, loss_dict, metrics_dict = super().get_train_loss_dict(step)
        if self.guard is not None:
            self.guard.begin_step(step, loss_dict)
        # Detached: holding the graph until the next step would double the peak memory.
        self._last_losses = {k: v.detach() for k, v in loss_dict.items()}
        self._last_metrics = metrics_dict
        return model_outputs, loss_dict, metrics_dict

    def get_training_callbacks(self, training_callback_attributes: TrainingCallbackAttributes) -> List[TrainingCallback]:
        callbacks = super().get_training_callbacks(training_callback_attributes)
        trainer = training_callback_attributes.trainer
        optimizers = training_callback_attributes.optimizers
        if trainer is not None:
            self._steps_per_log = max(int(trainer.config.logging.steps_per_log), 1)
        if optimizers is not None:
            if self.guard is not None:
                self.guard.detach()
            scaler = training_callback_attributes.grad_scaler
            self.guard = NonFiniteGuard(
                optimizers.optimizers,
                optimizers.parameters,
                max_consecutive=self.config.max_consecutive_skipped_steps,
                check_gradients=not (scaler is not None and scaler.is_enabled()),
                save_checkpoint=getattr(trainer, "save_checkpoint", None),
                before_exit=lambda: self._before_exit(trainer),
            )
        callbacks.append(
            TrainingCallback(where_to_run=[TrainingCallbackLocation.AFTER_TRAIN_ITERATION], func=self._after_step)
        )
        callbacks.append(TrainingCallback(where_to_run=[TrainingCallbackLocation.AFTER_TRAIN], func=self._after_train))
        return callbacks

    # ------------------------------------------------------------------ callbacks
    def _after_step(self, step: int) -> None:
        verdict = self.guard.end_step(step) if self.guard is not None else None
        if verdict is not None or step % self._steps_per_log == 0:
            self.log_training_state(step)
        if self.guard is not None:
            self.guard.stop_if_diverged(step)

    def _after_train(self, step: int) -> None:
        flush_event_writers()

    def _before_exit(self, trainer: Any) -> None:
        stop_early(trainer)

    # ------------------------------------------------------------------ logging
    def log_training_state(self, step: int) -> None:
        """Write this step's loss terms, model diagnostics, stability counters and pose error to nerfstudio's writer."""
        if self._last_losses:
            # One device sync for all terms.
            values = torch.stack([v.float().reshape(()) for v in self._last_losses.values()]).tolist()
            writer.put_dict(
                name="Loss",
                scalar_dict={loss_term_name(k): v for k, v in zip(self._last_losses, values)},
                step=step,
            )
        for key in ("inv_s", "samples_per_ray"):
            if key in self._last_metrics:
                writer.put_scalar(name=f"Train/{key}", scalar=float(self._last_metrics[key]), step=step)
        stage = self.loss_stage(step)
        if stage is not None:
            index, weights = stage
            writer.put_scalar(name="Train/loss_stage", scalar=index, step=step)
            writer.put_dict(name="Loss weight", scalar_dict=weights, step=step)
        if self.guard is not None:
            writer.put_scalar(name="Stability/skipped_steps", scalar=self.guard.skipped_total, step=step)
            writer.put_scalar(name="Stability/consecutive_skipped", scalar=self.guard.consecutive, step=step)
        errors = self.pose_errors() if self.config.log_pose_errors else None
        if errors is not None:
            writer.put_scalar(name="Poses/rotation_deg_mean", scalar=errors["rotation_deg_mean"], step=step)
            writer.put_scalar(
                name="Poses/translation_relative_mean", scalar=errors["translation_relative_mean"], step=step
            )

    def loss_stage(self, step: int) -> Optional[Tuple[int, Dict[str, float]]]:
        """(index, loss weights) of the model's loss-schedule stage at ``step``; None if the model has no schedule."""
        schedule = getattr(getattr(self.model.config, "core", None), "loss_schedule", None)
        if schedule is None:
            return None
        stage = schedule.stage_at(step)
        index = next(i for i, s in enumerate(schedule.stages) if s is stage)
        data = getattr(self.datamanager.train_dataset, "data", None)
        has_depth = getattr(data, "depths", None) is not None
        return index, schedule.weights_at(step, has_depth)

    def normalisation(self) -> Normalisation:
        """The world <-> normalised map of the training data: what meshes and poses leave the run through."""
        return self.datamanager.train_dataparser_outputs.metadata["pmni_data"].normalisation

    def refined_poses(self) -> Optional[np.ndarray]:
        """(N, 4, 4) OpenCV camera-to-worlds of the training views as currently refined; None without refinement.

        A ``refined_c2w()`` of the model's camera optimiser (pmni's pose refiner) is used as is; a plain nerfstudio
        ``CameraOptimizer`` is applied the way its ``apply_to_raybundle`` moves rays: the correction's rotation
        left-multiplies the camera rotation in world axes and its translation moves the centre.
        """
        data = getattr(self.datamanager.train_dataset, "data", None)
        camera_optimizer = getattr(self.model, "camera_optimizer", None)
        if data is None or camera_optimizer is None or camera_optimizer.config.mode == "off":
            return None
        if callable(getattr(camera_optimizer, "refined_c2w", None)):
            return np.asarray(camera_optimizer.refined_c2w(), dtype=np.float64)
        with torch.no_grad():
            correction = camera_optimizer.get_correction_matrices().detach().cpu().double().numpy()
        c2w = np.asarray(data.c2w, dtype=np.float64).copy()
        c2w[:, :3, :3] = correction[:, :3, :3] @ c2w[:, :3, :3]
        c2w[:, :3, 3] = c2w[:, :3, 3] + correction[:, :3, 3]
        return c2w

    def pose_errors(self) -> Optional[Dict[str, Any]]:
        """Pose error of the refined poses against the dataset's true poses; None when either is missing."""
        data = getattr(self.datamanager.train_dataset, "data", None)
        gt = getattr(data, "gt_c2w", None)
        if gt is None:
            return None
        est = self.refined_poses()
        if est is None or len(est) != len(gt):
            return None
        try:
            return pose_errors(est, gt)
        except (ValueError, np.linalg.LinAlgError):
            # ValueError: fewer than three camera centres, or collinear ones (align_cameras); no alignment exists.
            return None


def loss_term_name(key: str) -> str:
    """``normal_loss`` -> ``normal``: the TensorBoard tag is ``Loss/normal``."""
    return key[: -len("_loss")] if key.endswith("_loss") else key


def stop_early(trainer: Any) -> None:
    """Before exiting mid-run (divergence, an interrupt): write out pending logs, flush TensorBoard, stop the viewer."""
    writer.write_out_storage()
    flush_event_writers()
    if trainer is not None and hasattr(trainer, "shutdown"):
        trainer.shutdown()


def flush_event_writers() -> None:
    """Flush TensorBoard event files now (they are otherwise flushed every two minutes, so a short run loses its tail)."""
    for event_writer in writer.EVENT_WRITERS:
        tb_writer = getattr(event_writer, "tb_writer", None)
        if tb_writer is not None:
            tb_writer.flush()
