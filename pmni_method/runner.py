"""Train, export and evaluate in one process: the engine behind ``pmni-demo``, the benchmarks and end-to-end tests."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, List, Optional

import torch
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackLocation
from nerfstudio.engine.trainer import Trainer, TrainerConfig

from pmni_method.compat import default_device_type


def method_config(method: str = "pmni-fast") -> TrainerConfig:
    """A fresh copy of one of our registered presets."""
    from pmni_method.pmni_config import METHODS

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {sorted(METHODS)}")
    return copy.deepcopy(METHODS[method].config)


def scripted_config(
    method: str,
    data: Path,
    output_dir: Path,
    max_num_iterations: Optional[int] = None,
    experiment_name: Optional[str] = None,
    **datamanager_overrides: Any,
) -> TrainerConfig:
    """A preset set up for non-interactive runs: no viewer, tensorboard logs, CPU when there is no GPU."""
    config = method_config(method)
    config.pipeline.datamanager.data = Path(data)
    config.pipeline.datamanager.dataparser.data = Path(data)
    config.output_dir = Path(output_dir)
    config.experiment_name = experiment_name or Path(data).name
    config.vis = "tensorboard"
    config.viewer.quit_on_train_completion = True
    config.machine.device_type = default_device_type()
    config.logging.local_writer.enable = False
    if max_num_iterations is not None:
        config.max_num_iterations = max_num_iterations
    for key, value in datamanager_overrides.items():
        target = config.pipeline.datamanager
        if not hasattr(target.dataparser, key) and not hasattr(target, key):
            raise AttributeError(f"no datamanager or dataparser option {key!r}")
        setattr(target.dataparser if hasattr(target.dataparser, key) else target, key, value)
    return config


@dataclass
class TrainingRun:
    """A finished (or interrupted) in-process training run."""

    trainer: Trainer
    """The nerfstudio trainer, with its pipeline."""
    config_path: Path
    """The run's ``config.yml`` (what ``ns-viewer --load-config`` and ``pmni-export`` take)."""
    train_seconds: float
    """Wall time inside the training loop, minus time spent in ``every_seconds`` hooks."""
    hook_results: List[Any] = field(default_factory=list)
    """Whatever the timed hook returned each time it ran."""


def train(
    config: TrainerConfig,
    on_step: Optional[Callable[[int], None]] = None,
    every_seconds: Optional[float] = None,
    hook: Optional[Callable[[Trainer, int, float], Any]] = None,
) -> TrainingRun:
    """Run nerfstudio's trainer in this process.

    ``on_step(step)`` runs after every iteration (progress bars). ``hook(trainer, step, train_seconds)`` runs each
    time another ``every_seconds`` of *training* time has passed; the time it takes itself is not counted, so a
    benchmark can evaluate at fixed training-time marks.
    """
    config.set_timestamp()
    config.save_config()  # as ns-train does, before the trainer exists
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    config_path = config.get_base_dir() / "config.yml"  # --resume may have moved the run to an earlier folder
    state = {"paused": 0.0, "start": time.perf_counter(), "next": every_seconds}
    results: List[Any] = []

    def after_step(step: int) -> None:
        if on_step is not None:
            on_step(step)
        if hook is None or every_seconds is None:
            return
        elapsed = time.perf_counter() - state["start"] - state["paused"]
        if elapsed >= state["next"]:
            t0 = time.perf_counter()
            results.append(hook(trainer, step, elapsed))
            state["paused"] += time.perf_counter() - t0
            state["next"] += every_seconds

    trainer.callbacks.append(
        TrainingCallback(where_to_run=[TrainingCallbackLocation.AFTER_TRAIN_ITERATION], func=after_step)
    )
    trainer.train()
    seconds = time.perf_counter() - state["start"] - state["paused"]
    return TrainingRun(trainer=trainer, config_path=config_path, train_seconds=seconds, hook_results=results)


def pipeline_mesh(pipeline: Any, resolution: int = 256, progress: Optional[Callable[[int, int], None]] = None):
    """Marching-cubes mesh of a pipeline's SDF in the object's world units (largest component kept)."""
    from pmni_method.export import extract_mesh

    model = pipeline.model
    was_training = model.training
    model.eval()
    try:
        mesh = extract_mesh(
            lambda x: model.field.forward_geonetwork(x)[:, 0],
            resolution=resolution,
            normalisation=pipeline.normalisation(),
            device=next(model.parameters()).device,
            progress=progress,
        )
    finally:
        model.train(was_training)
    return mesh


def peak_rss_mib() -> float:
    """Peak resident memory of this process in MiB."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def torch_threads() -> int:
    return torch.get_num_threads()
