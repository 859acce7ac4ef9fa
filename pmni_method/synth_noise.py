"""The noise pmni-synth can add to a dataset: angular noise on the normal maps, a scale per depth map."""

from __future__ import annotations

from typing import Optional

import numpy as np

NORMAL_NOISE_DEFINITION = (
    "each normal n is tilted by theta = |N(0, normal_noise_deg)| degrees toward the tangent direction "
    "cos(phi) e1 + sin(phi) e2, phi ~ U(0, 2 pi), where (e1, e2) is an orthonormal basis of the plane "
    "perpendicular to n; i.e. a rotation by theta about a uniformly random axis perpendicular to n. A tilt that "
    "would turn the normal away from the camera goes toward -(cos(phi) e1 + sin(phi) e2) instead"
)


def perturb_normals(
    normals: np.ndarray, sigma_deg: float, rng: np.random.Generator, view_dirs: Optional[np.ndarray] = None
) -> np.ndarray:
    """Angular noise on (M, 3) unit normals; see :data:`NORMAL_NOISE_DEFINITION`.

    With ``view_dirs`` (M, 3), a tilt that would turn a normal away from the viewer goes the opposite tangent
    way instead (measured normals never face away from the camera); the random draws are the same either way.
    """
    theta = np.deg2rad(np.abs(rng.normal(0.0, 1.0, size=len(normals)) * sigma_deg))
    phi = rng.uniform(0.0, 2.0 * np.pi, size=len(normals))
    helper = np.where(np.abs(normals[:, :1]) < 0.9, [[1.0, 0.0, 0.0]], [[0.0, 1.0, 0.0]])
    e1 = np.cross(normals, helper)
    e1 /= np.linalg.norm(e1, axis=1, keepdims=True)
    e2 = np.cross(normals, e1)
    tangent = np.cos(phi)[:, None] * e1 + np.sin(phi)[:, None] * e2
    out = np.cos(theta)[:, None] * normals + np.sin(theta)[:, None] * tangent
    if view_dirs is not None:
        away = np.einsum("ij,ij->i", out, view_dirs) >= 0
        out[away] = np.cos(theta[away])[:, None] * normals[away] - np.sin(theta[away])[:, None] * tangent[away]
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def depth_scale_factors(num_views: int, spread: float, rng: np.random.Generator) -> np.ndarray:
    """Per-view depth factors exp(U(-spread, spread))."""
    return np.exp(rng.uniform(-spread, spread, size=num_views))
