"""The ring start's elevation from the masks alone: silhouette agreement peaks at the true elevation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pmni_method.data.diligent_mv import load_diligent_mv
from pmni_method.data.layout import CAMERA_NORMAL_DIR
from pmni_method.poses.from_masks import recentre_on_masks
from pmni_method.poses.maths import rotation_errors_deg
from pmni_method.poses.ring_search import search_ring_elevation, silhouette_agreement
from pmni_method.poses.starts import PoseInitConfig, ring_initialisation

TRUE_ELEVATION = 10.0  # pmni-synth's default rig


def ring_start(folder: Path, elevation: float, search: float = 45.0):
    config = PoseInitConfig(pose_init="ring", ring_elevation_deg=(elevation, elevation), ring_elevation_search_deg=search)
    return load_diligent_mv(folder, load_depth=False, normal_dir=CAMERA_NORMAL_DIR, pose_init=config)


@pytest.mark.parametrize("guess", [25.0, -5.0])
def test_ring_elevation_is_found_from_the_masks(bunny_dir: Path, spot_dir: Path, guess: float) -> None:
    for folder in (bunny_dir, spot_dir):
        data = ring_start(folder, guess)
        radius = np.linalg.norm(data.c2w[:, :3, 3], axis=1)
        elevation = np.rad2deg(np.arcsin(data.c2w[:, 1, 3] / radius))
        # 8 views of 80x64 px: the silhouettes are about 30 px wide.
        assert abs(elevation.mean() - TRUE_ELEVATION) < 3.0, (folder.name, guess, elevation.mean())
        assert rotation_errors_deg(data.c2w, data.gt_c2w).max() < 3.5
        # Searching off gives the guess as typed.
        kept = ring_start(folder, guess, search=0.0)
        np.testing.assert_allclose(np.rad2deg(np.arcsin(kept.c2w[:, 1, 3] / radius)), guess, atol=1e-6)


def test_silhouettes_agree_for_the_true_cameras_only(bunny_dir: Path) -> None:
    data = load_diligent_mv(bunny_dir, load_depth=False)
    truth = silhouette_agreement(data.K, data.c2w, data.masks)
    assert truth > 0.97
    radius = float(np.linalg.norm(data.c2w[:, :3, 3], axis=1).mean())
    off = ring_initialisation(data.num_views, radius, elevation_deg=TRUE_ELEVATION + 15.0)
    off = recentre_on_masks(off, data.K, data.masks) @ off
    assert silhouette_agreement(data.K, off, data.masks) < truth - 0.05


def test_a_body_of_revolution_keeps_the_guess(sphere_dir: Path) -> None:
    # A sphere's silhouettes agree at every elevation: nothing in the masks justifies moving the user's guess.
    data = load_diligent_mv(sphere_dir, load_depth=False)
    radius = float(np.linalg.norm(data.c2w[:, :3, 3], axis=1).mean())

    def ring(shift: float) -> np.ndarray:
        return ring_initialisation(data.num_views, radius, elevation_deg=30.0 + shift)

    found = search_ring_elevation(ring, data.K, data.masks, [30.0], 45.0)
    assert found.shift_deg == 0.0 and found.agreement == found.guess_agreement
