"""Pose refinement: the core pose model (left-applied pypose SE(3) per camera), its gauges, and the pose polish."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path
from typing import Tuple

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation
from torch import Tensor

from pmni_method import cameras
from pmni_method.data.diligent_mv import load_diligent_mv
from pmni_method.data.raystore import RayStore
from pmni_method.models.pose_model import PoseModel, PoseModelConfig
from pmni_method.models.schedule import LRScheduleConfig
from pmni_method.models.step import StepContext, train_step
from pmni_method.poses.from_masks import recentre_on_masks
from pmni_method.poses.maths import rotation_errors_deg
from pmni_method.poses.starts import perturb_poses

from box_scene import box_dataset, frozen_geometry_core, with_initial_poses


# ------------------------------------------------------------------------------------------------- pose refinement


def test_right_delta_reproduces_the_left_applied_pose() -> None:
    c2w = cameras.ring_poses(5, 4.0, elevation_deg=10.0)
    from pmni_method.nerfstudio_adapter.pose_adapter import PoseRefinerConfig

    refiner = PoseRefinerConfig(mode="SE3", frozen_camera=1).setup(num_cameras=5, device="cpu", c2w_init=c2w)
    with torch.no_grad():
        refiner.poses.xi.copy_(torch.randn(5, 6, generator=torch.Generator().manual_seed(0)) * 0.2)
        delta = refiner(torch.arange(5)).double().numpy()
        refined = refiner.refined_c2w()
    # nerfstudio's viewer: c2w = c2w_orig @ [delta; 0 0 0 1], both in nerfstudio (OpenGL) axes.
    original = cameras.opencv_to_nerfstudio_c2w(c2w)
    viewer = original @ np.concatenate([delta, np.tile([[[0.0, 0.0, 0.0, 1.0]]], (5, 1, 1))], axis=1)
    np.testing.assert_allclose(viewer, cameras.opencv_to_nerfstudio_c2w(refined), atol=2e-6)
    assert not np.allclose(refined, c2w, atol=1e-3)  # the corrections were not trivial
    np.testing.assert_allclose(delta[1], np.eye(4)[:3], atol=0)  # frozen camera: identity delta

    from nerfstudio.cameras.camera_optimizers import CameraOptimizer

    assert isinstance(refiner, CameraOptimizer)  # what the viewer requires before it draws refined frustums


def test_recovers_a_perturbation_and_keeps_the_frozen_camera_exact() -> None:
    torch.manual_seed(0)
    truth = box_dataset(num_views=4)
    perturbed = [1, 3]
    init = truth.c2w.copy()
    # Each perturbed camera turns by exactly 3 degrees about its own centre and moves by 2 % of its distance.
    init[perturbed] = perturb_poses(truth.c2w[perturbed], 3.0, 0.02, seed=1, reference_radius=3.0, distribution="fixed")
    data = with_initial_poses(truth, init)
    store = RayStore(data, fg_fraction=0.6, seed=0)
    core = frozen_geometry_core()
    refiner = PoseModel(PoseModelConfig(mode="SE3", frozen_camera=0), c2w_init=data.c2w)
    context = StepContext(poses=refiner, targets_follow_poses=True)
    steps = 200
    optimizer = torch.optim.Adam([refiner.xi], lr=4e-3, eps=1e-8)
    # Warm-up, then decaying steps: Adam turns batch noise into a random walk of about the step size.
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, LRScheduleConfig(warmup_steps=20, final_factor=0.025, total_steps=steps).factor
    )
    before = rotation_errors_deg(init, truth.c2w)
    for _ in range(steps):
        loss = sum(train_step(core, store.sample(512), context).losses.values())
        optimizer.zero_grad()
        loss.backward()
        assert torch.equal(refiner.xi.grad[0], torch.zeros(6))  # the frozen camera is outside the graph
        optimizer.step()
        schedule.step()
    after = rotation_errors_deg(refiner.refined_c2w(), truth.c2w)
    # Measured: 3 degrees -> 0.45-0.9 (mean of the two) over four seeds; the untouched camera wanders < 1.2 degrees.
    assert after[perturbed].mean() < 0.4 * before[perturbed].mean(), (before, after)
    assert after.max() < 1.5, after
    # Gauge camera: exactly where it started, bit for bit.
    assert torch.equal(refiner.left_transforms()[0], torch.eye(4))
    assert torch.equal(refiner.current_c2w()[0], refiner.c2w_init[0])
    assert torch.equal(refiner.xi.as_subclass(torch.Tensor)[0], torch.zeros(6))


def test_mean_gauge_moves_every_camera_and_ignores_a_common_correction() -> None:
    c2w = cameras.ring_poses(5, 4.0, elevation_deg=10.0)
    refiner = PoseModel(PoseModelConfig(mode="SE3", gauge="mean"), c2w_init=c2w)
    with torch.no_grad():
        refiner.xi.copy_(torch.randn(5, 6, generator=torch.Generator().manual_seed(0)) * 0.1)
    before = refiner.refined_c2w()
    # Every camera moved (nothing frozen), and the corrections as applied have zero mean.
    assert (np.abs(before - c2w).max(axis=(1, 2)) > 1e-3).all()
    np.testing.assert_allclose(refiner._effective_xi().mean(0).detach().numpy(), 0.0, atol=1e-7)
    with torch.no_grad():
        refiner.xi.add_(torch.tensor([0.3, -0.2, 0.1, 0.05, 0.02, -0.04]))
    np.testing.assert_allclose(refiner.refined_c2w(), before, atol=1e-6)  # a common correction is no motion

    # The optimiser sees no common component: the gradients of all cameras sum to zero.
    loss = (refiner.current_c2w()[:, :3, 3] * torch.arange(1.0, 6.0)[:, None]).sum()
    loss.backward()
    grad = refiner.xi.grad.as_subclass(torch.Tensor)
    assert grad.abs().sum() > 0 and grad.sum(0).abs().max() < 1e-5, grad


@pytest.mark.parametrize("coordinates", ["world", "camera"])
def test_setting_poses_under_each_gauge(coordinates: str) -> None:
    c2w = cameras.ring_poses(4, 4.0, elevation_deg=10.0)
    targets = [torch.as_tensor(perturb_poses(np.eye(4)[None], 2.0, 0.0, seed=s)[0], dtype=torch.float32) for s in (1, 2)]
    frozen = PoseModel(PoseModelConfig(mode="SE3", coordinates=coordinates), c2w_init=c2w)
    frozen.set_left_transforms([0, 2], targets)
    # Camera 0 fixes the gauge and stays; camera 2 gets exactly what was asked; the others are untouched.
    assert torch.equal(frozen.left_transforms()[0], torch.eye(4))
    torch.testing.assert_close(frozen.left_transforms()[2], targets[1], atol=1e-6, rtol=0)
    assert torch.equal(frozen.left_transforms()[[1, 3]], torch.eye(4).expand(2, 4, 4))

    mean = PoseModel(PoseModelConfig(mode="SE3", gauge="mean", coordinates=coordinates), c2w_init=c2w)
    # Opposite turns of two cameras have zero mean, so they are representable exactly.
    up = targets[0]
    down = torch.linalg.inv(up)
    mean.set_left_transforms([1, 3], [up, down])
    torch.testing.assert_close(mean.left_transforms()[1], up, atol=1e-6, rtol=0)
    torch.testing.assert_close(mean.left_transforms()[3], down, atol=1e-6, rtol=0)
    torch.testing.assert_close(mean.left_transforms()[[0, 2]], torch.eye(4).expand(2, 4, 4), atol=1e-6, rtol=0)
    # One camera alone is not: the rig keeps its mean, so that camera takes 3/4 of the turn and the others -1/4.
    single = PoseModel(PoseModelConfig(mode="SE3", gauge="mean", coordinates=coordinates), c2w_init=c2w)
    single.set_left_transforms([2], [up])
    angles = rotation_errors_deg(single.left_transforms().detach().double().numpy(), np.eye(3)[None].repeat(4, 0))
    full = float(rotation_errors_deg(up.double().numpy(), np.eye(3)))
    np.testing.assert_allclose(angles, [full / 4, full / 4, 3 * full / 4, full / 4], rtol=1e-4)


@pytest.mark.parametrize("gauge", ["frozen-camera", "mean"])
@pytest.mark.parametrize("coordinates", ["world", "camera"])
def test_state_dict_loads_with_weights_only(gauge: str, coordinates: str) -> None:
    c2w = cameras.ring_poses(4, 4.0)
    config = PoseModelConfig(mode="SE3", gauge=gauge, coordinates=coordinates)
    refiner = PoseModel(config, c2w_init=c2w)
    with torch.no_grad():
        refiner.xi.copy_(torch.randn(4, 6) * 0.1)
    buffer = io.BytesIO()
    torch.save(refiner.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)  # torch >= 2.6 default: no pickled LieTensor allowed
    fresh = PoseModel(config, c2w_init=c2w)
    fresh.load_state_dict(state)
    np.testing.assert_array_equal(fresh.refined_c2w(), refiner.refined_c2w())
    assert type(fresh.xi).__module__.startswith("pypose")  # still the pypose parameter the optimiser steps
    # Corrections of the other coordinates would mean other motions: they must not load quietly.
    other = PoseModel(replace(config, coordinates="world" if coordinates == "camera" else "camera"), c2w_init=c2w)
    with pytest.raises(RuntimeError, match="xi_basis"):
        other.load_state_dict(state)


def test_camera_coordinates_step_each_camera_by_its_own_motions() -> None:
    c2w = cameras.ring_poses(3, 4.0, elevation_deg=20.0)
    model = PoseModel(
        PoseModelConfig(mode="SE3", frozen_camera=0, coordinates="camera", motion_scales=(2.0, 2.0, 1.0, 1.0, 1.0, 1.0)),
        c2w_init=c2w,
    )
    start = c2w[1]
    for k, motion in enumerate(["orbit", "orbit", "roll", "turn", "turn", "distance"]):
        with torch.no_grad():
            model.xi.data.zero_()
            model.xi.data[1, k] = 0.01
        moved = model.refined_c2w()[1]
        turn = float(rotation_errors_deg(moved[:3, :3], start[:3, :3]))
        shift = moved[:3, 3] - start[:3, 3]
        aim = float(np.dot(moved[:3, 2], -moved[:3, 3] / np.linalg.norm(moved[:3, 3])))
        if motion == "orbit":  # about the object: the distance and the aim at the origin stay, the camera turns 2x
            np.testing.assert_allclose(turn, np.degrees(0.02), rtol=1e-3)
            np.testing.assert_allclose(np.linalg.norm(moved[:3, 3]), 4.0, rtol=1e-5)
            assert aim > 1 - 1e-6 and np.linalg.norm(shift) > 0.07
        elif motion == "roll":  # about its own axis: nothing moves but the image's turn
            np.testing.assert_allclose(turn, np.degrees(0.01), rtol=1e-3)
            assert np.linalg.norm(shift) < 1e-6
        elif motion == "turn":  # about its own centre: the centre stays, the aim leaves the origin
            np.testing.assert_allclose(turn, np.degrees(0.01), rtol=1e-3)
            assert np.linalg.norm(shift) < 1e-6 and aim < 1 - 1e-5
        else:  # along its axis, by 1 % of the mean distance
            assert turn < 1e-4
            np.testing.assert_allclose(shift, 0.04 * start[:3, 2], atol=1e-6)


def test_recentre_points_each_camera_at_the_origin() -> None:
    data = box_dataset(num_views=4, size=40)
    c2w = perturb_poses(data.c2w, 6.0, 0.0, seed=3, distribution="fixed")
    A = recentre_on_masks(c2w, data.K, data.masks)
    moved = A @ c2w
    # Turned about its own centre, then the whole rig shifted by one vector (the rays' meeting point to the origin).
    shift = moved[:, :3, 3] - c2w[:, :3, 3]
    np.testing.assert_allclose(shift, np.broadcast_to(shift[0], shift.shape), atol=1e-12)
    def centroid_ray(c2w_v: np.ndarray, v: int) -> np.ndarray:
        rows, cols = np.nonzero(data.masks[v])
        ray = c2w_v[:3, :3] @ np.linalg.solve(data.K[v], [cols.mean(), rows.mean(), 1.0])
        return ray / np.linalg.norm(ray)

    before, after = [], []
    for v in range(4):
        ray = centroid_ray(moved[v], v)
        assert np.linalg.norm(np.cross(ray, -moved[v, :3, 3])) < 1e-9  # the centroid ray passes the origin
        # The true camera sees the centroid in (almost) the same direction: the pointing error is gone.
        true_ray = centroid_ray(data.c2w[v], v)
        before.append(np.degrees(np.arccos(np.clip(centroid_ray(c2w[v], v) @ true_ray, -1, 1))))
        after.append(np.degrees(np.arccos(np.clip(ray @ true_ray, -1, 1))))
    assert max(after) < 1.0 and np.mean(before) > 2.0, (before, after)


def test_recentring_the_true_cameras_adds_no_common_turn(bunny_dir: Path) -> None:
    # The bunny's silhouette centroids lie below its centre: turning each true camera onto the origin would pitch
    # them all together; turning them onto the point their rays meet leaves them (almost) as they are.
    data = load_diligent_mv(bunny_dir, load_depth=False)
    turns = {}
    for consensus in (False, True):
        moved = recentre_on_masks(data.c2w, data.K, data.masks, consensus=consensus) @ data.c2w
        turns[consensus] = float(rotation_errors_deg(moved, data.c2w).mean())
    assert turns[True] < 0.5 * turns[False] and turns[False] > 0.3, turns



def test_pose_polish_recovers_orbit_and_pointing_errors_against_a_fixed_surface() -> None:
    from pmni_method.models.pose_polish import PosePolishConfig

    truth = box_dataset(num_views=4)
    init = truth.c2w.copy()
    # Camera 1 turns 3 degrees about its own centre and moves 2 % of its distance; camera 2 turns 2 degrees about
    # the object (an orbit error: its silhouette barely changes, only the normals it sees turn).
    init[1] = perturb_poses(truth.c2w[1:2], 3.0, 0.02, seed=1, reference_radius=3.0, distribution="fixed")[0]
    orbit = np.eye(4)
    orbit[:3, :3] = Rotation.from_rotvec([0.0, np.radians(2.0), 0.0]).as_matrix()
    init[2] = orbit @ init[2]
    data = with_initial_poses(truth, init)
    core = frozen_geometry_core()
    core.eval()
    refiner = PoseModel(PoseModelConfig(mode="SE3", frozen_camera=0), c2w_init=data.c2w)
    polisher = PosePolishConfig(at=(1.0,), pixels_per_view=600, iterations=8).setup(total_steps=10)
    assert polisher.due(9) and not polisher.due(8)

    def render(o: Tensor, d: Tensor, dn: Tensor) -> Tuple[Tensor, Tensor]:
        out = core.render(o, d, dn)
        return out["normal"], out["accumulation"]

    before = rotation_errors_deg(init, truth.c2w)
    stats = polisher.polish(refiner, render, RayStore(data), seed=0)
    after = rotation_errors_deg(refiner.refined_c2w(), truth.c2w)
    centre_error = np.linalg.norm(refiner.refined_c2w()[:, :3, 3] - truth.c2w[:, :3, 3], axis=-1) / 3.0
    assert stats["cameras"] == 3 and stats["residual_after"] < stats["residual_before"]
    # Measured: 3 and 2 degrees -> 0.20 and 0.38 degrees (NeuS renders the exact box with a bias of about that
    # size); camera 3, already right, ends at 0.17; centres within 0.7 % of the distance. Adam (test above) reaches
    # 0.45-0.9 from 3.
    assert after[[1, 2]].max() < 0.5, (before, after)
    assert after[3] < 0.3, (before, after)
    assert centre_error.max() < 0.01, centre_error
    assert torch.equal(refiner.left_transforms()[0], torch.eye(4))  # the gauge camera never moves
