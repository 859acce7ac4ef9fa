"""Pose files: camera poses from other tools (``.npz`` world_mat_<i>, ``.npy`` / ``.txt`` arrays, ``.json`` lists).

Every pose is an OpenCV camera-to-world. Nothing here imports nerfstudio, torch or image libraries.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from pmni_method import cameras
from pmni_method.errors import PMNIDataError
from pmni_method.npz import read_npz

ROTATION_TOLERANCE = 1e-3
"""A pose-file rotation may be off orthonormal by this much (max |R^T R - I| entry) and is then re-orthonormalised."""


def _file_error(path: Path, problem: str) -> PMNIDataError:
    return PMNIDataError(f"{path}: {problem}")


def _as_c2w(path: Path, what: str, matrix: Any) -> np.ndarray:
    """A 3x4 / 4x4 camera-to-world checked for finiteness and a proper rotation (re-orthonormalised)."""
    try:
        m = np.asarray(matrix, dtype=np.float64)
    except (TypeError, ValueError):
        raise _file_error(path, f"{what} is not a numeric matrix") from None
    if m.shape not in ((3, 4), (4, 4)):
        raise _file_error(path, f"{what} has shape {m.shape}; expected 4x4 or 3x4 camera-to-world")
    if not np.all(np.isfinite(m)):
        raise _file_error(path, f"{what} has NaN or Inf entries")
    if m.shape == (4, 4) and not np.allclose(m[3], [0.0, 0.0, 0.0, 1.0], atol=1e-6):
        raise _file_error(path, f"{what} has last row {m[3].tolist()}; expected [0, 0, 0, 1]")
    R = m[:3, :3]
    if np.abs(R.T @ R - np.eye(3)).max() > ROTATION_TOLERANCE or np.linalg.det(R) < 0:
        raise _file_error(
            path, f"{what} rotation part is not a rotation (det {np.linalg.det(R):.3g}); expected an OpenCV c2w"
        )
    # SfM tools write rotations to a few digits; snap to the nearest rotation so later maths stays exact.
    U, _, Vt = np.linalg.svd(R)
    out = np.eye(4)
    out[:3, :3] = U @ Vt
    out[:3, 3] = m[:3, 3]
    return out


def _stack_to_matrices(path: Path, array: np.ndarray) -> np.ndarray:
    """(N, 4, 4) / (N, 3, 4) / (N, 16) / (N, 12) / (4N, 4) / (3N, 4) arrays -> (N, 3|4, 4)."""
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[1:] in ((4, 4), (3, 4)):
        return a
    if a.ndim == 2 and a.shape[1] in (16, 12):
        return a.reshape(len(a), a.shape[1] // 4, 4)
    if a.ndim == 2 and a.shape[1] == 4:
        rows = a.shape[0]
        # Stacked 4x4 blocks end every fourth row with [0, 0, 0, 1]; anything else is read as 3x4 blocks.
        if rows % 4 == 0 and rows > 0 and np.allclose(a[3::4], [0.0, 0.0, 0.0, 1.0]):
            return a.reshape(rows // 4, 4, 4)
        if rows % 3 == 0 and rows > 0:
            return a.reshape(rows // 3, 3, 4)
    if a.ndim == 2 and a.shape in ((4, 4), (3, 4)):
        return a[None]
    raise _file_error(
        path, f"array has shape {a.shape}; expected (N, 4, 4) or (N, 3, 4) camera-to-worlds (or N rows of 16 / 12)"
    )


def _read_npz_poses(path: Path) -> Tuple[Dict[int, np.ndarray], bool]:
    """world_mat_<i> (+ optional shared scale_mat_<i>) -> view id -> c2w; also whether the poses are normalised."""
    arrays = read_npz(path)
    ids = sorted(int(k[len("world_mat_"):]) for k in arrays if k.startswith("world_mat_") and k[10:].isdigit())
    if not ids:
        raise _file_error(path, "no world_mat_<i> keys (expected a cameras_sphere.npz-style file)")
    scale_mat = None
    scale_ids = [i for i in ids if f"scale_mat_{i}" in arrays]
    if scale_ids:
        if len(scale_ids) != len(ids):
            missing = sorted(set(ids) - set(scale_ids))
            raise _file_error(path, f"scale_mat_<i> given for some views but not for {missing}")
        scale_mat = _as_matrix4(path, f"scale_mat_{ids[0]}", arrays[f"scale_mat_{ids[0]}"])
        for i in ids[1:]:
            if not np.allclose(_as_matrix4(path, f"scale_mat_{i}", arrays[f"scale_mat_{i}"]), scale_mat, rtol=1e-6):
                raise _file_error(path, f"scale_mat_{i} differs from scale_mat_{ids[0]}; all views must share one")
    poses: Dict[int, np.ndarray] = {}
    for i in ids:
        world_mat = _as_matrix4(path, f"world_mat_{i}", arrays[f"world_mat_{i}"])
        try:
            _, c2w = cameras.decompose_projection(world_mat if scale_mat is None else world_mat @ scale_mat)
        except cameras.CameraMatrixError as e:
            raise _file_error(path, f"world_mat_{i}: {e}") from None
        poses[i] = c2w
    return poses, scale_mat is not None


def _as_matrix4(path: Path, key: str, matrix: np.ndarray) -> np.ndarray:
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape not in ((3, 4), (4, 4)):
        raise _file_error(path, f"{key} has shape {m.shape}; expected 3x4 or 4x4")
    if not np.all(np.isfinite(m)):
        raise _file_error(path, f"{key} has NaN or Inf entries")
    out = np.eye(4)
    out[: m.shape[0]] = m
    return out


def _read_json_poses(path: Path) -> Dict[int, np.ndarray]:
    try:
        entries = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _file_error(path, f"not valid JSON ({' '.join(str(e).split())})") from None
    if not isinstance(entries, list) or not entries:
        raise _file_error(path, 'expected a non-empty JSON list of {"view": i, "c2w": 4x4}')
    poses: Dict[int, np.ndarray] = {}
    for n, entry in enumerate(entries):
        if not isinstance(entry, dict) or "view" not in entry or "c2w" not in entry:
            raise _file_error(path, f'entry {n} is not an object with "view" and "c2w"')
        view = entry["view"]
        if isinstance(view, bool) or not isinstance(view, int):
            raise _file_error(path, f'entry {n}: "view" must be an integer view id, not {view!r}')
        if view in poses:
            raise _file_error(path, f"view {view} appears twice")
        poses[view] = _as_c2w(path, f"view {view} c2w", entry["c2w"])
    return poses


def read_poses_file(
    path: Union[Path, str],
    normalisation: Optional[cameras.Normalisation] = None,
    ordered_view_ids: Optional[Sequence[int]] = None,
) -> Tuple[Optional[List[int]], np.ndarray]:
    """Every pose in a pose file (formats and frames as in :func:`load_poses_file`) with the view id of each.

    Returns ``(view_ids, c2w)``: the ids the file names (npz keys in ascending order, JSON entries in file order), or
    for plain arrays ``ordered_view_ids`` (their count must match the file's) or None when not given.
    """
    path = Path(path)
    if not path.is_file():
        raise _file_error(path, "poses file not found" if not path.exists() else "not a regular file")
    suffix = path.suffix.lower()
    normalised = False
    if suffix == ".npz":
        by_view, normalised = _read_npz_poses(path)
    elif suffix == ".json":
        by_view = _read_json_poses(path)
    elif suffix in (".npy", ".txt"):
        try:
            raw = np.load(path, allow_pickle=False) if suffix == ".npy" else np.loadtxt(path, ndmin=2)
        except Exception as e:  # numpy raises ValueError / OSError / UnpicklingError on bad files
            detail = " ".join(str(e).split())
            raise _file_error(path, f"cannot read {suffix} array ({type(e).__name__}: {detail})") from None
        stack = _stack_to_matrices(path, raw)
        ordered = np.stack([_as_c2w(path, f"pose {k}", m) for k, m in enumerate(stack)])
        if ordered_view_ids is not None and len(ordered) != len(ordered_view_ids):
            raise _file_error(
                path,
                f"{len(ordered)} poses but the dataset has {len(ordered_view_ids)} views (one pose per view, in order)",
            )
        by_view = None
    else:
        raise _file_error(path, f"unknown poses file type {suffix or '(none)'}; expected .npz, .npy, .txt or .json")

    if by_view is not None:
        ids: Optional[List[int]] = list(by_view)
        c2w = np.stack(list(by_view.values()))
    else:
        ids = None if ordered_view_ids is None else [int(v) for v in ordered_view_ids]
        c2w = ordered
    if normalisation is not None and not normalised:
        c2w = normalisation.c2w_to_normalised(c2w)
    return ids, c2w


def load_poses_file(
    path: Union[Path, str],
    view_ids: Optional[Sequence[int]] = None,
    normalisation: Optional[cameras.Normalisation] = None,
) -> np.ndarray:
    """Camera poses from a file (e.g. an SfM tool's output) as (N, 4, 4) OpenCV camera-to-worlds.

    Formats, chosen by suffix:

    * ``.npz``: ``cameras_sphere.npz`` style, ``world_mat_<i>`` (``K [R | t]``, world -> pixels; its intrinsics are
      ignored) per view id ``i``. With ``scale_mat_<i>`` (one shared by all views) the poses are returned in *that
      file's* normalised frame (``world_mat @ scale_mat``) and ``normalisation`` is not applied; without, they are in
      the dataset's world units and ``normalisation`` is applied.
    * ``.npy`` / ``.txt``: an (N, 4, 4) or (N, 3, 4) array (``.txt``: 4N or 3N rows of 4 numbers, or N rows of 16 / 12
      numbers, row-major) of camera-to-worlds, the k-th for the k-th view in ascending view-id order.
    * ``.json``: a list of ``{"view": i, "c2w": 4x4 or 3x4 nested list}``.

    Unless said otherwise above, poses must be in the dataset's *world* units and frame (DiLiGenT-MV: millimetres,
    the frame of ``cameras_sphere.npz`` and ``mesh_Gt.ply``) with OpenCV camera axes (x right, y down, z forward); with
    ``normalisation`` given they are converted to the normalised frame. A pose-free run does not need the world frame
    to be the true one (scoring aligns by a similarity), but world-space normal maps do live in the true frame.

    ``view_ids`` selects and orders the poses (ids from the npz keys / JSON ``view``; for plain arrays the count must
    match). Raises :class:`PMNIDataError` with one line, ``"<path>: <problem>"``, on a bad file.
    """
    ids, c2w = read_poses_file(path, normalisation, ordered_view_ids=view_ids)
    if ids is None:
        return c2w
    index = {v: k for k, v in enumerate(ids)}
    wanted = sorted(ids) if view_ids is None else [int(v) for v in view_ids]
    missing = [v for v in wanted if v not in index]
    if missing:
        raise _file_error(Path(path), f"no pose for views {missing} (file has views {sorted(ids)})")
    return c2w[[index[v] for v in wanted]]
