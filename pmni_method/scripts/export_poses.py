"""The poses pmni-export writes beside a mesh: pmni's poses file (OpenCV, world units, read back by pmni-eval and
``--pose-init file``) and nerfstudio's ``transforms.json`` (OpenGL, for any nerfstudio method)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from pmni_method import cameras
from pmni_method.atomic import write_json_atomic
from pmni_method.data import io
from pmni_method.data.diligent_mv import index_folder
from pmni_method.data.layout import MASK_DIR
from pmni_method.poses.transforms_json import transforms_json


def poses_path_for(mesh_path: Path) -> Path:
    """Default pose file of a mesh: ``bunny.ply`` -> ``bunny.poses.json`` in the same folder."""
    return mesh_path.with_name(mesh_path.stem + ".poses.json")


def run_poses(pipeline: Any) -> Tuple[List[int], np.ndarray, bool]:
    """View ids, (N, 4, 4) OpenCV camera-to-worlds in world units, and whether they are refined, of the training views.

    Refined poses come from the model (``refined_c2w``) when pose refinement was on; otherwise the poses training
    used (the initial ones) are returned, so that a calibrated run's file holds its calibration.
    """
    outputs = pipeline.datamanager.train_dataparser_outputs
    data = outputs.metadata["pmni_data"]
    refine = getattr(pipeline.model, "refined_c2w", None)
    refined = refine() if callable(refine) else None
    c2w = np.asarray(data.c2w if refined is None else refined, dtype=np.float64)
    world = pipeline.normalisation().c2w_to_world(c2w)
    return [int(v) for v in outputs.metadata["view_ids"]], world, refined is not None


def poses_json(
    view_ids: List[int], c2w_world: np.ndarray, refined: bool, source: Optional[Dict[str, Any]] = None
) -> List[Dict[str, Any]]:
    """The JSON pose-file form ``[{"view", "c2w", "refined"}]`` that ``pmni_method.poses.files.load_poses_file`` reads back.

    ``source`` (:meth:`RunSource.to_json`) goes into every entry as ``"source"``: the file must stay a list for the
    pose readers, which ignore keys they do not know.
    """
    return [
        {
            "view": int(v),
            "c2w": np.asarray(m, dtype=np.float64).tolist(),
            "refined": bool(refined),
            **({} if source is None else {"source": source}),
        }
        for v, m in zip(view_ids, c2w_world)
    ]


def poses_text(entries: List[Dict[str, Any]]) -> str:
    """The pose file's contents; raises ValueError on non-finite poses (strict JSON has no NaN)."""
    return json.dumps(entries, indent=1, allow_nan=False) + "\n"


def write_poses_atomic(entries: List[Dict[str, Any]], output: Path) -> Path:
    """Serialise first, then write-and-rename: an interrupted export never leaves a half-written pose file."""
    return write_json_atomic(entries, output, indent=1)


def transforms_path_for(mesh_path: Path) -> Path:
    """Default transforms file of a mesh: ``bunny.ply`` -> ``bunny.transforms.json`` in the same folder."""
    return mesh_path.with_name(mesh_path.stem + ".transforms.json")


def pipeline_transforms(
    pipeline: Any, view_ids: List[int], c2w_world: np.ndarray, metadata: Optional[Dict[str, Any]] = None
) -> Dict[str, Any]:
    """nerfstudio ``transforms.json`` of the training views: their poses ``c2w_world`` (OpenCV, world units), the
    full-resolution intrinsics and image size (training may have block-averaged the maps), the normal maps as
    ``file_path`` and the masks as ``mask_path``. With the calibration refinement on, the intrinsics are the refined
    ones."""
    outputs = pipeline.datamanager.train_dataparser_outputs
    data = outputs.metadata["pmni_data"]
    factor = int(getattr(pipeline.datamanager.config.dataparser, "downscale_factor", 1) or 1)
    mask_files = outputs.metadata.get("pmni_mask_files")
    if mask_files is None:  # runs from before the dataparsers recorded them
        by_view = index_folder(Path(data.data_dir) / MASK_DIR, io.MASK_SUFFIXES)
        mask_files = [by_view[v] for v in view_ids]
    height, width = io.read_mask(mask_files[0]).shape
    K = cameras.upscale_intrinsics(data.K, factor)
    # The refinement is in focal lengths, so it applies to the full-resolution intrinsics as to the trained ones.
    refine = getattr(pipeline.model, "refined_K", None)
    return transforms_json(
        c2w_world,
        refine(K) if callable(refine) else K,
        width,
        height,
        image_paths=[Path(p) for p in outputs.image_filenames],
        mask_paths=list(mask_files),
        distortion=outputs.metadata.get("pmni_distortion"),
        view_ids=view_ids,
        metadata=metadata,
    )
