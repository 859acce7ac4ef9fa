"""Readers and writers for the files of a multi-view normal dataset (EXR / PNG / NPY images, NPZ cameras).

Every reader raises :class:`PMNIDataError` with a one-line ``"<path>: <problem>"`` message, so a bad file is
reported by name instead of as a stack trace from OpenEXR or OpenCV.
"""

from __future__ import annotations

from pathlib import Path
import cv2
import numpy as np
import OpenEXR

from pmni_method.errors import PMNIDataError

NORMAL_SUFFIXES = (".exr", ".png", ".npy")
"""File types accepted for normal maps."""
MASK_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
"""File types accepted for masks (anything OpenCV decodes losslessly or nearly so)."""

# EXR files name their colour channels R, G, B; some writers use X, Y, Z for vector data.
_EXR_CHANNEL_SETS = (("R", "G", "B"), ("X", "Y", "Z"))


def _fail(path: Path, problem: str) -> PMNIDataError:
    # Library messages (OpenEXR, numpy) may span lines; the report must stay one line.
    return PMNIDataError(f"{path}: {' '.join(problem.split())}")


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise _fail(path, "file not found" if not path.exists() else "not a regular file")


def read_exr(path: Path) -> np.ndarray:
    """Read the first three colour channels (R,G,B or X,Y,Z) of an EXR file as (H, W, 3) float32."""
    path = Path(path)
    _require_file(path)
    try:
        # One thread: the loader already runs per view and the machines this runs on are small.
        channels = OpenEXR.File(str(path), separate_channels=True, num_threads=1).channels()
    except Exception as e:  # OpenEXR raises RuntimeError for corrupt, truncated or non-EXR files
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise _fail(path, f"unreadable, corrupt or truncated EXR file ({reason})") from None
    for names in _EXR_CHANNEL_SETS:
        if all(n in channels for n in names):
            try:
                return np.stack([np.asarray(channels[n].pixels, dtype=np.float32) for n in names], axis=-1)
            except Exception as e:  # pixel data missing or truncated mid-file
                raise _fail(path, f"corrupt EXR pixel data ({e})") from None
    raise _fail(path, f"EXR file has channels {sorted(channels)}; expected R, G, B (or X, Y, Z)")


def write_exr(path: Path, image: np.ndarray) -> None:
    """Write an (H, W, 3) array as a float32 EXR with channels R, G, B (ZIP compressed)."""
    image = np.asarray(image, dtype=np.float32)
    header = {"type": OpenEXR.scanlineimage, "compression": OpenEXR.ZIP_COMPRESSION}
    channels = {name: np.ascontiguousarray(image[..., i]) for i, name in enumerate("RGB")}
    with OpenEXR.File(header, channels) as f:
        f.write(str(path))


def read_image(path: Path) -> np.ndarray:
    """Read an 8- or 16-bit image unchanged: (H, W) or (H, W, C) in RGB(A) order (OpenCV's BGR is undone)."""
    path = Path(path)
    _require_file(path)
    # imdecode instead of imread: imread returns None without saying why and fails on non-ASCII paths on some OSes.
    image = cv2.imdecode(np.fromfile(str(path), dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise _fail(path, "unreadable, corrupt or truncated image file")
    if image.ndim == 3 and image.shape[2] >= 3:
        image = np.concatenate([image[..., 2::-1], image[..., 3:]], axis=-1)
    return image


def read_npy(path: Path) -> np.ndarray:
    """Load a .npy array (no pickles)."""
    path = Path(path)
    _require_file(path)
    try:
        return np.load(path, allow_pickle=False)
    except Exception as e:  # ValueError / EOFError / UnpicklingError for corrupt or truncated files
        raise _fail(path, f"unreadable .npy file ({e})") from None


def read_normal_map(path: Path) -> np.ndarray:
    """Read a normal map as (H, W, 3) float32 (x, y, z), whatever the file type.

    EXR and NPY hold the vectors directly; an integer PNG encodes ``n = 2 v / v_max - 1`` per channel.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".exr":
        normals = read_exr(path)
    elif suffix == ".npy":
        normals = read_npy(path)
    elif suffix == ".png":
        raw = read_image(path)
        if raw.dtype not in (np.uint8, np.uint16):
            raise _fail(path, f"PNG normal map has pixel type {raw.dtype}; expected 8- or 16-bit")
        if raw.ndim != 3 or raw.shape[2] < 3:
            raise _fail(path, f"PNG normal map has shape {raw.shape}; expected 3 colour channels")
        normals = raw[..., :3].astype(np.float32) * (2.0 / np.iinfo(raw.dtype).max) - 1.0
    else:
        raise _fail(path, f"unsupported normal-map type {suffix!r}; expected one of {', '.join(NORMAL_SUFFIXES)}")
    if normals.ndim != 3 or normals.shape[2] != 3:
        raise _fail(path, f"normal map has shape {normals.shape}; expected (H, W, 3)")
    return np.asarray(normals, dtype=np.float32)


def write_normal_map(path: Path, normals: np.ndarray) -> None:
    """Write (H, W, 3) normals as EXR, 16-bit PNG or NPY, chosen by the suffix of ``path``."""
    path = Path(path)
    normals = np.asarray(normals, dtype=np.float32)
    suffix = path.suffix.lower()
    if suffix == ".exr":
        write_exr(path, normals)
    elif suffix == ".npy":
        np.save(path, normals)
    elif suffix == ".png":
        v = np.round((np.clip(normals, -1.0, 1.0) + 1.0) * (65535.0 / 2.0)).astype(np.uint16)
        if not cv2.imwrite(str(path), v[..., ::-1]):  # OpenCV writes BGR
            raise _fail(path, "could not write PNG")
    else:
        raise ValueError(f"{path}: unsupported normal-map type {suffix!r}")


def read_mask(path: Path) -> np.ndarray:
    """Read a mask of any bit depth as (H, W) bool: foreground is brighter than half the image's maximum.

    Using the image's own maximum (not the type's) accepts 0/1, 0/255 and 0/65535 masks alike.
    """
    image = read_image(path)
    if image.ndim == 3:
        # Ignore alpha (gray+alpha or RGBA): some tools write an opaque alpha channel over the whole mask.
        colour = 1 if image.shape[2] == 2 else min(3, image.shape[2])
        image = image[..., :colour].max(axis=-1)
    image = image.astype(np.float64)
    peak = image.max() if image.size else 0.0
    return image > 0.5 * peak if peak > 0 else np.zeros(image.shape, dtype=bool)


def write_mask(path: Path, mask: np.ndarray) -> None:
    """Write a bool mask as an 8-bit 0/255 PNG."""
    if not cv2.imwrite(str(path), np.asarray(mask, dtype=bool).astype(np.uint8) * 255):
        raise _fail(Path(path), "could not write PNG")


def read_depth(path: Path) -> np.ndarray:
    """Read an (H, W) depth map from .npy (a trailing singleton channel is dropped)."""
    depth = read_npy(path)
    if depth.ndim == 3 and depth.shape[2] == 1:
        depth = depth[..., 0]
    if depth.ndim != 2:
        raise _fail(Path(path), f"depth map has shape {depth.shape}; expected (H, W)")
    return np.asarray(depth, dtype=np.float32)
