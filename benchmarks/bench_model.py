"""Benchmarks of the reconstruction model, with a plain (nerfstudio-free) training loop.

Modes:

``throughput``  iterations/s, rays/s and peak RSS of our training step; in the same run, the ratio to a plain
                autodiff NeuS step (written out below) at the same rays and samples, and analytic vs
                finite-difference vs autodiff SDF gradients.
``quality``     train a preset with train_core's step (``--resolution-schedule`` as there) on a synthetic dataset
                with held-out views for a wall-clock budget; mesh and evaluate (Chamfer, F-score, held-out
                normal MAE, world units) at fixed times.
``sphere``      reconstruct the analytic-sphere dataset for ~1 minute and check the Chamfer distance.

Examples::

    python benchmarks/bench_model.py throughput --preset pmni-fast --data /tmp/bunny20 --downscale 4
    python benchmarks/bench_model.py quality --data /tmp/bunny20 --downscale 4 --heldout 2 6 10 14 18 \
        --minutes 5 --eval-at 1 2 3 4 5
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pmni_method.data.diligent_mv import load_diligent_mv, split_indices  # noqa: E402
from pmni_method.data.raystore import RayStore  # noqa: E402
from pmni_method.data.types import MultiViewNormalData  # noqa: E402
from pmni_method.models.core import PMNICore  # noqa: E402
from pmni_method.models.presets import CorePreset, core_preset, with_iterations  # noqa: E402
from pmni_method.models.rendering import accumulate, neus_alpha, render_weights  # noqa: E402
from pmni_method.models.sampler import sphere_near_far  # noqa: E402
from pmni_method.models.step import train_step as core_train_step  # noqa: E402
from pmni_method.train_core import (  # noqa: E402
    CoreRun,
    add_resolution_schedule_arguments,
    apply_core_settings,
    build_run,
    optimise,
    resolution_schedule,
)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ---------------------------------------------------------------------------------------------- plain training
def make_optimizer(core: PMNICore, preset: CorePreset) -> tuple:
    groups = core.param_groups()
    opt = torch.optim.Adam(
        [{"params": groups[name], "lr": preset.optim[name].lr, "eps": preset.optim[name].eps} for name in groups]
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, preset.lr_schedule.factor)
    return opt, sched


def train_step(core: PMNICore, opt: torch.optim.Optimizer, sched, store: RayStore, rays: int, step: int) -> Dict:
    core.train()
    core.before_train_step(step)
    batch = store.sample(rays)
    result = core_train_step(core, batch)
    out, losses = result.outputs, result.losses
    total = sum(losses.values())
    opt.zero_grad(set_to_none=True)
    total.backward()
    opt.step()
    sched.step()
    return {"loss": float(total.detach()), **{k: float(v.detach()) for k, v in losses.items()}, "out": out, "batch": batch}


def train_plain(
    run: CoreRun,
    seconds: Optional[float] = None,
    on_time: Sequence[float] = (),
    callback: Optional[Callable[[float, int], None]] = None,
    log_every: int = 100,
) -> int:
    """Train ``run`` with train_core's own step (consistency term, resolution schedule, gradient ceilings) for its
    preset's steps or ``seconds``; ``callback(t, step)`` at each ``on_time``.

    Time spent in callbacks is not counted as training time.
    """
    pending = sorted(on_time)
    trained = 0.0
    step = 0
    while step < run.preset.max_num_iterations:
        t0 = time.perf_counter()
        optimise(run, step, log=lambda line: print(f"t={trained:6.1f}s {line}", flush=True), log_every=log_every)
        trained += time.perf_counter() - t0
        step += 1
        while pending and trained >= pending[0]:
            if callback is not None:
                callback(pending.pop(0), step)
            else:
                pending.pop(0)
        if seconds is not None and trained >= seconds:
            break
    for t in pending:
        if callback is not None:
            callback(t, step)
    return step


# ---------------------------------------------------------------------------------------------- evaluation
def mesh_and_evaluate(core: PMNICore, data_dir: Path, data: MultiViewNormalData, heldout: Sequence[int], downscale: int, resolution: int = 256) -> Dict:
    from pmni_method.evaluation import evaluate  # pylint: disable=import-outside-toplevel
    from pmni_method.export import extract_mesh, write_mesh_atomic  # pylint: disable=import-outside-toplevel

    core.eval()
    mesh = extract_mesh(lambda x: core.field.sdf(x)[:, 0], resolution=resolution, normalisation=data.normalisation)
    with tempfile.TemporaryDirectory() as tmp:
        path = write_mesh_atomic(mesh, Path(tmp) / "mesh.ply")
        metrics = evaluate(path, data_dir, heldout_views=list(heldout), downscale_factor=downscale)
    return metrics


def summarise(metrics: Dict) -> Dict:
    geo, nrm = metrics["geometry"], metrics["normals"]
    out = {
        "chamfer_world": geo.get("chamfer"),
        "chamfer_pct_diag": geo.get("chamfer_rel_bbox_percent"),
        "fscore": geo.get("fscore"),
    }
    for key in ("heldout", "all"):
        if isinstance(nrm.get(key), dict):
            out[f"normals_{key}"] = {k: v for k, v in nrm[key].items() if not isinstance(v, (list, dict))}
    return out


# ---------------------------------------------------------------------------------------------- baseline
def plain_neus_step(core: PMNICore, opt: torch.optim.Optimizer, batch: Dict, ray_idx, t_starts, t_ends) -> float:
    """A textbook autodiff NeuS step on given samples: SDF, double-backward gradient, alpha, composite, losses."""
    o, d = batch["origins"], batch["directions"]
    n = o.shape[0]
    t_mid = 0.5 * (t_starts + t_ends)
    x = (o[ray_idx] + d[ray_idx] * t_mid[:, None]).requires_grad_(True)
    sdf = core.field.sdf(x)
    (grad,) = torch.autograd.grad(sdf, x, torch.ones_like(sdf), create_graph=True)
    alpha = neus_alpha(sdf[:, 0], grad, d[ray_idx], t_ends - t_starts, core.inv_s())
    w, _ = render_weights(alpha, ray_idx, n, backend="torch")
    normal = accumulate(grad / grad.norm(dim=-1, keepdim=True).clamp(min=1e-8), w, ray_idx, n)
    acc = accumulate(torch.ones_like(t_mid), w, ray_idx, n)
    fg = batch["fg_mask"]
    loss = ((normal - batch["normal"]).square().sum(-1, keepdim=True) * fg).sum() / fg.sum().clamp(min=1)
    loss = loss + 5 * torch.nn.functional.binary_cross_entropy(acc.clamp(1e-3, 1 - 1e-3), fg)
    loss = loss + ((grad.norm(dim=-1) - 1) ** 2).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach())


def run_throughput(args: argparse.Namespace) -> None:
    preset = core_preset(args.preset)
    data = load_diligent_mv(Path(args.data), downscale_factor=args.downscale)
    store = RayStore(data.subset(split_indices(data.view_ids, args.heldout, "train")), seed=0)
    torch.manual_seed(0)
    core = PMNICore(preset.core)
    opt, sched = make_optimizer(core, preset)
    rays = args.rays or preset.train_num_rays_per_batch
    # Warm up into a representative state (grid built, a few levels on, the surface roughly in place).
    for step in range(args.warmup):
        train_step(core, opt, sched, store, rays, step)
    results: Dict[str, List[float]] = {"ours": [], "baseline": [], "fd": [], "autodiff": []}
    samples: List[float] = []
    baseline_samples: List[float] = []
    step = args.warmup
    for rep in range(args.repeats):
        # Interleave the variants so that load from other processes hits all of them alike.
        batch = store.sample(rays)
        core.train()
        core.before_train_step(step)
        t0 = time.perf_counter()
        result = core_train_step(core, batch)
        out, total = result.outputs, sum(result.losses.values())
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        results["ours"].append(time.perf_counter() - t0)
        samples.append(float(out["num_samples"].mean()))
        # The baseline gets the same rays and every sample the occupancy grid marches (it has no pruning pass).
        o, d = batch["origins"], batch["directions"]
        near, far = sphere_near_far(o, d)
        ri, ts, te = core.grid.march(o, d, near, far, core.step_size(), stratified=True)
        baseline_samples.append(ri.numel() / rays)
        t0 = time.perf_counter()
        plain_neus_step(core, opt, batch, ri, ts, te)
        results["baseline"].append(time.perf_counter() - t0)
        for method in ("finite_difference", "autodiff"):
            core.field.config.gradient_method = method
            t0 = time.perf_counter()
            total = sum(core_train_step(core, batch).losses.values())
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
            results["fd" if method == "finite_difference" else "autodiff"].append(time.perf_counter() - t0)
        core.field.config.gradient_method = "analytic"
        step += 1
    med = {k: float(np.median(v)) for k, v in results.items()}
    print(json.dumps({
        "preset": args.preset,
        "rays_per_batch": rays,
        "torch_threads": torch.get_num_threads(),
        "samples_per_ray_ours": float(np.mean(samples)),
        "ours_it_per_s": 1.0 / med["ours"],
        "ours_rays_per_s": rays / med["ours"],
        "baseline_note": "plain autodiff NeuS on the same rays, all marched samples (no pruning), double backward",
        "samples_per_ray_baseline": float(np.mean(baseline_samples)),
        "baseline_it_per_s": 1.0 / med["baseline"],
        "speedup_vs_plain_neus": med["baseline"] / med["ours"],
        "fd_it_per_s": 1.0 / med["fd"],
        "autodiff_it_per_s": 1.0 / med["autodiff"],
        "analytic_over_fd": med["fd"] / med["ours"],
        "analytic_over_autodiff": med["autodiff"] / med["ours"],
        "fd_over_autodiff": med["autodiff"] / med["fd"],
        "peak_rss_mib": peak_rss_mib(),
    }, indent=2))


def run_quality(args: argparse.Namespace) -> None:
    data_dir = Path(args.data)
    data = load_diligent_mv(data_dir, downscale_factor=args.downscale)
    train_data = data.subset(split_indices(data.view_ids, args.heldout, "train"))
    preset = core_preset(args.preset)
    if args.iterations:
        preset = with_iterations(preset, args.iterations)
    if args.rays:
        preset.train_num_rays_per_batch = args.rays
    preset = apply_core_settings(preset, args.set or [])
    schedule = resolution_schedule(args)
    run = build_run(preset, train_data, seed=args.seed, resolution_schedule=schedule)
    print(run.rays.describe(preset.train_num_rays_per_batch, run.core.total_steps), flush=True)
    report = []

    def callback(t: float, step: int) -> None:
        t0 = time.perf_counter()
        m = summarise(mesh_and_evaluate(run.core, data_dir, data, args.heldout, args.downscale, args.mesh_resolution))
        m.update({"train_seconds": t, "step": step, "eval_seconds": time.perf_counter() - t0})
        report.append(m)
        print("EVAL", json.dumps(m), flush=True)

    seconds = args.minutes * 60.0
    train_plain(run, seconds=seconds, on_time=[60.0 * m for m in args.eval_at], callback=callback, log_every=args.log_every)
    print(json.dumps({
        "preset": args.preset,
        "iterations": preset.max_num_iterations,
        "rays": preset.train_num_rays_per_batch,
        "resolution_schedule": dataclasses.asdict(schedule) if schedule.enabled else None,
        "report": report,
        "peak_rss_mib": peak_rss_mib(),
    }, indent=2))


def sphere_dataset(num_views: int = 12, size: int = 64, radius: float = 0.6) -> MultiViewNormalData:
    """Analytic sphere of ``radius`` (normalised frame) seen by a ring of cameras; exact normals and masks."""
    from pmni_method import cameras  # pylint: disable=import-outside-toplevel

    c2w = cameras.ring_poses(num_views, radius=4.0, elevation_deg=np.linspace(-20, 30, num_views))
    focal = size * 2.0
    K = np.array([[focal, 0, (size - 1) / 2], [0, focal, (size - 1) / 2], [0, 0, 1.0]])
    normals = np.zeros((num_views, size, size, 3), np.float32)
    masks = np.zeros((num_views, size, size), bool)
    depths = np.zeros((num_views, size, size), np.float32)
    for v in range(num_views):
        o, d = cameras.pixel_rays(K, c2w[v], size, size)
        b = (o * d).sum(-1)
        disc = b * b - ((o * o).sum(-1) - radius**2)
        hit = disc > 0
        t = -b - np.sqrt(np.clip(disc, 0, None))
        p = o + d * t[:, None]
        n = p / radius
        normals[v].reshape(-1, 3)[hit] = n[hit]
        masks[v].reshape(-1)[hit] = True
        z = (p - c2w[v][:3, 3]) @ c2w[v][:3, 2]
        depths[v].reshape(-1)[hit] = z[hit] * (1.0 + 0.2 * v)  # per-view unknown scale
    return MultiViewNormalData(
        data_dir=Path("."), view_ids=list(range(num_views)), K=np.repeat(K[None], num_views, 0), c2w=c2w,
        normals=normals, masks=masks, normalisation=cameras.Normalisation(np.eye(4)), depths=depths,
    )


def run_sphere(args: argparse.Namespace) -> None:
    """Plain-loop version of the end-to-end test: a sphere of radius 0.6 in ~1 minute."""
    data = sphere_dataset()
    preset = core_preset("pmni-fast")
    preset = with_iterations(preset, args.iterations or 400)
    preset.train_num_rays_per_batch = args.rays or 512
    run = build_run(preset, data, seed=0)
    t0 = time.perf_counter()
    train_plain(run, seconds=args.minutes * 60.0, log_every=args.log_every)
    run.core.eval()
    pts = torch.randn(20000, 3)
    pts = pts / pts.norm(dim=-1, keepdim=True) * 0.6
    with torch.no_grad():
        err = run.core.field.sdf(pts).abs()
    # Surface error along the normal ~ |sdf| at true surface points (the SDF is close to a distance there).
    print(json.dumps({"train_seconds": time.perf_counter() - t0, "mean_abs_sdf_on_true_sphere": float(err.mean()), "max": float(err.max())}))


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["throughput", "quality", "sphere"])
    parser.add_argument("--preset", default="pmni-fast")
    parser.add_argument("--data", default="")
    parser.add_argument("--downscale", type=int, default=4)
    parser.add_argument("--heldout", type=int, nargs="*", default=[2, 6, 10, 14, 18])
    parser.add_argument("--rays", type=int, default=0)
    parser.add_argument("--iterations", type=int, default=0)
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--eval-at", type=float, nargs="*", default=[1, 2, 3, 4, 5])
    parser.add_argument("--mesh-resolution", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-every", type=int, default=100)
    parser.add_argument("--set", nargs="*", help="override core config fields, e.g. sampler.update_every=16")
    add_resolution_schedule_arguments(parser)  # quality mode, as train_core has them
    args = parser.parse_args(argv)
    {"throughput": run_throughput, "quality": run_quality, "sphere": run_sphere}[args.mode](args)


if __name__ == "__main__":
    main()
