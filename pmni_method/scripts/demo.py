"""pmni-demo: render a sample dataset, train on it, export the mesh and print the metrics, all on this machine."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Tuple

import tyro
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from pmni_method.atomic import write_json_atomic
from pmni_method.errors import EXIT_BAD_INPUT, PMNIDataError, print_error

if TYPE_CHECKING:
    from pmni_method.synth import SynthConfig

# nerfstudio 1.1.5 on torch 2.14 warns about its own deprecated calls at every step; they drown the demo's output.
for _module in ("nerfstudio", "torch", "tyro"):
    warnings.filterwarnings("ignore", category=UserWarning, module=_module)
    warnings.filterwarnings("ignore", category=FutureWarning, module=_module)
warnings.filterwarnings("ignore", category=FutureWarning, message=".*torch.jit.script.*")

CONSOLE = Console()
SHARED_MESHES = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "meshes"


@dataclass
class DemoConfig:
    """Render -> train -> export -> evaluate on a small sample, on CPU unless a GPU is present."""

    mesh: Optional[Path] = None
    """Mesh to render the sample from; default: the Stanford bunny from ../shared/data/meshes, else a built-in torus."""
    output: Path = Path("demo-output")
    """Folder for the datasets (data/) and the training runs (runs/); each run's folder gets its mesh.ply and metrics.json."""
    method: str = "pmni-fast"
    """Preset to train (pmni-fast is the CPU-friendly one)."""
    num_views: int = 20
    """Views on the turntable ring."""
    heldout_views: Tuple[int, ...] = (2, 7, 12, 17)
    """Views kept out of training and used for the held-out normal error."""
    downscale_factor: int = 4
    """Train and evaluate on the 612x512 renders downscaled by this factor (4 gives 153x128)."""
    max_num_iterations: Optional[int] = 500
    """Training iterations (the preset's schedules scaled to them); 500 train in under 3 minutes on 2 cores (README);
    None: the preset's own (900 for pmni-fast)."""
    resolution: int = 256
    """Marching-cubes grid resolution of the exported mesh."""
    threshold: float = 0.5
    """F-score threshold in world units (the sample is scaled to DiLiGenT-like millimetres)."""
    eval_during_training: bool = False
    """Render nerfstudio's eval batches and images and save checkpoints during training (tensorboard); off, the demo
    saves once at the end and scores its mesh afterwards."""


def _default_mesh(output: Path) -> Tuple[Path, float]:
    """The bunny (metres -> mm) when the shared meshes are beside the checkout, else a procedural torus."""
    bunny = SHARED_MESHES / "stanford-bunny.obj"
    if bunny.is_file():
        return bunny, 1000.0
    import trimesh

    path = output / "torus.ply"
    path.parent.mkdir(parents=True, exist_ok=True)
    trimesh.creation.torus(major_radius=80.0, minor_radius=30.0).export(path)
    return path, 1.0


def _options_digest(synth: "SynthConfig") -> str:
    """Short hash of every render option but the output folder: same options, same dataset folder."""
    options = {k: str(v) for k, v in dataclasses.asdict(synth).items() if k not in ("output", "overwrite")}
    return hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:8]


def run(config: DemoConfig) -> dict:
    from pmni_method import runner
    from pmni_method.evaluation import evaluate
    from pmni_method.report import print_metrics
    from pmni_method.export import write_mesh_atomic
    from pmni_method.synth import INFO_FILE, SynthConfig, render_dataset

    output = config.output.resolve()
    mesh, world_scale = (config.mesh, 1.0) if config.mesh is not None else _default_mesh(output)
    synth = SynthConfig(mesh=mesh, output=output / "data", num_views=config.num_views, world_scale=world_scale)
    # One folder per set of render options, never re-rendered in place: earlier demo runs keep the data they were
    # trained and scored on. pmni-synth publishes a dataset only once complete, so an existing one is whole.
    synth.output = output / "data" / f"{mesh.stem}-{_options_digest(synth)}"
    data_dir = synth.output
    if (data_dir / INFO_FILE).is_file():
        CONSOLE.print(f"[bold]1/4[/] reusing the {config.num_views}-view rendering of {mesh.name} in {data_dir}")
    else:
        CONSOLE.print(f"[bold]1/4[/] rendering {config.num_views} views of {mesh.name} into {data_dir}")
        render_dataset(synth)

    train_config = runner.scripted_config(
        config.method,
        data_dir,
        output / "runs",
        max_num_iterations=config.max_num_iterations,
        experiment_name="demo",
        downscale_factor=config.downscale_factor,
        exclude_views=tuple(config.heldout_views),
    )
    steps = train_config.max_num_iterations
    if not config.eval_during_training:
        # Nothing reads the mid-run eval renders here; the trainer still saves the final checkpoint.
        train_config.steps_per_eval_batch = train_config.steps_per_eval_image = 10**9
        train_config.steps_per_save = steps
    CONSOLE.print(f"[bold]2/4[/] training {config.method} for {steps} iterations on {train_config.machine.device_type}")
    columns = (TextColumn("training"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=CONSOLE) as progress:
        task = progress.add_task("train", total=steps)
        run_ = runner.train(train_config, on_step=lambda step: progress.update(task, completed=step + 1))

    CONSOLE.print(f"[bold]3/4[/] exporting the surface (marching cubes at {config.resolution}^3)")
    # Results go into the run's own folder, which no later run reuses: a second demo never overwrites the first's.
    run_dir = run_.config_path.parent
    mesh_path = run_dir / "mesh.ply"
    with Progress(TextColumn("marching cubes"), BarColumn(), MofNCompleteColumn(), console=CONSOLE) as progress:
        task = progress.add_task("mc", total=None)
        surface = runner.pipeline_mesh(
            run_.trainer.pipeline,
            config.resolution,
            progress=lambda done, total: progress.update(task, completed=done, total=total),
        )
    write_mesh_atomic(surface, mesh_path)

    CONSOLE.print("[bold]4/4[/] evaluating against the ground truth")
    metrics = evaluate(
        mesh_path,
        data_dir,
        threshold=config.threshold,
        heldout_views=config.heldout_views,
        downscale_factor=config.downscale_factor,
    )
    metrics["train_seconds"] = run_.train_seconds
    metrics["train_iterations"] = steps
    metrics["run_config"] = str(run_.config_path)
    write_json_atomic(metrics, run_dir / "metrics.json")
    print_metrics(metrics, console=CONSOLE)
    CONSOLE.print(f"mesh:     {mesh_path}")
    CONSOLE.print(f"metrics:  {run_dir / 'metrics.json'}")
    CONSOLE.print(f"run:      {run_.config_path}")
    CONSOLE.print(f"view it:  pmni-viewer --load-config {run_.config_path}")
    return metrics


def entrypoint() -> None:
    config = tyro.cli(DemoConfig)
    try:
        run(config)
    except (PMNIDataError, FileNotFoundError) as err:
        print_error(f"error: {err}", prog="pmni-demo", stderr=True)
        sys.exit(EXIT_BAD_INPUT)


if __name__ == "__main__":
    entrypoint()
