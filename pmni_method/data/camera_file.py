"""Reading a dataset's cameras: ``cameras_sphere.npz`` / ``cameras_gt.npz`` (per-view ``world_mat_<i>`` and one
shared ``scale_mat``), or intrinsics alone (``K.txt``, ``intrinsics.json``, or ``intrinsics_<i>`` in the npz) for a
pose-free dataset."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from pmni_method import cameras
from pmni_method.data.layout import CAMERAS_FILE, INTRINSICS_JSON, INTRINSICS_TXT
from pmni_method.errors import PMNIDataError, format_views
from pmni_method.npz import read_npz

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


INTRINSICS_KEYS = ("intrinsics", "K")
"""Per-view key prefixes of a ``cameras_sphere.npz`` that holds intrinsics only (``intrinsics_<i>`` or ``K_<i>``)."""


@dataclass
class DatasetCameras:
    """What a dataset says about its cameras: intrinsics always, poses and world units when it has them."""

    path: Path
    """The file they were read from."""
    K: np.ndarray
    """(N, 3, 3) OpenCV intrinsics per view (ascending view id)."""
    c2w: Optional[np.ndarray]
    """(N, 4, 4) OpenCV camera-to-world in the normalised frame; None for an intrinsics-only dataset."""
    c2w_world: Optional[np.ndarray]
    """The same in world units; None for an intrinsics-only dataset."""
    normalisation: cameras.Normalisation
    """Normalised frame <-> world; of unknown units when the dataset has no ``scale_mat``."""

    @property
    def has_poses(self) -> bool:
        return self.c2w is not None


def read_dataset_cameras(data_dir: Path, view_ids: List[int]) -> DatasetCameras:
    """The cameras of a dataset folder: ``cameras_sphere.npz`` (full cameras, or ``intrinsics_<i>``/``K_<i>`` with an
    optional ``scale_mat_<i>``), else ``K.txt`` (one K for all views), else ``intrinsics.json``."""
    npz_path = data_dir / CAMERAS_FILE
    if npz_path.is_file():
        arrays = read_npz(npz_path)
        if any(re.fullmatch(r"world_mat_\d+", k) for k in arrays):
            check_camera_views(npz_path, arrays, view_ids)
            K, c2w, c2w_world, scale_mat = read_cameras(npz_path, arrays, view_ids)
            return DatasetCameras(npz_path, K, c2w, c2w_world, cameras.Normalisation(scale_mat))
        return _npz_intrinsics(npz_path, arrays, view_ids)
    txt_path, json_path = data_dir / INTRINSICS_TXT, data_dir / INTRINSICS_JSON
    if txt_path.is_file():
        try:
            values = np.loadtxt(txt_path, dtype=np.float64, ndmin=1).reshape(-1)
        except ValueError as e:
            raise _error(txt_path, f"not a whitespace-separated 3x3 matrix ({' '.join(str(e).split())})") from None
        if values.size != 9:
            raise _error(txt_path, f"holds {values.size} numbers; expected the 9 of one 3x3 intrinsics matrix")
        K = _check_K(txt_path, "K", values.reshape(3, 3))
        K_all = np.stack([K] * len(view_ids))
        return DatasetCameras(txt_path, K_all, None, None, cameras.Normalisation.unknown_units())
    if json_path.is_file():
        return _json_intrinsics(json_path, view_ids)
    raise _error(
        npz_path,
        f"camera file not found (nor {INTRINSICS_TXT} or {INTRINSICS_JSON} with intrinsics only) in {data_dir}",
    )


def _check_K(path: Path, key: str, matrix: Any) -> np.ndarray:
    try:
        K = np.asarray(matrix, dtype=np.float64)
    except (TypeError, ValueError):
        raise _error(path, f"{key} is not a numeric 3x3 matrix") from None
    if K.shape == (4, 4):
        K = K[:3, :3]
    if K.shape != (3, 3):
        raise _error(path, f"{key} has shape {K.shape}; expected 3x3")
    if not np.all(np.isfinite(K)) or not (K[0, 0] > 0 and K[1, 1] > 0) or not np.allclose(K[2], [0.0, 0.0, 1.0]):
        raise _error(path, f"{key} is not an intrinsics matrix (positive focal lengths, last row 0 0 1): {K.tolist()}")
    return K


def _npz_intrinsics(path: Path, arrays: Dict[str, np.ndarray], view_ids: List[int]) -> DatasetCameras:
    prefix = next((p for p in INTRINSICS_KEYS if any(re.fullmatch(rf"{p}_\d+", k) for k in arrays)), None)
    if prefix is None:
        raise _error(path, "no world_mat_<i> (full cameras) nor intrinsics_<i> / K_<i> (intrinsics only) keys")
    views = {int(k[len(prefix) + 1:]) for k in arrays if re.fullmatch(rf"{prefix}_\d+", k)}
    missing = set(view_ids) - views
    if missing:
        raise _error(path, f"missing key {prefix}_{min(missing)} (no intrinsics for views {format_views(missing)})")
    if views - set(view_ids):
        raise _error(path, f"intrinsics for views {format_views(views - set(view_ids))} that have no normal map")
    K = np.stack([_check_K(path, f"{prefix}_{i}", arrays[f"{prefix}_{i}"]) for i in view_ids])
    scale_keys = [i for i in view_ids if f"scale_mat_{i}" in arrays]
    if not scale_keys:
        return DatasetCameras(path, K, None, None, cameras.Normalisation.unknown_units())
    if len(scale_keys) != len(view_ids):
        missing = set(view_ids) - set(scale_keys)
        raise _error(path, f"missing key scale_mat_{min(missing)} (views {format_views(missing)})")
    return DatasetCameras(path, K, None, None, cameras.Normalisation(_shared_scale_mat(path, arrays, view_ids)))


def _json_intrinsics(path: Path, view_ids: List[int]) -> DatasetCameras:
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise _error(path, f"unreadable JSON ({' '.join(str(e).split())})") from None
    if not isinstance(meta, dict) or ("K" in meta) == ("views" in meta):
        raise _error(path, 'expected an object with "K" (one 3x3 for all views) or "views" ([{"view": i, "K": 3x3}])')
    if "K" in meta:
        K = np.stack([_check_K(path, "K", meta["K"])] * len(view_ids))
    else:
        entries = meta["views"]
        per_view: Dict[int, np.ndarray] = {}
        for n, entry in enumerate(entries if isinstance(entries, list) else []):
            if not isinstance(entry, dict) or not isinstance(entry.get("view"), int) or "K" not in entry:
                raise _error(path, f'views[{n}] is not {{"view": <int>, "K": 3x3}}')
            per_view[entry["view"]] = _check_K(path, f"views[{n}].K", entry["K"])
        missing = set(view_ids) - set(per_view)
        if not isinstance(entries, list) or missing:
            raise _error(path, f"no intrinsics for views {format_views(missing or set(view_ids))}")
        K = np.stack([per_view[i] for i in view_ids])
    normalisation = cameras.Normalisation.unknown_units()
    if "scale_mat" in meta:
        scale_mat = _as_4x4(path, "scale_mat", np.asarray(meta["scale_mat"], dtype=np.float64))
        if not np.all(np.isfinite(scale_mat)) or abs(np.linalg.det(scale_mat[:3, :3])) <= 1e-12:
            raise _error(path, "scale_mat is singular or not finite")
        normalisation = cameras.Normalisation(scale_mat)
    return DatasetCameras(path, K, None, None, normalisation)
