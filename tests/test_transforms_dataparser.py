"""The ``transforms.json`` loader and the ``nerfstudio-normals-data`` dataparser.

The datasets here are the synthetic bunny of ``tests/conftest.py`` rewritten as nerfstudio captures: OpenGL poses
in world units (millimetres), masks by ``mask_path``, normal maps by file stem from a folder. They must load to the
same cameras, normals and masks as the DiLiGenT-MV original, up to the normalised frame, which each loader picks
its own way (``scale_mat`` there, the visual hull here) and which both keep as their ``Normalisation``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import pytest
import scipy.ndimage

from pmni_method import cameras
from pmni_method.data import io
from pmni_method.data.camera_file import read_dataset_cameras
from pmni_method.data.diligent_mv import load_diligent_mv
from pmni_method.data.transforms_loader import load_transforms_json
from pmni_method.data.undistort import distort_normalised
from pmni_method.errors import PMNIDataError
from pmni_method.poses.starts import PoseInitConfig

VIEWS = list(range(8))
K1, K2 = -0.25, 0.08
"""Barrel distortion of the wide-angle capture: about 3 pixels at the 80x64 image's corners (focal 60 px)."""


def write_transforms(
    src: Path,
    dst: Path,
    normal_folder: str = "normal_camera_space_GT",
    distortion: Optional[Dict[str, float]] = None,
    per_frame: bool = False,
    **extra: Any,
) -> Path:
    """``src`` (DiLiGenT-MV layout) as a nerfstudio capture in ``dst``: transforms.json, normals/, masks/."""
    dst.mkdir(parents=True, exist_ok=True)
    cams = read_dataset_cameras(src, VIEWS)
    c2w_gl = cameras.opencv_to_nerfstudio_c2w(cams.c2w_world)
    height, width = io.read_mask(src / "mask" / "000.png").shape
    shutil.copytree(src / normal_folder, dst / "normals", dirs_exist_ok=True)
    shutil.copytree(src / "mask", dst / "masks", dirs_exist_ok=True)
    K = cams.K[0]
    intrinsics = {"fl_x": K[0, 0], "fl_y": K[1, 1], "cx": K[0, 2] + 0.5, "cy": K[1, 2] + 0.5, "w": width, "h": height}
    frames = []
    # Reverse order on purpose: the loader must sort the frames by view id.
    for view in reversed(VIEWS):
        frame: Dict[str, Any] = {
            "file_path": f"images/{view:03d}.png",
            "transform_matrix": c2w_gl[view].tolist(),
            "mask_path": f"masks/{view:03d}.png",
        }
        if per_frame:
            frame.update(intrinsics)
        frames.append(frame)
    meta: Dict[str, Any] = {"camera_model": "OPENCV", "frames": frames}
    if not per_frame:
        meta.update(intrinsics)
    meta.update(distortion or {})
    meta.update(extra)
    (dst / "transforms.json").write_text(json.dumps(meta, indent=1))
    if (src / "mesh_Gt.ply").is_file():
        shutil.copy(src / "mesh_Gt.ply", dst / "mesh_Gt.ply")
    return dst / "transforms.json"


def world_normals(data) -> np.ndarray:
    return np.where(data.masks[..., None], data.normalisation.normals_to_world(data.normals.astype(np.float64)), 0.0)
