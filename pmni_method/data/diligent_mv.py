"""Loader for DiLiGenT-MV style datasets (the SuperNormal / PMNI layout), one object per folder.

Layout::

    <data_dir>/cameras_sphere.npz         world_mat_<i> (K[R|t], world -> pixels), scale_mat_<i> (normalised -> world)
                                          or, pose-free: intrinsics_<i> / K_<i> (optional scale_mat_<i>), or
    <data_dir>/K.txt | intrinsics.json    intrinsics only (see pmni_method.data.layout)
    <data_dir>/cameras_gt.npz             optional, same keys: true poses when the stored ones are perturbed
    <data_dir>/<normal_dir>/*.exr|png|npy normal maps (world or camera space)
    <data_dir>/mask/*.png                 foreground masks
    <data_dir>/integration/perspective/*.npy   optional camera-z depth
    <data_dir>/mesh_Gt.ply                optional ground-truth mesh (world units)

The poses training starts from are the stored ones by default; :class:`pmni_method.poses.starts.PoseInitConfig` swaps them
for noisy, ring or file poses (pose-free reconstruction) while the true ones stay in ``gt_c2w``.

Loading ends with the plausibility checks of :mod:`pmni_method.data.plausibility` (normals facing their cameras,
the object inside the unit sphere of ``scale_mat``), which refuse data in a wrong convention before it trains.

Files are matched by view index, the last integer in the file stem (``000.exr``, ``view_01.png``).
Nothing here imports nerfstudio or torch: the core runs without them.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Literal, Optional, Sequence, Tuple

import numpy as np
import scipy.ndimage

from pmni_method import cameras
from pmni_method.data import io, plausibility
from pmni_method.data.camera_file import read_cameras, read_dataset_cameras
from pmni_method.data.layout import (
    CAMERA_NORMAL_DIR,
    DEPTH_DIR,
    GT_CAMERAS_FILE,
    GT_MESH_FILE,
    MASK_DIR,
    WORLD_NORMAL_DIR,
)
from pmni_method.data.types import MultiViewNormalData
from pmni_method.errors import PMNIDataError, format_views
from pmni_method.npz import read_npz
from pmni_method.poses.starts import PoseInitConfig, initial_poses

NormalSpace = Literal["auto", "world", "camera"]

UNIT_TOLERANCE = 0.1
"""A normal is broken when ``| ||n|| - 1 |`` exceeds this (or it is not finite)."""
MAX_BAD_NORMAL_FRACTION = 0.01
"""More broken normals than this fraction of a view's mask pixels rejects the view; fewer are repaired."""
_LAST_INT = re.compile(r"(\d+)(?!.*\d)")


def _error(path: Path, problem: str) -> PMNIDataError:
    return PMNIDataError(f"{path}: {problem}")


def view_index(path: Path) -> Optional[int]:
    """The view index of a file: the last integer in its stem, or None if it has none."""
    match = _LAST_INT.search(Path(path).stem)
    return int(match.group(1)) if match else None


def index_folder(folder: Path, suffixes: Sequence[str]) -> Dict[int, Path]:
    """Map view index -> file for the files in ``folder`` with one of ``suffixes`` (hidden files ignored)."""
    if not folder.is_dir():
        raise _error(folder, "folder not found" if not folder.exists() else "not a folder")
    files: Dict[int, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() not in suffixes or not path.is_file():
            continue
        idx = view_index(path)
        if idx is None:
            raise _error(path, "no view index in the file name (expected a number, e.g. 000.png)")
        if idx in files:
            raise _error(folder, f"two files for view {idx}: {files[idx].name} and {path.name}")
        files[idx] = path
    if not files:
        raise _error(folder, f"no files of type {', '.join(suffixes)}")
    return files


def find_normal_maps(data_dir: Path, normal_dir: str = WORLD_NORMAL_DIR) -> Dict[int, Path]:
    """Map view index -> normal-map file of a dataset."""
    return index_folder(Path(data_dir) / normal_dir, io.NORMAL_SUFFIXES)


AUTO_NORMAL_DIR = "auto"
"""``normal_dir`` value that picks the folder by the start: world-space maps for a calibrated run when the dataset has
them, camera-space maps for a pose-free one (they turn with the poses)."""


def resolve_normal_dir(data_dir: Path, normal_dir: str, pose_init: str) -> str:
    """The normal-map folder to read: ``normal_dir`` itself, or for ``"auto"`` :data:`WORLD_NORMAL_DIR` /
    :data:`CAMERA_NORMAL_DIR`, whichever the start can use and the dataset has (the world one for ``gt``)."""
    if normal_dir != AUTO_NORMAL_DIR:
        return normal_dir
    preferred = (WORLD_NORMAL_DIR, CAMERA_NORMAL_DIR) if pose_init == "gt" else (CAMERA_NORMAL_DIR, WORLD_NORMAL_DIR)
    for name in preferred:
        if (Path(data_dir) / name).is_dir():
            return name
    # Neither exists: name the one the start needs in the "folder not found" error.
    return preferred[0]


def resolve_normal_space(normal_dir: str, normal_space: str) -> Literal["world", "camera"]:
    """``"auto"`` reads the space off the folder name: a name containing "camera" holds camera-space normals."""
    if normal_space == "auto":
        return "camera" if "camera" in Path(normal_dir).name.lower() else "world"
    if normal_space not in ("world", "camera"):
        raise ValueError(f"normal_space must be 'auto', 'world' or 'camera', not {normal_space!r}")
    return normal_space  # type: ignore[return-value]


def _check_and_repair_normals(path: Path, normals: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Reject a view with many broken (non-unit / NaN) normals in the mask; fill a few from their neighbours."""
    norms = np.linalg.norm(normals, axis=-1)
    bad = mask & ~(np.isfinite(norms) & (np.abs(norms - 1.0) <= UNIT_TOLERANCE))
    num_bad, num_fg = int(bad.sum()), int(mask.sum())
    if num_bad > MAX_BAD_NORMAL_FRACTION * num_fg:
        raise _error(
            path,
            f"{num_bad} of {num_fg} mask pixels ({100.0 * num_bad / num_fg:.1f}%) have non-unit or NaN normals "
            f"(| |n| - 1 | > {UNIT_TOLERANCE}); wrong file, wrong mask, or a non-float encoding?",
        )
    out = np.where(mask[..., None], normals, 0.0)
    good = mask & ~bad
    if num_bad:
        # Mask-edge pixels are the usual culprits: borrow the nearest good normal so every mask pixel stays unit.
        _, (rows, cols) = scipy.ndimage.distance_transform_edt(~good, return_indices=True)
        out[bad] = out[rows[bad], cols[bad]]
    norms = np.linalg.norm(out, axis=-1, keepdims=True)
    return np.where(mask[..., None], out / np.clip(norms, 1e-12, None), 0.0)


def downscale_views(
    normals: np.ndarray, masks: np.ndarray, depths: Optional[np.ndarray], factor: int
) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """Block-average (N, H, W, ...) stacks by ``factor``; H and W must be multiples of it.

    Masks keep blocks that are at least half foreground; normals are the renormalised mean of the in-mask ones;
    depth is the mean of the valid (> 0) ones.
    """
    n, h, w = masks.shape
    hb, wb = h // factor, w // factor

    def blocks(x: np.ndarray) -> np.ndarray:
        return x.reshape(n, hb, factor, wb, factor, *x.shape[3:])

    weight = blocks(masks.astype(np.float64))
    new_masks = weight.mean(axis=(2, 4)) >= 0.5
    summed = (blocks(normals.astype(np.float64)) * weight[..., None]).sum(axis=(2, 4))
    norms = np.linalg.norm(summed, axis=-1, keepdims=True)
    new_normals = np.where(new_masks[..., None], summed / np.clip(norms, 1e-12, None), 0.0)
    new_depths = None
    if depths is not None:
        valid = blocks((depths > 0).astype(np.float64))
        total = (blocks(depths.astype(np.float64)) * valid).sum(axis=(2, 4))
        count = valid.sum(axis=(2, 4))
        new_depths = np.where(count > 0, total / np.maximum(count, 1.0), 0.0)
    return new_normals, new_masks, new_depths


def load_diligent_mv(
    data_dir: Path,
    normal_dir: str = AUTO_NORMAL_DIR,
    normal_space: str = "auto",
    downscale_factor: int = 1,
    depth_dir: Optional[str] = DEPTH_DIR,
    load_depth: bool = True,
    pose_init: Optional[PoseInitConfig] = None,
    data_checks: plausibility.DataChecks = "error",
    warn: Optional[Callable[[str], None]] = None,
    mask_dir: str = MASK_DIR,
) -> MultiViewNormalData:
    """Load every view of a DiLiGenT-MV style dataset into the normalised frame (ascending view id).

    ``normal_dir`` ``"auto"`` reads the world-space maps for a calibrated start and the camera-space ones for a
    pose-free start (:func:`resolve_normal_dir`). ``pose_init`` chooses ``c2w``, the poses training starts from,
    for all views (default: the stored poses of ``cameras_sphere.npz``). ``gt_c2w`` holds the true poses whenever
    ``c2w`` may differ from them: those of ``cameras_gt.npz`` when present, else the stored ones when ``pose_init``
    replaced them; it stays None when ``c2w`` are the true poses already (or unknown: intrinsics only). Normal maps stored in camera space are turned into world space with the poses
    training starts from (``c2w``): a pose-free run must not see the stored (true) poses through its normals, and
    pose refinement rotates these normals on with each camera's correction.

    ``data_checks`` sets what the plausibility checks do with implausible data: ``"error"`` refuses clearly wrong
    data and warns on borderline data, ``"warn"`` only warns, ``"off"`` skips them. Each warning is one line passed
    to ``warn`` (default: :func:`warnings.warn` with :class:`~pmni_method.data.types.PMNIDataWarning`).

    ``mask_dir``: the masks' folder (the evaluation reads a synthetic dataset's true masks, ``mask_true``).

    Raises :class:`PMNIDataError` (one line: ``"<path>: <problem>"``) on any bad input.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise _error(data_dir, "dataset folder not found" if not data_dir.exists() else "not a folder")
    if not any(data_dir.iterdir()):
        raise _error(data_dir, "dataset folder is empty")
    if not isinstance(downscale_factor, (int, np.integer)) or downscale_factor < 1:
        raise _error(data_dir, f"downscale factor must be a positive integer, not {downscale_factor!r}")
    pose_init = pose_init if pose_init is not None else PoseInitConfig()
    normal_dir = resolve_normal_dir(data_dir, normal_dir, pose_init.pose_init)
    space = resolve_normal_space(normal_dir, normal_space)
    checks = plausibility.PlausibilityChecks(mode=data_checks)

    normal_files = find_normal_maps(data_dir, normal_dir)
    mask_files = index_folder(data_dir / mask_dir, io.MASK_SUFFIXES)
    _check_same_views(data_dir, {normal_dir: normal_files, mask_dir: mask_files})
    view_ids = sorted(normal_files)
    if space == "world" and pose_init.pose_init != "gt":
        raise _error(
            data_dir / normal_dir,
            f"world-space normal maps are tied to the true camera frame and cannot follow a {pose_init.pose_init!r} "
            "start's poses; pass camera-space maps (--normal-dir normal_camera_space_GT, or --normal-space camera)",
        )
    cams = read_dataset_cameras(data_dir, view_ids)
    camera_path, K, normalisation = cams.path, cams.K, cams.normalisation
    c2w, c2w_world = cams.c2w, cams.c2w_world
    gt_c2w = None
    # The plausibility checks judge the dataset's own poses, never a pose-init start: the true ones when
    # cameras_gt.npz has them, else the stored ones, unless a ring or file start says those may be placeholders
    # (the loader then needs only their intrinsics). Without poses, checks that need them are skipped.
    check_c2w: Optional[np.ndarray] = c2w
    check_c2w_world: Optional[np.ndarray] = c2w_world
    if (data_dir / GT_CAMERAS_FILE).is_file():
        # True poses for evaluation only; an intrinsics-only dataset's are read in their own world frame.
        gt_path = data_dir / GT_CAMERAS_FILE
        gt_arrays = read_npz(gt_path)
        _, gt_c2w, check_c2w_world, _ = read_cameras(
            gt_path, gt_arrays, view_ids, scale_mat=normalisation.scale_mat if cams.has_poses else None
        )
        check_c2w = gt_c2w if cams.has_poses else None
        check_c2w_world = check_c2w_world if cams.has_poses else None
    if gt_c2w is None and pose_init.pose_init in ("ring", "file"):
        check_c2w = check_c2w_world = None

    masks_list = []
    for view in view_ids:
        mask = io.read_mask(mask_files[view])
        if not mask.any():
            raise _error(mask_files[view], "mask is empty (no foreground pixel)")
        masks_list.append(mask)
    # A ring or file start is placed by the masks and intrinsics, never by the stored poses.
    true_c2w = gt_c2w if gt_c2w is not None else c2w
    c2w_init = initial_poses(pose_init, c2w, true_c2w, view_ids, normalisation, K, masks_list)
    if pose_init.pose_init != "gt" and gt_c2w is None and c2w is not None:
        # A clean dataset's stored poses are the truth that noisy / ring / file runs are scored against.
        gt_c2w = c2w
    # Camera-space normals go into the world with the starting poses; "gt" keeps the stored matrices bit for bit.
    normal_c2w_world = c2w_world if pose_init.pose_init == "gt" else normalisation.c2w_to_world(c2w_init)
    c2w = c2w_init

    normals_list = []
    shape: Optional[Tuple[int, int]] = None
    for pos, view in enumerate(view_ids):
        mask = masks_list[pos]
        normals = io.read_normal_map(normal_files[view])
        if normals.shape[:2] != mask.shape:
            raise _error(
                normal_files[view],
                f"normal map is {normals.shape[1]}x{normals.shape[0]} but mask {mask_files[view].name} is "
                f"{mask.shape[1]}x{mask.shape[0]} (width x height)",
            )
        if shape is None:
            shape = mask.shape
        elif mask.shape != shape:
            raise _error(
                normal_files[view],
                f"image is {mask.shape[1]}x{mask.shape[0]} but view {view_ids[0]} is {shape[1]}x{shape[0]}; "
                "all views must have one resolution",
            )
        normals = _check_and_repair_normals(normal_files[view], normals, mask)
        if checks.enabled and (space == "camera" or check_c2w_world is not None):
            # Camera-space maps are judged by the intrinsics alone; world-space ones through the checked pose.
            view_c2w = None if space == "camera" else check_c2w_world[pos]  # type: ignore[index]
            checks.add_view_normals(normal_files[view], normals, mask, K[pos], view_c2w)
        if space == "camera":
            normals = cameras.camera_normals_to_world(normals, normal_c2w_world[pos])
        normals = np.where(mask[..., None], normalisation.normals_to_normalised(normals), 0.0)
        normals_list.append(normals.astype(np.float32))
    normals_all = np.stack(normals_list)
    masks_all = np.stack(masks_list)
    if checks.enabled:
        if check_c2w is not None:
            checks.check_scale(camera_path, [mask_files[v] for v in view_ids], view_ids, masks_all, K, check_c2w)
        checks.check_orientation(space)
        checks.finish(warn)

    depths = None
    if load_depth and depth_dir is not None and (data_dir / depth_dir).is_dir():
        depths = _read_depths(data_dir / depth_dir, view_ids, shape) / normalisation.scale

    if downscale_factor > 1:
        normals_all, masks_all, depths, K = _downscale(
            data_dir, view_ids, normals_all, masks_all, depths, K, int(downscale_factor)
        )

    return MultiViewNormalData(
        data_dir=data_dir,
        view_ids=view_ids,
        K=K,
        c2w=c2w,
        normals=normals_all.astype(np.float32),
        masks=masks_all,
        normalisation=normalisation,
        depths=None if depths is None else depths.astype(np.float32),
        gt_mesh=data_dir / GT_MESH_FILE if (data_dir / GT_MESH_FILE).is_file() else None,
        gt_c2w=gt_c2w,
        pose_init=pose_init.pose_init,
        normal_space=space,
    )


def _check_same_views(data_dir: Path, sources: Dict[str, Dict[int, Path]]) -> None:
    names = list(sources)
    reference = set(sources[names[0]])
    for name in names[1:]:
        other = set(sources[name])
        if other != reference:
            parts = []
            if reference - other:
                parts.append(f"{name}/ lacks views {format_views(reference - other)} that {names[0]}/ has")
            if other - reference:
                parts.append(f"{names[0]}/ lacks views {format_views(other - reference)} that {name}/ has")
            raise _error(
                data_dir,
                f"{len(reference)} normal maps but {len(other)} files in {name}/: " + "; ".join(parts),
            )


def _read_depths(depth_dir: Path, view_ids: List[int], shape: Tuple[int, int]) -> np.ndarray:
    files = index_folder(depth_dir, (".npy",))
    missing = set(view_ids) - set(files)
    if missing:
        raise _error(depth_dir, f"no depth map for views {format_views(missing)}")
    depths = []
    for view in view_ids:
        depth = io.read_depth(files[view])
        if depth.shape != shape:
            raise _error(
                files[view],
                f"depth map is {depth.shape[1]}x{depth.shape[0]} but the normal maps are {shape[1]}x{shape[0]}",
            )
        depths.append(np.where(np.isfinite(depth) & (depth > 0), depth, 0.0))
    return np.stack(depths).astype(np.float64)


def _downscale(
    data_dir: Path,
    view_ids: List[int],
    normals: np.ndarray,
    masks: np.ndarray,
    depths: Optional[np.ndarray],
    K: np.ndarray,
    factor: int,
) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray], np.ndarray]:
    _, h, w = masks.shape
    if factor > h or factor > w:
        raise _error(data_dir, f"downscale factor {factor} does not fit {w}x{h} images")
    # Cropping the bottom / right keeps pixel coordinates, hence the intrinsics, unchanged.
    hc, wc = h - h % factor, w - w % factor
    normals, masks = normals[:, :hc, :wc], masks[:, :hc, :wc]
    depths = None if depths is None else depths[:, :hc, :wc]
    normals, masks, depths = downscale_views(normals, masks, depths, factor)
    empty = [v for v, m in zip(view_ids, masks) if not m.any()]
    if empty:
        raise _error(data_dir, f"downscale factor {factor} leaves empty masks in views {format_views(empty)}")
    return normals, masks, depths, cameras.downscale_intrinsics(K, factor)


def downscale_data(data: MultiViewNormalData, factor: int) -> MultiViewNormalData:
    """``data`` block-averaged by an integer ``factor`` exactly as :func:`load_diligent_mv` downscales what it reads
    (bottom / right crop to a multiple, then :func:`downscale_views` and :func:`cameras.downscale_intrinsics`);
    poses, view ids and everything else are shared. ``factor`` 1 returns ``data`` itself."""
    if not isinstance(factor, (int, np.integer)) or factor < 1:
        raise _error(data.data_dir, f"downscale factor must be a positive integer, not {factor!r}")
    if factor == 1:
        return data
    normals, masks, depths, K = _downscale(
        data.data_dir, data.view_ids, data.normals, data.masks, data.depths, data.K, int(factor)
    )
    return dataclasses.replace(
        data,
        K=K,
        normals=normals.astype(np.float32),
        masks=masks,
        depths=None if depths is None else depths.astype(np.float32),
    )


def split_indices(view_ids: Sequence[int], exclude_views: Iterable[int], split: str) -> List[int]:
    """Positions (not view ids) of a split: train = all but the excluded views; val/test = the excluded ones,
    or every view when none is excluded (so evaluation still has something to look at)."""
    excluded = set(int(v) for v in exclude_views)
    unknown = excluded - set(view_ids)
    if unknown:
        raise PMNIDataError(
            f"exclude_views: views {format_views(unknown)} are not in the dataset (views {format_views(view_ids)})"
        )
    if split == "train":
        indices = [i for i, v in enumerate(view_ids) if v not in excluded]
        if not indices:
            raise PMNIDataError("exclude_views: every view is excluded; nothing is left to train on")
        return indices
    if split in ("val", "test", "inference"):
        return [i for i, v in enumerate(view_ids) if v in excluded] or list(range(len(view_ids)))
    raise ValueError(f"unknown split {split!r}; expected 'train', 'val' or 'test'")
