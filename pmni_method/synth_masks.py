"""Mask errors that pmni-synth can add (a boundary moved in or out, ragged, with holes and spurs) and their statistics.

Distances are measured with the half-pixel signed distance of a mask: for a pixel outside, the Euclidean distance
to the nearest mask pixel centre minus 1/2; for a pixel inside, minus (distance to the nearest outside pixel minus
1/2). The mask's boundary is its zero level, halfway between pixel centres.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict

import numpy as np
import scipy.ndimage

JITTER_CORRELATION = 0.08
"""Gaussian sigma of the boundary jitter field, as a fraction of the shorter side of the mask's box (at least 2 px)."""

MASK_ERROR_DEFINITION = (
    "stored mask = pixels whose half-pixel signed distance to the true boundary (+ outside) is < mask_offset_px + "
    "mask_boundary_jitter_px g, g Gaussian-filtered white noise (sigma "
    f"{JITTER_CORRELATION} of the shorter mask-box side, at least 2 px) scaled to zero mean and unit standard "
    "deviation over the pixels within 3 px of the boundary; then mask_holes disks of radius mask_blob_radius_px "
    "centred at uniformly drawn mask pixels 1-2 radii (plus 2 px) inside the boundary are removed, and mask_spurs "
    "disks centred at outside pixels within one radius of it are added. Normals of added pixels are those of the "
    "nearest true mask pixel (perturbed like it); depth maps keep the true mask"
)

MASK_STATISTICS_DEFINITION = (
    "iou = |stored & true| / |stored | true|; false_positive_px / false_negative_px = pixels only in the stored / "
    "only in the true mask; boundary_offset_mean_px = mean over the stored mask's boundary (midpoints of 4-neighbour "
    "pixel pairs across it) of the true signed distance (+ outward); boundary_error_mean_px = mean of its absolute "
    "value; boundary_error_symmetric_px = mean of that and the same measure from the true boundary to the stored one"
)


@dataclass(frozen=True)
class MaskErrorSettings:
    """Resolved mask error options."""

    offset_px: float = 0.0
    jitter_px: float = 0.0
    holes: int = 0
    spurs: int = 0
    blob_radius_px: float = 2.0

    @property
    def active(self) -> bool:
        return self.offset_px != 0 or self.jitter_px > 0 or self.holes > 0 or self.spurs > 0


def signed_distance(mask: np.ndarray) -> np.ndarray:
    """(H, W) half-pixel signed distance to the mask's boundary, positive outside (see the module docstring)."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return np.full(mask.shape, np.inf)
    if mask.all():
        return np.full(mask.shape, -np.inf)
    outside = scipy.ndimage.distance_transform_edt(~mask)
    inside = scipy.ndimage.distance_transform_edt(mask)
    return np.where(mask, -(inside - 0.5), outside - 0.5)


def _disks(shape, centres: np.ndarray, radius: float) -> np.ndarray:
    seeds = np.zeros(shape, dtype=bool)
    seeds[centres[:, 0], centres[:, 1]] = True
    return scipy.ndimage.distance_transform_edt(~seeds) <= radius


def perturb_mask(mask: np.ndarray, settings: MaskErrorSettings, rng: np.random.Generator) -> np.ndarray:
    """The stored mask of one view (see :data:`MASK_ERROR_DEFINITION`); the draws are the same whatever is on."""
    mask = np.asarray(mask, dtype=bool)
    sd = signed_distance(mask)
    rows, cols = np.nonzero(mask)
    side = min(np.ptp(rows), np.ptp(cols)) + 1
    noise = scipy.ndimage.gaussian_filter(rng.normal(size=mask.shape), max(2.0, JITTER_CORRELATION * side))
    band = np.abs(sd) <= 3.0
    noise = (noise - noise[band].mean()) / max(noise[band].std(), 1e-12)
    hole_draws = rng.random(max(settings.holes, 0))
    spur_draws = rng.random(max(settings.spurs, 0))
    stored = sd < settings.offset_px + settings.jitter_px * noise
    r = settings.blob_radius_px
    sd_stored = signed_distance(stored)
    # Hole centres keep 2 px more than a radius from the background, so that a hole never opens onto it.
    for draws, lo, hi, add in ((hole_draws, -2 * r - 1.5, -r - 1.5, False), (spur_draws, 0.0, r, True)):
        if len(draws) == 0:
            continue
        candidates = np.argwhere((sd_stored >= lo) & (sd_stored <= hi))
        if len(candidates) == 0:
            continue
        centres = candidates[np.minimum((draws * len(candidates)).astype(int), len(candidates) - 1)]
        blobs = _disks(mask.shape, centres, r)
        stored = stored | blobs if add else stored & ~blobs
    return stored


def _boundary_distances(mask: np.ndarray, sd_reference: np.ndarray) -> np.ndarray:
    """``sd_reference`` at the midpoints of the 4-neighbour pixel pairs that straddle ``mask``'s boundary."""
    out = []
    for axis in (0, 1):
        a = np.swapaxes(mask, 0, axis)
        s = np.swapaxes(sd_reference, 0, axis)
        cross = a[1:] != a[:-1]
        out.append(0.5 * (s[1:][cross] + s[:-1][cross]))
    return np.concatenate(out)


def mask_statistics(stored: np.ndarray, true: np.ndarray) -> Dict[str, float]:
    """How far the stored mask is from the true one (see :data:`MASK_STATISTICS_DEFINITION`)."""
    stored, true = np.asarray(stored, dtype=bool), np.asarray(true, dtype=bool)
    union = int((stored | true).sum())
    to_true = _boundary_distances(stored, signed_distance(true))
    to_stored = _boundary_distances(true, signed_distance(stored))
    to_true = to_true[np.isfinite(to_true)]
    to_stored = to_stored[np.isfinite(to_stored)]
    mean_abs = float(np.abs(to_true).mean()) if len(to_true) else 0.0
    reverse = float(np.abs(to_stored).mean()) if len(to_stored) else 0.0
    return {
        "iou": float((stored & true).sum() / union) if union else 1.0,
        "false_positive_px": int((stored & ~true).sum()),
        "false_negative_px": int((true & ~stored).sum()),
        "boundary_offset_mean_px": float(to_true.mean()) if len(to_true) else 0.0,
        "boundary_error_mean_px": mean_abs,
        "boundary_error_symmetric_px": 0.5 * (mean_abs + reverse),
    }


def nearest_fill(values: np.ndarray, source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """``values`` (H, W, C) with each ``target`` pixel outside ``source`` set to the nearest ``source`` pixel's."""
    out = np.array(values, copy=True)
    new = target & ~source
    if new.any() and source.any():
        _, (rows, cols) = scipy.ndimage.distance_transform_edt(~source, return_indices=True)
        out[new] = out[rows[new], cols[new]]
    return out
