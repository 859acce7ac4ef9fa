"""Readers and writers for the files of a multi-view normal dataset (EXR / PNG / NPY images, NPZ cameras).

Every reader raises :class:`PMNIDataError` with a one-line ``"<path>: <problem>"`` message, so a bad file is
reported by name instead of as a stack trace from OpenEXR or the PNG decoder.

PNGs go through pypng (pure Python, 60 KB, keeps 16-bit RGB exactly) rather than OpenCV (50 MB): the
nerfstudio-free core must fit a small carry to a GPU machine. It decodes a 612x512 16-bit RGB normal map in about
0.3 s (OpenCV: 13 ms); 8-bit masks take about 50 ms. Other mask types (JPEG, BMP, TIFF) are read with Pillow.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import OpenEXR
import png

from pmni_method.errors import PMNIDataError

NORMAL_SUFFIXES = (".exr", ".png", ".npy")
"""File types accepted for normal maps."""
MASK_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
"""File types accepted for masks (PNG through pypng, the others through Pillow)."""

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


def _read_png(path: Path) -> np.ndarray:
    # asDirect expands palettes and applies tRNS/sBIT; values stay at the file's bit depth (1..16).
    try:
        width, height, rows, info = png.Reader(bytes=path.read_bytes()).asDirect()
        planes = int(info["planes"])
        image = np.empty((height, width * planes), np.uint16 if info["bitdepth"] > 8 else np.uint8)
        count = 0
        for count, row in enumerate(rows, start=1):  # decoding is lazy: errors surface while iterating
            image[count - 1] = row
    except (png.Error, zlib.error, EOFError, ValueError, IndexError, KeyError) as e:
        raise _fail(path, f"unreadable, corrupt or truncated image file ({type(e).__name__}: {e})") from None
    if count != height:
        raise _fail(path, f"unreadable, corrupt or truncated image file ({count} of {height} rows)")
    return image.reshape(height, width, planes) if planes > 1 else image


def _read_other_image(path: Path) -> np.ndarray:
    try:
        from PIL import Image  # pylint: disable=import-outside-toplevel
    except ImportError:
        raise _fail(path, f"reading {path.suffix} images needs Pillow (pip install pillow); PNG does not") from None
    try:
        with Image.open(path) as im:
            im.load()
            return np.asarray(im)
    except Exception as e:  # Pillow raises UnidentifiedImageError / OSError / SyntaxError for bad files
        raise _fail(path, f"unreadable, corrupt or truncated image file ({type(e).__name__}: {e})") from None


def read_image(path: Path) -> np.ndarray:
    """Read an 8- or 16-bit image unchanged: (H, W) or (H, W, C) in RGB(A) order."""
    path = Path(path)
    _require_file(path)
    return _read_png(path) if path.suffix.lower() == ".png" else _read_other_image(path)


def write_png(path: Path, image: np.ndarray) -> None:
    """Write a uint8 or uint16 image, (H, W) grey or (H, W, 3) RGB, as a PNG of that bit depth."""
    path = Path(path)
    image = np.asarray(image)
    if image.dtype not in (np.uint8, np.uint16) or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise ValueError(f"{path}: cannot write a {image.dtype} image of shape {image.shape} as PNG")
    height, width = image.shape[:2]
    writer = png.Writer(
        width, height, greyscale=image.ndim == 2, bitdepth=8 * image.itemsize, compression=6
    )
    try:
        with open(path, "wb") as f:
            writer.write(f, image.reshape(height, -1))
    except OSError as e:
        raise _fail(path, f"could not write PNG ({e.strerror or e})") from None


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
        write_png(path, np.round((np.clip(normals, -1.0, 1.0) + 1.0) * (65535.0 / 2.0)).astype(np.uint16))
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
    write_png(path, np.asarray(mask, dtype=bool).astype(np.uint8) * 255)


def read_depth(path: Path) -> np.ndarray:
    """Read an (H, W) depth map from .npy (a trailing singleton channel is dropped)."""
    depth = read_npy(path)
    if depth.ndim == 3 and depth.shape[2] == 1:
        depth = depth[..., 0]
    if depth.ndim != 2:
        raise _fail(Path(path), f"depth map has shape {depth.shape}; expected (H, W)")
    return np.asarray(depth, dtype=np.float32)
