"""nerfstudio's trainer with these additions: schedules follow the iteration count, atomic checkpoints that carry
the random streams, --resume, one run folder per process, a clean stop on SIGINT/SIGTERM, and one-line failures
when the output folder cannot be written.

The training loop itself is nerfstudio's; the non-finite guard lives in :mod:`pmni_method.pipeline`.

What protects a user's result:

* a fresh run claims a folder no other run has (``mkdir`` is exclusive; two runs started in the same second get
  ``<timestamp>`` and ``<timestamp>-2``) and holds a lock on it (:mod:`pmni_method.runlock`) until it ends;
* ``--resume`` refuses a run another process holds, and on a finished run says so and exits 0 writing nothing;
* a checkpoint is never written with a lower step than the one loaded, and saving keeps no *newer* checkpoint off
  disk; temporary files are per process;
* SIGINT/SIGTERM finish the current step, write a checkpoint and exit 130/143 with one line; a second signal stops
  at once (the newest checkpoint is kept).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, Literal, Optional, Tuple, Type

import torch
import yaml
from torch import Tensor
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackLocation
from nerfstudio.engine.trainer import Trainer, TrainerConfig
from nerfstudio.utils.rich_utils import CONSOLE

from pmni_method import runlock
from pmni_method.checkpoints import (
    RUN_INFO_KEY,
    TMP_DIR_NAME,
    UNSTARTED_RUN_FILES,
    capture_rng_state,
    checkpoint_steps,
    describe_os_error,
    find_resumable_run,
    remove_stale_temporaries,
    restore_rng_state,
)
from pmni_method.atomic import atomic_write
from pmni_method.backends import reproducible_on_cpu
from pmni_method.errors import EXIT_OK, EXIT_SIGNAL, exit_with_error, print_error




@dataclass
class PMNITrainerConfig(TrainerConfig):
    """nerfstudio's TrainerConfig, plus resume-to-the-end, run-length-aware schedules and an atomic config.yml."""

    _target: Type = field(default_factory=lambda: PMNITrainer)
    """Target class to instantiate."""
    resume: bool = False
    """Continue the newest earlier run of this experiment/method (same output folder) up to max-num-iterations."""

    def save_config(self) -> None:
        """Write config.yml atomically, or stop with one line when the run folder cannot be written (read-only, full).

        A run folder this process does not hold yet is claimed first: created exclusively (a timestamp another run
        already took gets a ``-2``, ``-3``, ... suffix) and locked for the rest of the process. On failure nothing
        is left behind: no partial config.yml, and no folders this call created.
        """
        if self.wants_adoption() and self._adopt_previous_run():
            return
        base_dir = self.get_base_dir()
        claimed: Optional[Path] = None
        created = next((d for d in reversed([*base_dir.parents]) if not d.exists()), None)
        try:
            if not runlock.holds(base_dir):
                base_dir = claimed = self._claim_run_dir()
            path = base_dir / "config.yml"
            CONSOLE.log(f"Saving config to: {path}")
            with atomic_write(path, "w") as f:
                f.write(yaml.dump(self))
        except OSError as err:
            for folder in (claimed, created):
                if folder is not None:
                    runlock.release(folder)
                    shutil.rmtree(folder, ignore_errors=True)
            exit_with_error(f"cannot write the run folder {base_dir}: {describe_os_error(err)}")

    def wants_adoption(self) -> bool:
        """``--resume`` with no explicit checkpoint: the earlier run is still to be found."""
        return bool(self.resume) and self.load_dir is None and self.load_checkpoint is None

    def _adopt_previous_run(self) -> bool:
        """Point this config at the newest earlier run and lock it; False when there is none (train from scratch).

        Runs before anything is written, so a refused or complete run is left exactly as it was: a run another
        process holds stops with one line (exit 2), a finished one with "already complete" (exit 0).
        """
        run = find_resumable_run(self)
        if run is None:
            self.resume = False
            CONSOLE.print("--resume: no earlier run with a checkpoint found; training from scratch.")
            return False
        try:
            runlock.acquire(run)
        except runlock.RunInUse as err:
            exit_with_error(f"--resume: {err}; wait for it to end or stop it first (one process per run folder)")
        last = checkpoint_steps(run / self.relative_model_dir)[-1]
        if last + 1 >= int(self.max_num_iterations):
            runlock.release(run)
            CONSOLE.print(
                f"pmni: run already complete at step {last}: {run}; nothing to do "
                "(a larger --max-num-iterations trains it further)",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
            raise SystemExit(EXIT_OK)
        self.timestamp = run.name
        self.load_dir = run / self.relative_model_dir
        # The run folder's config.yml should describe the command that continues it.
        self.save_config()
        CONSOLE.print(f"--resume: continuing {run}")
        return True

    def _claim_run_dir(self) -> Path:
        """Create and lock a run folder of this experiment that did not exist before; sets ``timestamp`` to it."""
        stem = self.timestamp
        self.get_base_dir().parent.mkdir(parents=True, exist_ok=True)
        for n in itertools.count(1):
            self.timestamp = stem if n == 1 else f"{stem}-{n}"
            candidate = self.get_base_dir()
            try:
                candidate.mkdir()
            except FileExistsError:
                continue
            runlock.acquire(candidate)
            return candidate
        raise AssertionError("unreachable")


def sync_run_length(config: TrainerConfig) -> None:
    """Scale the model's and the optimisers' step-based schedules to ``max_num_iterations`` (see
    :func:`~pmni_method.models.schedule.scale_to_run_length`, the one place that knows what scaling means)."""
    from pmni_method.models.schedule import LRScheduleConfig, scale_to_run_length

    schedulers = [group.get("scheduler") for group in config.optimizers.values()]
    scale_to_run_length(
        int(config.max_num_iterations),
        getattr(getattr(config.pipeline.model, "core", None), "loss_schedule", None),
        [s for s in schedulers if isinstance(s, LRScheduleConfig)],
    )
    for scheduler in schedulers:
        if not isinstance(scheduler, LRScheduleConfig) and hasattr(scheduler, "max_steps"):
            scheduler.max_steps = int(config.max_num_iterations)  # a nerfstudio scheduler a user swapped in


class PMNITrainer(Trainer):
    """Trainer with atomic checkpoints and resume; the training loop itself is nerfstudio's."""

    config: PMNITrainerConfig

    def __init__(self, config: PMNITrainerConfig, local_rank: int = 0, world_size: int = 1) -> None:
        sync_run_length(config)
        self._phase = "setup"
        self._interrupt: Optional[int] = None
        self._end_step = int(config.max_num_iterations)
        if config.wants_adoption():
            config.save_config()  # ns-train saves the config first; a caller that did not gets the same resume
        super().__init__(config, local_rank, world_size)
        reproducible_on_cpu(self.device)
        if self.device.split(":")[0] != "cuda":
            # nerfstudio turns autocast off on CPU but keeps a GradScaler enabled if mixed_precision was asked for;
            # a CUDA scaler has nothing to do on CPU and only warns. Mixed precision is a CUDA-only option here.
            self.mixed_precision = False
            self.use_grad_scaler = False
            self.grad_scaler = torch.amp.GradScaler("cuda", enabled=False)

    def setup(self, test_mode: Literal["test", "val", "inference"] = "val") -> None:
        try:
            with self._signals_stop("setup"):
                super().setup(test_mode)
        except SystemExit:
            # Bad data stops us before the first step: a run folder holding only config.yml would look like a run.
            self._discard_unstarted_run()
            runlock.release(self.base_dir)
            raise
        except BaseException:
            runlock.release(self.base_dir)
            raise
        if getattr(self.config, "resume", False) and self._start_step > 0:
            # nerfstudio runs max_num_iterations MORE steps after a loaded checkpoint; resume means "finish the run".
            self.config.max_num_iterations = max(int(self.config.max_num_iterations) - self._start_step, 0)
        self._end_step = self._start_step + int(self.config.max_num_iterations)
        # Last, so that the step it saves has been through every other callback (the non-finite guard included).
        self.callbacks.append(
            TrainingCallback(where_to_run=[TrainingCallbackLocation.AFTER_TRAIN_ITERATION], func=self._stop_if_interrupted)
        )

    def train(self) -> None:
        try:
            with self._signals_stop("loop"):
                super().train()
        finally:
            runlock.release(self.base_dir)

    # ------------------------------------------------------------------ interrupts
    @contextlib.contextmanager
    def _signals_stop(self, phase: str) -> Iterator[None]:
        """SIGINT/SIGTERM handled by :meth:`_on_signal` inside the block (only the main thread may set handlers)."""
        self._phase = phase
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {signum: signal.signal(signum, self._on_signal) for signum in EXIT_SIGNAL}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _on_signal(self, signum: int, frame: Any) -> None:
        code = EXIT_SIGNAL.get(signum, 1)
        if self._phase == "idle":
            raise SystemExit(0)  # the viewer was showing a finished, saved run: "Use ctrl+c to quit"
        if self._phase == "setup":
            print_error("interrupted before training started; nothing saved")
            raise SystemExit(code)
        if self._interrupt is not None and self._phase == "loop":
            last = checkpoint_steps(self.checkpoint_dir)
            kept = f"the newest checkpoint (step {last[-1]}) is kept" if last else "no checkpoint was written"
            print_error(f"stopped at once by a second {signal.Signals(signum).name} at step {self.step}; {kept}")
            raise SystemExit(code)
        self._interrupt = signum
        if self.training_state == "paused":
            self.training_state = "training"  # the loop only checks for an interrupt after a step
        CONSOLE.print(
            f"pmni: {signal.Signals(signum).name}: finishing step {self.step}, then saving (again to stop at once)",
            style="yellow",
            markup=False,
            highlight=False,
        )

    def _stop_if_interrupted(self, step: int) -> None:
        """AFTER_TRAIN_ITERATION: after a signal, save this completed step and exit 130 (SIGINT) or 143 (SIGTERM)."""
        if self._interrupt is None:
            return
        saved = self.save_checkpoint(step)
        # The same log flush and viewer stop as the divergence exit: an interrupted run keeps its TensorBoard tail.
        from pmni_method.pipeline import stop_early

        stop_early(self)
        if saved is None:
            print_error(f"interrupted at step {step}; the checkpoint could not be written")
        else:
            print_error(f"interrupted at step {step}; saved {saved}; continue with --resume True")
        raise SystemExit(EXIT_SIGNAL.get(self._interrupt, 1))

    def _after_train(self) -> None:
        self._phase = "final"
        super()._after_train()
        # A signal that came during the final save changes nothing: the run is complete and saved.

    def _train_complete_viewer(self) -> None:
        self._phase = "idle"
        if self._interrupt is not None:
            raise SystemExit(0)
        super()._train_complete_viewer()

    def _discard_unstarted_run(self) -> None:
        base_dir = self.config.get_base_dir()
        if not base_dir.is_dir() or {p.name for p in base_dir.iterdir()} - UNSTARTED_RUN_FILES:
            return
        runlock.release(base_dir)
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
            remove_stale_temporaries(Path(load_dir).parent / TMP_DIR_NAME)
            for step in reversed(checkpoint_steps(Path(load_dir))):
                path = Path(load_dir) / f"step-{step:09d}.ckpt"
                try:
                    rng = torch.load(path, map_location="cpu").get("rng")
                except Exception as err:  # noqa: BLE001 - any unreadable file is skipped the same way
                    CONSOLE.print(f"[yellow]skipping unreadable checkpoint {path}: {type(err).__name__}[/]")
                    continue
                break
            else:
                exit_with_error(f"{load_dir}: no loadable checkpoint")
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
        optimisers, schedulers, grad scaler, every random stream and :data:`RUN_INFO_KEY`. Returns the checkpoint,
        or None when it could not be written (the previous one is kept; the run goes on, as space may come back). A
        failed *final* save stops the process with one line and exit code 2: a finished run without its result
        must not look fine. A step below the loaded one is never written (it would label the loaded state wrongly
        and, with ``save_only_latest_checkpoint``, replace it).
        """
        if step < self._start_step - 1:
            CONSOLE.print(f"pmni: not saving step {step}: the run was loaded at step {self._start_step - 1}")
            return None
        final = self.checkpoint_dir / f"step-{step:09d}.ckpt"
        # Per process: a second process on the same folder (refused by the lock, but not every writer takes it)
        # must never rename our half-written file into place.
        tmp = self.checkpoint_dir.parent / TMP_DIR_NAME / f"{final.name}.{os.getpid()}.tmp"
        pipeline = self.pipeline.module if hasattr(self.pipeline, "module") else self.pipeline
        state = {
            "step": step,
            "pipeline": pipeline.state_dict(),
            "optimizers": {k: v.state_dict() for (k, v) in self.optimizers.optimizers.items()},
            "schedulers": {k: v.state_dict() for (k, v) in self.optimizers.schedulers.items()},
            "scalers": self.grad_scaler.state_dict(),
            "rng": capture_rng_state(self.pipeline.datamanager),
            RUN_INFO_KEY: {
                "finished": self.training_state == "completed" and step + 1 >= self._end_step,
                "max_num_iterations": int(self._end_step),
            },
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
                exit_with_error(f"final checkpoint not written: {final}: {reason}; the newest earlier checkpoint is kept")
            print_error(f"checkpoint not written: {final}: {reason}; the previous one is kept, training goes on")
            return None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        if self.config.save_only_latest_checkpoint:
            for old in checkpoint_steps(self.checkpoint_dir):
                if old < step:
                    (self.checkpoint_dir / f"step-{old:09d}.ckpt").unlink(missing_ok=True)
        return final
