"""The silhouette term: surface points projected into every other view's mask, with a range in pixels."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from pmni_method.data.raystore import RayStore, TrainingViews, mask_outside_distance
from pmni_method.models.consistency import MultiViewConsistencyConfig
from pmni_method.models.pose_model import PoseModel, PoseModelConfig
from pmni_method.models.presets import pose_free_consistency
from pmni_method.models.silhouette import sample_distance, silhouette_loss
from pmni_method.models.step import StepContext, train_step
from pmni_method.poses.maths import rotation_errors_deg
from pmni_method.poses.starts import perturb_poses

from box_scene import box_dataset, frozen_geometry_core, with_initial_poses
from test_consistency import surface_points


def test_outside_distance_is_zero_inside_and_grows_outside_and_beyond_the_image() -> None:
    masks = np.zeros((2, 10, 12), bool)
    masks[0, 3:6, 4:8] = True  # view 1 has an empty mask
    dist = mask_outside_distance(masks)
    assert float(dist[0, 3:6, 4:8].abs().max()) == 0.0
    assert float(dist[0, 4, 2]) == 2.0 and float(dist[0, 8, 5]) == 3.0
    assert abs(float(dist[1].min()) - np.hypot(10, 12)) < 1e-5
    view = torch.zeros(3, dtype=torch.long)
    uv = torch.tensor([[5.0, 4.0], [2.5, 4.0], [-3.0, 4.0]])  # inside; between 2 and 1 px away; 3 px off the image
    got = sample_distance(dist, view, uv)
    np.testing.assert_allclose(got.numpy(), [0.0, 1.5, 4.0 + 3.0], atol=1e-5)


def test_true_poses_cost_nothing_and_a_misplaced_camera_is_pulled_back() -> None:
    truth = box_dataset(num_views=6, size=48)
    views = TrainingViews.from_data(truth)
    points, _, source = surface_points(truth, per_view=40)
    c2w = torch.as_tensor(truth.c2w, dtype=torch.float32)
    loss, stats = silhouette_loss(points, source, views.mask_outside_distance(), c2w, views.K)
    assert float(loss) < 1e-3 and float(stats["silhouette_outside_fraction"]) < 0.01, (float(loss), stats)

    # Camera 2 turned 4 degrees about its own centre: points of the other views fall outside its mask, and the
    # term's gradient alone turns it back. (Only its turn is free here: the term is one-sided, so a camera free to
    # back away could also shrink its view until everything projects inside; its own mask loss stops that in
    # training, and the end-to-end tests cover the full pose.)
    init = torch.as_tensor(
        perturb_poses(truth.c2w[2:3], 4.0, 0.0, seed=3, reference_radius=3.0, distribution="fixed")[0], dtype=torch.float32
    )
    omega = torch.zeros(3, requires_grad=True)
    optimizer = torch.optim.Adam([omega], lr=5e-3)
    distance = views.mask_outside_distance()

    def cameras_now() -> torch.Tensor:
        turned = init.clone()
        turned[:3, :3] = init[:3, :3] @ so3_exp(omega)
        return torch.cat([c2w[:2], turned[None], c2w[3:]])

    first = float(silhouette_loss(points, source, distance, cameras_now(), views.K)[0])
    for _ in range(150):
        loss, _ = silhouette_loss(points, source, distance, cameras_now(), views.K)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert first > 0.05, first
    assert float(loss) < 0.05 * first, (first, float(loss))
    error = rotation_errors_deg(cameras_now().detach().double().numpy(), truth.c2w)
    # From 4 degrees, by silhouettes alone, to within the free margin (1 px is 0.67 degrees at this focal length).
    assert error[2] < 1.2, error


def so3_exp(omega: torch.Tensor) -> torch.Tensor:
    """Rotation matrix of an axis-angle vector (Rodrigues), differentiable."""
    theta = omega.norm() + 1e-12
    k = omega / theta
    zero = torch.zeros((), dtype=omega.dtype)
    skew = torch.stack([zero, -k[2], k[1], k[2], zero, -k[0], -k[1], k[0], zero]).reshape(3, 3)
    return torch.eye(3) + torch.sin(theta) * skew + (1.0 - torch.cos(theta)) * skew @ skew


def test_pose_free_runs_weigh_the_term_and_the_step_logs_it() -> None:
    base = MultiViewConsistencyConfig(pose_free_silhouette_weight=0.2)
    assert pose_free_consistency(base).silhouette_weight == 0.2
    assert MultiViewConsistencyConfig().silhouette_weight == 0.0  # calibrated runs leave it off

    truth = box_dataset(num_views=4)
    init = truth.c2w.copy()
    init[1] = perturb_poses(truth.c2w[1:2], 3.0, 0.0, seed=1, reference_radius=3.0, distribution="fixed")[0]
    data = with_initial_poses(truth, init)
    store = RayStore(data, fg_fraction=0.6, seed=0)
    core = frozen_geometry_core()
    refiner = PoseModel(PoseModelConfig(mode="SE3", frozen_camera=0), c2w_init=data.c2w)
    context = StepContext(
        poses=refiner, views=store.views, targets_follow_poses=True, consistency=pose_free_consistency(base)
    )
    result = train_step(core, store.sample(512), context)
    assert "silhouette_loss" in result.losses and "silhouette_outside_fraction" in result.stats
    assert float(result.losses["silhouette_loss"]) > 0
    result.losses["silhouette_loss"].backward()
    assert float(refiner.xi.grad.as_subclass(torch.Tensor)[1].abs().sum()) > 0  # it reaches the misplaced camera
    off = StepContext(poses=refiner, views=store.views, consistency=dataclasses.replace(base, silhouette_weight=0.0))
    assert "silhouette_loss" not in train_step(core, store.sample(512), off).losses
