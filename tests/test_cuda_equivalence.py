"""CUDA against CPU: one core (same weights, occupancy grid and step), the same rays and targets, through render,
losses and backward on both devices: outputs, losses and gradients agree within float32 tolerance. The CUDA tests
skip without CUDA; a CPU-against-CPU run checks the harness itself (and that it notices a perturbed model).

On a GPU machine without pytest (benchmarks/gpu.sh) run it as a plain script:
``python tests/test_cuda_equivalence.py [--json OUT.json]`` (exit 0: equal or skipped, 1: a difference).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any, Dict

import torch

try:
    import pytest
except ImportError:  # the plain-script run on a machine without pytest
    pytest = None

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pmni_method.models.core import PMNICore, core_config_for  # noqa: E402
from pmni_method.models.presets import core_preset  # noqa: E402

GRADIENT_METHODS = ("analytic", "autodiff", "finite_difference")
TOLERANCE = {"outputs_abs": 2e-4, "losses_rel": 1e-3, "gradients_rel": 2e-3, "sample_count_mismatch": 0.01}
"""Largest allowed: |difference| of per-ray outputs (unit-scale normals, accumulation, depth); relative difference
of loss terms and of each parameter group's gradient (norm of the difference over the norm); fraction of rays
whose sample counts differ (a sample on a grid-cell or pruning boundary may round either way)."""


def sphere_batch(num_rays: int, seed: int = 0, radius: float = 0.5) -> Dict[str, torch.Tensor]:
    """Rays from a shell at distance 2.5 toward points near the origin, with the analytic normals and mask of a
    sphere of ``radius`` as targets (CPU tensors)."""
    g = torch.Generator().manual_seed(seed)
    origins = torch.randn(num_rays, 3, generator=g)
    origins = 2.5 * origins / origins.norm(dim=-1, keepdim=True)
    aim = 0.8 * (torch.rand(num_rays, 3, generator=g) - 0.5)
    directions = aim - origins
    directions = directions / directions.norm(dim=-1, keepdim=True)
    b = (origins * directions).sum(-1)
    disc = b * b - (origins.square().sum(-1) - radius**2)
    hit = disc > 0
    t = -b - disc.clamp(min=0).sqrt()
    normal = (origins + directions * t[:, None]) / radius
    normal = torch.where(hit[:, None], normal, torch.zeros_like(normal))
    return {"origins": origins, "directions": directions, "normal": normal, "fg_mask": hit[:, None].float()}


def run_core(core: PMNICore, batch: Dict[str, torch.Tensor], step: int) -> Dict[str, Any]:
    device = next(core.parameters()).device
    b = {k: v.to(device) for k, v in batch.items()}
    core.eval()  # no stratified jitter, no random eikonal points: the same samples on both devices
    with torch.enable_grad():
        outputs = core.render(b["origins"], b["directions"])
        losses = core.losses(outputs, b, step)
        groups = core.param_groups()
        params = [p for name in groups for p in groups[name]]
        grads = torch.autograd.grad(sum(losses.values()), params, allow_unused=True)
    out: Dict[str, Any] = {k: outputs[k].detach().cpu() for k in ("normal", "accumulation", "depth", "num_samples")}
    out["losses"] = {k: float(v.detach()) for k, v in losses.items()}
    out["grads"] = {}
    i = 0
    for name in groups:
        parts = [(g if g is not None else torch.zeros_like(p)).reshape(-1) for p, g in zip(groups[name], grads[i:i + len(groups[name])])]
        out["grads"][name] = torch.cat(parts).detach().cpu().double()
        i += len(groups[name])
    return out


def compare(device_a: str = "cpu", device_b: str = "cuda", gradient_method: str = "analytic", num_rays: int = 1024,
            step: int = 300, seed: int = 0, perturb: float = 0.0) -> Dict[str, Any]:
    """Differences between one core on two devices (``perturb``: noise added to the second copy's MLP, to check
    that differences are seen). ``ok`` says whether all are within :data:`TOLERANCE`."""
    preset = core_preset("pmni-fast")
    config = core_config_for(preset.core, None, "cpu")  # pure-torch hash grid on both devices
    config = dataclasses.replace(config, sdf_field=dataclasses.replace(config.sdf_field, gradient_method=gradient_method))
    torch.manual_seed(seed)
    a = PMNICore(config).to(device_a)
    a.set_step(step)
    a.update_grid()
    b = PMNICore(config).to(device_b)
    b.load_state_dict(a.state_dict())
    b.set_step(step)
    if perturb:
        with torch.no_grad():
            for p in b.field.layers.parameters():
                p.add_(perturb * torch.randn_like(p))
    batch = sphere_batch(num_rays, seed)
    ra, rb = run_core(a, batch, step), run_core(b, batch, step)
    diff: Dict[str, Any] = {"devices": [device_a, device_b], "gradient_method": gradient_method, "rays": num_rays}
    diff["outputs_abs"] = max(float((ra[k] - rb[k]).abs().max()) for k in ("normal", "accumulation", "depth"))
    diff["sample_count_mismatch"] = float((ra["num_samples"] != rb["num_samples"]).float().mean())
    diff["samples_per_ray"] = float(ra["num_samples"].mean())
    diff["losses_rel"] = max(abs(ra["losses"][k] - rb["losses"][k]) / max(abs(ra["losses"][k]), 1e-12) for k in ra["losses"])
    diff["gradients_rel"] = max(
        float((ra["grads"][k] - rb["grads"][k]).norm() / ra["grads"][k].norm().clamp(min=1e-12)) for k in ra["grads"]
    )
    diff["ok"] = all(diff[k] <= TOLERANCE[k] for k in TOLERANCE)
    return diff


def _require_cuda() -> None:
    if not torch.cuda.is_available():
        pytest.skip("CUDA is not available")


def _parametrize(func):
    return pytest.mark.parametrize("method", GRADIENT_METHODS)(func) if pytest is not None else func


@_parametrize
def test_cuda_matches_cpu(method: str) -> None:
    _require_cuda()
    diff = compare("cpu", "cuda", method)
    assert diff["ok"], diff
    assert diff["samples_per_ray"] > 1.0, diff  # the rays actually reach the surface band


def test_harness_same_device_is_exact_and_sees_a_perturbation() -> None:
    same = compare("cpu", "cpu", num_rays=256)
    assert same["ok"] and same["outputs_abs"] == 0.0 and same["gradients_rel"] == 0.0, same
    perturbed = compare("cpu", "cpu", num_rays=256, perturb=1e-2)
    assert not perturbed["ok"], perturbed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="CUDA vs CPU equivalence of the core (plain-script run)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        result: Dict[str, Any] = {"status": "skipped", "reason": "CUDA is not available"}
    else:
        runs = [compare("cpu", "cuda", m) for m in GRADIENT_METHODS]
        result = {"status": "ok" if all(r["ok"] for r in runs) else "failed", "tolerance": TOLERANCE, "runs": runs,
                  "gpu": torch.cuda.get_device_name()}
    for r in result.get("runs", []):
        print(f"equivalence {r['gradient_method']:17s} {'ok' if r['ok'] else 'DIFFERENT'}: outputs {r['outputs_abs']:.2e} "
              f"losses {r['losses_rel']:.2e} gradients {r['gradients_rel']:.2e} samples {r['sample_count_mismatch']:.4f}")
    print(f"equivalence: {result['status']}" + (f" ({result['reason']})" if "reason" in result else ""))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 1 if result["status"] == "failed" else 0


if __name__ == "__main__":
    sys.exit(main())
