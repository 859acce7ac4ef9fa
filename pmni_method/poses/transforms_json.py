"""Poses as nerfstudio's ``transforms.json`` (OpenGL camera-to-world, intrinsics per frame), so that any nerfstudio
method can train on the poses a pmni run recovered. nerfstudio's own ``ns-export cameras`` writes the dataset's
poses, not the optimised ones; this writes the optimised ones.

Load them unchanged with ``ns-train <method> nerfstudio-data --data F.transforms.json --orientation-method none
--center-method none --auto-scale-poses False`` (nerfstudio otherwise re-orients, re-centres and re-scales the
cameras). numpy only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from pmni_method import cameras


def transforms_json(
    c2w_world: np.ndarray,
    K: np.ndarray,
    width: int,
    height: int,
    image_paths: Sequence[Path],
    mask_paths: Optional[Sequence[Path]] = None,
    view_ids: Optional[Sequence[int]] = None,
    metadata: Optional[Dict[str, Any]] = None,
    distortion: Optional[np.ndarray] = None,
) -> Dict[str, Any]:
    """The ``transforms.json`` dictionary of OpenCV camera-to-worlds ``c2w_world`` (N, 4, 4) and OpenCV intrinsics
    ``K`` (N, 3, 3) of ``width`` x ``height`` images. Paths are written absolute, so the file may live anywhere.

    ``distortion`` (N, 6) nerfstudio ``[k1, k2, k3, k4, p1, p2]`` of the image files, when they are distorted
    originals (a capture pmni undistorted at load); ``metadata`` goes under ``"pmni"`` (nerfstudio ignores keys it
    does not know)."""
    c2w_gl = cameras.opencv_to_nerfstudio_c2w(np.asarray(c2w_world, dtype=np.float64))
    K = np.asarray(K, dtype=np.float64)
    frames: List[Dict[str, Any]] = []
    for i, matrix in enumerate(c2w_gl):
        cx, cy = cameras.opencv_to_nerfstudio_principal_point(float(K[i, 0, 2]), float(K[i, 1, 2]))
        frame: Dict[str, Any] = {
            "file_path": str(Path(image_paths[i]).absolute()),
            "transform_matrix": matrix.tolist(),
            "fl_x": float(K[i, 0, 0]),
            "fl_y": float(K[i, 1, 1]),
            "cx": cx,
            "cy": cy,
            "w": int(width),
            "h": int(height),
        }
        if distortion is not None:
            frame.update(zip(("k1", "k2", "k3", "k4", "p1", "p2"), (float(v) for v in distortion[i])))
        if mask_paths is not None:
            frame["mask_path"] = str(Path(mask_paths[i]).absolute())
        if view_ids is not None:
            frame["pmni_view"] = int(view_ids[i])
        frames.append(frame)
    # Without per-frame distortion the images are pinhole ones (what DiLiGenT-style maps are).
    out: Dict[str, Any] = {"camera_model": "OPENCV", "k1": 0.0, "k2": 0.0, "p1": 0.0, "p2": 0.0, "frames": frames}
    if metadata is not None:
        out["pmni"] = metadata
    return out
