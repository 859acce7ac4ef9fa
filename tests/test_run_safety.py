"""A re-run, a Ctrl-C, a SIGTERM or a second job never destroys a finished run or a checkpoint.

Real ``ns-train`` processes on the tiny sphere: interrupted with SIGINT / SIGTERM mid-run (one line, exit 130 / 143,
a checkpoint at the interrupted step), continued with ``--resume True`` to the end after SIGINT, then resumed again
once finished (nothing written, exit 0); a run another process holds is refused; two fresh runs started in the same second land
in two folders. In process: a checkpoint is never written below the loaded step, and a NaN that reaches the mask
loss's cross-entropy takes the non-finite guard's path.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Dict, List, Tuple

import pytest
import torch
import yaml

from helpers import ns_train_args, tiny_config
from pmni_method import runlock, runner
from pmni_method.checkpoints import RUN_INFO_KEY, TMP_DIR_NAME, checkpoint_steps
from pmni_method.errors import EXIT_DIVERGED


ITERATIONS = 40


def ns_train(data: Path, output: Path, *extra: str, iterations: int = ITERATIONS, save_every: int = 10) -> List[str]:
    return ns_train_args(data, output, *extra, iterations=iterations, save_every=save_every)


def environment() -> Dict[str, str]:
    return {**os.environ, "PYTHONWARNINGS": "ignore", "COLUMNS": "400", "OMP_NUM_THREADS": "1"}


def run(args: List[str]) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, env=environment(), timeout=300)


def pmni_lines(text: str) -> List[str]:
    return [line for line in text.splitlines() if line.startswith("pmni:")]


def snapshot(folder: Path) -> Dict[str, Tuple[bytes, int]]:
    """Every file under ``folder`` with its bytes and modification time."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


def interrupt_mid_run(data: Path, output: Path, signum: int) -> Tuple[subprocess.CompletedProcess, Path]:
    """Start a run, send ``signum`` once its first periodic checkpoint (step 10) exists, wait for it to end."""
    proc = subprocess.Popen(
        ns_train(data, output), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment()
    )
    deadline = time.monotonic() + 240
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if list(output.glob("*/pmni-fast/*/nerfstudio_models/step-000000010.ckpt")):
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be interrupted"
        proc.send_signal(signum)
        stdout, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    (run_dir,) = output.glob("*/pmni-fast/*")
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, ""), run_dir


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_saves_the_step_then_resume_finishes_and_a_finished_run_is_left_alone(
    sphere_dir: Path, tmp_path: Path, signum: int, code: int
):
    out, run_dir = interrupt_mid_run(sphere_dir, tmp_path / "out", signum)
    assert out.returncode == code, out.stdout[-3000:]
    assert "Traceback" not in out.stdout
    lines = pmni_lines(out.stdout)
    match = re.fullmatch(r"pmni: interrupted at step (\d+); saved (\S+); continue with --resume True", lines[-1])
    assert match is not None, lines
    step = int(match.group(1))
    assert 10 <= step < ITERATIONS - 1
    ckpt_dir = run_dir / "nerfstudio_models"
    assert checkpoint_steps(ckpt_dir) == [step] and Path(match.group(2)) == ckpt_dir / f"step-{step:09d}.ckpt"
    state = torch.load(ckpt_dir / f"step-{step:09d}.ckpt", map_location="cpu")
    assert state["step"] == step and state[RUN_INFO_KEY] == {"finished": False, "max_num_iterations": ITERATIONS}

    if signum != signal.SIGINT:
        return  # what follows does not depend on the signal: two process starts (about 20 s each) saved
    # Continue to the end: the same command plus --resume True.
    resumed = run(ns_train(sphere_dir, tmp_path / "out", "--resume", "True"))
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-3000:]
    assert f"Done loading Nerfstudio checkpoint from {ckpt_dir}/step-{step:09d}.ckpt" in resumed.stdout.replace("\n", "")
    assert checkpoint_steps(ckpt_dir) == [ITERATIONS - 1]
    final = torch.load(ckpt_dir / f"step-{ITERATIONS - 1:09d}.ckpt", map_location="cpu")
    assert final[RUN_INFO_KEY] == {"finished": True, "max_num_iterations": ITERATIONS}
    assert not list((run_dir / TMP_DIR_NAME).glob("*"))

    # A job script that always passes --resume True, run again after the end: nothing is written or deleted.
    before = snapshot(tmp_path / "out")
    again = run(ns_train(sphere_dir, tmp_path / "out", "--resume", "True"))
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    assert pmni_lines(again.stdout) == [f"pmni: run already complete at step {ITERATIONS - 1}: {run_dir}; nothing to "
                                        "do (a larger --max-num-iterations trains it further)"]
    assert snapshot(tmp_path / "out") == before
    assert [p.name for p in (tmp_path / "out").glob("*/pmni-fast/*")] == [run_dir.name]


def test_resume_refuses_a_run_another_process_holds(sphere_dir: Path, tmp_path: Path):
    out = run(ns_train(sphere_dir, tmp_path / "out", iterations=12, save_every=5))
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    (run_dir,) = (tmp_path / "out").glob("*/pmni-fast/*")
    before = snapshot(tmp_path / "out")
    runlock.acquire(run_dir)  # this test process stands in for a live training job on that folder
    try:
        refused = run(ns_train(sphere_dir, tmp_path / "out", "--resume", "True", iterations=24, save_every=5))
    finally:
        runlock.release(run_dir)
    assert refused.returncode == 2, (refused.stdout + refused.stderr)[-3000:]
    assert "Traceback" not in refused.stdout + refused.stderr
    assert pmni_lines(refused.stdout) == [
        f"pmni: --resume: {run_dir} is in use by process {os.getpid()}; wait for it to end or stop it first "
        "(one process per run folder)"
    ]
    assert snapshot(tmp_path / "out") == before


def test_two_runs_started_in_the_same_second_keep_their_own_folders(sphere_dir: Path, tmp_path: Path):
    # A fixed --timestamp makes the collision certain rather than a matter of timing.
    procs = {
        seed: subprocess.Popen(
            ns_train(sphere_dir, tmp_path / "out", "--machine.seed", str(seed), "--timestamp", "2026-01-01_000000",
                     iterations=8),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment(),
        )
        for seed in (1, 2)
    }
    for seed, proc in procs.items():
        stdout, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, stdout[-3000:]
    runs = sorted((tmp_path / "out").glob("*/pmni-fast/*"))
    assert [r.name for r in runs] == ["2026-01-01_000000", "2026-01-01_000000-2"]
    seeds = set()
    for r in runs:
        seeds.add(yaml.load((r / "config.yml").read_text(), Loader=yaml.Loader).machine.seed)
        assert checkpoint_steps(r / "nerfstudio_models") == [7]
    assert seeds == {1, 2}
    a, b = (torch.load(r / "nerfstudio_models/step-000000007.ckpt", map_location="cpu")["pipeline"] for r in runs)
    assert any(not torch.equal(a[k], b[k]) for k in a), "both folders hold the same run"


def test_no_checkpoint_below_the_loaded_step(sphere_dir: Path, tmp_path: Path):
    config = tiny_config(sphere_dir, tmp_path, iterations=6)
    config.steps_per_save = 3
    first = runner.train(config)
    ckpt_dir = first.trainer.checkpoint_dir
    again = tiny_config(sphere_dir, tmp_path, iterations=12)
    again.resume = True
    again.steps_per_save = 100
    trainer = again.setup(local_rank=0, world_size=1)
    trainer.setup()
    try:
        assert trainer._start_step == 6
        before = snapshot(ckpt_dir)
        assert trainer.save_checkpoint(0) is None  # what nerfstudio's _after_train does after zero iterations
        assert snapshot(ckpt_dir) == before
    finally:
        runlock.release(trainer.base_dir)


def test_nan_before_the_mask_cross_entropy_takes_the_guard_path(
    sphere_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
):
    from pmni_method.models import losses

    original = losses.mask_loss
    calls = [0]

    def poisoned(accumulation, fg_mask, eps=1e-3, weight=None):
        calls[0] += 1
        # From the third training call on the opacity is NaN, as after a learning rate of 1e30.
        return original(accumulation * float("nan") if calls[0] > 2 else accumulation, fg_mask, eps, weight)

    monkeypatch.setattr(losses, "mask_loss", poisoned)
    config = tiny_config(sphere_dir, tmp_path, iterations=40)
    config.pipeline.max_consecutive_skipped_steps = 3
    with pytest.raises(SystemExit) as exc:
        runner.train(config)
    assert exc.value.code == EXIT_DIVERGED
    assert checkpoint_steps(config.get_checkpoint_dir()) == [4]
    out = capsys.readouterr().out.replace("\n", " ")
    assert "3 steps in a row had a non-finite loss mask_loss" in out
