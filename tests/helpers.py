"""Helpers shared by several test modules (pytest puts this folder on sys.path: ``from helpers import ...``)."""

from __future__ import annotations

import numpy as np

from pmni_method import cameras


def nerfstudio_to_opencv_c2w(c2w: np.ndarray) -> np.ndarray:
    """Inverse of :func:`pmni_method.cameras.opencv_to_nerfstudio_c2w` (the axis flip is its own inverse)."""
    return cameras.opencv_to_nerfstudio_c2w(c2w)


def alignment_to_world(alignment: np.ndarray, normalisation: cameras.Normalisation) -> np.ndarray:
    """A normalised-frame similarity (e.g. ``pose_errors(...)["alignment"]`` of normalised poses) as the same map in
    world units, ``S T S^-1`` with ``S`` the scale_mat: the form ``evaluation.apply_alignment`` takes for a mesh
    exported in world units."""
    S = np.asarray(normalisation.scale_mat, dtype=np.float64)
    return S @ np.asarray(alignment, dtype=np.float64) @ np.linalg.inv(S)
