"""Reading ``cameras_sphere.npz`` / ``cameras_gt.npz``: per-view ``world_mat_<i>`` and one shared ``scale_mat``."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from pmni_method import cameras
from pmni_method.errors import PMNIDataError, format_views

SCALE_MAT_RTOL = 1e-6
"""Relative tolerance when checking that all views share one scale_mat."""


def _error(path: Path, problem: str) -> PMNIDataError:
    return PMNIDataError(f"{path}: {problem}")


def check_camera_views(camera_path: Path, arrays: Dict[str, np.ndarray], view_ids: List[int]) -> None:
    """Refuse a camera file whose views are not exactly those of the images."""
    camera_views = {int(k[len("world_mat_"):]) for k in arrays if re.fullmatch(r"world_mat_\d+", k)}
    missing, extra = set(view_ids) - camera_views, camera_views - set(view_ids)
    if missing:
        raise _error(camera_path, f"missing key world_mat_{min(missing)} (no camera for views {format_views(missing)})")
    if extra:
        # Extra cameras usually mean a normal map went missing; silently training on fewer views would hide it.
        raise _error(
            camera_path,
            f"{len(camera_views)} cameras but {len(view_ids)} normal maps and masks: no images for views "
            f"{format_views(extra)}",
        )


def read_cameras(
    npz_path: Path, arrays: Dict[str, np.ndarray], view_ids: List[int], scale_mat: Optional[np.ndarray] = None
) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Read ``world_mat_<i>``/``scale_mat_<i>`` for each view.

    Returns ``(K, c2w_normalised, c2w_world, scale_mat)``. With ``scale_mat`` given, that one is used instead of
    the file's, so that a second camera file (the true poses) lands in the same normalised frame.
    """
    missing = [i for i in view_ids if f"world_mat_{i}" not in arrays]
    if missing:
        raise _error(npz_path, f"missing key world_mat_{missing[0]} (no camera for views {format_views(missing)})")
    if scale_mat is None:
        missing = [i for i in view_ids if f"scale_mat_{i}" not in arrays]
        if missing:
            raise _error(npz_path, f"missing key scale_mat_{missing[0]} (views {format_views(missing)})")
        scale_mat = _shared_scale_mat(npz_path, arrays, view_ids)

    Ks, c2w_norm, c2w_world = [], [], []
    for i in view_ids:
        key = f"world_mat_{i}"
        world_mat = _as_4x4(npz_path, key, arrays[key])
        try:
            K, c2w = cameras.decompose_projection(world_mat @ scale_mat)
            _, c2w_w = cameras.decompose_projection(world_mat)
        except cameras.CameraMatrixError as e:
            raise _error(npz_path, f"{key}: {e}") from None
        Ks.append(K)
        c2w_norm.append(c2w)
        c2w_world.append(c2w_w)
    return np.stack(Ks), np.stack(c2w_norm), np.stack(c2w_world), scale_mat


def _as_4x4(npz_path: Path, key: str, matrix: np.ndarray) -> np.ndarray:
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.shape not in ((3, 4), (4, 4)):
        raise _error(npz_path, f"{key} has shape {matrix.shape}; expected 3x4 or 4x4")
    out = np.eye(4)
    out[: matrix.shape[0]] = matrix
    return out


def _shared_scale_mat(npz_path: Path, arrays: Dict[str, np.ndarray], view_ids: List[int]) -> np.ndarray:
    first = _as_4x4(npz_path, f"scale_mat_{view_ids[0]}", arrays[f"scale_mat_{view_ids[0]}"])
    tol = SCALE_MAT_RTOL * max(np.abs(first).max(), 1.0)
    for i in view_ids[1:]:
        other = _as_4x4(npz_path, f"scale_mat_{i}", arrays[f"scale_mat_{i}"])
        if not np.allclose(other, first, rtol=0.0, atol=tol):
            # One normalised frame is needed for all views; per-view scale_mats would mean per-view frames.
            raise _error(npz_path, f"scale_mat_{i} differs from scale_mat_{view_ids[0]}; all views must share one")
    linear = first[:3, :3]
    if not np.all(np.isfinite(first)) or abs(np.linalg.det(linear)) <= 1e-12 * max(np.abs(linear).max(), 1e-300) ** 3:
        raise _error(npz_path, f"scale_mat_{view_ids[0]} is singular or not finite")
    return first
