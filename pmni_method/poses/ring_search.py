"""The ring start's elevation, read from the masks: the elevation at which the views' silhouette cones agree.

A ring guessed at the wrong elevation has every camera off by the same angle about its own horizontal axis. Gradient
descent corrects that mode slowly, because no single batch says much about it: bunny, 20 views, pmni-fast, a ring
guessed 15 degrees too high still had 2.4 of them left after 900 steps (README, "Pose-free"). The masks settle it
before training. Back-projected through the ring's cameras, the silhouettes of the true elevation meet in a visual
hull that the rays of every mask pass through; at a wrong elevation they disagree, and each view's rays miss what the
others keep. :func:`silhouette_agreement` counts that, and :func:`search_ring_elevation` maximises it over a shift of
the guessed elevation. The camera distance is left to :func:`pmni_method.poses.from_masks.estimate_camera_distance`:
the agreement hardly changes with it (bunny: 0.935-0.936 between 0.9x and 1.05x the distance).

numpy only; nothing here reads true poses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Sequence

import numpy as np

from pmni_method import cameras
from pmni_method.poses.from_masks import carve, recentre_on_masks

RAYS_PER_VIEW = 400
"""Mask pixels per view whose rays are tested (a fixed random subset: the cost does not grow with the image)."""
SAMPLES_PER_RAY = 64
"""Points per ray, evenly spread over its chord through the unit sphere (the object's bound)."""
COARSE_STEP_DEG = 5.0
"""Spacing of the first pass over the search range."""
FINE_STEP_DEG = 1.0
"""Spacing of the second pass, about the first pass's best."""
MIN_GAIN = 0.005
"""Agreement (fraction of rays) the best elevation must gain over the guess to replace it: an object whose silhouettes
agree at every elevation (a body of revolution about the turntable axis) keeps the user's guess."""
MAX_ELEVATION_DEG = 80.0
"""Largest elevation searched: nearer the turntable axis the image-up direction of a ring camera degenerates."""


def silhouette_agreement(
    K: np.ndarray,
    c2w: np.ndarray,
    masks: Sequence[np.ndarray],
    rays_per_view: int = RAYS_PER_VIEW,
    samples_per_ray: int = SAMPLES_PER_RAY,
    seed: int = 0,
) -> float:
    """Mean over views of the fraction of a view's mask rays that pass through a point every view keeps
    (:func:`pmni_method.poses.from_masks.carve`; 1 for silhouettes of one object seen by the true cameras, up to the
    masks' pixel rounding). ``c2w`` are OpenCV camera-to-worlds in the normalised frame."""
    rng = np.random.default_rng(seed)
    points, owners = [], []
    for i, mask in enumerate(masks):
        rows, cols = np.nonzero(np.asarray(mask))
        if len(rows) == 0:
            continue
        pick = rng.choice(len(rows), size=min(rays_per_view, len(rows)), replace=False)
        height, width = np.shape(mask)
        _, directions = cameras.pixel_rays(K[i], c2w[i], height, width, np.stack([rows[pick], cols[pick]], axis=1))
        origin = c2w[i, :3, 3]
        # The chord of each ray through the unit sphere; a ray that misses it is tested at its closest approach.
        b = directions @ origin
        disc = np.maximum(b * b - (origin @ origin - 1.0), 0.0)
        near, far = -b - np.sqrt(disc), -b + np.sqrt(disc)
        t = near[:, None] + (far - near)[:, None] * ((np.arange(samples_per_ray) + 0.5) / samples_per_ray)[None]
        points.append(origin + t[..., None] * directions[:, None, :])
        owners.append(np.full(len(pick), i))
    if not points:
        return 0.0
    rays = np.concatenate(points)  # (R, S, 3)
    through = carve(K, c2w, masks, rays.reshape(-1, 3)).reshape(rays.shape[:2]).any(axis=1)
    views = np.concatenate(owners)
    return float(np.mean([through[views == v].mean() for v in np.unique(views)]))


@dataclass
class ElevationSearch:
    """What :func:`search_ring_elevation` found."""

    shift_deg: float
    """Degrees added to the guessed elevation (0: the guess kept)."""
    agreement: float
    """:func:`silhouette_agreement` of the ring at the chosen elevation."""
    guess_agreement: float
    """The same at the guess."""


def search_ring_elevation(
    ring: Callable[[float], np.ndarray],
    K: np.ndarray,
    masks: Sequence[np.ndarray],
    guess_deg: Sequence[float],
    search_deg: float,
) -> ElevationSearch:
    """The shift of the guessed elevation, within ``+-search_deg``, at which the ring's silhouettes agree best.

    ``ring(shift)`` returns the ring's (N, 4, 4) camera-to-worlds with every view's elevation shifted by ``shift``
    degrees; ``guess_deg`` are the guessed elevations (to keep every shifted view below
    :data:`MAX_ELEVATION_DEG`). Each candidate is recentred on its masks first, as pose-free training starts
    (:func:`pmni_method.poses.from_masks.recentre_on_masks`). A coarse pass, a fine pass about its best, then the
    vertex of the parabola through the fine best and its neighbours; ties go to the shift nearest the guess.
    """
    lowest, highest = float(np.min(guess_deg)), float(np.max(guess_deg))
    low = max(-search_deg, -MAX_ELEVATION_DEG - lowest)
    high = min(search_deg, MAX_ELEVATION_DEG - highest)
    scores: Dict[float, float] = {}

    def score(shift: float) -> float:
        shift = round(float(np.clip(shift, low, high)), 6)
        if shift not in scores:
            c2w = ring(shift)
            scores[shift] = silhouette_agreement(K, recentre_on_masks(c2w, K, masks, consensus=True) @ c2w, masks)
        return scores[shift]

    def best(candidates: Sequence[float]) -> float:
        return max(candidates, key=lambda s: (score(s), -abs(s)))

    guess = score(0.0)
    if high <= low:
        return ElevationSearch(0.0, guess, guess)
    coarse = best(np.unique(np.r_[np.arange(0.0, high, COARSE_STEP_DEG), -np.arange(0.0, -low, COARSE_STEP_DEG)]))
    span = COARSE_STEP_DEG - FINE_STEP_DEG
    fine = best(np.arange(coarse - span, coarse + span + 0.5 * FINE_STEP_DEG, FINE_STEP_DEG))
    shift = fine
    left, mid, right = score(fine - FINE_STEP_DEG), score(fine), score(fine + FINE_STEP_DEG)
    curvature = left - 2.0 * mid + right
    if curvature < 0.0 and low < fine < high:
        # Sub-step: the agreement is a count of rays, flat between the grid's points only by chance.
        shift = fine + 0.5 * FINE_STEP_DEG * (left - right) / curvature
    if score(shift) < mid:
        shift = fine
    chosen = score(shift)
    if chosen - guess < MIN_GAIN:
        return ElevationSearch(0.0, guess, guess)
    return ElevationSearch(float(np.clip(shift, low, high)), chosen, guess)
