"""Analytic SDF gradients against SuperNormal's patch rendering, side by side in one run (plain training loop).

Both methods train ``pmni-fast`` (rescaled to ``--steps``) on the same data and the same number of steps, one step
of each in turn, so that both see the same machine load (a shared CPU drifts by 2x within minutes). Printed per
method: rays/s of the training step (render + losses + backward + optimiser, the median over the run), marched
samples per ray, SDF evaluations per ray, the run's wall time, Chamfer (percent of the true mesh's bounding-box
diagonal, pmni-eval's protocol on the exported mesh) and held-out normal MAE (pmni-eval's mesh normals, and the
model's own analytic composited render of the held-out views).

Then the cost of pose refinement: each trained model takes training steps with per-camera SE(3) corrections (a
random 0.5 degree / 0.5 % start, frozen camera 0) and without, interleaved on the same batches; the loss schedule is
the calibrated one in both, so the difference is the pose path alone (corrected rays, and gradients through every
patch pixel's ray into the poses), not the consistency term a pose-free preset also turns on.

Example::

    pmni-synth --mesh shared/data/meshes/stanford-bunny.obj --output /tmp/patch/bunny20 --num-views 20 \\
        --world-scale 1000
    python benchmarks/compare_gradients.py --data /tmp/patch/bunny20 --steps 250
"""

from __future__ import annotations

import copy
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
import tyro
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pmni_method.data.diligent_mv import load_diligent_mv, split_indices  # noqa: E402
from pmni_method.data.raystore import RayStore  # noqa: E402
from pmni_method.models.core import normal_angular_error_deg  # noqa: E402
from pmni_method.models.pose_model import PoseModel, PoseModelConfig  # noqa: E402
from pmni_method.models.presets import core_preset, with_iterations  # noqa: E402
from pmni_method.models.step import StepContext, train_step  # noqa: E402
from pmni_method.train_core import CoreRun, build_run, optimise, save_outputs  # noqa: E402

METHODS = ("analytic", "patch")


@dataclass
class Args:
    """Analytic vs patch gradients: speed, samples, Chamfer, held-out normals, pose-refinement cost."""

    data: Path = Path("/tmp/patch/bunny20")
    """Dataset folder (pmni-synth / DiLiGenT-MV layout, with mesh_Gt.ply)."""
    downscale_factor: int = 4
    """Image downscale factor for training and evaluation."""
    heldout: List[int] = field(default_factory=lambda: [2, 7, 12, 17])
    """View ids held out of training (scored by the held-out normal MAE)."""
    steps: int = 250
    """Training steps per method (every pmni-fast schedule is rescaled to it)."""
    rays: int = 1024
    """Rays per batch (patch: rays // patch_size^2 whole patches)."""
    patch_size: int = 3
    """Pixels per side of a patch."""
    pose_repeats: int = 8
    """Interleaved timed steps per configuration in the pose-refinement cost measurement."""
    mesh_resolution: int = 192
    """Marching-cubes resolution of the evaluated meshes."""
    threads: int = 2
    """torch CPU threads."""
    seed: int = 0
    """Seed of the models and the ray stores."""
    output: Optional[Path] = None
    """Folder for each run's checkpoint, mesh and metrics (default: a temporary folder)."""


def make_run(args: Args, train, method: str) -> CoreRun:
    preset = with_iterations(core_preset("pmni-fast"), args.steps)
    preset.train_num_rays_per_batch = args.rays
    preset.core.gradient_method = method
    preset.core.patch_size = args.patch_size
    return build_run(preset, train, "cpu", refine_poses=False, seed=args.seed)


@torch.no_grad()
def heldout_render_mae(run: CoreRun, held: RayStore, chunk: int = 4096) -> float:
    """Mean angle between the composited analytic render and the targets over the held-out masks (degrees)."""
    core = run.core
    core.eval()
    errors = []
    for view in range(held.num_views):
        for idx in held.image_indices(view).split(chunk):
            batch = held.rays_for(idx)
            out = core.render(batch["origins"], batch["directions"], batch["directions_norm"])
            fg = batch["fg_mask"][:, 0] > 0.5
            errors.append(normal_angular_error_deg(out["normal"][fg], batch["normal"][fg]))
    return float(torch.cat(errors).mean())


def pose_cost(args: Args, runs: Dict[str, CoreRun], train) -> Dict[Tuple[str, bool], float]:
    """Median seconds of a training step (render, losses, backward) with and without pose corrections."""
    config = PoseModelConfig(mode="SE3", gauge="frozen-camera")
    poses = PoseModel(config, c2w_init=train.c2w, K=train.K, masks=train.masks)
    gen = torch.Generator().manual_seed(args.seed)
    with torch.no_grad():
        for p in poses.parameters():
            # A small non-zero correction: the rays really move, as in a refining run.
            p.copy_(torch.randn(p.shape, generator=gen) * 0.005)
    times: Dict[Tuple[str, bool], List[float]] = {(m, on): [] for m in METHODS for on in (False, True)}
    stores = {m: copy.copy(runs[m].store) for m in METHODS}
    reached = {}
    for rep in range(args.pose_repeats + 1):
        for method in METHODS:
            run = runs[method]
            run.core.train()
            batch = stores[method].sample(args.rays)
            for on in (False, True):
                context = StepContext(poses=poses if on else None)
                run.core.zero_grad(set_to_none=True)
                poses.zero_grad(set_to_none=True)
                start = time.perf_counter()
                result = train_step(run.core, batch, context)
                sum(result.losses.values()).backward()
                if rep:  # the first round warms up allocations
                    times[(method, on)].append(time.perf_counter() - start)
                if on:
                    grads = [p.grad for p in poses.parameters() if p.grad is not None]
                    reached[method] = bool(grads) and float(sum(g.abs().sum() for g in grads)) > 0
    for method in METHODS:
        if not reached.get(method):
            raise RuntimeError(f"{method}: no gradient reached the pose parameters")
    return {key: statistics.median(v) for key, v in times.items()}


def main(args: Args) -> None:
    torch.set_num_threads(args.threads)
    console = Console(width=150)
    data = load_diligent_mv(args.data, downscale_factor=args.downscale_factor)
    train = data.subset(split_indices(data.view_ids, args.heldout, "train"))
    held = RayStore(data.subset(split_indices(data.view_ids, args.heldout, "test")), seed=args.seed + 1)
    runs = {m: make_run(args, train, m) for m in METHODS}
    step_times: Dict[str, List[float]] = {m: [] for m in METHODS}
    rays_done: Dict[str, List[int]] = {m: [] for m in METHODS}
    spr: Dict[str, List[float]] = {m: [] for m in METHODS}
    points: Dict[str, List[float]] = {m: [] for m in METHODS}
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("training analytic + patch, interleaved", total=args.steps)
        for step in range(args.steps):
            for method in METHODS:
                run = runs[method]
                seen: Dict[str, torch.Tensor] = {}
                original = run.core.render

                def render(*a, _orig=original, _seen=seen, **kw):
                    out = _orig(*a, **kw)
                    _seen.update(out)
                    return out

                run.core.render = render  # type: ignore[method-assign]
                start = time.perf_counter()
                try:
                    optimise(run, step)
                finally:
                    del run.core.render
                step_times[method].append(time.perf_counter() - start)
                rays_done[method].append(int(seen["normal"].shape[0]))
                spr[method].append(float(seen["num_samples"].mean()))
                points[method].append(float(seen.get("num_sdf_points", seen["num_samples"]).mean()))
            progress.advance(task)
    out_root = args.output or Path(tempfile.mkdtemp(prefix="compare_gradients_"))
    results = {}
    for method in METHODS:
        run = runs[method]
        summary = {"steps": args.steps, "downscale": args.downscale_factor, "heldout_views": list(args.heldout)}
        console.log(f"evaluating {method} ...")
        metrics = save_outputs(run, train, out_root / method, args.steps, summary, args.mesh_resolution)
        evaluation = metrics.get("evaluation", {})
        median = statistics.median(step_times[method])
        results[method] = {
            "rays_per_s": statistics.median(rays_done[method]) / median,
            "step_s": median,
            "wall_s": sum(step_times[method]),
            "spr": statistics.mean(spr[method]),
            "points": statistics.mean(points[method]),
            "chamfer": (evaluation.get("geometry") or {}).get("chamfer_rel_bbox_percent"),
            "mesh_mae": ((evaluation.get("normals") or {}).get("heldout") or {}).get("mae_deg"),
            "render_mae": heldout_render_mae(run, held),
        }
    console.log("timing pose refinement on / off ...")
    cost = pose_cost(args, runs, train)

    table = Table(title=f"analytic vs patch ({args.patch_size}x{args.patch_size}), {args.steps} steps each, "
                  f"{args.rays} rays/batch, /{args.downscale_factor}")
    for col in ("method", "rays/s", "step s", "wall s", "samples/ray", "SDF evals/ray", "Chamfer %diag",
                "held-out MAE mesh", "held-out MAE render"):
        table.add_column(col, justify="right")
    fmt = lambda v, f="{:.3f}": "n/a" if v is None else f.format(v)  # noqa: E731
    for method, r in results.items():
        table.add_row(method, fmt(r["rays_per_s"], "{:.0f}"), fmt(r["step_s"]), fmt(r["wall_s"], "{:.0f}"),
                      fmt(r["spr"], "{:.1f}"), fmt(r["points"], "{:.1f}"), fmt(r["chamfer"]),
                      fmt(r["mesh_mae"], "{:.2f}"), fmt(r["render_mae"], "{:.2f}"))
    console.print(table)
    pose = Table(title=f"training step (render + losses + backward), median of {args.pose_repeats}, same batches")
    for col in ("method", "poses off s", "poses on s", "pose cost"):
        pose.add_column(col, justify="right")
    for method in METHODS:
        off, on = cost[(method, False)], cost[(method, True)]
        pose.add_row(method, f"{off:.3f}", f"{on:.3f}", f"{100.0 * (on / off - 1.0):+.1f} %")
    console.print(pose)
    speed = results["patch"]["rays_per_s"] / results["analytic"]["rays_per_s"]
    console.print(f"patch / analytic rays/s: {speed:.2f}x; runs in {out_root}")


if __name__ == "__main__":
    main(tyro.cli(Args))
