"""Run folders and checkpoint files of a training run: names, steps, the random streams a checkpoint carries.

Nothing here touches the training loop (:mod:`pmni_method.trainer`); these are the facts about files on disk that
resume, interrupts and the one-process-per-run rule rely on.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

CHECKPOINT_NAME = re.compile(r"^step-(\d{9})\.ckpt$")
"""nerfstudio's checkpoint file name, ``step-<9 digits>.ckpt``."""
TMP_DIR_NAME = ".checkpoint-tmp"
"""Folder beside the checkpoints where each is written under a per-process name before its rename."""
RUN_SUFFIX = re.compile(r"^(.*?)(?:-(\d+))?$")
"""A run folder name: ``<timestamp>`` or ``<timestamp>-<n>`` for the n-th run started in the same second."""
TMP_SUFFIX = re.compile(r"\.(\d+)\.tmp$")
"""The writer's PID at the end of a checkpoint temporary's name."""
RUN_INFO_KEY = "pmni_run"
"""Checkpoint key of ``{"finished": bool, "max_num_iterations": int}``: whether the run had completed at that step."""
UNSTARTED_RUN_FILES = {"config.yml"}
"""What a run folder holds before its first step: removing such a folder loses nothing."""


def describe_os_error(err: OSError) -> str:
    """``No space left on device`` rather than ``[Errno 28] ...`` or a bare ``28``."""
    if err.strerror:
        return err.strerror
    if err.errno is not None:
        return os.strerror(err.errno)
    if len(err.args) == 1 and isinstance(err.args[0], int):
        return os.strerror(err.args[0])
    return str(err) or type(err).__name__


def capture_rng_state(datamanager: Any = None) -> Dict[str, Any]:
    """Every random stream training draws from: python, numpy, torch (CPU and CUDA) and the datamanager's samplers.

    Only tensors and plain Python values, so ``torch.load(weights_only=True)`` reads it back.
    """
    np_state = np.random.get_state(legacy=False)
    state: Dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["torch_cuda"] = torch.cuda.get_rng_state_all()
    for name in ("train_rays", "eval_rays"):
        generator = getattr(getattr(datamanager, name, None), "generator", None)
        if isinstance(generator, torch.Generator):
            state[f"{name}_generator"] = generator.get_state()
    eval_rng = getattr(datamanager, "eval_rng", None)
    if isinstance(eval_rng, random.Random):
        state["eval_rng"] = eval_rng.getstate()
    return state


def restore_rng_state(state: Dict[str, Any], datamanager: Any = None) -> None:
    """Inverse of :func:`capture_rng_state`; streams missing from ``state`` (older checkpoints) are left alone."""
    if "python" in state:
        random.setstate(_as_tuple(state["python"]))
    if "numpy" in state:
        np_state = state["numpy"]
        np.random.set_state(
            {
                "bit_generator": "MT19937",
                "state": {"key": np_state["key"].numpy().astype(np.uint32), "pos": int(np_state["pos"])},
                "has_gauss": int(np_state["has_gauss"]),
                "gauss": float(np_state["gauss"]),
            }
        )
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "torch_cuda" in state and torch.cuda.is_available() and len(state["torch_cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["torch_cuda"])
    for name in ("train_rays", "eval_rays"):
        generator = getattr(getattr(datamanager, name, None), "generator", None)
        if isinstance(generator, torch.Generator) and f"{name}_generator" in state:
            generator.set_state(state[f"{name}_generator"])
    eval_rng = getattr(datamanager, "eval_rng", None)
    if isinstance(eval_rng, random.Random) and "eval_rng" in state:
        eval_rng.setstate(_as_tuple(state["eval_rng"]))


def _as_tuple(value: Any) -> Any:
    """random.setstate wants the nested tuples getstate gave (a checkpoint round trip may turn them into lists)."""
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def checkpoint_steps(checkpoint_dir: Path) -> List[int]:
    """Steps of the well-named checkpoints in a folder, ascending (anything else there is ignored)."""
    if not checkpoint_dir.is_dir():
        return []
    return sorted(int(m.group(1)) for name in os.listdir(checkpoint_dir) if (m := CHECKPOINT_NAME.match(name)))


def find_resumable_run(config: Any) -> Optional[Path]:
    """The newest run folder of this experiment/method holding a checkpoint (None when there is none)."""
    method_dir = config.get_base_dir().parent
    if not method_dir.is_dir():
        return None
    runs = [d for d in method_dir.iterdir() if d.is_dir() and checkpoint_steps(d / config.relative_model_dir)]
    return max(runs, key=_run_order) if runs else None


def _run_order(run_dir: Path) -> Tuple[str, int]:
    """``<timestamp>-<n>`` (a run started in a second another run had taken) sorts after ``<timestamp>``, by n."""
    match = RUN_SUFFIX.match(run_dir.name)
    return (match.group(1), int(match.group(2) or 1)) if match else (run_dir.name, 1)


def remove_stale_temporaries(tmp_dir: Path) -> None:
    """Delete checkpoint temporaries whose writer process is gone (a live writer's file is left alone)."""
    from pmni_method.staging import process_may_own  # the same "is its writer gone" rule as pmni-synth's staging

    if not tmp_dir.is_dir():
        return
    for path in tmp_dir.iterdir():
        match = TMP_SUFFIX.search(path.name)
        pid = int(match.group(1)) if match else None
        if pid is None or pid == os.getpid() or not process_may_own(pid, path):
            path.unlink(missing_ok=True)
