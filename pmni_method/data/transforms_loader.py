"""Loader for nerfstudio ``transforms.json`` captures with a normal map and a mask per frame.

::

    <dir>/transforms.json      nerfstudio's format: OpenGL transform_matrix per frame, shared or per-frame
                               fl_x fl_y cx cy w h, optional distortion (k1 k2 k3 k4 p1 p2 / distortion_params)
    frame "file_path"          the frame's image (need not exist): its stem names the frame
    frame "normal_path"        its normal map (EXR, 16-bit PNG, NPY), or --normal-dir DIR with <stem>.<ext> files
    frame "mask_path"          its mask (nerfstudio's convention: 0 = background), or --mask-dir DIR likewise
    <dir>/mesh_Gt.ply          optional ground-truth mesh in the capture's frame

View ids: every frame's ``pmni_view`` (pmni-export writes it) when all have one, else the last integer of each
``file_path`` stem when all have one and they differ, else the frame's position in nerfstudio's order (sorted by
file name). Views are held in ascending view id, like the DiLiGenT-MV loader.

The capture's frame is the world: poses, the ground-truth mesh and exported meshes and poses are all in it (after
any ``applied_transform``, which nerfstudio records but does not undo). pmni's normalised frame is the bounding
sphere of the masks' visual hull (:mod:`pmni_method.data.hull_bound`), kept as the :class:`Normalisation`.
Distorted cameras are undistorted at load (:mod:`pmni_method.data.undistort`); pmni then sees pinhole cameras
with the file's intrinsics.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from pmni_method import cameras
from pmni_method.data import io, plausibility
from pmni_method.data.diligent_mv import _check_and_repair_normals, _downscale, resolve_normal_space, view_index
from pmni_method.data.hull_bound import HULL_MARGIN, capture_scale_mat
from pmni_method.data.layout import GT_MESH_FILE
from pmni_method.data.transforms_file import Capture, read_capture
from pmni_method.data.types import MultiViewNormalData
from pmni_method.data.undistort import has_distortion, undistort_view
from pmni_method.errors import PMNIDataError, PMNIDataWarning
from pmni_method.poses.starts import PoseInitConfig, initial_poses

NORMAL_KEY = "normal_path"
"""Frame key of the normal map by default; pmni-export's files carry it as ``file_path``."""


def _error(path: Path, problem: str) -> PMNIDataError:
    return PMNIDataError(f"{path}: {problem}")


def frame_view_ids(capture: Capture) -> List[int]:
    """The view id of each frame of ``capture`` (see the module docstring for the rule)."""
    tagged = [f.get("pmni_view") for f in capture.frames]
    if all(isinstance(v, int) and not isinstance(v, bool) for v in tagged):
        if len(set(tagged)) != len(tagged):
            raise _error(capture.path, "two frames have the same pmni_view")
        return [int(v) for v in tagged]  # type: ignore[arg-type]
    stems = [view_index(p) for p in capture.image_files]
    if all(v is not None for v in stems) and len(set(stems)) == len(stems):
        return [int(v) for v in stems]  # type: ignore[arg-type]
    return list(range(len(capture.frames)))


def _resolve(capture: Capture, name: str) -> Path:
    path = Path(name)
    return path if path.is_absolute() else capture.data_dir / path


def _by_stem(capture: Capture, folder: str, suffixes: Sequence[str], what: str) -> List[Path]:
    """The file of each frame in ``folder`` (relative to the capture's folder) named like its image."""
    root = _resolve(capture, folder)
    stems = [p.stem for p in capture.image_files]
    twice = sorted({s for s in stems if stems.count(s) > 1})
    if twice:
        # Matching by stem would hand one file to two frames.
        raise _error(capture.path, f"several frames' file_path share the stem {twice[0]!r}; --{what.split()[0]}-dir "
                     "needs unique image names")
    if not root.is_dir():
        raise _error(root, f"{what} folder not found" if not root.exists() else "not a folder")
    files: Dict[str, List[Path]] = {}
    for path in sorted(root.iterdir()):
        if path.is_file() and path.suffix.lower() in suffixes and not path.name.startswith("."):
            files.setdefault(path.stem, []).append(path)
    out = []
    for image in capture.image_files:
        found = files.get(image.stem, [])
        if len(found) != 1:
            problem = "no" if not found else f"{len(found)} ({', '.join(p.name for p in found)})"
            expected = f"{image.stem}.<{'|'.join(s[1:] for s in suffixes)}>"
            raise _error(root, f"{problem} {what} for frame {image.name} (expected {expected})")
        out.append(found[0])
    return out


def _frame_files(capture: Capture, key: str, what: str) -> List[Path]:
    out = []
    for frame in capture.frames:
        value = frame.get(key)
        if not isinstance(value, str) or not value:
            raise _error(
                capture.path,
                f'frame {frame["file_path"]} has no "{key}" (its {what}); give every frame one, or pass a folder '
                f"of {what}s named like the images (--{'normal' if 'normal' in what else 'mask'}-dir)",
            )
        out.append(_resolve(capture, value))
    return out


@dataclass
class LoadedCapture:
    """A loaded ``transforms.json`` and the files its views were read from (ascending view id); for a distorted
    capture those are the distorted originals, not the undistorted maps in ``data``."""

    data: MultiViewNormalData
    normal_files: List[Path]
    mask_files: List[Path]
    distortion: Optional[np.ndarray] = None
    """(N, 6) nerfstudio distortion ``[k1, k2, k3, k4, p1, p2]`` of those original files (zeros: pinhole)."""


def load_transforms_json(path: Path, **options: Any) -> MultiViewNormalData:
    """:func:`load_transforms_capture`'s dataset alone (same options)."""
    return load_transforms_capture(path, **options).data


def load_transforms_capture(
    path: Path,
    normal_dir: Optional[str] = None,
    normal_key: str = NORMAL_KEY,
    mask_dir: Optional[str] = None,
    normal_space: str = "auto",
    downscale_factor: int = 1,
    pose_init: Optional[PoseInitConfig] = None,
    data_checks: plausibility.DataChecks = "error",
    sphere_margin: float = HULL_MARGIN,
    gt_mesh: Optional[Path] = None,
    warn: Optional[Callable[[str], None]] = None,
) -> LoadedCapture:
    """Load every frame of a ``transforms.json`` (a file, or a folder holding one) into the normalised frame.

    Normal maps come from ``normal_dir`` (files named like the images) when given, else from each frame's
    ``normal_key``; masks from ``mask_dir`` likewise, else from each frame's ``mask_path``. ``normal_space``
    ``"auto"`` reads camera space when the maps' folder name contains "camera" (as the DiLiGenT-MV loader does),
    else world space. Camera space is DiLiGenT's (x right, y up, z toward the camera: nerfstudio's camera axes);
    world space is the capture's frame.

    ``pose_init`` (default ``gt``): ``gt`` uses the file's poses as calibrated; ``file`` without a ``poses_file``
    starts from them and refines them (pose-free; there is no truth to score poses against); ``noisy``, ``ring`` and
    ``file`` with a ``poses_file`` start elsewhere and keep the file's poses as the truth (``gt_c2w``).
    ``gt_mesh`` (capture frame) defaults to :data:`GT_MESH_FILE` beside the file. Raises :class:`PMNIDataError`
    (one line naming the file) on any bad input.
    """
    if not isinstance(downscale_factor, (int, np.integer)) or downscale_factor < 1:
        raise _error(Path(path), f"downscale factor must be a positive integer, not {downscale_factor!r}")
    pose_init = pose_init if pose_init is not None else PoseInitConfig()
    checks = plausibility.PlausibilityChecks(mode=data_checks)
    capture = read_capture(path)
    mesh = Path(gt_mesh) if gt_mesh is not None else capture.data_dir / GT_MESH_FILE
    if gt_mesh is not None and not mesh.is_file():
        raise _error(mesh, "ground-truth mesh not found")
    if normal_dir is not None:
        normal_files = _by_stem(capture, normal_dir, io.NORMAL_SUFFIXES, "normal map")
    else:
        normal_files = _frame_files(capture, normal_key, "normal map")
    if mask_dir is not None:
        mask_files = _by_stem(capture, mask_dir, io.MASK_SUFFIXES, "mask")
    elif capture.mask_files is not None:
        mask_files = list(capture.mask_files)
    else:
        mask_files = _frame_files(capture, "mask_path", "mask")
    space = resolve_normal_space(normal_dir if normal_dir is not None else normal_files[0].parent.name, normal_space)
    if space == "world" and pose_init.pose_init != "gt":
        raise _error(
            normal_files[0].parent,
            f"world-space normal maps are tied to the capture's poses and cannot follow a {pose_init.pose_init!r} "
            "start's; pass camera-space maps (--normal-space camera)",
        )

    ids = frame_view_ids(capture)
    order = np.argsort(ids, kind="stable")
    view_ids = [ids[i] for i in order]
    K, c2w_world, dist = capture.K[order], capture.c2w[order], capture.distortion[order]
    normal_files, mask_files = [normal_files[i] for i in order], [mask_files[i] for i in order]

    normals_list, masks_list = [], []
    for pos in range(len(view_ids)):
        mask = io.read_mask(mask_files[pos])
        normals = io.read_normal_map(normal_files[pos])
        for file, shape in ((mask_files[pos], mask.shape), (normal_files[pos], normals.shape[:2])):
            if shape != (capture.height, capture.width):
                raise _error(
                    file,
                    f"image is {shape[1]}x{shape[0]} but {capture.path.name} says {capture.width}x{capture.height} "
                    "(width x height)",
                )
        if not mask.any():
            raise _error(mask_files[pos], "mask is empty (no foreground pixel)")
        normals = _check_and_repair_normals(normal_files[pos], normals, mask)
        if has_distortion(dist[pos]):
            normals, mask = undistort_view(normals, mask, K[pos], dist[pos])
            if not mask.any():
                raise _error(mask_files[pos], "mask is empty once undistorted (distortion parameters wrong?)")
        normals_list.append(normals)
        masks_list.append(mask)
    masks_all = np.stack(masks_list)

    scale_mat, note = capture_scale_mat(capture.path, K, c2w_world, masks_list, sphere_margin)
    if note is not None:
        (warn or (lambda line: warnings.warn(line, PMNIDataWarning, stacklevel=3)))(note)
    normalisation = cameras.Normalisation(scale_mat)
    stored = normalisation.c2w_to_normalised(c2w_world)
    mode = pose_init.pose_init
    gt_c2w: Optional[np.ndarray] = None
    if mode == "gt" or (mode == "file" and pose_init.poses_file is None):
        # The file's poses are the start (refined unless gt); with "file" they are no truth to score against.
        c2w = stored.copy()
    else:
        c2w = initial_poses(pose_init, stored, stored, view_ids, normalisation, K, masks_list)
        gt_c2w = stored
    # Camera-space normals go into the world with the starting poses: a pose-free run refines them with the camera.
    normal_c2w_world = c2w_world if mode == "gt" else normalisation.c2w_to_world(c2w)
    for pos in range(len(view_ids)):
        if checks.enabled:
            # Camera-space maps are judged by the intrinsics alone; world-space ones through the file's pose.
            view_c2w = None if space == "camera" else c2w_world[pos]
            checks.add_view_normals(normal_files[pos], normals_list[pos], masks_list[pos], K[pos], view_c2w)
        normals = normals_list[pos]
        if space == "camera":
            normals = cameras.camera_normals_to_world(normals, normal_c2w_world[pos])
        normals = np.where(masks_list[pos][..., None], normalisation.normals_to_normalised(normals), 0.0)
        normals_list[pos] = normals.astype(np.float32)
    normals_all = np.stack(normals_list)
    if checks.enabled:
        # The sphere was fitted to these poses and masks; the check catches masks that disagree with the others.
        checks.check_scale(capture.path, mask_files, view_ids, masks_all, K, stored)
        checks.check_orientation(space)
        checks.finish(warn)

    if downscale_factor > 1:
        normals_all, masks_all, _, K = _downscale(
            capture.data_dir, view_ids, normals_all, masks_all, None, K, int(downscale_factor)
        )
    data = MultiViewNormalData(
        data_dir=capture.data_dir,
        view_ids=view_ids,
        K=K,
        c2w=c2w,
        normals=normals_all.astype(np.float32),
        masks=masks_all,
        normalisation=normalisation,
        gt_mesh=mesh if mesh.is_file() else None,
        gt_c2w=gt_c2w,
        pose_init=mode,
        normal_space=space,
    )
    return LoadedCapture(data, normal_files, mask_files, np.asarray(dist, dtype=np.float64))

