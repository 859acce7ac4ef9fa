"""``.npz`` camera and pose files: read with a one-line error, written byte-reproducibly; no image libraries needed."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Dict

import numpy as np

from pmni_method.errors import PMNIDataError


def read_npz(path: Path | str) -> Dict[str, np.ndarray]:
    """Load every array of an .npz file into memory; raise :class:`PMNIDataError` (one line) on a bad file."""
    path = Path(path)
    if not path.is_file():
        raise PMNIDataError(f"{path}: {'file not found' if not path.exists() else 'not a regular file'}")
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: np.asarray(f[k]) for k in f.files}
    except Exception as e:  # BadZipFile, EOFError, ValueError, zlib.error... all mean the same to the user
        # Library messages may span lines; the report must stay one line.
        detail = " ".join(f"{type(e).__name__}: {e}".split())
        raise PMNIDataError(f"{path}: unreadable .npz file ({detail})") from None


def write_npz(path: Path, arrays: Dict[str, np.ndarray]) -> None:
    """Like ``np.savez`` but byte-reproducible: numpy stamps each zip member with the current time."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with archive.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asarray(array), allow_pickle=False)
