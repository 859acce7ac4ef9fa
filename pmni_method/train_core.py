"""Plain training without nerfstudio: the core's training step in a loop, then a checkpoint, a mesh and metrics.

This is what a machine with only torch (and the light dependencies: numpy, scipy, trimesh, PyMCubes, pypose,
OpenEXR) runs; it imports neither nerfstudio nor open3d nor viser. Calibrated and pose-free runs::

    python -m pmni_method.train_core --data DIR --output OUT --device cuda
    python -m pmni_method.train_core --data DIR --output OUT --pose-init ring --normal-dir normal_camera_space_GT

``OUT`` receives ``checkpoint.pt`` (core, poses, optimiser, step), ``mesh.ply`` (world units) and
``metrics.json`` (the last step's losses, the refined poses' errors and, with a ground-truth mesh, pmni-eval's
geometry and normal metrics). Exit codes: 0 done, 2 bad input, 3 training diverged.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from pmni_method.atomic import atomic_write, write_json_atomic
from pmni_method.backends import reproducible_on_cpu
from pmni_method.poses.maths import pose_errors
from pmni_method.poses.starts import PoseInitConfig
from pmni_method.data.diligent_mv import load_diligent_mv, split_indices
from pmni_method.data.pyramid import ResolutionPyramid, ResolutionScheduleConfig
from pmni_method.data.raystore import RayStore
from pmni_method.data.types import MultiViewNormalData
from pmni_method.errors import EXIT_BAD_INPUT, EXIT_DIVERGED, PMNIDataError, print_error
from pmni_method.models.consistency import MultiViewConsistencyConfig
from pmni_method.models.core import PMNICore, core_config_for
from pmni_method.models.intrinsics_model import IntrinsicsModel, IntrinsicsModelConfig
from pmni_method.models.pose_model import PoseModel, PoseModelConfig
from pmni_method.models.presets import (
    MAX_GRAD_NORMS,
    CorePreset,
    core_preset,
    pose_free_consistency,
    pose_settings,
    with_iterations,
)
from pmni_method.models.step import StepContext, step_metrics, train_step

PROG = "pmni_method.train_core"
"""Name in the one-line errors (the entry runs as ``python -m pmni_method.train_core``)."""


@dataclass
class CoreRun:
    """Everything a plain training run holds."""

    preset: CorePreset
    """The preset, scaled to the run length."""
    core: PMNICore
    """The reconstruction model."""
    store: RayStore
    """The training views and their rays at the loaded resolution (the one copy of the normal maps)."""
    context: StepContext
    """Poses and consistency views of the training step."""
    optimizer: torch.optim.Optimizer
    """Adam over every parameter group."""
    scheduler: torch.optim.lr_scheduler.LambdaLR
    """Warm-up + cosine per group (the poses have their own)."""
    rays: ResolutionPyramid
    """What each step draws its batch from: the resolution schedule's levels (``store`` is the finest; one level
    when the schedule is off)."""

    def batch(self, step: int) -> Dict[str, torch.Tensor]:
        """The training batch of ``step``: from the level and with the ray count the resolution schedule gives."""
        return self.rays.sample(self.preset.train_num_rays_per_batch, step, self.core.total_steps)


def build_run(
    preset: CorePreset,
    data: MultiViewNormalData,
    device: torch.device | str = "cpu",
    pose_init: Optional[str] = None,
    refine_poses: Optional[bool] = None,
    gauge: Optional[str] = None,
    seed: int = 0,
    resolution_schedule: Optional[ResolutionScheduleConfig] = None,
    consistency: Optional[MultiViewConsistencyConfig] = None,
    intrinsics: Optional[IntrinsicsModelConfig] = None,
    pose_coordinates: str = "world",
) -> CoreRun:
    """Core, ray store, pose model and optimiser for ``data``; pose refinement on for any start but ``gt`` (or as
    ``refine_poses`` says), decided by the same one switch as ``ns-train`` (:func:`presets.pose_settings`).
    ``pose_init`` defaults to the start the data was loaded with. ``resolution_schedule`` trains coarse to fine
    over downscaled copies of ``data`` (:mod:`pmni_method.data.pyramid`); the poses, the consistency term and the
    initial sphere always use ``data`` as given. ``consistency`` is the consistency term's configuration (its
    pose-free variant when the poses are refined). ``pose_coordinates`` is what the pose optimiser steps
    (:attr:`PoseModelConfig.coordinates`)."""
    mode = "auto" if refine_poses is None else ("SE3" if refine_poses else "off")
    pose_config, preset.core.loss_schedule = pose_settings(
        PoseModelConfig(mode=mode, gauge=gauge or "auto", recentre_on_masks=None, coordinates=pose_coordinates),
        preset.core.loss_schedule,
        pose_init or data.pose_init,
    )
    torch.manual_seed(seed)
    core = PMNICore(core_config_for(preset.core, data, device)).to(device)
    # Patch rendering differences the rays of a patch: the store must hand out whole patches of the same size.
    patch = core.config.patch_size if core.config.gradient_method == "patch" else 1
    schedule = resolution_schedule or ResolutionScheduleConfig()
    pyramid = ResolutionPyramid(data, schedule, device, seed=seed, patch_size=patch)
    store = pyramid.finest
    pose_model = PoseModel(pose_config, c2w_init=data.c2w, K=data.K, masks=data.masks).to(device)
    intrinsics_model = IntrinsicsModel(intrinsics or IntrinsicsModelConfig(), c2w_init=data.c2w).to(device)
    uses_mvc = any(stage.mvc > 0 for stage in preset.core.loss_schedule.stages)
    context = StepContext(
        poses=pose_model,
        views=store.views if uses_mvc else None,
        consistency=pose_free_consistency(consistency) if pose_model.enabled else (consistency or MultiViewConsistencyConfig()),
        # Camera-space maps were rotated into the world by the initial poses: they turn with the corrections.
        targets_follow_poses=data.normal_space == "camera",
        intrinsics=intrinsics_model if intrinsics_model.enabled else None,
    )
    groups = dict(core.param_groups(), **pose_model.param_groups(), **intrinsics_model.param_groups())
    settings = preset.group_optims()
    optimizer = torch.optim.Adam(
        [{"params": groups[name], "lr": settings[name].lr, "eps": settings[name].eps, "name": name} for name in groups]
    )
    lambdas = [preset.group_lr_schedule(name).factor for name in groups]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
    return CoreRun(preset, core, store, context, optimizer, scheduler, pyramid)


def optimise(run: CoreRun, step: int, log: Optional[Callable[[str], None]] = None, log_every: int = 0) -> Dict[str, float]:
    """One training step: the core's step function, then a clipped optimiser step; a non-finite objective skips the
    update (parameters and Adam state unchanged). Returns the loss terms as floats."""
    core = run.core
    core.train()
    core.before_train_step(step)
    batch = run.batch(step)
    result = train_step(core, batch, run.context)
    total = sum(result.losses.values())
    losses = {k: float(v.detach()) for k, v in result.losses.items()}
    run.optimizer.zero_grad(set_to_none=True)
    if math.isfinite(float(total.detach())):
        total.backward()
        for group in run.optimizer.param_groups:
            limit = MAX_GRAD_NORMS.get(group["name"])
            if limit is not None:
                torch.nn.utils.clip_grad_norm_(group["params"], limit)
        run.optimizer.step()
    else:
        losses["skipped"] = 1.0
    run.scheduler.step()
    if log is not None and log_every and (step + 1) % log_every == 0:
        m = step_metrics(core, result, batch, run.context)
        log(
            f"step {step + 1:6d} loss {float(total.detach()):.4f} "
            + " ".join(f"{k}={v:.4f}" for k, v in losses.items())
            + f" inv_s={float(m['inv_s']):.0f} spr={float(m['samples_per_ray']):.1f}"
        )
    return losses


def save_outputs(
    run: CoreRun, data: MultiViewNormalData, output: Path, step: int, summary: Dict[str, Any], mesh_resolution: int
) -> Dict[str, Any]:
    """Write ``checkpoint.pt``, ``mesh.ply`` and ``metrics.json`` into ``output``; returns the metrics."""
    from pmni_method.evaluation import EvaluationInputError, evaluate, poses_beside  # pylint: disable=import-outside-toplevel
    from pmni_method.export import extract_mesh, write_mesh_atomic  # pylint: disable=import-outside-toplevel

    output.mkdir(parents=True, exist_ok=True)
    state = {
        "step": step,
        "core": run.core.state_dict(),
        "poses": run.context.poses.state_dict(),
        "intrinsics": None if run.context.intrinsics is None else run.context.intrinsics.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "view_ids": list(data.view_ids),
    }
    with atomic_write(output / "checkpoint.pt") as f:
        torch.save(state, f)
    run.core.eval()
    mesh = extract_mesh(lambda x: run.core.field.sdf(x)[:, 0], resolution=mesh_resolution, normalisation=data.normalisation)
    mesh_path = write_mesh_atomic(mesh, output / "mesh.ply", source={"units": data.normalisation.units, "step": step})
    metrics: Dict[str, Any] = dict(summary)
    aligned_by: Optional[Path] = None
    if run.context.refining:
        refined = run.context.poses.refined_c2w()
        metrics["refined_c2w"] = refined.tolist()
        # pmni-export's pose file beside the mesh: pmni-eval aligns a pose-free mesh by it (its frame is not the truth's).
        poses = [
            {"view": int(v), "c2w": m.tolist(), "refined": True}
            for v, m in zip(data.view_ids, data.normalisation.c2w_to_world(refined))
        ]
        write_json_atomic(poses, poses_beside(mesh_path), indent=1)
        if data.gt_c2w is not None:
            report = pose_errors(refined, data.gt_c2w)
            metrics["poses"] = {k: v for k, v in report.items() if not isinstance(v, list) or k == "alignment"}
            metrics["poses"]["rotation_deg_max"] = float(max(report["rotation_deg"]))
            # pmni-eval's alignment of a mesh by its poses (object_alignment), not the centres' fit of the errors.
            aligned_by = poses_beside(mesh_path)
    if run.context.intrinsics is not None:
        from pmni_method.evaluation import true_intrinsics  # pylint: disable=import-outside-toplevel

        # Pixels at the training resolution; against cameras_gt.npz, when present, what is left of the error.
        metrics["intrinsics"] = run.context.intrinsics.report(
            data.K, true_intrinsics(data.data_dir, data, summary["downscale"])
        )
    if data.gt_mesh is not None:
        try:
            metrics["evaluation"] = evaluate(
                mesh_path, data.data_dir, heldout_views=summary["heldout_views"], poses=aligned_by,
                downscale_factor=summary["downscale"], require_hits=False, find_poses=False,
            )
        except EvaluationInputError as err:
            # A short pose-free run may end far from the truth: the checkpoint and mesh still count.
            metrics["evaluation_error"] = str(err)
    write_json_atomic(metrics, output / "metrics.json")
    return metrics


def add_resolution_schedule_arguments(parser: argparse.ArgumentParser) -> None:
    """The resolution schedule's options (``--resolution-schedule``, ``--switch-at``, ``--rays-follow-pixels``,
    ``--min-rays-per-batch``); :func:`resolution_schedule` reads them back."""
    parser.add_argument(
        "--resolution-schedule", type=int, nargs="*", default=[], metavar="FACTOR",
        help="train coarse to fine: downscale factors of the loaded images, ending at 1 (e.g. 4 2 1); default off",
    )
    parser.add_argument(
        "--switch-at", type=float, nargs="*", default=[], metavar="FRACTION",
        help="with --resolution-schedule: run fractions where each next level starts (e.g. 0.3 0.6)",
    )
    parser.add_argument(
        "--rays-follow-pixels", type=float, default=ResolutionScheduleConfig.rays_follow_pixels,
        help="with --resolution-schedule: a level's rays = --rays x (its pixels / loaded pixels) ** this",
    )
    parser.add_argument(
        "--min-rays-per-batch", type=int, default=ResolutionScheduleConfig.min_rays_per_batch,
        help="with --resolution-schedule: floor of a coarse level's rays per batch",
    )


def resolution_schedule(args: argparse.Namespace) -> ResolutionScheduleConfig:
    """The schedule the options of :func:`add_resolution_schedule_arguments` describe (not yet validated)."""
    return ResolutionScheduleConfig(
        factors=tuple(args.resolution_schedule), switch_at=tuple(args.switch_at),
        rays_follow_pixels=args.rays_follow_pixels, min_rays_per_batch=args.min_rays_per_batch,
    )


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="dataset folder (DiLiGenT-MV layout)")
    parser.add_argument("--output", type=Path, required=True, help="folder for checkpoint.pt, mesh.ply, metrics.json")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--preset", default="pmni-fast", choices=["pmni", "pmni-fast"])
    parser.add_argument("--iterations", type=int, default=0, help="run length (0: the preset's); every schedule follows")
    parser.add_argument("--rays", type=int, default=0, help="rays per batch (0: the preset's)")
    parser.add_argument("--downscale-factor", type=int, default=1, help="load the images block-averaged by this")
    add_resolution_schedule_arguments(parser)
    parser.add_argument("--exclude-views", type=int, nargs="*", default=[], help="view ids held out of training")
    parser.add_argument("--normal-dir", default="auto", help="auto: world-space maps if calibrated, else camera-space")
    parser.add_argument("--pose-init", default="gt", choices=["gt", "noisy", "ring", "file"])
    parser.add_argument(
        "--refine-intrinsics", action="store_true",
        help="learn one focal scale and principal-point shift shared by every view (calibration off by ~1 %%)",
    )
    parser.add_argument("--poses-file", type=Path, default=None, help="with --pose-init file")
    # Pose-start options of diligent-mv-data, so that the plain loop can run the benchmarks' starts.
    parser.add_argument("--pose-noise-seed", type=int, default=0, help="with --pose-init noisy")
    parser.add_argument("--ring-radius", type=float, default=None, help="ring: normalised units; default from the masks")
    parser.add_argument("--ring-elevation-deg", type=float, nargs=2, default=(25.0, 25.0), help="ring: MIN MAX degrees")
    parser.add_argument(
        "--ring-elevation-search-deg", type=float, default=45.0,
        help="ring: search this far about the elevation for the silhouettes' best agreement (0: as given)",
    )
    parser.add_argument("--ring-reverse", action="store_true", help="ring: views go round the other way")
    parser.add_argument(
        "--pose-coordinates", default="world", choices=["world", "camera"],
        help="what the pose optimiser steps: se(3) vectors (world) or each camera's six motions (camera)",
    )
    parser.add_argument("--gauge", default=None, choices=["frozen-camera", "mean"], help="default: mean from a ring")
    parser.add_argument("--data-checks", default=None, choices=["error", "warn", "off"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--gradient-method", default="analytic", choices=["analytic", "patch"],
        help="training SDF gradients: analytic, or patch (SuperNormal: finite differences over k x k pixel patches)",
    )
    parser.add_argument("--patch-size", type=int, default=3, help="with --gradient-method patch: pixels per side")
    parser.add_argument("--mesh-resolution", type=int, default=256)
    parser.add_argument("--log-every", type=int, default=100)
    parser.add_argument(
        "--core-set", action="append", default=[], metavar="FIELD=VALUE",
        help="set a PMNICoreConfig field (e.g. normal_loss_type=cauchy, loss_schedule.pose_free_mvc=8, "
        "loss_schedule.stages.2.mask=1); repeatable",
    )
    parser.add_argument(
        "--consistency-set", action="append", default=[], metavar="FIELD=VALUE",
        help="set a MultiViewConsistencyConfig field (e.g. pose_free_silhouette_weight=0.05); repeatable",
    )
    return parser.parse_args(argv)


def set_fields(config: Any, settings: Sequence[str], flag: str) -> Any:
    """A copy of the dataclass ``config`` with fields set from ``FIELD=VALUE`` strings (typed like the field's
    current value; ``a.b=VALUE`` reaches into the nested config ``a``). Raises ValueError (one line, naming ``flag``
    and the setting) on an unknown field or a wrong type."""
    for item in settings:
        path, sep, text = item.partition("=")
        if not sep:
            raise ValueError(f"{flag} {item!r}: expected FIELD=VALUE")
        config = _set_field(config, path.strip().replace("-", "_").split("."), text, f"{flag} {item!r}")
    return config


def _set_field(config: Any, path: List[str], text: str, where: str) -> Any:
    fields = {f.name for f in dataclasses.fields(config) if not f.name.startswith("_")}
    name = path[0]
    if name not in fields:
        raise ValueError(f"{where}: expected FIELD=VALUE with FIELD one of {sorted(fields)}")
    current = getattr(config, name)
    if isinstance(current, tuple) and len(path) > 1 and all(dataclasses.is_dataclass(x) for x in current):
        # A tuple of configs (the loss stages): ``stages.2.mask=0.5`` as ns-train's ``--...stages.2.mask 0.5``.
        index = path[1]
        if not index.isdigit() or int(index) >= len(current):
            raise ValueError(f"{where}: {name} has {len(current)} entries; use {name}.0 to {name}.{len(current) - 1}")
        if len(path) == 2:
            raise ValueError(f"{where}: {name}.{index} is a nested config; set one of its fields as {name}.{index}.FIELD")
        items = list(current)
        items[int(index)] = _set_field(items[int(index)], path[2:], text, where)
        return dataclasses.replace(config, **{name: tuple(items)})
    if dataclasses.is_dataclass(current):
        if len(path) == 1:
            raise ValueError(f"{where}: {name} is a nested config; set one of its fields as {name}.FIELD")
        return dataclasses.replace(config, **{name: _set_field(current, path[1:], text, where)})
    if len(path) > 1:
        raise ValueError(f"{where}: {name} is not a nested config")
    kind, optional = _field_kind(config, name, current)
    try:
        if text.strip().lower() == "none" and optional:
            value: Any = None
        elif kind is bool:
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError(text)
            value = text.lower() in ("true", "1")
        elif kind in (int, float):
            value = kind(text)
        elif kind is str:
            value = text
        else:
            raise ValueError(text)
    except ValueError:
        raise ValueError(f"{where}: {name} takes a {kind.__name__}") from None
    return dataclasses.replace(config, **{name: value})


def _field_kind(config: Any, name: str, current: Any) -> Tuple[type, bool]:
    """The type a ``FIELD=VALUE`` text is read as (the current value's, or for a field that is None now its
    annotation's: ``Optional[bool]`` reads ``False`` as False, not as the true string "False"), and whether the
    field's annotation allows None."""
    hint = typing.get_type_hints(type(config)).get(name)
    optional = type(None) in typing.get_args(hint)
    if current is not None:
        return type(current), optional
    kinds = [k for k in typing.get_args(hint) if k is not type(None)] or [hint]
    kind = kinds[0] if len(kinds) == 1 else str
    return (kind if kind in (bool, int, float, str) else str), optional


def apply_core_settings(preset: CorePreset, settings: Sequence[str]) -> CorePreset:
    """``preset`` with top-level core fields set from ``FIELD=VALUE`` strings (:func:`set_fields`)."""
    core = set_fields(preset.core, settings, "--core-set")
    return preset if core is preset.core else dataclasses.replace(preset, core=core)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    schedule = resolution_schedule(args)
    try:
        schedule.validate()
    except ValueError as err:
        # Before loading: a typo in the schedule should not wait for the dataset.
        print_error(f"error: {err}", prog=PROG, stderr=True)
        return EXIT_BAD_INPUT
    pose_init = PoseInitConfig(
        pose_init=args.pose_init, poses_file=args.poses_file, pose_noise_seed=args.pose_noise_seed,
        ring_radius=args.ring_radius, ring_elevation_deg=tuple(args.ring_elevation_deg), ring_reverse=args.ring_reverse,
        ring_elevation_search_deg=args.ring_elevation_search_deg,
    )
    # Checks that need the stored poses are meaningless from a ring or a file start.
    checks = args.data_checks or ("warn" if args.pose_init in ("noisy", "ring", "file") else "error")
    try:
        data = load_diligent_mv(
            args.data, normal_dir=args.normal_dir, downscale_factor=args.downscale_factor, pose_init=pose_init,
            data_checks=checks,
        )
        train = data.subset(split_indices(data.view_ids, args.exclude_views, "train"))
    except PMNIDataError as err:
        print_error(f"error: {err}", prog=PROG, stderr=True)
        return EXIT_BAD_INPUT
    reproducible_on_cpu(args.device)
    preset = core_preset(args.preset)
    try:
        preset = apply_core_settings(preset, args.core_set)
        consistency = set_fields(MultiViewConsistencyConfig(), args.consistency_set, "--consistency-set")
    except ValueError as err:
        print_error(f"error: {err}", prog=PROG, stderr=True)
        return EXIT_BAD_INPUT
    if args.iterations:
        preset = with_iterations(preset, args.iterations)
    if args.rays:
        preset.train_num_rays_per_batch = args.rays
    preset.core.gradient_method = args.gradient_method
    preset.core.patch_size = args.patch_size
    try:
        run = build_run(
            preset, train, args.device, gauge=args.gauge, seed=args.seed, resolution_schedule=schedule,
            consistency=consistency, intrinsics=IntrinsicsModelConfig(enabled=args.refine_intrinsics),
            pose_coordinates=args.pose_coordinates,
        )
    except PMNIDataError as err:
        # A schedule level can be too coarse for the data (masks that vanish when averaged).
        print_error(f"error: {err}", prog=PROG, stderr=True)
        return EXIT_BAD_INPUT
    if schedule.enabled:
        print(run.rays.describe(preset.train_num_rays_per_batch, run.core.total_steps), flush=True)
    start, skipped, losses = time.perf_counter(), 0, {}
    for step in range(preset.max_num_iterations):
        losses = optimise(run, step, log=lambda line: print(line, flush=True), log_every=args.log_every)
        skipped = skipped + 1 if "skipped" in losses else 0
        if skipped >= 10:
            print_error(f"error: training diverged at step {step + 1} (10 non-finite steps in a row)", prog=PROG, stderr=True)
            return EXIT_DIVERGED
    seconds = time.perf_counter() - start
    summary = {
        "steps": preset.max_num_iterations,
        "train_seconds": seconds,
        "device": str(args.device),
        "pose_init": args.pose_init,
        "pose_coordinates": args.pose_coordinates,
        "refine_intrinsics": bool(args.refine_intrinsics),
        "downscale": args.downscale_factor,
        "resolution_schedule": dataclasses.asdict(schedule) if schedule.enabled else None,
        "heldout_views": list(args.exclude_views),
        "final_losses": losses,
    }
    metrics = save_outputs(run, train, args.output, preset.max_num_iterations, summary, args.mesh_resolution)
    chamfer = (metrics.get("evaluation") or {}).get("geometry", {}).get("chamfer")
    print(
        f"trained {preset.max_num_iterations} steps in {seconds:.0f} s; wrote {args.output}"
        + (f"; Chamfer {chamfer:.4g}" if chamfer is not None else "")
        + (f"; rotation error {metrics['poses']['rotation_deg_mean']:.2f} deg" if "poses" in metrics else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
