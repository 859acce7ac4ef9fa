"""A real ``ns-train`` killed with SIGKILL mid-training, then continued with ``--resume True``.

Three processes, the same command line each time: one uninterrupted run (output folder A) and one run that is killed
as soon as its first periodic checkpoint exists, then started again with ``--resume True`` (output folder B). The
resumed run must start right after the newest checkpoint, reach the full step count, and end with the uninterrupted
run's parameters bit for bit: checkpoints carry every random stream, so on the same machine and thread count the two
runs take the same steps (the same parameters are the same surface, so no mesh is compared).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import List

import torch

from pmni_method.checkpoints import TMP_DIR_NAME, checkpoint_steps

from helpers import ns_train_args

ITERATIONS = 60
SAVE_EVERY = 10


def command(data: Path, output: Path, *extra: str) -> List[str]:
    return ns_train_args(data, output, *extra, iterations=ITERATIONS, save_every=SAVE_EVERY)


def environment() -> dict:
    # Same thread count in every process, so that the runs can be compared step for step.
    return {**os.environ, "PYTHONWARNINGS": "ignore", "COLUMNS": "400", "OMP_NUM_THREADS": "1"}


def finish(args: List[str]) -> subprocess.CompletedProcess:
    out = subprocess.run(args, capture_output=True, text=True, env=environment(), timeout=300)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    return out


def test_sigkill_then_resume_matches_an_uninterrupted_run(sphere_dir: Path, tmp_path: Path):
    straight_out, killed_out = tmp_path / "straight", tmp_path / "killed"

    # Killed as soon as the first periodic checkpoint is there: mid-run, possibly mid-way through the next save.
    proc = subprocess.Popen(
        command(sphere_dir, killed_out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=environment(),
        start_new_session=True,
    )
    deadline = time.monotonic() + 240
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if any(checkpoint_steps(d) for d in killed_out.glob("*/pmni-fast/*/nerfstudio_models")):
                break
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    (run_dir,) = killed_out.glob("*/pmni-fast/*")
    at_kill = checkpoint_steps(run_dir / "nerfstudio_models")
    assert at_kill and at_kill[-1] < ITERATIONS - 1

    resumed = finish(command(sphere_dir, killed_out, "--resume", "True"))
    text = resumed.stdout + resumed.stderr
    assert f"--resume: continuing {run_dir}" in text.replace("\n", "")
    loaded = re.search(r"Done loading Nerfstudio checkpoint from .*step-(\d{9})\.ckpt", text.replace("\n", ""))
    # It continued from the newest checkpoint at kill time: at most the steps since that checkpoint were redone.
    assert loaded is not None and int(loaded.group(1)) == at_kill[-1]
    assert checkpoint_steps(run_dir / "nerfstudio_models") == [ITERATIONS - 1]
    assert not (run_dir / TMP_DIR_NAME).exists() or not list((run_dir / TMP_DIR_NAME).iterdir())
    assert [p.parent.name for p in killed_out.glob("*/pmni-fast/*/config.yml")] == [run_dir.name]

    finish(command(sphere_dir, straight_out))
    (straight_dir,) = straight_out.glob("*/pmni-fast/*")
    assert checkpoint_steps(straight_dir / "nerfstudio_models") == [ITERATIONS - 1]

    # Same machine, same thread count: the resumed run took exactly the uninterrupted run's steps.
    final = f"nerfstudio_models/step-{ITERATIONS - 1:09d}.ckpt"
    a = torch.load(straight_dir / final, map_location="cpu")["pipeline"]
    b = torch.load(run_dir / final, map_location="cpu")["pipeline"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

