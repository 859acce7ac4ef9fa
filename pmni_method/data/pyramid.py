"""Coarse-to-fine training over an image pyramid of the training views (no nerfstudio needed).

A schedule such as ``factors (4, 2, 1)``, ``switch_at (0.3, 0.6)`` trains the first 30 % of the run on the views
block-averaged by 4, the next 30 % on them averaged by 2, and the rest at the loaded resolution. Each level is one
:class:`~pmni_method.data.raystore.RayStore`, built from the loaded views by the loader's own downscaling
(:func:`~pmni_method.data.diligent_mv.downscale_data`), so a level holds what loading the dataset at that factor
gives. The rays per batch follow each level's pixel count (:meth:`ResolutionScheduleConfig.rays_for_level`).

:class:`ResolutionPyramid` is the one place that decides the level and the ray count of a step; the plain loop
(:mod:`pmni_method.train_core`) and the nerfstudio datamanager both draw through it. The finest level is the
loaded data itself, so the consistency term and the pose polish keep reading the full-resolution
:class:`~pmni_method.data.raystore.TrainingViews`.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Dict, List, Tuple

import torch
from torch import Tensor

from pmni_method.data.diligent_mv import downscale_data
from pmni_method.data.raystore import RayStore
from pmni_method.data.types import MultiViewNormalData


@dataclass
class ResolutionScheduleConfig:
    """Coarse-to-fine training over an image pyramid of the loaded views (off while ``factors`` is empty)."""

    factors: Tuple[int, ...] = ()
    """Downscale factors of the levels relative to the loaded images, coarse to fine, each dividing the one before
    and ending at 1 (e.g. 4 2 1); empty: train at the loaded resolution only (downscale-factor sets that size)."""
    switch_at: Tuple[float, ...] = ()
    """Run fractions, strictly increasing in (0, 1), where each next level starts: one fewer than factors."""
    rays_follow_pixels: float = 1.0
    """A level's rays per batch are the run's rays per batch times (its pixels / the loaded pixels) to this power
    (1: the same rays per pixel at every level; 0: the same rays per batch)."""
    min_rays_per_batch: int = 256
    """Floor of a level's rays per batch (never above the run's own): very small batches give noisy steps."""

    @property
    def enabled(self) -> bool:
        return len(self.factors) > 0

    def validate(self) -> None:
        """Raise ValueError with one line naming what is wrong with the schedule."""
        factors, switch = tuple(self.factors), tuple(self.switch_at)
        if not factors:
            if switch:
                raise ValueError(f"resolution schedule: switch_at {list(switch)} given without factors")
            return
        if any(not isinstance(f, int) or isinstance(f, bool) or f < 1 for f in factors):
            raise ValueError(f"resolution schedule: factors {list(factors)} must be positive integers")
        if factors[-1] != 1:
            raise ValueError(
                f"resolution schedule: factors {list(factors)} must end at 1, the loaded resolution "
                "(downscale-factor sets a smaller final size)"
            )
        for coarse, fine in zip(factors, factors[1:]):
            if coarse <= fine or coarse % fine:
                raise ValueError(
                    f"resolution schedule: factors {list(factors)} must go coarse to fine, each a multiple of the "
                    f"next ({coarse} then {fine})"
                )
        if len(switch) != len(factors) - 1:
            raise ValueError(
                f"resolution schedule: {len(factors)} factors need {len(factors) - 1} switch_at fractions, "
                f"got {len(switch)} ({list(switch)})"
            )
        if any(not (0.0 < float(s) < 1.0) for s in switch) or any(b <= a for a, b in zip(switch, switch[1:])):
            raise ValueError(
                f"resolution schedule: switch_at {list(switch)} must be strictly increasing fractions in (0, 1)"
            )
        if not (math.isfinite(float(self.rays_follow_pixels)) and self.rays_follow_pixels >= 0):
            raise ValueError(f"resolution schedule: rays_follow_pixels {self.rays_follow_pixels} must be >= 0")
        if int(self.min_rays_per_batch) < 1:
            raise ValueError(f"resolution schedule: min_rays_per_batch {self.min_rays_per_batch} must be >= 1")

    def level_starts(self, total_steps: int) -> List[int]:
        """First step of each level in a ``total_steps`` run (``[0]`` when off)."""
        return [0] + [int(round(float(s) * max(int(total_steps), 1))) for s in self.switch_at]

    def level_at(self, step: int, total_steps: int) -> int:
        """Index into ``factors`` of the level that trains ``step`` (0-based) of a ``total_steps`` run."""
        if not self.enabled:
            return 0
        return bisect.bisect_right(self.level_starts(total_steps), int(step)) - 1

    def rays_for_level(self, num_rays: int, pixel_ratio: float) -> int:
        """Rays per batch of a level with ``pixel_ratio`` = its pixels / the loaded pixels, for a run of
        ``num_rays`` rays per batch (what the loaded resolution gets)."""
        if pixel_ratio >= 1.0:
            return int(num_rays)
        scaled = int(round(num_rays * float(pixel_ratio) ** float(self.rays_follow_pixels)))
        return max(scaled, min(int(self.min_rays_per_batch), int(num_rays)))


class ResolutionPyramid:
    """One :class:`RayStore` per level of a :class:`ResolutionScheduleConfig`, drawn from by step.

    Every level draws from one random stream (the finest store's generator): a checkpoint then holds one
    generator state whatever the schedule, and with the schedule off the draws are those of a plain RayStore.
    Mask-boundary distances of the coarse levels are given in loaded pixels, so that the core's
    ``mask_boundary_px`` band is as wide on every level.
    """

    def __init__(
        self,
        data: MultiViewNormalData,
        schedule: ResolutionScheduleConfig,
        device: torch.device | str = "cpu",
        fg_fraction: float = 0.5,
        seed: int = 0,
        patch_size: int = 1,
    ) -> None:
        schedule.validate()
        self.schedule = schedule
        self.factors: Tuple[int, ...] = tuple(int(f) for f in schedule.factors) or (1,)
        self.finest = RayStore(data, device, fg_fraction, seed, patch_size)
        self.levels: List[RayStore] = []
        for factor in self.factors:
            if factor == 1:
                self.levels.append(self.finest)
                continue
            level = RayStore(downscale_data(data, factor), device, fg_fraction, seed, patch_size)
            level.generator = self.finest.generator
            level.boundary_px = level.boundary_px * factor
            self.levels.append(level)

    @property
    def generator(self) -> torch.Generator:
        """The random stream every level draws from."""
        return self.finest.generator

    @property
    def enabled(self) -> bool:
        return self.schedule.enabled

    def level_at(self, step: int, total_steps: int) -> int:
        return self.schedule.level_at(step, total_steps)

    def store_at(self, step: int, total_steps: int) -> RayStore:
        """The level that trains ``step`` of a ``total_steps`` run."""
        return self.levels[self.level_at(step, total_steps)]

    def rays_at(self, num_rays: int, step: int, total_steps: int) -> int:
        """Rays per batch at ``step`` for a run of ``num_rays`` rays per batch at the loaded resolution."""
        store = self.store_at(step, total_steps)
        return self.schedule.rays_for_level(num_rays, store.num_pixels / self.finest.num_pixels)

    def sample(self, num_rays: int, step: int, total_steps: int) -> Dict[str, Tensor]:
        """A batch from the level of ``step``, with that level's ray count (see :meth:`rays_at`)."""
        return self.store_at(step, total_steps).sample(self.rays_at(num_rays, step, total_steps))

    def describe(self, num_rays: int, total_steps: int) -> str:
        """One line: each level's image size, first step and rays per batch in a run of ``num_rays``."""
        if not self.enabled:
            return "resolution schedule off"
        starts = self.schedule.level_starts(total_steps)
        parts = [
            f"1/{f} ({store.width}x{store.height}) from step {start}, "
            f"{self.schedule.rays_for_level(num_rays, store.num_pixels / self.finest.num_pixels)} rays"
            for f, store, start in zip(self.factors, self.levels, starts)
        ]
        return "resolution schedule: " + "; ".join(parts)
