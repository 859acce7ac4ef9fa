"""The phases of benchmarks/gpu.sh: a synthetic dataset, train_core runs evaluated at checkpoints of training time,
rays/s per SDF gradient method, and the summary JSON. Needs only the core's light dependencies (no nerfstudio).

    python benchmarks/gpu_bench.py synth --mesh bunny.obj --output DIR --json OUT/synth.json
    python benchmarks/gpu_bench.py throughput --data DIR --device cuda --json OUT/throughput.json
    python benchmarks/gpu_bench.py train --data DIR --device cuda --json OUT/calibrated.json --heldout 2 7 12 17
    python benchmarks/gpu_bench.py train --data DIR --device cuda --json OUT/pose_free.json --pose-init ring \\
        --normal-dir normal_camera_space_GT
    python benchmarks/gpu_bench.py summary --out OUT

Training time excludes the evaluations (mesh + pmni-eval at each ``--eval-at`` second); CUDA is synchronised
around every timed step. Each phase rewrites its JSON after every result, so a phase killed by its time cap still
leaves what it measured.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pmni_method.atomic import write_json_atomic  # noqa: E402

# torch and the core are imported by the phases that train: synth and summary start in a second, not ten.

GRADIENT_METHODS = ("analytic", "autodiff", "finite_difference")
PHASES = ("deps", "equivalence", "synth", "throughput", "calibrated", "pose_free")


def clean(obj: Any) -> Any:
    """``obj`` with non-finite floats as None (the JSON files are strict)."""
    if isinstance(obj, dict):
        return {str(k): clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(float(obj)) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def save(obj: Dict[str, Any], path: Optional[Path]) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(clean(obj), path)


def sync(device) -> None:
    import torch  # pylint: disable=import-outside-toplevel

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_info(device) -> Dict[str, Any]:
    import torch  # pylint: disable=import-outside-toplevel

    info: Dict[str, Any] = {"device": str(device), "torch": torch.__version__, "cuda_available": torch.cuda.is_available()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["peak_cuda_memory_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return info


def load_training_data(args: argparse.Namespace):
    from pmni_method.data.diligent_mv import load_diligent_mv, split_indices  # pylint: disable=import-outside-toplevel
    from pmni_method.poses.starts import PoseInitConfig  # pylint: disable=import-outside-toplevel

    checks = "error" if args.pose_init == "gt" else "warn"  # stored-pose checks mean nothing from a ring start
    data = load_diligent_mv(
        args.data, normal_dir=args.normal_dir, downscale_factor=args.downscale,
        pose_init=PoseInitConfig(pose_init=args.pose_init), data_checks=checks,
    )
    return data.subset(split_indices(data.view_ids, args.heldout, "train"))


def make_preset(args: argparse.Namespace):
    from pmni_method.models.presets import core_preset, with_iterations  # pylint: disable=import-outside-toplevel

    preset = core_preset(args.preset)
    if args.iterations:
        preset = with_iterations(preset, args.iterations)
    if args.rays:
        preset.train_num_rays_per_batch = args.rays
    if args.tiny:  # the dry run checks the plumbing: a small grid and hash table keep CPU steps short
        preset.core.sampler.grid_resolution = 32
        preset.core.sdf_field.log2_hashmap_size = 14
    return preset


# ---------------------------------------------------------------------------------------------- phases
def cmd_deps(args: argparse.Namespace) -> int:
    """Import everything the phases need (a missing module fails here, named) and print the versions."""
    import importlib  # pylint: disable=import-outside-toplevel
    import platform  # pylint: disable=import-outside-toplevel

    import torch  # pylint: disable=import-outside-toplevel

    names = ("scipy", "trimesh", "mcubes", "pypose", "png", "OpenEXR", "psutil", "rtree", "pmni_method.evaluation",
             "pmni_method.export", "pmni_method.synth")
    mods = {name: importlib.import_module(name) for name in names}
    scipy, trimesh = mods["scipy"], mods["trimesh"]
    info = {
        "python": platform.python_version(), "machine": platform.machine(), "torch": torch.__version__,
        "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(), "numpy": np.__version__,
        "scipy": scipy.__version__, "trimesh": trimesh.__version__, "embree": bool(trimesh.ray.has_embree),
        "nerfstudio_imported": "nerfstudio" in sys.modules, "cv2_imported": "cv2" in sys.modules,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }
    print("deps: " + ", ".join(f"{k} {v}" for k, v in info.items()))
    save(info, args.json)
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from pmni_method.synth import DILIGENT_FOCAL, SynthConfig, render_dataset  # pylint: disable=import-outside-toplevel

    config = SynthConfig(
        mesh=args.mesh, output=args.output, num_views=args.views, width=args.width, height=args.height,
        focal=DILIGENT_FOCAL * args.width / 612.0, world_scale=1000.0, overwrite=True,
    )
    start = time.perf_counter()
    render_dataset(config)
    result = {"seconds": time.perf_counter() - start, "views": args.views, "width": args.width, "height": args.height}
    print(f"synth: {args.views} views {args.width}x{args.height} in {result['seconds']:.1f} s -> {args.output}")
    save(result, args.json)
    return 0


def cmd_throughput(args: argparse.Namespace) -> int:
    import torch  # pylint: disable=import-outside-toplevel

    from pmni_method.models.step import render_rays  # pylint: disable=import-outside-toplevel
    from pmni_method.train_core import build_run, optimise  # pylint: disable=import-outside-toplevel

    device = torch.device(args.device)
    preset = make_preset(args)
    run = build_run(preset, load_training_data(args), device, args.pose_init, seed=args.seed)
    rays = preset.train_num_rays_per_batch
    start = time.perf_counter()
    for step in range(args.warmup):
        optimise(run, step)
    sync(device)
    result: Dict[str, Any] = {
        "preset": args.preset + (" (tiny)" if args.tiny else ""), "rays_per_batch": rays, "warmup_steps": args.warmup, "timed_steps": args.steps,
        "warmup_seconds": time.perf_counter() - start, "methods": {}, **device_info(device),
    }
    # Every method starts from the same warmed-up state (model, optimiser, schedule).
    snapshot = copy.deepcopy((run.core.state_dict(), run.optimizer.state_dict(), run.scheduler.state_dict()))
    for method in GRADIENT_METHODS:
        run.core.load_state_dict(snapshot[0])
        run.optimizer.load_state_dict(snapshot[1])
        run.scheduler.load_state_dict(snapshot[2])
        run.core.field.config.gradient_method = method
        step = args.warmup
        for _ in range(args.untimed):  # the first calls of a code path compile or allocate
            optimise(run, step)
            step += 1
        sync(device)
        t0 = time.perf_counter()
        for _ in range(args.steps):
            optimise(run, step)
            step += 1
        sync(device)
        seconds = time.perf_counter() - t0
        run.core.train()  # training-mode samples (stratified), without the backward pass
        run.core.before_train_step(step)
        with torch.no_grad():
            outputs = render_rays(run.core, run.store.sample(rays), run.context)
        samples = float(outputs["num_samples"].float().mean())
        result["methods"][method] = {
            "rays_per_s": rays * args.steps / seconds,
            "it_per_s": args.steps / seconds,
            "samples_per_ray": samples,
            "samples_per_s": samples * rays * args.steps / seconds,
        }
        print(f"throughput {method:17s} {rays * args.steps / seconds:12.0f} rays/s {args.steps / seconds:8.2f} it/s "
              f"{samples:6.1f} samples/ray", flush=True)
        save(result, args.json)
    run.core.field.config.gradient_method = "analytic"
    result.update(device_info(device))
    save(result, args.json)
    return 0


def evaluate_now(run, data, args: argparse.Namespace, scratch: Path) -> Dict[str, Any]:
    """Mesh the current SDF and score it as train_core's save_outputs does (pose-free: after the camera alignment)."""
    from pmni_method.errors import EvaluationInputError  # pylint: disable=import-outside-toplevel
    from pmni_method.evaluation import evaluate  # pylint: disable=import-outside-toplevel
    from pmni_method.export import extract_mesh, write_mesh_atomic  # pylint: disable=import-outside-toplevel
    from pmni_method.poses.maths import pose_errors  # pylint: disable=import-outside-toplevel

    import torch  # pylint: disable=import-outside-toplevel

    out: Dict[str, Any] = {}
    run.core.eval()
    with torch.no_grad():
        mesh = extract_mesh(lambda x: run.core.field.sdf(x)[:, 0], resolution=args.mesh_resolution,
                            normalisation=data.normalisation)
    alignment = None
    if run.context.refining and data.gt_c2w is not None:
        report = pose_errors(run.context.poses.refined_c2w(), data.gt_c2w)
        out["poses"] = {k: v for k, v in report.items() if not isinstance(v, list)}
        alignment = data.normalisation.transform_to_world(np.asarray(report["alignment"]))
    if len(mesh.faces) == 0:
        out["evaluation_error"] = "empty mesh"
        return out
    path = write_mesh_atomic(mesh, scratch / "mesh.ply")
    try:
        # No ICP refinement (pmni-eval's refined_alignment): on an early mesh it alone takes minutes.
        metrics = evaluate(path, data.data_dir, heldout_views=args.heldout, alignment=alignment, align_to_poses=False,
                           downscale_factor=args.downscale, require_hits=False, refine_alignment=False)
    except EvaluationInputError as err:
        out["evaluation_error"] = str(err)
        return out
    geometry = metrics["geometry"]
    out.update(chamfer=geometry.get("chamfer"), chamfer_pct_diag=geometry.get("chamfer_rel_bbox_percent"),
               fscore=geometry.get("fscore"))
    if geometry.get("chamfer") is None:  # no mask ray hits the mesh: far off (an early pose-free mesh) or empty
        out["evaluation_error"] = "; ".join(metrics.get("warnings") or []) or "no mask ray hits the mesh"
    heldout = (metrics.get("normals") or {}).get("heldout")
    if isinstance(heldout, dict):
        out["heldout_normals"] = {k: v for k, v in heldout.items() if not isinstance(v, (list, dict))}
    return out


def cmd_train(args: argparse.Namespace) -> int:
    import torch  # pylint: disable=import-outside-toplevel

    from pmni_method.train_core import build_run, optimise  # pylint: disable=import-outside-toplevel

    device = torch.device(args.device)
    wall0 = time.perf_counter()
    data = load_training_data(args)
    preset = make_preset(args)
    run = build_run(preset, data, device, args.pose_init, seed=args.seed)
    report: Dict[str, Any] = {
        "preset": args.preset + (" (tiny)" if args.tiny else ""), "iterations": preset.max_num_iterations,
        "rays": preset.train_num_rays_per_batch,
        "pose_init": args.pose_init, "normal_dir": args.normal_dir, "downscale": args.downscale,
        "heldout_views": list(args.heldout), "train_views": len(data.view_ids), "budget_s": args.budget,
        "wall_cap_s": args.wall_cap, "threshold_pct_diag": args.threshold, "time_to_threshold_s": None,
        "step_at_threshold": None, "evals": [], "setup_seconds": time.perf_counter() - wall0, **device_info(device),
    }
    pending = sorted(float(t) for t in args.eval_at if t <= args.budget) or [args.budget]
    trained, step, skipped, losses = 0.0, 0, 0, {}
    with tempfile.TemporaryDirectory() as tmp:
        while step < preset.max_num_iterations:
            sync(device)
            t0 = time.perf_counter()
            losses = optimise(run, step)
            sync(device)
            trained += time.perf_counter() - t0
            step += 1
            skipped = skipped + 1 if "skipped" in losses else 0
            if skipped >= 10:
                report["diverged_at_step"] = step
                break
            out_of_time = trained >= args.budget or time.perf_counter() - wall0 >= args.wall_cap
            due = bool(pending) and trained >= pending[0]
            if not (due or out_of_time or step == preset.max_num_iterations):
                continue
            while pending and trained >= pending[0]:
                pending.pop(0)
            t_eval = time.perf_counter()
            entry = {"train_seconds": trained, "step": step, "it_per_s": step / trained,
                     "losses": {k: v for k, v in losses.items()}, **evaluate_now(run, data, args, Path(tmp))}
            entry["eval_seconds"] = time.perf_counter() - t_eval
            report["evals"].append(entry)
            pct = entry.get("chamfer_pct_diag")
            print(f"EVAL t={trained:7.1f}s step={step:6d} chamfer={pct if pct is None else round(pct, 4)}% of diag "
                  + (f"rot={entry['poses']['rotation_deg_mean']:.2f}deg " if "poses" in entry else "")
                  + f"(eval {entry['eval_seconds']:.1f}s)", flush=True)
            if report["time_to_threshold_s"] is None and pct is not None and pct <= args.threshold:
                report["time_to_threshold_s"], report["step_at_threshold"] = trained, step
            report.update(steps=step, train_seconds=trained, wall_seconds=time.perf_counter() - wall0)
            save(report, args.json)
            if out_of_time or (args.stop_at_threshold and report["time_to_threshold_s"] is not None):
                break
    report.update(steps=step, train_seconds=trained, wall_seconds=time.perf_counter() - wall0, **device_info(device))
    save(report, args.json)
    ttt = report["time_to_threshold_s"]
    print(f"train {args.pose_init}: {step} steps in {trained:.1f} s; time to Chamfer <= {args.threshold}% of the bbox "
          f"diagonal: " + (f"{ttt:.1f} s (step {report['step_at_threshold']})" if ttt is not None else "not reached"))
    return 3 if "diverged_at_step" in report else 0


def read_json(path: Path) -> Optional[Dict[str, Any]]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def cmd_summary(args: argparse.Namespace) -> int:
    """summary.json from phases.tsv (name, rc or 'skipped', seconds, cap, note) and each phase's JSON."""
    out = args.out
    phases: Dict[str, Any] = {}
    lines = (out / "phases.tsv").read_text().splitlines() if (out / "phases.tsv").is_file() else []
    for line in lines:
        name, rc, seconds, cap, *note = line.split("\t") + [""]
        if rc == "skipped" or (read_json(out / f"{name}.json") or {}).get("status") == "skipped":
            status = "skipped"  # by the script, or by the phase itself (the equivalence test without CUDA)
            note = note if note[0] else [(read_json(out / f"{name}.json") or {}).get("reason", "")]
        else:
            status = {"0": "ok", "124": "timed_out", "137": "timed_out"}.get(rc, "failed")
        phases[name] = {"status": status, "rc": None if rc == "skipped" else int(rc), "seconds": float(seconds),
                        "cap_s": float(cap), "note": note[0]}
    deps = read_json(out / "deps.json") or {}
    summary: Dict[str, Any] = {
        "dry_run": args.dry_run, "device": args.device, "torch": deps.get("torch"),
        "cuda_available": deps.get("cuda_available"), "gpu": deps.get("gpu"),
        "total_seconds": sum(p["seconds"] for p in phases.values()), "time_cap_s": args.time_cap,
        "phases": {name: phases.get(name, {"status": "not_run"}) for name in PHASES},
    }
    for name in PHASES:
        summary[name] = read_json(out / f"{name}.json")
    tp = summary.get("throughput") or {}
    summary["rays_per_s"] = {m: v.get("rays_per_s") for m, v in (tp.get("methods") or {}).items()}
    summary["samples_per_ray"] = {m: v.get("samples_per_ray") for m, v in (tp.get("methods") or {}).items()}
    for name in ("calibrated", "pose_free"):
        run = summary.get(name) or {}
        evals: List[Dict[str, Any]] = run.get("evals") or []
        summary[f"{name}_time_to_threshold_s"] = run.get("time_to_threshold_s")
        summary[f"{name}_best_chamfer_pct_diag"] = min(
            (e["chamfer_pct_diag"] for e in evals if e.get("chamfer_pct_diag") is not None), default=None)
    save(summary, out / "summary.json")
    print(json.dumps({k: v for k, v in summary.items() if k not in PHASES}, indent=1))
    return 0


# ---------------------------------------------------------------------------------------------- command line
def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("deps")
    s = sub.add_parser("synth")
    s.add_argument("--mesh", type=Path, required=True)
    s.add_argument("--output", type=Path, required=True)
    s.add_argument("--views", type=int, default=20)
    s.add_argument("--width", type=int, default=612)
    s.add_argument("--height", type=int, default=512)
    for name in ("throughput", "train"):
        p = sub.add_parser(name)
        p.add_argument("--data", type=Path, required=True)
        p.add_argument("--device", default="cuda")
        p.add_argument("--preset", default="pmni", choices=["pmni", "pmni-fast"])
        p.add_argument("--iterations", type=int, default=0, help="run length (0: the preset's)")
        p.add_argument("--rays", type=int, default=0, help="rays per batch (0: the preset's)")
        p.add_argument("--downscale", type=int, default=1)
        p.add_argument("--heldout", type=int, nargs="*", default=[])
        p.add_argument("--pose-init", default="gt", choices=["gt", "ring", "noisy"])
        p.add_argument("--normal-dir", default="normal_world_space_GT")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--tiny", action="store_true", help="small occupancy grid and hash table (the dry run)")
    t = sub.choices["throughput"]
    t.add_argument("--warmup", type=int, default=200)
    t.add_argument("--steps", type=int, default=30)
    t.add_argument("--untimed", type=int, default=2, help="steps per method before timing")
    r = sub.choices["train"]
    r.add_argument("--budget", type=float, default=100.0, help="training seconds (evaluations not counted)")
    r.add_argument("--wall-cap", type=float, default=140.0, help="stop after this many wall seconds, evaluations too")
    r.add_argument("--eval-at", type=float, nargs="*", default=[10, 20, 30, 45, 60, 80, 100])
    r.add_argument("--threshold", type=float, default=0.2, help="Chamfer target, percent of the GT bbox diagonal")
    r.add_argument("--stop-at-threshold", action="store_true")
    r.add_argument("--mesh-resolution", type=int, default=256)
    for p in (d, s, t, r):
        p.add_argument("--json", type=Path, default=None)
    m = sub.add_parser("summary")
    m.add_argument("--out", type=Path, required=True)
    m.add_argument("--device", default="cuda")
    m.add_argument("--dry-run", action="store_true")
    m.add_argument("--time-cap", type=float, default=0.0)
    args = parser.parse_args(argv)
    return {"deps": cmd_deps, "synth": cmd_synth, "throughput": cmd_throughput, "train": cmd_train, "summary": cmd_summary}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
