"""nerfstudio's trainer with these additions: schedules follow the iteration count, atomic checkpoints that carry
the random streams, --resume, and one-line failures when the output folder cannot be written.

The training loop itself is nerfstudio's; the non-finite guard lives in :mod:`pmni_method.pipeline`.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Tuple, Type

import numpy as np
import torch
import yaml
from torch import Tensor
from nerfstudio.engine.trainer import Trainer, TrainerConfig
from nerfstudio.utils.rich_utils import CONSOLE

from pmni_method.atomic import atomic_write

CHECKPOINT_NAME = re.compile(r"^step-(\d{9})\.ckpt$")
TMP_DIR_NAME = ".checkpoint-tmp"
EXIT_CANNOT_WRITE = 2
"""Exit code when the run folder or the final checkpoint cannot be written (the user has to fix the disk)."""


@dataclass
class PMNITrainerConfig(TrainerConfig):
    """nerfstudio's TrainerConfig, plus resume-to-the-end, run-length-aware schedules and an atomic config.yml."""

    _target: Type = field(default_factory=lambda: PMNITrainer)
    """Target class to instantiate."""
    resume: bool = False
    """Continue the newest earlier run of this experiment/method (same output folder) up to max-num-iterations."""

    def save_config(self) -> None:
        """Write config.yml atomically, or stop with one line when the run folder cannot be written (read-only, full).

        On failure nothing is left behind: no partial config.yml, and no run folders this call created.
        """
        base_dir = self.get_base_dir()
        path = base_dir / "config.yml"
        created = next((d for d in reversed([base_dir, *base_dir.parents]) if not d.exists()), None)
        CONSOLE.log(f"Saving config to: {path}")
        try:
            base_dir.mkdir(parents=True, exist_ok=True)
            with atomic_write(path, "w") as f:
                f.write(yaml.dump(self))
        except OSError as err:
            if created is not None:
                shutil.rmtree(created, ignore_errors=True)
            fail(f"cannot write the run folder {base_dir}: {describe_os_error(err)}")


def describe_os_error(err: OSError) -> str:
    """``No space left on device`` rather than ``[Errno 28] ...`` or a bare ``28``."""
    if err.strerror:
        return err.strerror
    if err.errno is not None:
        return os.strerror(err.errno)
    if len(err.args) == 1 and isinstance(err.args[0], int):
        return os.strerror(err.args[0])
    return str(err) or type(err).__name__


def fail(message: str, code: int = EXIT_CANNOT_WRITE) -> None:
    """Print one red line and exit with ``code``: what the user must fix is not worth a traceback."""
    CONSOLE.print(f"pmni: {message}", style="bold red", markup=False, highlight=False, soft_wrap=True)
    raise SystemExit(code)


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


def sync_run_length(config: TrainerConfig) -> None:
    """Scale every step-based schedule (loss stages, LR warm-up/decay) to ``max_num_iterations``.

    Presets are written for their own run length; a user who passes ``--max-num-iterations`` expects the stages to
    keep their proportions rather than stop half-way through.
    """
    total = int(config.max_num_iterations)
    schedule = getattr(getattr(config.pipeline.model, "core", None), "loss_schedule", None)
    if schedule is not None:
        # The model derives every other step-based schedule (coarse-to-fine, marching step) from this one.
        schedule.total_steps = total
    for group in config.optimizers.values():
        scheduler = group.get("scheduler")
        if scheduler is not None and hasattr(scheduler, "max_steps"):
            scheduler.max_steps = total


def find_resumable_run(config: TrainerConfig) -> Optional[Path]:
    """The newest run folder of this experiment/method holding a checkpoint.

    The folder ns-train has just created for this command holds no checkpoint and so is never picked, unless it is
    the interrupted run itself: timestamps have one-second resolution, and a run restarted within the second it
    crashed in gets the same folder name.
    """
    method_dir = Path(config.output_dir) / config.experiment_name / config.method_name
    if not method_dir.is_dir():
        return None
    runs = [
        d
        for d in sorted(method_dir.iterdir(), reverse=True)
        if d.is_dir() and checkpoint_steps(d / config.relative_model_dir)
    ]
    return runs[0] if runs else None


class PMNITrainer(Trainer):
    """Trainer with atomic checkpoints and resume; the training loop itself is nerfstudio's."""

    config: PMNITrainerConfig

    def __init__(self, config: PMNITrainerConfig, local_rank: int = 0, world_size: int = 1) -> None:
        sync_run_length(config)
        self._resumed_from: Optional[Path] = None
        if getattr(config, "resume", False) and config.load_dir is None and config.load_checkpoint is None:
            self._adopt_previous_run(config)
        super().__init__(config, local_rank, world_size)
        if self.device.split(":")[0] != "cuda":
            # nerfstudio turns autocast off on CPU but keeps a GradScaler enabled if mixed_precision was asked for;
            # a CUDA scaler has nothing to do on CPU and only warns. Mixed precision is a CUDA-only option here.
            self.mixed_precision = False
            self.use_grad_scaler = False
            self.grad_scaler = torch.amp.GradScaler("cuda", enabled=False)

    @staticmethod
    def _adopt_previous_run(config: PMNITrainerConfig) -> None:
        run = find_resumable_run(config)
        if run is None:
            CONSOLE.print("--resume: no earlier run with a checkpoint found; training from scratch.")
            return
        fresh = config.get_base_dir()
        # ns-train saved config.yml into a new timestamped folder before we got here; drop it if that is all it has.
        if fresh.is_dir() and {p.name for p in fresh.iterdir()} <= {"config.yml"}:
            shutil.rmtree(fresh, ignore_errors=True)
        config.timestamp = run.name
        config.load_dir = run / config.relative_model_dir
        # The run folder's config.yml should describe the command that continues it.
        config.save_config()
        CONSOLE.print(f"--resume: continuing {run}")

    def setup(self, test_mode: Literal["test", "val", "inference"] = "val") -> None:
        try:
            super().setup(test_mode)
        except SystemExit:
            # Bad data stops us before the first step: a run folder holding only config.yml would look like a run.
            self._discard_unstarted_run()
            raise
        if getattr(self.config, "resume", False) and self._start_step > 0:
            # nerfstudio runs max_num_iterations MORE steps after a loaded checkpoint; resume means "finish the run".
            self.config.max_num_iterations = max(int(self.config.max_num_iterations) - self._start_step, 0)

    def _discard_unstarted_run(self) -> None:
        base_dir = self.config.get_base_dir()
        if not base_dir.is_dir() or {p.name for p in base_dir.iterdir()} - {"config.yml"}:
            return
        shutil.rmtree(base_dir, ignore_errors=True)
        output_dir = Path(self.config.output_dir).resolve()
        for parent in base_dir.parents:
            if parent.resolve() == output_dir or not parent.is_dir() or any(parent.iterdir()):
                break
            parent.rmdir()

    def _load_checkpoint(self) -> None:
        rng: Optional[Dict[str, Any]] = None
        load_dir = self.config.load_dir
        if load_dir is not None and self.config.load_step is None:
            # Pick the newest checkpoint that actually loads: a run killed mid-write by an older nerfstudio
            # (or a full disk) may have left a truncated file behind.
            shutil.rmtree(Path(load_dir).parent / TMP_DIR_NAME, ignore_errors=True)
            for step in reversed(checkpoint_steps(Path(load_dir))):
                path = Path(load_dir) / f"step-{step:09d}.ckpt"
                try:
                    rng = torch.load(path, map_location="cpu").get("rng")
                except Exception as err:  # noqa: BLE001 - any unreadable file is skipped the same way
                    CONSOLE.print(f"[yellow]skipping unreadable checkpoint {path}: {type(err).__name__}[/]")
                    continue
                break
            else:
                CONSOLE.print(f"[bold red]error:[/] {load_dir}: no loadable checkpoint")
                raise SystemExit(2)
            # Set only while loading: a saved config must keep meaning "the newest checkpoint".
            self.config.load_step = step
            try:
                super()._load_checkpoint()
            finally:
                self.config.load_step = None
        else:
            super()._load_checkpoint()
            path = self.config.load_checkpoint
            if path is None and load_dir is not None and self._start_step > 0:
                path = Path(load_dir) / f"step-{self._start_step - 1:09d}.ckpt"
            if path is not None:
                rng = torch.load(path, map_location="cpu").get("rng")
        # nerfstudio restores model, optimisers, schedulers and scaler; the random streams are ours to restore, so
        # a resumed run draws the same rays and stratified offsets as an uninterrupted one.
        if rng is not None:
            restore_rng_state(rng, self.pipeline.datamanager)

    def train_iteration(self, step: int) -> Tuple[Tensor, Dict[str, Tensor], Dict[str, Tensor]]:
        loss, loss_dict, metrics_dict = super().train_iteration(step)
        # The trainer logs these with float(); after backward they are only numbers, so hand them over detached
        # (no "requires_grad=True to a scalar" warning, and the step's graph is not kept alive by the logger).
        return (
            loss.detach(),
            {k: v.detach() for k, v in loss_dict.items()},
            {k: (v.detach() if isinstance(v, Tensor) else v) for k, v in metrics_dict.items()},
        )

    def save_checkpoint(self, step: int) -> Optional[Path]:
        """Write to a temporary file beside the checkpoint folder, fsync, then rename: never a half-written .ckpt.

        Holds step, pipeline (model incl. its buffers such as the occupancy grid, and any pose refinement),
        optimisers, schedulers, grad scaler and every random stream. Returns the checkpoint, or None when it could
        not be written (the previous one is kept; the run goes on, as space may come back). A failed *final* save
        stops the process with one line and exit code 2: a finished run without its result must not look fine.
        """
        final = self.checkpoint_dir / f"step-{step:09d}.ckpt"
        tmp = self.checkpoint_dir.parent / TMP_DIR_NAME / final.name
        pipeline = self.pipeline.module if hasattr(self.pipeline, "module") else self.pipeline
        state = {
            "step": step,
            "pipeline": pipeline.state_dict(),
            "optimizers": {k: v.state_dict() for (k, v) in self.optimizers.optimizers.items()},
            "schedulers": {k: v.state_dict() for (k, v) in self.optimizers.schedulers.items()},
            "scalers": self.grad_scaler.state_dict(),
            "rng": capture_rng_state(self.pipeline.datamanager),
        }
        try:
            self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
            tmp.parent.mkdir(exist_ok=True)
            with open(tmp, "wb") as f:
                torch.save(state, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            reason = describe_os_error(err)
            if self.training_state == "completed":
                fail(f"final checkpoint not written: {final}: {reason}; the newest earlier checkpoint is kept")
            CONSOLE.print(
                f"pmni: checkpoint not written: {final}: {reason}; the previous one is kept, training goes on",
                style="bold red",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
            return None
        if self.config.save_only_latest_checkpoint:
            for old in checkpoint_steps(self.checkpoint_dir):
                if old != step:
                    (self.checkpoint_dir / f"step-{old:09d}.ckpt").unlink(missing_ok=True)
        return final
