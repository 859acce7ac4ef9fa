"""The multi-view normal consistency term: which pairs count, projections at the border, visibility."""

from __future__ import annotations

from typing import Tuple

import numpy as np
import torch
from torch import Tensor

from pmni_method import cameras
from pmni_method.data.types import MultiViewNormalData
from pmni_method.models.consistency import (
    MultiViewConsistencyConfig,
    TrainingViews,
    consistency_loss,
    sample_normals,
    unoccluded,
)

from box_scene import box_dataset, box_sdf, hit_box, spheres_sdf


# ------------------------------------------------------------------------------------------------- consistency


def surface_points(data: MultiViewNormalData, per_view: int = 30) -> Tuple[Tensor, Tensor, Tensor]:
    """First hits of random foreground pixels (true poses), their world normals, and their views."""
    points, normals, views = [], [], []
    rng = np.random.default_rng(0)
    for v in range(data.num_views):
        rows, cols = np.nonzero(data.masks[v])
        pick = rng.choice(len(rows), per_view, replace=False)
        o, d = cameras.pixel_rays(data.K[v], data.c2w[v], data.height, data.width, np.stack([rows[pick], cols[pick]], -1))
        points.append(hit_box(o, d)[0])
        normals.append(data.normals[v][rows[pick], cols[pick]])
        views += [v] * per_view
    return (
        torch.tensor(np.concatenate(points), dtype=torch.float32),
        torch.tensor(np.concatenate(normals), dtype=torch.float32),
        torch.tensor(views),
    )


def test_consistency_is_zero_for_consistent_and_positive_for_inconsistent_normals() -> None:
    data = box_dataset(num_views=8, size=48)
    views = TrainingViews.from_data(data)
    c2w = torch.as_tensor(data.c2w, dtype=torch.float32)
    points, normals, source = surface_points(data)
    config = MultiViewConsistencyConfig(views_per_point=3)
    loss, stats = consistency_loss(
        points, normals, source, views, c2w, None, box_sdf, config, generator=torch.Generator().manual_seed(0)
    )
    assert stats["mvc_pairs"] > 50
    assert float(loss) < 2e-3  # bilinear interpolation of smooth normals, nothing more
    # View 3's normal map rotated by 20 degrees: the pairs that involve it disagree.
    angle = np.deg2rad(20.0)
    tilt = torch.tensor(
        [[np.cos(angle), 0.0, np.sin(angle)], [0.0, 1.0, 0.0], [-np.sin(angle), 0.0, np.cos(angle)]],
        dtype=torch.float32,
    )
    rotations = torch.eye(3).repeat(8, 1, 1)
    rotations[3] = tilt
    normals_rotated = torch.where((source == 3)[:, None], normals @ tilt.T, normals)
    bad, bad_stats = consistency_loss(
        points, normals_rotated, source, views, c2w, None, box_sdf, config,
        generator=torch.Generator().manual_seed(0),
    )
    assert float(bad) > 10 * max(float(loss), 1e-4)
    # Undoing the tilt through the per-view normal rotations (what a pose correction does) restores consistency.
    normals_fixed = torch.where((source == 3)[:, None], normals_rotated @ tilt, normals_rotated)
    fixed, _ = consistency_loss(
        points, normals_fixed, source, views, c2w, None, box_sdf, config,
        generator=torch.Generator().manual_seed(0),
    )
    assert float(fixed) < 2e-3
    rotated_maps, _ = consistency_loss(
        points, normals, source, views, c2w, rotations, box_sdf, config, generator=torch.Generator().manual_seed(0)
    )
    assert float(rotated_maps) > 10 * max(float(loss), 1e-4)


def test_projections_outside_the_image_are_dropped_not_clamped() -> None:
    data = box_dataset(num_views=2, size=32)
    views = TrainingViews(
        normals=torch.tensor([0.0, 0.0, 1.0]).expand(2, 32, 32, 3).contiguous(),
        masks=torch.ones(2, 32, 32, dtype=torch.bool),
        K=torch.as_tensor(data.K, dtype=torch.float32),
    )
    uv = torch.tensor([[-0.5, 10.0], [31.0, 10.0], [30.5, 10.0], [10.0, -1e-3], [10.0, 30.99], [float("nan"), 1.0]])
    _, valid = sample_normals(views, torch.zeros(len(uv), dtype=torch.long), uv)
    assert valid.tolist() == [False, False, True, False, True, False]
    # A camera that cannot see the object (principal point far off): no pair with it counts, the loss is 0.
    data.K[1, 0, 2] += 1000.0
    views = TrainingViews.from_data(data)
    points, normals, source = surface_points(data, per_view=20)
    keep = source == 0
    points.requires_grad_(True)
    loss, stats = consistency_loss(
        points[keep], normals[keep], source[keep], views, torch.as_tensor(data.c2w, dtype=torch.float32), None,
        box_sdf, MultiViewConsistencyConfig(),
    )
    assert float(stats["mvc_pairs"]) == 0 and float(loss) == 0.0
    loss.backward()  # still part of the graph


def test_visibility_by_sphere_tracing() -> None:
    spheres = [((0.0, 0.0, 0.0), 0.3), ((0.0, 0.0, 0.7), 0.2)]

    def sdf(x: Tensor) -> Tensor:
        return spheres_sdf(x, spheres)

    top = torch.tensor([[0.0, 0.0, 0.3]] * 3)
    cams = torch.tensor([[0.0, 0.0, 4.0], [0.0, 3.0, 3.0], [0.0, 0.0, -4.0]])
    free = unoccluded(sdf, top, cams, MultiViewConsistencyConfig(), radius=1.0)
    # Straight up: the small sphere is in the way; sideways: clear; below: through its own sphere.
    assert free.tolist() == [False, True, False]
