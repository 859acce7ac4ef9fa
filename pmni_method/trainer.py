"""nerfstudio's trainer with three additions: schedules follow the iteration count, atomic checkpoints, --resume."""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Literal, Optional, Type

import torch
from nerfstudio.engine.trainer import Trainer, TrainerConfig
from nerfstudio.utils.rich_utils import CONSOLE

CHECKPOINT_NAME = re.compile(r"^step-(\d{9})\.ckpt$")
TMP_DIR_NAME = ".checkpoint-tmp"


@dataclass
class PMNITrainerConfig(TrainerConfig):
    """nerfstudio's TrainerConfig, plus resume-to-the-end and run-length-aware schedules."""

    _target: Type = field(default_factory=lambda: PMNITrainer)
    """Target class to instantiate."""
    resume: bool = False
    """Continue the newest earlier run of this experiment/method (same output folder) up to max-num-iterations."""


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
    schedule = getattr(config.pipeline.model, "loss_schedule", None)
    if schedule is not None:
        # The model derives every other step-based schedule (coarse-to-fine, marching step) from this one.
        schedule.total_steps = total
    for group in config.optimizers.values():
        scheduler = group.get("scheduler")
        if scheduler is not None and hasattr(scheduler, "max_steps"):
            scheduler.max_steps = total


def find_resumable_run(config: TrainerConfig) -> Optional[Path]:
    """The newest run folder of this experiment/method holding a checkpoint, other than the current one."""
    method_dir = Path(config.output_dir) / config.experiment_name / config.method_name
    if not method_dir.is_dir():
        return None
    current = config.get_base_dir().resolve()
    runs = [
        d
        for d in sorted(method_dir.iterdir(), reverse=True)
        if d.is_dir() and d.resolve() != current and checkpoint_steps(d / config.relative_model_dir)
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
        super().setup(test_mode)
        if getattr(self.config, "resume", False) and self._start_step > 0:
            # nerfstudio runs max_num_iterations MORE steps after a loaded checkpoint; resume means "finish the run".
            self.config.max_num_iterations = max(int(self.config.max_num_iterations) - self._start_step, 0)

    def _load_checkpoint(self) -> None:
        load_dir = self.config.load_dir
        if load_dir is not None and self.config.load_step is None:
            # Pick the newest checkpoint that actually loads: a run killed mid-write by an older nerfstudio
            # (or a full disk) may have left a truncated file behind.
            shutil.rmtree(Path(load_dir).parent / TMP_DIR_NAME, ignore_errors=True)
            for step in reversed(checkpoint_steps(Path(load_dir))):
                path = Path(load_dir) / f"step-{step:09d}.ckpt"
                try:
                    torch.load(path, map_location="cpu")
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
            return
        super()._load_checkpoint()

    def save_checkpoint(self, step: int) -> None:
        """Write to a temporary file beside the checkpoint folder, fsync, then rename: never a half-written .ckpt."""
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        tmp_dir = self.checkpoint_dir.parent / TMP_DIR_NAME
        tmp_dir.mkdir(exist_ok=True)
        final = self.checkpoint_dir / f"step-{step:09d}.ckpt"
        tmp = tmp_dir / final.name
        pipeline = self.pipeline.module if hasattr(self.pipeline, "module") else self.pipeline
        state = {
            "step": step,
            "pipeline": pipeline.state_dict(),
            "optimizers": {k: v.state_dict() for (k, v) in self.optimizers.optimizers.items()},
            "schedulers": {k: v.state_dict() for (k, v) in self.optimizers.schedulers.items()},
            "scalers": self.grad_scaler.state_dict(),
        }
        try:
            with open(tmp, "wb") as f:
                torch.save(state, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            CONSOLE.print(f"[bold red]checkpoint not written:[/] {final}: {err.strerror or err}; the previous one is kept")
            return
        if self.config.save_only_latest_checkpoint:
            for old in checkpoint_steps(self.checkpoint_dir):
                if old != step:
                    (self.checkpoint_dir / f"step-{old:09d}.ckpt").unlink(missing_ok=True)
