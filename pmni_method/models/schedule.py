"""Staged loss weights and the other step-dependent quantities of training (nerfstudio-free).

PMNI trains DiLiGenT-MV objects for 30k iterations in three stages:

====================  ======  =====  ====  =======  ===
iterations (of 30k)   normal  depth  mask  eikonal  mvc
====================  ======  =====  ====  =======  ===
0 - 10k               0       0.1    3     1        0
10k - 20k             1       1      5     1        0
20k - 30k             1       0      5     1        1
====================  ======  =====  ====  =======  ===

``mvc`` is the multi-view normal consistency term (:mod:`pmni_method.models.consistency`), PMNI's third stage;
the training step (:mod:`pmni_method.models.step`) adds it, since it needs every training view's normal map and the
current poses.

Stage boundaries are stored as fractions of the run and scaled to the configured iteration count.

Without depth maps the depth weight is zero in every stage, and a stage whose normal weight is zero (the first
PMNI stage, which only makes sense with depth guiding the shape) uses ``no_depth_normal_weight`` instead, so a
depth-less run is SuperNormal's schedule: normals, mask and eikonal from the first step on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, Iterable, Optional, Tuple

LOSS_NAMES = ("normal", "depth", "mask", "eikonal", "mvc")


@dataclass
class LossStage:
    """Loss weights from ``start`` (fraction of the run) until the next stage begins."""

    start: float
    """Fraction of the run at which this stage begins (0 for the first)."""
    normal: float
    """Weight of the normal loss."""
    depth: float
    """Weight of the scale-invariant depth loss."""
    mask: float
    """Weight of the mask (silhouette BCE) loss."""
    eikonal: float
    """Weight of the eikonal loss."""
    mvc: float = 0.0
    """Weight of the multi-view normal consistency loss (``mvc_loss``)."""

    def weights(self) -> Dict[str, float]:
        return {name: float(getattr(self, name)) for name in LOSS_NAMES}


def pmni_diligent_stages() -> Tuple[LossStage, ...]:
    """PMNI's DiLiGenT-MV stages (0-10k / 10k-20k / 20k-30k of 30k)."""
    return (
        LossStage(start=0.0, normal=0.0, depth=0.1, mask=3.0, eikonal=1.0),
        LossStage(start=1.0 / 3.0, normal=1.0, depth=1.0, mask=5.0, eikonal=1.0),
        LossStage(start=2.0 / 3.0, normal=1.0, depth=0.0, mask=5.0, eikonal=1.0, mvc=1.0),
    )


POSE_FREE_MVC_WEIGHT = 4.0
"""Weight of the consistency term in every stage that trains normals, for pose-free runs."""
# The term compares the normal maps of two views at one surface point through both cameras' current rotations: it
# sees a camera's turn about the object directly, where the per-view losses see it only through parallax, and the
# surface cannot absorb it by bending. Measured with the pose-free pair sampling (consistency.pose_free_*), bunny,
# 5 deg / 5 % noise, seed 0, 400 steps of train_core: mean / max rotation error 1.31 / 2.46 degrees, against
# 2.60 / 4.91 at weight 1 with 256 points x 2 views (one A/B pair, both changes together).


@dataclass
class LossScheduleConfig:
    """Staged loss weights, the single source of truth for how much each loss counts at each step."""

    stages: Tuple[LossStage, ...] = field(default_factory=pmni_diligent_stages)
    """Stages, in increasing ``start`` order."""
    total_steps: int = 30000
    """Length of the run the stage fractions refer to (the trainer's iteration count)."""
    no_depth_normal_weight: float = 1.0
    """Normal weight used, when the data has no depth, in stages whose normal weight is zero."""
    pose_free_mvc: float = POSE_FREE_MVC_WEIGHT
    """When the poses are refined: the multi-view consistency weight (at least) in every stage that trains normals;
    0 leaves the stages as they are."""
    pose_free_depth: Optional[bool] = None
    """When the poses are refined: keep the scale-invariant depth term; None: off from a ring start, on otherwise
    (it pulls every camera's pitch together towards one value, which helps a noisy start and hurts a searched ring)."""

    def stage_at(self, step: int) -> LossStage:
        progress = step / max(self.total_steps, 1)
        current = self.stages[0]
        for stage in self.stages:
            if progress + 1e-12 >= stage.start:
                current = stage
        return current

    def weights_at(self, step: int, has_depth: bool) -> Dict[str, float]:
        """Loss weights at ``step``, adapted to whether the data carries depth."""
        weights = self.stage_at(step).weights()
        if not has_depth:
            weights["depth"] = 0.0
            if weights["normal"] == 0.0:
                weights["normal"] = self.no_depth_normal_weight
        return weights


def log_interp(start: float, end: float, progress: float) -> float:
    """Geometric interpolation between ``start`` and ``end`` at ``progress`` in [0, 1] (clamped); a Python float."""
    p = min(max(progress, 0.0), 1.0)
    return float(math.exp(math.log(start) * (1.0 - p) + math.log(end) * p))


@dataclass
class LRScheduleConfig:
    """Learning-rate multiplier: linear warm-up, then cosine decay to ``final_factor`` (NeuS's schedule)."""

    warmup_steps: int = 500
    """Steps of linear warm-up from ``warmup_start_factor``."""
    warmup_start_factor: float = 0.01
    """Multiplier at step 0."""
    final_factor: float = 0.05
    """Multiplier at the end of the run."""
    total_steps: int = 30000
    """Length of the run."""
    hold_fraction: float = 0.0
    """Fraction of the run during which the multiplier is 0 (the group keeps its initial values)."""

    def factor(self, step: int) -> float:
        """The multiplier at ``step``, always a Python float (numpy scalars break torch>=2.6 checkpoint loading)."""
        # A config.yml saved before the field existed reads the class default, 0.
        if step < self.hold_fraction * self.total_steps:
            return 0.0
        if step < self.warmup_steps:
            frac = step / max(self.warmup_steps, 1)
            return float(self.warmup_start_factor + (1.0 - self.warmup_start_factor) * frac)
        span = max(self.total_steps - self.warmup_steps, 1)
        progress = min(max((step - self.warmup_steps) / span, 0.0), 1.0)
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        return float(self.final_factor + (1.0 - self.final_factor) * cosine)


def scale_to_run_length(
    total_steps: int, loss_schedule: Optional[LossScheduleConfig], lr_schedules: Iterable[LRScheduleConfig] = ()
) -> None:
    """Scale every step-based schedule to a run of ``total_steps``, in place.

    Presets are written for their own run length; a run of another length keeps their proportions (stages, LR
    warm-up and decay) rather than stopping half-way through. The core derives its other schedules (coarse-to-fine,
    marching step, sharpness bounds) from ``loss_schedule.total_steps``.
    """
    total = int(total_steps)
    if loss_schedule is not None:
        loss_schedule.total_steps = total
    for schedule in lr_schedules:
        schedule.total_steps = total
