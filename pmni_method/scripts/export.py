"""pmni-export: marching-cubes mesh (world units) from a trained pmni nerfstudio run, and the run's camera poses."""

from __future__ import annotations

import os
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import tyro

from pmni_method.atomic import FileGroup, PublishError
from pmni_method.errors import EXIT_BAD_INPUT, PMNIDataError, PMNIInputError, print_error
from pmni_method.scripts.export_poses import (  # noqa: F401  (poses_json and write_poses_atomic: public here too)
    pipeline_transforms,
    poses_json,
    poses_path_for,
    poses_text,
    run_poses,
    transforms_path_for,
    write_poses_atomic,
)
from pmni_method.scripts.run_config import load_trainer_config



@dataclass
class ExportConfig:
    """Extract the SDF's zero level set from a trained run and write it in world units."""

    load_config: Path
    """config.yml of the trained run (outputs/<experiment>/<method>/<timestamp>/config.yml)."""
    output: Path
    """Mesh file to write (.ply, .obj, .stl or .off); written atomically."""
    resolution: int = 256
    """Marching-cubes grid resolution per axis over the normalised bounds."""
    bounds: Tuple[float, float] = (-1.0, 1.0)
    """Per-axis extent of the grid in the normalised frame (the object lies in the unit sphere)."""
    chunk: int = 2**18
    """SDF queries per forward pass; lower it if the GPU runs out of memory."""
    keep_largest: bool = True
    """Keep only the connected component with the largest area (drops floaters)."""
    sparse: bool = True
    """Evaluate the SDF at full resolution only near the surface a coarser grid finds (the same mesh, about 5x
    faster at 256^3); --no-sparse evaluates every grid point, which also finds floaters smaller than a coarse cell."""
    write_poses: bool = True
    """Also write the training cameras' poses (refined when pose refinement was on) as JSON, for pmni-eval --poses."""
    poses_output: Optional[Path] = None
    """Where to write the poses; default: beside the mesh, <mesh name without suffix>.poses.json."""
    write_transforms: bool = True
    """Also write the same poses as nerfstudio's transforms.json (OpenGL, intrinsics per frame), for any nerfstudio
    method: ns-train <method> nerfstudio-data --data F --orientation-method none --center-method none
    --auto-scale-poses False."""
    transforms_output: Optional[Path] = None
    """Where to write transforms.json; default: beside the mesh, <mesh name without suffix>.transforms.json."""


@dataclass
class RunSource:
    """Which checkpoint of which training run a mesh comes from, and whether that run completed."""

    run: str
    """The run's config.yml, as given to pmni-export."""
    checkpoint: str
    """The checkpoint file the pipeline was loaded from."""
    step: int
    """Training step stored in the checkpoint."""
    max_num_iterations: int
    """The run's planned length."""
    finished: bool
    """True only for the final checkpoint of a run that completed all its iterations."""

    def to_json(self) -> Dict[str, Any]:
        """The record written into the mesh header and the poses file (and read back by pmni-eval)."""
        return {
            "run": self.run,
            "checkpoint": self.checkpoint,
            "step": self.step,
            "max_num_iterations": self.max_num_iterations,
            "finished": self.finished,
        }


def checkpoint_source(checkpoint: Path, run_config: Path, max_num_iterations: int) -> RunSource:
    """Read the step and the run state from a checkpoint (metadata only matters; the pipeline is loaded elsewhere).

    The trainer stores ``"pmni_run": {"finished", "max_num_iterations"}``; an older checkpoint has only ``"step"``,
    and then the run counts as finished when that step is the last of ``max_num_iterations`` (nerfstudio saves the
    final checkpoint at step ``max_num_iterations - 1``).
    """
    import torch

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    step = int(state["step"])
    run = state.get("pmni_run")
    if isinstance(run, dict) and "finished" in run:
        total = int(run.get("max_num_iterations", max_num_iterations))
        finished = bool(run["finished"])
    else:
        total = int(max_num_iterations)
        finished = step + 1 >= total
    return RunSource(str(run_config), str(checkpoint), step, total, finished)



def check_destination(path: Path, what: str) -> List[Path]:
    """Make sure ``path`` can be written before anything is loaded; raise :class:`PMNIInputError` with one line if not.

    Creates missing parent folders (returned, outermost first, so that a caller can remove them again) and creates
    and removes a temporary file there: that answers permissions, read-only and full file systems alike.
    """
    if path.is_dir():
        raise PMNIInputError(f"{path}: {what} output is a folder, expected a file path")
    parent = path.parent
    existing = next(p for p in (parent, *parent.parents) if p.exists() or p.is_symlink())
    if not existing.is_dir():
        raise PMNIInputError(f"{path}: cannot write {what} ({existing} is not a folder)")
    created = [p for p in reversed([parent, *parent.parents]) if not p.exists()]
    try:
        parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        _remove_folders(created)
        raise PMNIInputError(f"{path}: cannot write {what} ({e.strerror or e})")
    return created


def _remove_folders(folders: List[Path]) -> None:
    # Innermost first; a folder something else has written into meanwhile stays.
    for folder in reversed(folders):
        try:
            folder.rmdir()
        except OSError:
            break


def load_pipeline(load_config: Path) -> Tuple[Any, RunSource]:
    """Load the trained pipeline for inference, on CUDA if available, else CPU; raise :class:`PMNIInputError` on bad input.

    Returns the pipeline and the :class:`RunSource` of the checkpoint it was loaded from.

    The run is checked first (:func:`pmni_method.scripts.run_config.load_trainer_config`).
    """
    load_trainer_config(load_config)
    with warnings.catch_warnings():
        # nerfstudio's dependencies emit deprecation warnings on import that would bury the CLI's own output.
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        import torch
        from nerfstudio.utils.eval_utils import eval_setup

    device_type = "cuda" if torch.cuda.is_available() else "cpu"

    def _set_device(cfg: Any) -> Any:
        # eval_setup picks the device from torch.cuda.is_available() but leaves machine.device_type as trained,
        # which code reading the config (e.g. a datamanager) would otherwise still take as "cuda".
        cfg.machine.device_type = device_type
        return cfg

    loaded_config, pipeline, checkpoint, _ = eval_setup(
        load_config, test_mode="inference", update_config_callback=_set_device
    )
    return pipeline, checkpoint_source(Path(checkpoint), load_config, int(loaded_config.max_num_iterations))


def main(config: ExportConfig) -> int:
    """Run the export; return the process exit code (0, or 2 for bad input after printing one line)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from pmni_method.export import (
        EXPORT_FORMATS,
        SOURCE_FORMATS,
        MeshExtractionError,
        extract_mesh,
        mesh_bytes,
    )

    console = Console()
    try:
        suffix = config.output.suffix.lower()
        if suffix not in EXPORT_FORMATS:
            raise PMNIInputError(f"{config.output}: unsupported mesh format; use one of {', '.join(EXPORT_FORMATS)}")
        if config.resolution < 2:
            raise PMNIInputError(f"--resolution {config.resolution}: must be at least 2")
        if config.chunk < 1:
            raise PMNIInputError(f"--chunk {config.chunk}: must be positive")
        if not config.bounds[0] < config.bounds[1]:
            raise PMNIInputError(f"--bounds {config.bounds}: expected LOW HIGH with LOW < HIGH")
        poses_output: Optional[Path] = None
        transforms_output: Optional[Path] = None
        if config.write_poses:
            poses_output = config.poses_output or poses_path_for(config.output)
            if config.write_transforms:
                transforms_output = config.transforms_output or transforms_path_for(config.output)
        destinations = [(p, what) for p, what in ((poses_output, "poses"), (transforms_output, "transforms")) if p]
        seen = {config.output.absolute(): "mesh"}
        for path, what in destinations:
            if path.absolute() in seen:
                raise PMNIInputError(f"{path}: the {what} output is the {seen[path.absolute()]} output")
            seen[path.absolute()] = what
        # Every destination is checked before the pipeline is loaded and meshed (minutes on a CPU): a typo in a
        # path should cost seconds, not a marching-cubes run.
        created = check_destination(config.output, "mesh")
        for path, what in destinations:
            try:
                created += check_destination(path, what)
            except PMNIInputError:
                _remove_folders(created)
                raise

        pipeline, source = load_pipeline(config.load_config)
        if not source.finished:
            console.print(
                f"note: run did not finish: meshing checkpoint step {source.step} of {source.max_num_iterations}",
                markup=False,
                highlight=False,
            )
        import torch

        try:
            field = pipeline.model.field
            normalisation = pipeline.normalisation()
        except (AttributeError, KeyError, TypeError) as e:
            raise PMNIInputError(f"{config.load_config}: the run has no SDF field or no normalisation ({type(e).__name__}: {e})")

        def sdf_fn(x: torch.Tensor) -> torch.Tensor:
            return field.forward_geonetwork(x)[:, 0]

        with Progress(
            TextColumn("[bold]evaluating SDF"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        ) as progress:
            task = progress.add_task("sdf", total=None)

            def on_chunk(done: int, total: int) -> None:
                progress.update(task, completed=done, total=total)

            try:
                mesh = extract_mesh(
                    sdf_fn,
                    resolution=config.resolution,
                    bounds=config.bounds,
                    chunk=config.chunk,
                    normalisation=normalisation,
                    keep_largest=config.keep_largest,
                    device=pipeline.device,
                    progress=on_chunk,
                    sparse=config.sparse,
                )
            except MeshExtractionError as e:
                raise PMNIInputError(f"{config.load_config}: {e}")
        record = dict(source.to_json(), units=normalisation.units)
        poses_data: Optional[bytes] = None
        transforms_data: Optional[bytes] = None
        if poses_output is not None:
            try:
                view_ids, c2w_world, refined = run_poses(pipeline)
            except (AttributeError, KeyError, TypeError) as e:
                # The mesh is the product; a run that cannot tell its poses still gets it, with a note.
                console.print(f"note: no poses file: the run has no training poses ({type(e).__name__}: {e})", markup=False)
                poses_output = transforms_output = None
            else:
                try:
                    poses_data = poses_text(poses_json(view_ids, c2w_world, refined, record)).encode()
                except ValueError:
                    raise PMNIInputError(f"{poses_output}: cannot write poses (the run's poses have NaN or Inf entries)")
                if transforms_output is not None:
                    meta = dict(record, refined=refined, note="pmni training views; OpenGL camera-to-world")
                    try:
                        transforms_data = poses_text(pipeline_transforms(pipeline, view_ids, c2w_world, meta)).encode()
                    except (AttributeError, KeyError, TypeError, IndexError, PMNIDataError) as e:
                        # Mesh and poses are still worth having from a run that cannot name its images.
                        console.print(f"note: no transforms.json: the run's images are unknown ({e})", markup=False)
                        transforms_output = None

        # Mesh and poses describe one state of the run: all files are replaced, or none (FileGroup).
        try:
            mesh_data = mesh_bytes(mesh, suffix, record)
        except OSError as e:
            raise PMNIInputError(f"{config.output}: cannot write mesh ({e.strerror or e})")
        files = [(config.output, "mesh", mesh_data)]
        extra = ((poses_output, "poses", poses_data), (transforms_output, "transforms", transforms_data))
        for path, what, payload in extra:
            if path is not None and payload is not None:
                files.append((path, what, payload))
        with FileGroup() as group:
            for path, what, payload in files:
                try:
                    group.stage(path, payload)
                except OSError as e:
                    raise PMNIInputError(f"{path}: cannot write {what} ({e.strerror or e})")
            try:
                group.publish()
            except PublishError as e:
                what = next(w for p, w, _ in files if p == e.target)
                others = " and ".join(str(p) for p, _, _ in files if p != e.target)
                outcome = f"{others} left as it was" if others else "nothing written"
                if e.unrestored:
                    outcome = "could not restore " + "; ".join(e.unrestored)
                raise PMNIInputError(f"{e.target}: cannot write {what} ({e.cause.strerror or e.cause}); {outcome}")
    except PMNIInputError as e:
        print_error(f"error: {e}", prog="pmni-export", stderr=True)
        return EXIT_BAD_INPUT

    lo, hi = mesh.bounds
    console.print(
        f"wrote {config.output} ({len(mesh.vertices)} vertices, {len(mesh.faces)} faces, "
        f"checkpoint step {source.step})",
        markup=False,
    )
    console.print(
        f"bbox ({normalisation.units} units): "
        f"min [{lo[0]:.4g}, {lo[1]:.4g}, {lo[2]:.4g}]  max [{hi[0]:.4g}, {hi[1]:.4g}, {hi[2]:.4g}]  "
        f"size [{hi[0] - lo[0]:.4g}, {hi[1] - lo[1]:.4g}, {hi[2] - lo[2]:.4g}]",
        markup=False,
    )
    if suffix not in SOURCE_FORMATS:
        where = "only in the poses file" if poses_output is not None else "nowhere (use .ply or .obj to keep them)"
        console.print(
            f"note: {suffix} files have no header comments: the checkpoint step and run state are recorded {where}",
            markup=False,
        )
    if poses_output is not None:
        console.print(
            f"wrote {poses_output} ({'refined' if refined else 'initial'} poses of {len(view_ids)} training views, "
            f"{normalisation.units} units, OpenCV camera-to-world)",
            markup=False,
        )
    if transforms_output is not None and transforms_data is not None:
        console.print(f"wrote {transforms_output} (the same poses as nerfstudio transforms.json, OpenGL)", markup=False)
    if not normalisation.world_units:
        console.print(
            "note: the dataset gave no scale_mat: mesh and poses are in the normalised frame, of unknown physical size",
            markup=False,
        )
    return 0


def entrypoint() -> None:
    """Console-script entry point (``pmni-export``)."""
    sys.exit(main(tyro.cli(ExportConfig)))


if __name__ == "__main__":
    entrypoint()
