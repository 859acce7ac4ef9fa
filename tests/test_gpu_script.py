"""benchmarks/gpu.sh: its dry run (CPU, tiny dataset, a few steps) runs every phase and writes a summary with all
the numbers; the real run's time caps fit the 8 minutes of one device call."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu.sh"
PHASES = ("deps", "equivalence", "synth", "throughput", "calibrated", "pose_free")
METHODS = ("analytic", "autodiff", "finite_difference")


def _budget(*flags: str) -> dict:
    out = subprocess.run(["bash", str(SCRIPT), "--print-budget", *flags], capture_output=True, text=True, check=True)
    return {k: float(v) for k, v in (line.split("=") for line in out.stdout.split())}


def test_real_run_caps_fit_eight_minutes() -> None:
    b = _budget()
    caps = [b[k] for k in b if k.startswith("CAP_")]
    assert len(caps) == 7
    assert sum(caps) <= b["TOTAL_CAP"] < 480
    assert b["TRAIN_BUDGET"] < b["WALL_CAP"] < b["CAP_CALIBRATED"] and b["WALL_CAP"] < b["CAP_POSE_FREE"]


def test_unknown_argument_is_refused() -> None:
    out = subprocess.run(["bash", str(SCRIPT), "--bogus"], capture_output=True, text=True)
    assert out.returncode == 2 and "unknown argument --bogus" in out.stderr


@pytest.fixture(scope="module")
def dry_run(shared_meshes: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    out = tmp_path_factory.mktemp("gpu-out")
    env = dict(
        os.environ, PMNI_GPU_OUT=str(out), PMNI_PYTHON=sys.executable, PMNI_GPU_MESH=str(shared_meshes / "stanford-bunny.obj"),
        PMNI_GPU_CARRY=str(out / "no-carry"),  # the test's own environment has the dependencies
        PYTHONPATH=str(ROOT), OUT="",
    )
    proc = subprocess.run(["bash", str(SCRIPT), "--dry-run"], capture_output=True, text=True, env=env, timeout=420, cwd=ROOT)
    return proc, out


def test_dry_run_writes_a_complete_summary(dry_run: tuple) -> None:
    proc, out = dry_run
    log = proc.stdout + proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert proc.returncode == 0, log
    assert summary["dry_run"] is True and summary["device"] == "cpu"
    cuda = summary["cuda_available"]
    for name in PHASES:
        expected = "skipped" if name == "equivalence" and not cuda else "ok"
        assert summary["phases"][name]["status"] == expected, (name, summary["phases"][name], log)
    if not cuda:
        assert "CUDA" in summary["phases"]["equivalence"]["note"]
    assert summary["total_seconds"] < summary["time_cap_s"] <= 240
    assert summary["deps"]["nerfstudio_imported"] is False and summary["deps"]["cv2_imported"] is False
    for method in METHODS:
        assert summary["rays_per_s"][method] > 0, summary["rays_per_s"]
        assert summary["samples_per_ray"][method] > 0, summary["samples_per_ray"]
    assert summary["synth"]["views"] == 8


def test_dry_run_trains_and_evaluates_both_starts(dry_run: tuple) -> None:
    _, out = dry_run
    summary = json.loads((out / "summary.json").read_text())
    for name, pose_init in (("calibrated", "gt"), ("pose_free", "ring")):
        run = summary[name]
        assert run["pose_init"] == pose_init and run["steps"] > 0 and run["evals"], run
        evals = run["evals"]
        assert all(e["train_seconds"] <= run["train_seconds"] + 1e-9 for e in evals)
        scored = [e for e in evals if e.get("chamfer_pct_diag") is not None]
        assert scored or all("evaluation_error" in e for e in evals), evals
        for e in scored:
            assert e["chamfer_pct_diag"] > 0 and e["chamfer"] > 0
        best = summary[f"{name}_best_chamfer_pct_diag"]
        assert best == (min(e["chamfer_pct_diag"] for e in scored) if scored else None)
        ttt = summary[f"{name}_time_to_threshold_s"]
        assert ttt is None or ttt <= run["train_seconds"]
    assert "poses" in summary["pose_free"]["evals"][-1]  # pose errors of the ring start after refinement
    assert summary["calibrated"]["heldout_views"] == [2, 5] and summary["calibrated"]["train_views"] == 6
    phases = (out / "phases.tsv").read_text().splitlines()
    assert [line.split("\t")[0] for line in phases] == list(PHASES)
    for name in PHASES:
        assert (out / f"{name}.log").is_file()
