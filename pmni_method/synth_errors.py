"""Structured normal-map errors that pmni-synth can add, like those of real photometric-stereo normal maps.

Every term is a tangent tilt field ``t_k(p)`` in the true camera's frame (DiLiGenT axes: x right, y up, z toward the
camera), perpendicular to the true normal ``n(p)``. The stored normal is ``n' = cos|t| n + sin|t| t / |t|`` with
``t = sum_k t_k``: a rotation by ``|t|`` about ``n x t``, so the angular error of a pixel is exactly ``|t|`` before
normals that lean away from the camera are pushed back to face it. The same ``n'`` is written in world and camera
space. Each (term, view) pair has its own random stream, so turning one term on never changes another's draws.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict

import numpy as np
import scipy.ndimage

BIAS, GRAZING, CONCAVITY, MASK, INTRINSICS = range(10, 15)
"""Purposes of the random streams ``default_rng([error_seed, purpose, view])`` (the legacy noises use 0-2)."""

GRAZING_SPREAD = 0.25
"""Standard deviation of the smooth factor (mean 1, clipped at 0) that modulates the grazing term."""

CONCAVITY_SMOOTHING = 0.012
"""Gaussian sigma of the in-mask smoothing of the normals before their divergence is taken, as a fraction of the
shorter side of the mask's box (at least 1.5 px): the proxy sees the same bumps at any resolution."""

CONCAVITY_SATURATION = 4.0
"""The proxy c reaches 1 where the concave mean curvature is this many times 1 / (bounding radius)."""

NORMAL_ERROR_DEFINITION = (
    "stored normal = true normal rotated by |t| toward t, t = t_bias + t_grazing + t_concavity, each tangent to the "
    "true normal in the true camera frame (x right, y up, z toward the camera); "
    "t_bias = s P(b): b a bicubic spline through a normal_bias_cells^2 grid of N(0, I_3) vectors spanning the "
    "view's mask box, P the projection onto the tangent plane, s set so that mean |t_bias| over the mask = "
    "normal_bias_deg; "
    "t_grazing = grazing_error_deg (1 - n_z) m toward the camera axis (flattening, never past it), m = "
    f"max(0, 1 + {GRAZING_SPREAD} g), g a smooth unit-variance field; "
    "t_concavity = concavity_error_deg c u, u a smooth random unit tangent direction, c the concavity proxy; "
    "then normals facing away from their pixel's ray are pushed back to face it, and the legacy per-pixel "
    "normal_noise_deg is added last"
)

CONCAVITY_DEFINITION = (
    "c = clip(-H R / CONCAVITY_SATURATION, 0, 1), H the mean curvature of the visible surface estimated from the "
    "true camera-space normals as H = (d n_x / dx + d n_y / dy) / 2 (x, y in world units at the pixel's depth: "
    f"pixel / (depth / focal); normals first smoothed in the mask with sigma {CONCAVITY_SMOOTHING} of the shorter "
    "mask-box side, at least 1.5 px), "
    f"positive where the surface bulges toward the camera, R the bounding radius, CONCAVITY_SATURATION = "
    f"{CONCAVITY_SATURATION}; exact for a sphere (c = 0); occlusion edges, where the normals jump, count as "
    "curvature too"
)


@dataclass(frozen=True)
class NormalErrorSettings:
    """Resolved magnitudes of the structured normal errors (degrees); 0 turns a term off."""

    bias_deg: float = 0.0
    bias_cells: int = 3
    grazing_deg: float = 0.0
    concavity_deg: float = 0.0

    @property
    def active(self) -> bool:
        return self.bias_deg > 0 or self.grazing_deg > 0 or self.concavity_deg > 0


def view_rng(seed: int, purpose: int, view: int) -> np.random.Generator:
    """The random stream of one error term in one view."""
    return np.random.default_rng([seed, purpose, view])


def mask_box(mask: np.ndarray) -> tuple:
    """(row0, row1, col0, col1) of the mask's bounding box (inclusive)."""
    rows, cols = np.nonzero(mask)
    return int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())


def smooth_field(rng: np.random.Generator, pixels: np.ndarray, box: tuple, cells: int, channels: int) -> np.ndarray:
    """(M, channels) bicubic spline through a cells x cells grid of N(0, 1) values spanning ``box``, at (M, 2) pixels.

    The grid's spacing is the shortest wavelength, so the field is smooth at the scale of the object in the image.
    """
    cells = max(int(cells), 2)
    grid = rng.normal(size=(channels, cells, cells))
    row0, row1, col0, col1 = box
    rows, cols = pixels[:, 0], pixels[:, 1]
    coords = np.stack([
        (rows - row0) / max(row1 - row0, 1) * (cells - 1),
        (cols - col0) / max(col1 - col0, 1) * (cells - 1),
    ])
    out = [scipy.ndimage.map_coordinates(g, coords, order=3, mode="nearest") for g in grid]
    return np.stack(out, axis=-1)


def tangent(vectors: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """Projection of (..., 3) vectors onto the planes perpendicular to (..., 3) unit normals."""
    return vectors - np.sum(vectors * normals, axis=-1, keepdims=True) * normals


def _unit(vectors: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    return vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), eps)


def _masked_smooth(values: np.ndarray, mask: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing that only averages mask pixels (normalised convolution); 0 where no mask pixel is near."""
    weight = scipy.ndimage.gaussian_filter(mask.astype(np.float64), sigma)
    out = np.stack(
        [scipy.ndimage.gaussian_filter(values[..., k] * mask, sigma) for k in range(values.shape[-1])], axis=-1
    )
    return np.where(weight[..., None] > 1e-6, out / np.maximum(weight[..., None], 1e-12), 0.0)


def concavity(normals_cam: np.ndarray, mask: np.ndarray, depth: np.ndarray, focal: float, radius: float) -> np.ndarray:
    """(H, W) concavity proxy in [0, 1] (see :data:`CONCAVITY_DEFINITION`), 0 outside the mask."""
    row0, row1, col0, col1 = mask_box(mask)
    sigma = max(1.5, CONCAVITY_SMOOTHING * (min(row1 - row0, col1 - col0) + 1))
    smoothed = _masked_smooth(normals_cam, mask, sigma)
    # Image rows grow downward while camera y points up, hence the minus sign on d n_y / d row.
    divergence = np.gradient(smoothed[..., 0], axis=1) - np.gradient(smoothed[..., 1], axis=0)
    pixel_size = np.where(mask, depth, 1.0) / focal
    mean_curvature = 0.5 * divergence / pixel_size
    return np.where(mask, np.clip(-mean_curvature * radius / CONCAVITY_SATURATION, 0.0, 1.0), 0.0)


def normal_error_tilts(
    settings: NormalErrorSettings,
    normals_cam: np.ndarray,
    mask: np.ndarray,
    depth: np.ndarray,
    focal: float,
    radius: float,
    seed: int,
    view: int,
) -> Dict[str, np.ndarray]:
    """Each active term's (M, 3) tilt vectors (radians) at the mask pixels, in the camera frame."""
    n = normals_cam[mask]
    pixels, box = np.argwhere(mask), mask_box(mask)
    tilts: Dict[str, np.ndarray] = {}
    if settings.bias_deg > 0:
        field = smooth_field(view_rng(seed, BIAS, view), pixels, box, settings.bias_cells, 3)
        t = tangent(field, n)
        mean = np.linalg.norm(t, axis=-1).mean()
        tilts["bias"] = t * (np.deg2rad(settings.bias_deg) / mean) if mean > 0 else np.zeros_like(t)
    if settings.grazing_deg > 0:
        spread = smooth_field(view_rng(seed, GRAZING, view), pixels, box, settings.bias_cells, 1)[:, 0]
        # The spline through N(0, 1) values has less than unit variance: rescale so that the spread is as stated.
        spread = (spread - spread.mean()) / max(spread.std(), 1e-12)
        factor = np.maximum(0.0, 1.0 + GRAZING_SPREAD * spread)
        nz = np.clip(n[:, 2], -1.0, 1.0)
        angle = np.minimum(np.deg2rad(settings.grazing_deg) * (1.0 - nz) * factor, np.arccos(nz))
        tilts["grazing"] = angle[:, None] * _unit(tangent(np.array([0.0, 0.0, 1.0]), n))
    if settings.concavity_deg > 0:
        c = concavity(normals_cam, mask, depth, focal, radius)[mask]
        field = smooth_field(view_rng(seed, CONCAVITY, view), pixels, box, settings.bias_cells, 3)
        tilts["concavity"] = (np.deg2rad(settings.concavity_deg) * c)[:, None] * _unit(tangent(field, n))
    return tilts


def apply_tilt(normals: np.ndarray, tilt: np.ndarray) -> np.ndarray:
    """Rotate (M, 3) unit normals by |tilt| toward tilt (tilt tangent to them); the exponential map of the sphere."""
    angle = np.linalg.norm(tilt, axis=-1, keepdims=True)
    out = np.cos(angle) * normals + np.sin(angle) * _unit(tilt)
    return _unit(out)


def angular_errors_deg(stored: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Angles in degrees between (M, 3) normals, computed in float64 (the files hold float32)."""
    a = _unit(np.asarray(stored, dtype=np.float64))
    b = _unit(np.asarray(true, dtype=np.float64))
    return np.degrees(np.arccos(np.clip(np.sum(a * b, axis=-1), -1.0, 1.0)))


def summarise_angles(angles: np.ndarray) -> Dict[str, float]:
    """Mean / median / p90 / max of angular errors in degrees, and their count."""
    if len(angles) == 0:
        return {"mean_deg": 0.0, "median_deg": 0.0, "p90_deg": 0.0, "max_deg": 0.0, "num_pixels": 0}
    return {
        "mean_deg": float(np.mean(angles)),
        "median_deg": float(np.median(angles)),
        "p90_deg": float(np.percentile(angles, 90)),
        "max_deg": float(np.max(angles)),
        "num_pixels": int(len(angles)),
    }
