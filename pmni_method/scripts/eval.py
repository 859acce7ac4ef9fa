"""pmni-eval: Chamfer distance, F-score and normal error of a reconstructed mesh against a DiLiGenT-MV-style dataset."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional, Tuple

import numpy as np
import tyro

from pmni_method.atomic import write_json_atomic
from pmni_method.errors import EXIT_BAD_INPUT, PMNIInputError, print_error



@dataclass
class EvalConfig:
    """Evaluate a mesh (world units) against a dataset folder holding mesh_Gt.ply, cameras and normal maps."""

    mesh: Path
    """Reconstructed mesh in world units (e.g. the output of pmni-export)."""
    data: Path
    """Dataset folder (cameras_sphere.npz, mask/, normal_world_space_GT/, mesh_Gt.ply); its true maps, masks and
    cameras (normal_world_space_true/, mask_true/, cameras_gt.npz) are scored against when present."""
    threshold: float = 0.5
    """F-score distance threshold in world units (DiLiGenT-MV: mm)."""
    heldout_views: Tuple[int, ...] = ()
    """View ids (as in the file names) whose normal error is also reported on its own."""
    output: Optional[Path] = None
    """Where to write the metrics as JSON; nothing is written if omitted."""
    normal_type: Literal["interpolated", "face"] = "interpolated"
    """Normals of the rendered mesh: barycentric interpolation of vertex normals, or flat face normals."""
    alignment: Optional[Path] = None
    """Optional 4x4 world-frame similarity (text or .npy) applied to the mesh first, e.g. from a pose-free fit."""
    downscale_factor: int = 1
    """Evaluate on images downscaled by this integer factor (faster; the protocol uses 1)."""
    poses: Optional[Path] = None
    """Estimated camera poses (pmni-export's <mesh>.poses.json, or any pose file pmni reads): reports rotation and
    translation errors per view after a similarity alignment of the camera centres to the true ones."""
    align_to_poses: bool = True
    """With --poses: measure the geometry after that same alignment (a pose-free run lives in its own frame)."""
    find_poses: bool = True
    """Without --poses or --alignment: if refined poses lie beside the mesh (<mesh name>.poses.json, as pmni-export
    writes them for a pose-free run), align by them; a pose-free mesh scored in its own frame misses the masks."""
    refine_alignment: Optional[bool] = None
    """Also report the metrics after an ICP similarity refining the alignment (the shape's own error, apart from
    the camera-based alignment's); default: whenever the mesh is aligned."""



def _load_alignment(path: Path) -> np.ndarray:
    if not path.is_file():
        raise PMNIInputError(f"{path}: alignment file not found")
    try:
        T = np.load(path) if path.suffix == ".npy" else np.loadtxt(path)
    except Exception as e:  # numpy raises ValueError / OSError / pickle errors for bad files
        raise PMNIInputError(f"{path}: cannot read alignment matrix ({type(e).__name__})")
    T = np.asarray(T, dtype=np.float64)
    if T.shape != (4, 4) or not np.all(np.isfinite(T)):
        raise PMNIInputError(f"{path}: alignment must be a finite 4x4 matrix, got shape {T.shape}")
    return T


def main(config: EvalConfig) -> int:
    """Run the evaluation; return the process exit code (0, or 2 for bad input after printing one line)."""
    from pmni_method.evaluation import evaluate, refined_poses_beside
    from pmni_method.export import read_mesh_source
    from pmni_method.report import print_metrics

    try:
        if config.downscale_factor < 1:
            raise PMNIInputError(f"--downscale-factor {config.downscale_factor}: must be a positive integer")
        if config.output is not None and config.output.is_dir():
            raise PMNIInputError(f"{config.output}: output is a folder, expected a .json file path")
        alignment = _load_alignment(config.alignment) if config.alignment is not None else None
        if config.poses is not None and not config.poses.is_file():
            raise PMNIInputError(f"{config.poses}: poses file not found")
        if config.poses is not None and config.align_to_poses and alignment is not None:
            raise PMNIInputError("--alignment and --poses both align the mesh; pass --no-align-to-poses to keep --alignment")
        source = read_mesh_source(config.mesh) if Path(config.mesh).is_file() else None
        placed = alignment is not None or config.poses is not None
        placed = placed or (config.find_poses and refined_poses_beside(config.mesh) is not None)
        if source and source.get("units", "world") != "world" and not placed:
            # Without a scale_mat the mesh has no physical size: only a similarity to the true cameras places it.
            raise PMNIInputError(
                f"{config.mesh}: the mesh is in {source['units']} units (its dataset gave no scale_mat); pass --poses "
                "with its refined poses file so that it is aligned to the truth by a similarity"
            )
        metrics = evaluate(
            config.mesh,
            config.data,
            threshold=config.threshold,
            heldout_views=config.heldout_views,
            alignment=alignment,
            normal_type=config.normal_type,
            downscale_factor=config.downscale_factor,
            poses=config.poses,
            align_to_poses=config.align_to_poses,
            refine_alignment=config.refine_alignment,
            find_poses=config.find_poses,
        )
        print_metrics(metrics)
        for warning in metrics["warnings"]:
            # Below the table, where they are seen; one line each, like the errors.
            print(f"pmni-eval: warning: {warning}", file=sys.stderr)
        if config.output is not None:
            try:
                write_json_atomic(metrics, config.output)
            except OSError as e:
                raise PMNIInputError(f"{config.output}: cannot write metrics ({e.strerror or e})")
            print(f"wrote {config.output}")
    except PMNIInputError as e:
        print_error(f"error: {e}", prog="pmni-eval", stderr=True)
        return EXIT_BAD_INPUT
    return 0


def entrypoint() -> None:
    """Console-script entry point (``pmni-eval``)."""
    sys.exit(main(tyro.cli(EvalConfig)))


if __name__ == "__main__":
    entrypoint()
