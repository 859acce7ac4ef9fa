"""The ``pmni`` (full quality) and ``pmni-fast`` (CPU-friendly) presets, and what makes a run pose-free.

Everything here is nerfstudio-free (plain training loops, benchmarks, a GPU box without nerfstudio);
:mod:`pmni_method.nerfstudio_adapter.presets` builds the nerfstudio objects from it.

Pose-free training is any preset started from anything but the calibrated poses; on the command line::

    ns-train pmni-fast diligent-mv-data --data DIR --normal-dir normal_camera_space_GT --pose-init ring  # or noisy, file

:func:`pose_settings` turns on what that needs (refinement, the gauge by start, recentring, the consistency term);
explicit ``--pipeline.model.camera-optimizer.*`` flags still override it. World-space normal maps are tied to the
true world frame, so they cannot follow the poses: the loader refuses them with any start but ``gt``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from typing import Dict, Optional, Tuple

from pmni_method.fields.sdf_field import SDFFieldConfig
from pmni_method.models.consistency import MultiViewConsistencyConfig
from pmni_method.models.core import PMNICoreConfig
from pmni_method.models.pose_model import PoseModelConfig
from pmni_method.models.sampler import OccupancySamplerConfig
from pmni_method.models.schedule import (
    POSE_FREE_MVC_WEIGHT,
    LossScheduleConfig,
    LossStage,
    LRScheduleConfig,
    pmni_diligent_stages,
    scale_to_run_length,
)

PRESET_NAMES = ("pmni", "pmni-fast")


# Gradient-norm ceilings per parameter group, about 3x the largest norm seen in healthy pmni-fast runs (bunny and
# sphere, 256-512 rays, camera refinement on and off). Adam's second moment remembers a spike for ~1000 steps, so
# one exploding batch (a grazing ray, a pose jump) would freeze a group for that long; ordinary steps never clip.
# Losses are per-ray means, so these norms do not grow with the batch size. Measured largest norms: hash_grid 1.6,
# sdf_mlp 62 (first steps, geometric init), variance 17 (when the sharpness is not held at its bounds), camera_opt 89,
# intrinsics 222 (median 28; realistic bunny, 300 steps of train_core --refine-intrinsics at 153x128).
MAX_GRAD_NORMS: Dict[str, Optional[float]] = {
    "hash_grid": 5.0,
    "sdf_mlp": 200.0,
    "variance": 50.0,
    "camera_opt": 250.0,
    "intrinsics": 600.0,
}


INTRINSICS_HOLD = 0.2
"""Fraction of the run before the calibration refinement starts learning."""
# An early, sphere-like surface says little about the calibration, and Adam would random-walk it meanwhile.


@dataclass
class GroupOptim:
    """Adam settings of one parameter group."""

    lr: float
    """Peak learning rate."""
    eps: float = 1e-15
    """Adam epsilon (small: hash-table entries see rare, tiny gradients)."""


@dataclass
class CorePreset:
    """Everything a training loop needs: model, per-group optimisers, LR schedule, run length, batch size."""

    core: PMNICoreConfig
    """Model configuration."""
    optim: Dict[str, GroupOptim]
    """Adam per parameter group (``hash_grid``, ``sdf_mlp``, ``variance``)."""
    lr_schedule: LRScheduleConfig
    """Warm-up + cosine multiplier shared by every group."""
    max_num_iterations: int
    """Training iterations."""
    train_num_rays_per_batch: int
    """Rays per training batch."""
    eval_num_rays_per_chunk: int = 4096
    """Rays rendered at once when rendering whole images."""
    pose_optim: GroupOptim = field(default_factory=lambda: GroupOptim(lr=1e-3, eps=1e-8))
    """Adam of the pose corrections (group ``camera_opt``; only used with pose refinement on)."""
    pose_lr_schedule: LRScheduleConfig = field(default_factory=LRScheduleConfig)
    """Warm-up + cosine multiplier of the pose corrections."""
    intrinsics_optim: GroupOptim = field(default_factory=lambda: GroupOptim(lr=1e-4, eps=1e-8))
    """Adam of the calibration refinement (group ``intrinsics``; only used with it on). Its parameters are in focal
    lengths: 1e-4 moves them about 0.1 px per step at 943 px (the quarter-size DiLiGenT-MV focal), a tenth of the
    error to be found."""

    def intrinsics_lr_schedule(self) -> LRScheduleConfig:
        """The calibration refinement's multiplier: the pose schedule, held at 0 for the first
        :data:`INTRINSICS_HOLD` of the run."""
        return replace(self.pose_lr_schedule, hold_fraction=INTRINSICS_HOLD)

    def group_optims(self) -> Dict[str, GroupOptim]:
        """Adam settings of every optimiser group a run may have (the field's, ``camera_opt``, ``intrinsics``)."""
        return dict(self.optim, camera_opt=self.pose_optim, intrinsics=self.intrinsics_optim)

    def group_lr_schedule(self, group: str) -> LRScheduleConfig:
        """The learning-rate multiplier of optimiser group ``group``."""
        if group == "camera_opt":
            return self.pose_lr_schedule
        return self.intrinsics_lr_schedule() if group == "intrinsics" else self.lr_schedule


def fast_stages() -> Tuple[LossStage, ...]:
    """``pmni-fast`` stages: PMNI's order (depth first, then normals) compressed for a ~900-step CPU run.

    PMNI spends its first third on depth + mask alone. With a few hundred steps that third is too expensive:
    normals carry nearly all of the detail and a depth-only phase leaves too few steps to recover it. (This is
    reasoning, not an A/B measurement against PMNI's table at this budget.) Depth
    therefore only leads for the first 5 %, then normals join with depth still on (its scale-invariant form
    pins the global shape), and depth is switched off for the final 35 % so that inconsistent per-view depth
    scales cannot bias the converged surface.
    """
    return (
        LossStage(start=0.0, normal=0.0, depth=0.1, mask=3.0, eikonal=1.0),
        LossStage(start=0.05, normal=1.0, depth=1.0, mask=5.0, eikonal=1.0),
        LossStage(start=0.65, normal=1.0, depth=0.0, mask=5.0, eikonal=1.0, mvc=1.0),
    )


def _full() -> CorePreset:
    iters = 30000
    core = PMNICoreConfig(
        sdf_field=SDFFieldConfig(
            num_levels=14, features_per_level=2, log2_hashmap_size=19, base_resolution=32, per_level_scale=1.32
        ),
        sampler=OccupancySamplerConfig(
            grid_resolution=128, update_every=8, step_size_start=2.0 / 128, step_size_end=2.0 / 1024
        ),
        loss_schedule=LossScheduleConfig(stages=pmni_diligent_stages(), total_steps=iters),
        c2f_start_levels=4,
        c2f_end=0.5,
    )
    return CorePreset(
        core=core,
        optim={"hash_grid": GroupOptim(lr=1e-2), "sdf_mlp": GroupOptim(lr=1e-3), "variance": GroupOptim(lr=1e-3)},
        lr_schedule=LRScheduleConfig(warmup_steps=500, final_factor=0.05, total_steps=iters),
        max_num_iterations=iters,
        train_num_rays_per_batch=4096,
        # PMNI: 1e-3 decaying to 5e-4.
        pose_optim=GroupOptim(lr=1e-3, eps=1e-8),
        pose_lr_schedule=LRScheduleConfig(warmup_steps=500, final_factor=0.5, total_steps=iters),
    )


def _fast() -> CorePreset:
    # About what 2 shared CPU cores train in 5 minutes at quarter DiLiGenT resolution (3-4 steps/s): every
    # schedule (stages, step decay, sharpness, coarse-to-fine, LR) completes within that budget.
    iters = 900
    core = PMNICoreConfig(
        sdf_field=SDFFieldConfig(
            num_levels=8, features_per_level=2, log2_hashmap_size=17, base_resolution=32, per_level_scale=1.32
        ),
        sampler=OccupancySamplerConfig(
            grid_resolution=64, update_every=8, step_size_start=2.0 / 96, step_size_end=2.0 / 384
        ),
        loss_schedule=LossScheduleConfig(stages=fast_stages(), total_steps=iters),
        c2f_start_levels=3,
        c2f_end=0.5,
        # Most marched samples lie in front of the opacity band or behind the surface. Dropping them (a no-grad
        # pass) leaves the eikonal term too few points off the surface, so uniform points replace them. Bunny,
        # 900 steps, quarter resolution, two seeds: 357/353 s vs 536/471 s, Chamfer 0.209/0.197 % vs 0.216/0.230 %,
        # mesh normal MAE 3.95/4.30 vs 4.37/4.77 degrees (README, "Presets").
        prune_transmittance=1e-3,
        prune_alpha=1e-3,
        eikonal_random_points=1024,
        # The learned sharpness sits on its floor (1/step) all run, so the floor sets the opacity band's depth: 13-14
        # samples per ray above the prune thresholds. Ramping the floor to 2/step (the ceiling) halves the band and
        # the normal loss then supervises a thinner shell. Bunny, 900 steps, /4, seeds 0 and 1: 7-8 samples per ray
        # vs 13-14, 0.79/0.82x the training time, Chamfer 0.179/0.155 % vs 0.239/0.216 % of the diagonal, held-out
        # normal MAE 3.95/3.89 vs 4.47/4.31 degrees (README, "Presets").
        inv_s_floor_factor_end=2.0,
    )
    return CorePreset(
        core=core,
        optim={"hash_grid": GroupOptim(lr=1e-2), "sdf_mlp": GroupOptim(lr=1e-3), "variance": GroupOptim(lr=1e-3)},
        lr_schedule=LRScheduleConfig(warmup_steps=50, final_factor=0.1, total_steps=iters),
        max_num_iterations=iters,
        train_num_rays_per_batch=1024,
        # PMNI's 1e-3 is for 30k steps; 900 need larger steps early, and small ones at the end because Adam turns
        # batch noise into a random walk of about the step size.
        pose_optim=GroupOptim(lr=3e-3, eps=1e-8),
        pose_lr_schedule=LRScheduleConfig(warmup_steps=100, final_factor=0.05, total_steps=iters),
    )


def core_preset(name: str) -> CorePreset:
    """A fresh copy of the named preset (``pmni`` or ``pmni-fast``)."""
    if name == "pmni":
        return _full()
    if name == "pmni-fast":
        return _fast()
    raise ValueError(f"unknown preset {name!r}; choose from {PRESET_NAMES}")


def pose_free_gauge(pose_init: str) -> str:
    """The gauge a pose-free run from ``pose_init`` uses: ``mean`` from a ring, ``frozen-camera`` otherwise."""
    # A frozen camera keeps its own initial error and the others reach it only through the rig's slowest motion.
    # From a ring start that camera is off by the ring's guess (bunny and Spot, 900 steps: frozen 3.96 and 2.32
    # degrees, mean 1.65 and 0.91). From 5-degree noise it is a typical camera, and freezing it measured better
    # (four runs, two seeds: 1.21 degrees on average against 1.62 with the mean gauge).
    return "mean" if pose_init == "ring" else "frozen-camera"


def pose_free_recentre_target(pose_init: str) -> str:
    """Where a pose-free start from ``pose_init`` recentres its cameras: ``rays`` from a ring, ``origin`` otherwise."""
    # A noisy or file start lives in the dataset's frame, whose origin is the object's centre: turning onto it
    # removes each camera's pointing error (bunny, noisy seed 0: 1.21 degrees at step 400; onto the rays' meeting
    # point 1.79 at step 350, the start's own noise moving that point). A ring's origin is only where the ring was
    # put, and turning onto it pitches every camera together (poses.from_masks.recentre_on_masks). pmni-fast, 900
    # steps, ring start: Spot 1.41 degrees onto the meeting point (common pitch 0.77) against 1.55 (1.42), the bunny
    # 0.60 against 0.58.
    return "rays" if pose_init == "ring" else "origin"


def pose_free_consistency(base: Optional[MultiViewConsistencyConfig] = None) -> MultiViewConsistencyConfig:
    """The consistency term's pair sampling for pose-free runs: ``base`` with its ``pose_free_num_points`` and
    ``pose_free_views_per_point`` (more than the calibrated default, so each camera gets a less noisy share of the
    term's gradient)."""
    base = base or MultiViewConsistencyConfig()
    # getattr: consistency configs saved in a config.yml before the fields existed.
    return replace(
        base,
        num_points=getattr(base, "pose_free_num_points", 512),
        views_per_point=getattr(base, "pose_free_views_per_point", 4),
        silhouette_weight=getattr(base, "pose_free_silhouette_weight", 0.0),
    )


def pose_free_stages(
    stages: Tuple[LossStage, ...], mvc_weight: float = POSE_FREE_MVC_WEIGHT, depth: bool = True
) -> Tuple[LossStage, ...]:
    """The consistency term at ``mvc_weight`` (at least) in every stage that trains normals; the depth term as it is
    with ``depth``, off without."""
    # A camera misplaced along its orbit keeps its silhouette and turns its target and rendered normals together;
    # only parallax between views reveals it, and the consistency term is what measures that. Waiting for the last
    # stage leaves it too few steps (bunny, 5 deg / 5 % noise, 800 steps: 1.7 deg with it from 5 %, 2.9 without).
    # Depth: the scale-invariant depth term, fitted per view against an unfinished surface, moves every camera's
    # pitch together (the motion the images see least) towards one value, about +0.3-0.9 degrees on our renders.
    # pmni-fast, 900 steps, mean rotation error with / without depth. Ring start (searched, so that pitch starts
    # near 0): bunny 0.60 / 0.58 and 0.64 / 0.51 (seeds 0, 1), Spot 1.41 / 1.16 and 1.51 / 0.55; Chamfer after ICP
    # the same on the bunny, 0.202 / 0.163 and 0.208 / 0.151 % on Spot. Noisy start (its own common pitch 1.4):
    # bunny 1.04 / 1.24 (common pitch 0.86 at the end without). Hence off from a ring only (pose_settings).
    out = tuple(replace(stage, mvc=max(stage.mvc, mvc_weight)) if stage.normal > 0 else stage for stage in stages)
    return out if depth else tuple(replace(stage, depth=0.0) for stage in out)


def resolve_pose_model(pose: PoseModelConfig, pose_init: str) -> PoseModelConfig:
    """A copy of the pose model's config with mode, gauge and recentring decided for a start (see
    :func:`pose_settings`); settings given explicitly are kept."""
    refine = pose.mode == "SE3" or (pose.mode == "auto" and pose_init != "gt")
    recentre = pose.recentre_on_masks
    target = getattr(pose, "recentre_target", "auto")  # a config.yml saved before the field existed
    return replace(
        pose,
        mode="SE3" if refine else "off",
        gauge=pose_free_gauge(pose_init) if pose.gauge == "auto" else pose.gauge,
        recentre_on_masks=(refine and pose_init != "gt") if recentre is None else bool(recentre),
        recentre_target=pose_free_recentre_target(pose_init) if target == "auto" else target,
    )


def pose_settings(
    pose: PoseModelConfig, schedule: LossScheduleConfig, pose_init: str
) -> Tuple[PoseModelConfig, LossScheduleConfig]:
    """The pose model and loss schedule a run from ``pose_init`` trains with: copies with every ``auto`` decided.

    This is the one switch: any start but ``gt`` refines the poses (mode ``SE3``), fixes the gauge by the start,
    recentres each camera on its mask, turns the consistency term on wherever normals train (its pair sampling:
    :func:`pose_free_consistency`, applied where the term is set up) and, from a ring, the depth term off; ``gt``
    stays calibrated. Settings given explicitly are kept (``mode SE3`` from ``gt`` refines calibrated poses, ``mode off``
    from a ring trains on the ring as it is, ``pose_free_mvc 0`` with ``pose_free_depth`` leaves the stages alone).
    """
    pose = resolve_pose_model(pose, pose_init)
    if pose.mode == "SE3":
        # getattr: schedules saved in a config.yml before the field existed.
        weight = getattr(schedule, "pose_free_mvc", POSE_FREE_MVC_WEIGHT)
        depth = getattr(schedule, "pose_free_depth", None)
        depth = pose_init != "ring" if depth is None else bool(depth)
        schedule = replace(schedule, stages=pose_free_stages(schedule.stages, weight, depth))
    return pose, schedule


def with_iterations(preset: CorePreset, iterations: int) -> CorePreset:
    """A copy of the preset rescaled to another run length (every schedule follows)."""
    out = copy.deepcopy(preset)
    out.max_num_iterations = int(iterations)
    scale_to_run_length(iterations, out.core.loss_schedule, (out.lr_schedule, out.pose_lr_schedule))
    return out


__all__ = [
    "MAX_GRAD_NORMS",
    "CorePreset",
    "GroupOptim",
    "PRESET_NAMES",
    "core_preset",
    "POSE_FREE_MVC_WEIGHT",
    "pose_free_consistency",
    "pose_free_gauge",
    "pose_free_recentre_target",
    "pose_free_stages",
    "pose_settings",
    "resolve_pose_model",
    "with_iterations",
]
