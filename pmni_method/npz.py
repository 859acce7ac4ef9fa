"""Reading ``.npz`` camera and pose files with a one-line error, without the image libraries of :mod:`pmni_method.data.io`."""

from __future__ import annotations

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
