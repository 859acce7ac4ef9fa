"""One training step of the core: current poses -> render -> losses, the consistency term and the pose regulariser
included. The nerfstudio model, the plain training loop (:mod:`pmni_method.train_core`), the benchmarks and the
tests all go through these functions; nothing here imports nerfstudio.

nerfstudio splits a step into ``get_outputs`` (rays) and ``get_loss_dict`` (targets), so the step is two functions,
:func:`render_rays` and :func:`step_losses`; :func:`train_step` runs both on a ray-store batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

import torch
from torch import Tensor

from pmni_method.data.raystore import TrainingViews
from pmni_method.models.consistency import MultiViewConsistencyConfig, consistency_loss, select_points
from pmni_method.models.core import PMNICore
from pmni_method.models.intrinsics_model import IntrinsicsModel
from pmni_method.models.pose_model import PoseModel
from pmni_method.models.silhouette import silhouette_loss


@dataclass
class StepContext:
    """What a training step needs besides the core: the pose model and the views the consistency term samples."""

    poses: Optional[PoseModel] = None
    """Pose corrections of the training cameras (None or mode off: the poses stay as loaded)."""
    views: Optional[TrainingViews] = None
    """Every training view (normal maps, masks, intrinsics, initial poses); None: no consistency term."""
    consistency: MultiViewConsistencyConfig = field(default_factory=MultiViewConsistencyConfig)
    """How the consistency term picks its point pairs (its weight per stage is in the core's loss schedule)."""
    targets_follow_poses: bool = False
    """Rotate the normal targets with the pose corrections (camera-space maps; world-space maps stay put)."""
    intrinsics: Optional[IntrinsicsModel] = None
    """Refinement of the shared calibration (None or disabled: the intrinsics stay as loaded)."""

    @property
    def refining(self) -> bool:
        return self.poses is not None and self.poses.enabled


@dataclass
class StepResult:
    """Everything one training step produced."""

    outputs: Dict[str, Any]
    """The core's render outputs (plus ``train_rays``, the rays as rendered)."""
    losses: Dict[str, Tensor]
    """Weighted loss terms; their sum is the objective."""
    stats: Dict[str, Tensor]
    """Diagnostics the losses produced on the way (consistency pair counts)."""


def render_rays(core: PMNICore, rays: Dict[str, Tensor], context: Optional[StepContext] = None) -> Dict[str, Any]:
    """Render training rays under the current poses.

    ``rays``: ``origins`` [N, 3], ``directions`` [N, 3] (unit, initial poses), optional ``directions_norm`` [N, 1],
    ``nears`` / ``fars`` [N], and ``camera_indices`` [N] (training cameras; without them the rays render as given).
    The outputs carry ``train_rays`` (not a tensor, so image renders skip it): the rays as rendered, their cameras
    and each ray's correction rotation [N, 3, 3] (None when the poses do not move).

    With the core's ``gradient_method`` "patch", training rays render as patches (:func:`patch_size_of`). The
    context's intrinsics refinement, when on, recasts each ray under the refined calibration first.
    """
    origins, directions = rays["origins"], rays["directions"]
    directions_norm = rays.get("directions_norm")
    cams = rays.get("camera_indices")
    rotation: Optional[Tensor] = None
    if context is not None and context.intrinsics is not None and context.intrinsics.enabled and cams is not None:
        # In the camera frame of the initial pose, before the pose correction turns the camera.
        directions, directions_norm = context.intrinsics.correct_rays(directions, cams)
    if context is not None and context.refining and cams is not None:
        # Every pixel of a patch is corrected, not only its centre: the finite-difference directions are the
        # differences of these rays, so they follow the current poses and carry gradients to them.
        origins, directions, rotation = context.poses.correct_rays(origins, directions, cams.reshape(-1))
    outputs = core.render(
        origins, directions, directions_norm, rays.get("nears"), rays.get("fars"),
        patch_size=patch_size_of(core, rays),
    )
    if cams is not None:
        outputs["train_rays"] = {
            "origins": origins,
            "directions": directions,
            "camera_indices": cams.reshape(-1),
            "rotation": rotation,
        }
    return outputs


def patch_size_of(core: PMNICore, rays: Dict[str, Tensor]) -> int:
    """The patch size training rays render with: the core's ``patch_size`` for training batches (rays with
    ``camera_indices``, in training mode) under ``gradient_method`` "patch", else 0 (every ray on its own).

    Raises ``ValueError`` when such a batch is not made of whole one-view patches (a ray store without
    ``patch_size``), instead of letting unrelated rays difference each other."""
    cams = rays.get("camera_indices")
    if core.config.gradient_method != "patch" or not core.training or cams is None:
        return 0
    k = int(core.config.patch_size)
    q = k * k
    cams = cams.reshape(-1)
    if k < 2 or cams.numel() % q or not bool((cams.view(-1, q) == cams.view(-1, q)[:, :1]).all()):
        raise ValueError(
            f"gradient_method patch needs batches of whole {k}x{k} one-view patches: give the ray store "
            f"(datamanager patch_size, train_core --patch-size) the same patch size as the model"
        )
    return k


def step_losses(
    core: PMNICore, outputs: Dict[str, Any], batch: Dict[str, Tensor], context: Optional[StepContext] = None
) -> Tuple[Dict[str, Tensor], Dict[str, Tensor]]:
    """Weighted loss terms of rendered training rays and their targets, and diagnostics.

    ``batch``: ``normal`` [N, 3], ``fg_mask`` [N, 1], optional ``depth`` [N, 1] and ``indices`` [N, 3] (as the ray
    store gives them). Adds ``mvc_loss`` when the schedule weighs it and views are given, and the pose regulariser
    (``camera_opt_regularizer``) last, as nerfacto adds its camera loss.
    """
    context = context or StepContext()
    rays = outputs.get("train_rays")
    rotation = None if rays is None else rays["rotation"]
    if rotation is not None and context.targets_follow_poses:
        batch = dict(batch, normal=context.poses.rotate_targets(rotation, batch["normal"]))
    weights = core.loss_weights(has_depth(batch))
    losses = core.losses(outputs, batch, weights=weights)
    stats: Dict[str, Tensor] = {}
    if rays is not None and weights["mvc"] > 0 and context.views is not None:
        loss, stats, silhouette = _consistency(core, outputs, batch, rays, context)
        losses["mvc_loss"] = weights["mvc"] * loss
        if silhouette is not None:
            losses["silhouette_loss"] = weights["mvc"] * context.consistency.silhouette_weight * silhouette
    if rays is not None and context.refining:
        reg = context.poses.regulariser()
        if reg is not None:
            losses["camera_opt_regularizer"] = reg
    return losses, stats


def train_step(core: PMNICore, batch: Dict[str, Tensor], context: Optional[StepContext] = None) -> StepResult:
    """:func:`render_rays` then :func:`step_losses` on one ray-store batch (rays and targets in one dict)."""
    outputs = render_rays(core, batch, context)
    losses, stats = step_losses(core, outputs, batch, context)
    return StepResult(outputs=outputs, losses=losses, stats=stats)


def has_depth(batch: Dict[str, Any]) -> bool:
    """Whether a batch carries depth targets (the loss schedule drops the depth term without them)."""
    return batch.get("depth") is not None


def _consistency(
    core: PMNICore, outputs: Dict[str, Any], batch: Dict[str, Tensor], rays: Dict[str, Any], context: StepContext
) -> Tuple[Tensor, Dict[str, Tensor], Optional[Tensor]]:
    """The consistency term, its statistics and (when weighted) the unweighted silhouette term on the same points."""
    views = context.views
    points, picked = select_points(
        rays["origins"], rays["directions"], outputs["depth"], outputs["accumulation"], batch["fg_mask"],
        context.consistency,
    )
    if context.refining:
        c2w = context.poses.current_c2w()
        rotations = context.poses.left_transforms()[:, :3, :3] if context.targets_follow_poses else None
    else:
        c2w, rotations = views.c2w, None
    loss, stats = consistency_loss(
        points,
        batch["normal"][picked].to(points),
        rays["camera_indices"][picked],
        views,
        c2w.to(points),
        rotations,
        core.field.sdf,
        context.consistency,
        radius=core.config.sampler.sphere_radius,
    )
    config = context.consistency
    if getattr(config, "silhouette_weight", 0.0) <= 0:
        return loss, stats, None
    silhouette, silhouette_stats = silhouette_loss(
        points,
        rays["camera_indices"][picked],
        views.mask_outside_distance(),
        c2w.to(points),
        views.K,
        margin_px=config.silhouette_margin_px,
        huber_px=config.silhouette_huber_px,
    )
    stats.update(silhouette_stats)
    return loss, stats, silhouette


@torch.no_grad()
def step_metrics(
    core: PMNICore, result: StepResult, batch: Dict[str, Tensor], context: Optional[StepContext] = None
) -> Dict[str, Tensor]:
    """Cheap diagnostics of a step: the core's, the consistency statistics and how far the cameras moved."""
    metrics = core.metrics(result.outputs, batch)
    metrics.update(result.stats)
    if context is not None and context.refining:
        metrics.update(context.poses.motion_metrics())
    return metrics
