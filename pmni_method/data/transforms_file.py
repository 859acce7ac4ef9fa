"""Reading a nerfstudio ``transforms.json``: checked by pmni first (one clear line per problem), parsed by nerfstudio.

nerfstudio's own parser (:class:`~nerfstudio.data.dataparsers.nerfstudio_dataparser.NerfstudioDataParserConfig`,
called with every re-orientation, re-centring and re-scaling off) reads the poses, the shared or per-frame
intrinsics and distortion, ``mask_path`` and ``applied_transform``; pmni only checks beforehand what would make it
fail with an ``AssertionError`` or ``KeyError``, and converts its cameras to OpenCV conventions. nerfstudio is
imported on first use only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from pmni_method import cameras
from pmni_method.errors import PMNIDataError

TRANSFORMS_FILE = "transforms.json"
"""File read when the dataset path is a folder."""
INTRINSIC_KEYS = ("fl_x", "fl_y", "cx", "cy", "w", "h")
"""Intrinsics nerfstudio needs, each either at the top level (shared) or in every frame."""
PINHOLE_MODELS = ("PINHOLE", "SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV")
"""``camera_model`` values pmni reads: nerfstudio's perspective models (distortion is undistorted at load)."""
SPLIT_KEYS = ("train_filenames", "val_filenames", "test_filenames")
ROTATION_TOLERANCE = 1e-3
"""Largest entry of ``|R^T R - I|`` accepted in a ``transform_matrix`` (a scaled or sheared pose is refused)."""


def _error(path: Path, problem: str) -> PMNIDataError:
    return PMNIDataError(f"{path}: {' '.join(str(problem).split())}")


@dataclass
class Capture:
    """The cameras of a ``transforms.json``, one entry per frame, in nerfstudio's order (sorted by file name)."""

    path: Path
    """The ``transforms.json`` file."""
    data_dir: Path
    """Its folder: relative paths in it are relative to this."""
    frames: List[Dict[str, Any]]
    """The frames' JSON objects."""
    image_files: List[Path]
    """Each frame's ``file_path``, resolved as nerfstudio resolves it."""
    mask_files: Optional[List[Path]]
    """Each frame's ``mask_path``, resolved; None when no frame has one."""
    K: np.ndarray
    """(N, 3, 3) OpenCV intrinsics (centre of pixel i at i)."""
    c2w: np.ndarray
    """(N, 4, 4) OpenCV camera-to-world in the file's frame."""
    distortion: np.ndarray
    """(N, 6) nerfstudio distortion parameters ``[k1, k2, k3, k4, p1, p2]``."""
    width: int
    height: int


def resolve_transforms_path(path: Path) -> Path:
    """The ``transforms.json`` of ``path``: the file itself, or :data:`TRANSFORMS_FILE` in the folder."""
    path = Path(path)
    if path.is_dir():
        path = path / TRANSFORMS_FILE
    if not path.is_file():
        raise _error(path, "file not found" if not path.exists() else "not a regular file")
    return path


def read_meta(path: Path) -> Dict[str, Any]:
    """The JSON object of a ``transforms.json``, checked for what nerfstudio's parser would trip over."""
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise _error(path, f"unreadable JSON ({e})") from None
    if not isinstance(meta, dict):
        raise _error(path, 'expected a JSON object with a "frames" list')
    frames = meta.get("frames")
    if not isinstance(frames, list) or not frames:
        raise _error(path, 'no "frames" (a non-empty list of frames is required)')
    model = meta.get("camera_model", "OPENCV")
    if model not in PINHOLE_MODELS:
        what = "fisheye cameras are" if "FISHEYE" in str(model) else f"camera_model {model!r} is"
        raise _error(path, f"{what} not supported; pmni reads {', '.join(PINHOLE_MODELS)} (perspective) captures")
    seen: Dict[str, int] = {}
    for i, frame in enumerate(frames):
        if not isinstance(frame, dict):
            raise _error(path, f"frames[{i}] is not an object")
        name = frame.get("file_path")
        if not isinstance(name, str) or not name:
            raise _error(path, f'frames[{i}] has no "file_path"')
        if name in seen:
            raise _error(path, f'frames[{seen[name]}] and frames[{i}] have the same file_path "{name}"')
        seen[name] = i
        _check_pose(path, f"frames[{i}] ({name}) transform_matrix", frame.get("transform_matrix"))
        for key in INTRINSIC_KEYS:
            source = meta if key in meta else frame
            if key not in source:
                raise _error(path, f'frames[{i}] ({name}) has no "{key}" and there is no shared "{key}" at the top')
            _check_positive(path, key if source is meta else f"frames[{i}] ({name}) {key}", source[key], key in "wh")
        for source, where in ((meta, ""), (frame, f"frames[{i}] ({name}) ")):
            params = source.get("distortion_params")
            if params is not None and (np.shape(params) != (6,) or not _finite(params)):
                raise _error(path, f"{where}distortion_params must be 6 numbers [k1, k2, k3, k4, p1, p2]")
    _check_masks_and_sizes(path, meta, frames)
    return meta


def _finite(values: Any) -> bool:
    try:
        return bool(np.all(np.isfinite(np.asarray(values, dtype=np.float64))))
    except (TypeError, ValueError):
        return False


def _check_positive(path: Path, what: str, value: Any, integer: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) or value <= 0:
        raise _error(path, f"{what} must be a positive number, not {value!r}")
    if integer and int(value) != value:
        raise _error(path, f"{what} must be a whole number of pixels, not {value!r}")


def _check_pose(path: Path, what: str, matrix: Any) -> None:
    if matrix is None:
        raise _error(path, f"{what} is missing")
    if not _finite(matrix) or np.shape(matrix) not in ((4, 4), (3, 4)):
        raise _error(path, f"{what} must be a 4x4 (or 3x4) matrix of finite numbers")
    m = np.asarray(matrix, dtype=np.float64)
    R = m[:3, :3]
    if m.shape == (4, 4) and not np.allclose(m[3], [0.0, 0.0, 0.0, 1.0], atol=1e-6):
        raise _error(path, f"{what} has last row {m[3].tolist()}; expected [0, 0, 0, 1]")
    if np.abs(R.T @ R - np.eye(3)).max() > ROTATION_TOLERANCE or np.linalg.det(R) < 0:
        raise _error(path, f"{what} is not a rigid camera-to-world (its 3x3 part is no rotation)")


def _check_masks_and_sizes(path: Path, meta: Dict[str, Any], frames: List[Dict[str, Any]]) -> None:
    with_mask = [i for i, f in enumerate(frames) if "mask_path" in f]
    if with_mask and len(with_mask) != len(frames):
        first = next(i for i, f in enumerate(frames) if "mask_path" not in f)
        raise _error(path, f'frames[{first}] ({frames[first]["file_path"]}) has no "mask_path" but other frames do')
    sizes = [(int(meta.get("w", f.get("w"))), int(meta.get("h", f.get("h")))) for f in frames]
    for i, size in enumerate(sizes):
        if size != sizes[0]:
            raise _error(
                path,
                f"frames[{i}] ({frames[i]['file_path']}) is {size[0]}x{size[1]} but frames[0] "
                f"({frames[0]['file_path']}) is {sizes[0][0]}x{sizes[0][1]}; all views must have one resolution",
            )


def _nerfstudio_outputs(path: Path, meta: Dict[str, Any]) -> List[Any]:
    """nerfstudio's parse of the file, leaving the poses as they are; one output per split the file lists
    (``eval_mode="all"`` gives every frame in one when it lists none)."""
    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig
    from nerfstudio.utils.rich_utils import CONSOLE

    config = NerfstudioDataParserConfig(
        data=path,
        orientation_method="none",
        center_method="none",
        auto_scale_poses=False,
        scale_factor=1.0,
        # pmni block-averages itself; 1 also stops nerfstudio opening the first image with PIL (EXR, NPY).
        downscale_factor=1,
        eval_mode="all",
    )
    if "orientation_override" in meta:
        raise _error(path, "orientation_override re-orients the poses; pmni reads them as stored")
    splits = [key.split("_")[0] for key in SPLIT_KEYS if key in meta] or ["train"]
    parser = config.setup()
    outputs = []
    for split in splits:
        try:
            # Swallows nerfstudio's --eval-mode=all camera-optimisation caution, which is not about pmni's poses.
            with CONSOLE.capture():
                outputs.append(parser.get_dataparser_outputs(split=split))
        except Exception as e:  # nerfstudio asserts, raises KeyError / RuntimeError on what pmni did not foresee
            raise _error(path, f"nerfstudio cannot parse it ({type(e).__name__}: {e})") from None
    return outputs


def read_capture(path: Path) -> Capture:
    """Cameras, file names and distortion of a ``transforms.json`` (a file, or a folder holding one)."""
    path = resolve_transforms_path(path)
    meta = read_meta(path)
    by_name: Dict[Path, Tuple[Any, int, Optional[Path]]] = {}
    for out in _nerfstudio_outputs(path, meta):
        transform = out.dataparser_transform.double().numpy()
        if meta.get("applied_transform") is None and not np.allclose(transform, np.eye(4)[:3], atol=1e-6):
            raise _error(path, "nerfstudio moved the poses; pmni reads them as stored")
        masks = out.mask_filenames
        for i, name in enumerate(out.image_filenames):
            by_name.setdefault(Path(name), (out.cameras, i, None if masks is None else Path(masks[i])))
    data_dir = path.parent
    names = sorted(by_name)
    if len(names) != len(meta["frames"]):
        raise _error(path, f"{len(meta['frames'])} frames but nerfstudio's splits list {len(names)} of them")
    frame_of = {data_dir / Path(f["file_path"]): f for f in meta["frames"]}
    K, c2w, dist, masks_list = [], [], [], []
    for name in names:
        cams, i, mask = by_name[name]
        fx, fy = float(cams.fx[i, 0]), float(cams.fy[i, 0])
        # nerfstudio puts pixel centres at i + 0.5; pmni at i (OpenCV).
        cx, cy = float(cams.cx[i, 0]) - 0.5, float(cams.cy[i, 0]) - 0.5
        K.append(np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]]))
        pose = np.eye(4)
        # nerfstudio rounds the poses to float32; the file's float64 ones are the same poses, unrounded.
        pose[:3, :4] = np.asarray(frame_of[name]["transform_matrix"], dtype=np.float64)[:3, :4]
        parsed = cams.camera_to_worlds[i].double().numpy()
        if not np.allclose(parsed, pose[:3, :4], rtol=1e-5, atol=1e-5 * max(1.0, float(np.abs(pose).max()))):
            raise _error(path, f"nerfstudio read another pose for {name} than the file holds")
        c2w.append(cameras.opencv_to_nerfstudio_c2w(pose))  # OpenGL -> OpenCV: the axis flip is its own inverse
        params = cams.distortion_params
        dist.append(np.zeros(6) if params is None else params[i].double().numpy())
        masks_list.append(mask)
    return Capture(
        path=path,
        data_dir=data_dir,
        frames=[frame_of[name] for name in names],
        image_files=names,
        mask_files=None if masks_list[0] is None else masks_list,  # type: ignore[arg-type]
        K=np.stack(K),
        c2w=np.stack(c2w),
        distortion=np.stack(dist),
        width=int(by_name[names[0]][0].width[by_name[names[0]][1], 0]),
        height=int(by_name[names[0]][0].height[by_name[names[0]][1], 0]),
    )
