"""Pose refinement (left-applied pypose SE(3) per camera) and the multi-view normal consistency term."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path
from typing import List, Tuple

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation
from torch import Tensor, nn

from pmni_method import cameras
from pmni_method.data.raystore import RayStore
from pmni_method.data.types import MultiViewNormalData
from pmni_method.models.consistency import (
    MultiViewConsistencyConfig,
    TrainingViews,
    consistency_loss,
    sample_normals,
    unoccluded,
)
from pmni_method.models.core import PMNICore
from pmni_method.models.pose_model import PoseModel, PoseModelConfig, recentre_on_masks
from pmni_method.models.presets import core_preset
from pmni_method.models.schedule import LRScheduleConfig
from pmni_method.models.step import StepContext, train_step
from pmni_method.poses import perturb_poses, rotation_errors_deg

# A rounded box with three different sides. Its faces are flat, so turning a camera about the object rotates the
# normals it sees by the full angle; a smooth blob (a sphere, an ellipsoid) shows such orbit errors only through its
# small departure from a sphere, far below a pixel at this resolution.
HALF_SIZES = (0.55, 0.4, 0.28)
ROUNDING = 0.12


def box_sdf(x: Tensor) -> Tensor:
    """Exact SDF [M, 1] of the rounded box centred at the origin."""
    q = x.abs() - (torch.tensor(HALF_SIZES, dtype=x.dtype, device=x.device) - ROUNDING)
    outside = q.clamp(min=0.0).norm(dim=-1, keepdim=True)
    inside = q.max(dim=-1, keepdim=True).values.clamp(max=0.0)
    return outside + inside - ROUNDING


def spheres_sdf(x: Tensor, spheres: List[Tuple[Tuple[float, float, float], float]]) -> Tensor:
    centres = torch.tensor([c for c, _ in spheres], dtype=x.dtype, device=x.device)
    radii = torch.tensor([r for _, r in spheres], dtype=x.dtype, device=x.device)
    return ((x[:, None, :] - centres[None]).norm(dim=-1) - radii[None]).min(dim=1, keepdim=True).values


class BoxField(nn.Module):
    """The exact geometry as an analytic field with the interface PMNICore renders through (no parameters)."""

    def __init__(self) -> None:
        super().__init__()
        self._levels = 1

    @property
    def num_active_levels(self) -> int:
        return self._levels

    def set_active_levels(self, num_active: int) -> None:
        self._levels = num_active

    def sdf(self, x: Tensor) -> Tensor:
        return box_sdf(x)

    def sdf_and_gradient(self, x: Tensor, create_graph: bool = True) -> Tuple[Tensor, Tensor]:
        with torch.enable_grad():
            xg = x if x.requires_grad else x.detach().requires_grad_(True)
            sdf = box_sdf(xg)
            (grad,) = torch.autograd.grad(sdf, xg, torch.ones_like(sdf), create_graph=create_graph)
        return (sdf, grad) if create_graph else (sdf.detach(), grad.detach())


def hit_box(origins: np.ndarray, directions: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """First hits [N, 3] (NaN on a miss) and outward unit normals [N, 3] of rays on the box, by sphere tracing."""
    o = torch.as_tensor(origins, dtype=torch.float64)
    d = torch.as_tensor(directions, dtype=torch.float64)
    t = torch.zeros(len(o), dtype=torch.float64)
    for _ in range(400):
        t = t + box_sdf(o + t[:, None] * d)[:, 0]
    points = (o + t[:, None] * d).requires_grad_(True)
    sdf = box_sdf(points)
    (grad,) = torch.autograd.grad(sdf.sum(), points)
    # Grazing rays creep up on the surface; 1e-6 is a thousandth of a pixel's footprint here.
    hit = sdf[:, 0].detach().abs() < 1e-6
    points = torch.where(hit[:, None], points.detach(), torch.full_like(points, float("nan")))
    return points.numpy(), (grad / grad.norm(dim=-1, keepdim=True)).numpy()


def box_dataset(num_views: int = 8, size: int = 40) -> MultiViewNormalData:
    """Exact renders of the box filling most of the image, from cameras at distance 3 (world normals, true poses).

    Views sit between the box's side faces (azimuth 45 degrees + k 360 / N) and 25 degrees above or below it, so no
    face is seen edge-on: NeuS's opacity along a ray grazing a flat face is a soft ramp, which would bias the
    silhouette, and so the poses, by a degree.
    """
    elevation = np.where(np.arange(num_views) % 2 == 0, 25.0, -25.0)
    c2w = cameras.ring_poses(num_views, radius=3.0, elevation_deg=elevation, start_azimuth_deg=45.0)
    focal = 1.8 * size
    K = np.array([[focal, 0.0, (size - 1) / 2.0], [0.0, focal, (size - 1) / 2.0], [0.0, 0.0, 1.0]])
    normals = np.zeros((num_views, size, size, 3), np.float32)
    masks = np.zeros((num_views, size, size), bool)
    for v in range(num_views):
        points, n = hit_box(*cameras.pixel_rays(K, c2w[v], size, size))
        hit = np.isfinite(points[:, 0])
        normals[v].reshape(-1, 3)[hit] = n[hit]
        masks[v].reshape(-1)[hit] = True
    return MultiViewNormalData(
        data_dir=Path("."), view_ids=list(range(num_views)), K=np.repeat(K[None], num_views, 0), c2w=c2w,
        normals=normals, masks=masks, scale_mat=np.eye(4), normal_space="camera",
    )


def with_initial_poses(data: MultiViewNormalData, c2w_init: np.ndarray) -> MultiViewNormalData:
    """The dataset as the loader gives camera-space maps under other starting poses: normals rotated with them."""
    R = c2w_init[:, :3, :3] @ np.swapaxes(data.c2w[:, :3, :3], 1, 2)
    normals = np.einsum("vij,vhwj->vhwi", R, data.normals).astype(np.float32)
    out = data.subset(list(range(data.num_views)))
    out.c2w, out.normals, out.gt_c2w = c2w_init, normals, data.c2w
    return out


def frozen_geometry_core() -> PMNICore:
    config = core_preset("pmni-fast").core
    # A fine marching step (and the sharpness it allows): a coarse one blurs normals on curved parts by ~1 degree,
    # which would show up as pose bias against the exact renders.
    step = 2.0 / 1024
    config = dataclasses.replace(
        config, sampler=dataclasses.replace(config.sampler, step_size_start=step, step_size_end=step)
    )
    core = PMNICore(config)
    core.field = BoxField()
    core.set_step(core.total_steps - 1)  # finest marching step and the late-stage loss weights
    core.update_grid()
    core.train()
    return core


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


def test_setting_poses_under_each_gauge() -> None:
    c2w = cameras.ring_poses(4, 4.0, elevation_deg=10.0)
    targets = [torch.as_tensor(perturb_poses(np.eye(4)[None], 2.0, 0.0, seed=s)[0], dtype=torch.float32) for s in (1, 2)]
    frozen = PoseModel(PoseModelConfig(mode="SE3"), c2w_init=c2w)
    frozen.set_left_transforms([0, 2], targets)
    # Camera 0 fixes the gauge and stays; camera 2 gets exactly what was asked; the others are untouched.
    assert torch.equal(frozen.left_transforms()[0], torch.eye(4))
    torch.testing.assert_close(frozen.left_transforms()[2], targets[1], atol=1e-6, rtol=0)
    assert torch.equal(frozen.left_transforms()[[1, 3]], torch.eye(4).expand(2, 4, 4))

    mean = PoseModel(PoseModelConfig(mode="SE3", gauge="mean"), c2w_init=c2w)
    # Opposite turns of two cameras have zero mean, so they are representable exactly.
    up = targets[0]
    down = torch.linalg.inv(up)
    mean.set_left_transforms([1, 3], [up, down])
    torch.testing.assert_close(mean.left_transforms()[1], up, atol=1e-6, rtol=0)
    torch.testing.assert_close(mean.left_transforms()[3], down, atol=1e-6, rtol=0)
    torch.testing.assert_close(mean.left_transforms()[[0, 2]], torch.eye(4).expand(2, 4, 4), atol=1e-6, rtol=0)
    # One camera alone is not: the rig keeps its mean, so that camera takes 3/4 of the turn and the others -1/4.
    single = PoseModel(PoseModelConfig(mode="SE3", gauge="mean"), c2w_init=c2w)
    single.set_left_transforms([2], [up])
    angles = rotation_errors_deg(single.left_transforms().detach().double().numpy(), np.eye(3)[None].repeat(4, 0))
    full = float(rotation_errors_deg(up.double().numpy(), np.eye(3)))
    np.testing.assert_allclose(angles, [full / 4, full / 4, 3 * full / 4, full / 4], rtol=1e-4)


@pytest.mark.parametrize("gauge", ["frozen-camera", "mean"])
def test_state_dict_loads_with_weights_only(gauge: str) -> None:
    c2w = cameras.ring_poses(4, 4.0)
    config = PoseModelConfig(mode="SE3", gauge=gauge)
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


def test_recentre_points_each_camera_at_the_origin() -> None:
    data = box_dataset(num_views=4, size=40)
    c2w = perturb_poses(data.c2w, 6.0, 0.0, seed=3, distribution="fixed")
    A = recentre_on_masks(c2w, data.K, data.masks)
    moved = A @ c2w
    np.testing.assert_allclose(moved[:, :3, 3], c2w[:, :3, 3], atol=1e-12)  # turned about its own centre
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


# ------------------------------------------------------------------------------------------------- end to end


def test_poses_survive_checkpoints_and_reach_viewer_export_and_eval(sphere_dir: Path, tmp_path: Path) -> None:
    """Pose-free run through nerfstudio's trainer: consistency term on, refined poses in the checkpoint, loaded
    back as ns-viewer / ns-export do, drawn through the CameraOptimizer API, exported and scored by pmni-eval."""
    import json

    from nerfstudio.cameras.camera_optimizers import CameraOptimizer
    from nerfstudio.utils.eval_utils import eval_setup

    from pmni_method import runner
    from pmni_method.cameras import Normalisation
    from pmni_method.scripts import eval as eval_cli
    from pmni_method.scripts import export as export_cli

    config = runner.scripted_config(
        "pmni-fast", sphere_dir, tmp_path, max_num_iterations=6, experiment_name="poses",
        normal_dir="normal_camera_space_GT", pose_init="noisy", exclude_views=(5,),
    )
    config.machine.device_type = "cpu"
    config.pipeline.datamanager.train_num_rays_per_batch = 128
    model_config = config.pipeline.model
    model_config.camera_optimizer.mode = "SE3"
    model_config.camera_optimizer.recentre_on_masks = True
    stages = model_config.core.loss_schedule.stages
    model_config.core.loss_schedule.stages = (*stages[:-1], dataclasses.replace(stages[-1], start=0.5, mvc=1.0))
    from pmni_method.models.pose_polish import PosePolishConfig

    model_config.pose_polish = PosePolishConfig(at=(0.5,), pixels_per_view=64, iterations=1)
    run = runner.train(config)
    polisher = run.trainer.pipeline.model.pose_polisher
    assert polisher is not None and polisher.steps == [2] and len(polisher.history) == 1  # ran once, mid-run
    assert polisher.history[0]["cameras"] == 6  # 7 training views, one frozen
    trained = run.trainer.pipeline
    refined = trained.model.refined_c2w()
    data = trained.datamanager.train_dataset.data
    assert data.normal_space == "camera" and trained.model.targets_follow_poses
    assert not np.allclose(refined, data.c2w, atol=1e-4)  # the poses moved
    refiner = trained.model.camera_optimizer.poses
    # The frozen camera stays exactly where recentring put it.
    np.testing.assert_array_equal(refined[0], (refiner.start[0] @ refiner.c2w_init[0]).double().numpy())

    # The last stage adds the consistency term (and reports how many pairs it compared).
    trained.model.train()
    ray_bundle, batch = trained.datamanager.next_train(5)
    outputs = trained.model(ray_bundle)
    metrics = trained.model.get_metrics_dict(outputs, batch)
    losses = trained.model.get_loss_dict(outputs, batch, metrics)
    assert "mvc_loss" in losses and torch.isfinite(losses["mvc_loss"]) and metrics["mvc_pairs"] > 0

    def cpu(cfg):
        cfg.machine.device_type = "cpu"
        return cfg

    _, loaded, _, _ = eval_setup(run.config_path, test_mode="inference", update_config_callback=cpu)
    np.testing.assert_array_equal(loaded.model.refined_c2w(), refined)
    optimizer = loaded.model.camera_optimizer
    assert isinstance(optimizer, CameraOptimizer)
    deltas = optimizer(torch.arange(len(refined), device=optimizer.device)).detach().double().numpy()
    original = loaded.datamanager.train_dataset.cameras.camera_to_worlds.double().numpy()
    bottom = np.tile([[[0.0, 0.0, 0.0, 1.0]]], (len(refined), 1, 1))
    drawn = np.concatenate([original, bottom], 1) @ np.concatenate([deltas, bottom], 1)
    np.testing.assert_allclose(drawn, cameras.opencv_to_nerfstudio_c2w(refined), atol=1e-5)

    mesh = tmp_path / "sphere.ply"
    assert export_cli.main(export_cli.ExportConfig(load_config=run.config_path, output=mesh, resolution=48)) == 0
    entries = json.loads((tmp_path / "sphere.poses.json").read_text())
    assert [e["view"] for e in entries] == [v for v in range(8) if v != 5] and all(e["refined"] for e in entries)
    scale_mat = trained.datamanager.train_dataparser_outputs.metadata["scale_mat"]
    np.testing.assert_allclose(
        np.array([e["c2w"] for e in entries]), Normalisation(scale_mat).c2w_to_world(refined), rtol=1e-12, atol=1e-12
    )

    report = tmp_path / "metrics.json"
    code = eval_cli.main(
        eval_cli.EvalConfig(mesh=mesh, data=sphere_dir, poses=tmp_path / "sphere.poses.json", output=report)
    )
    assert code == 0
    poses = json.loads(report.read_text())["poses"]
    assert poses["view_ids"] == [e["view"] for e in entries] and len(poses["rotation_deg"]) == 7
    assert poses["mesh_aligned_by_poses"] and json.loads(report.read_text())["alignment"] == poses["alignment"]
    # Six steps cannot undo 5 degrees of noise, but recentring on the masks already removes most of the pointing error.
    assert 0.0 < poses["rotation_deg_mean"] < 10.0


def test_pmni_eval_poses_undo_a_similarity(bunny_dir: Path, tmp_path: Path, capsys) -> None:
    """Poses and mesh moved together by a similarity (a pose-free run's own frame) score as exact after alignment;
    one view turned by 2 degrees shows up as that view's rotation error."""
    import trimesh
    from scipy.spatial.transform import Rotation

    from pmni_method.data.diligent_mv import load_diligent_mv
    from pmni_method.evaluation import evaluate
    from pmni_method.poses import similarity_matrix
    from pmni_method.scripts import eval as eval_cli
    from pmni_method.scripts.export import poses_json, write_poses_atomic

    data = load_diligent_mv(bunny_dir, load_depth=False)
    true = data.normalisation.c2w_to_world(data.c2w)
    R = Rotation.from_rotvec([0.1, 0.3, -0.2]).as_matrix()
    S = similarity_matrix(1.3, R, np.array([5.0, -3.0, 2.0]))
    estimate = np.tile(np.eye(4), (len(true), 1, 1))
    estimate[:, :3, :3] = R @ true[:, :3, :3]
    estimate[:, :3, 3] = true[:, :3, 3] @ S[:3, :3].T + S[:3, 3]
    turn = Rotation.from_rotvec(np.deg2rad(2.0) * np.array([0.0, 1.0, 0.0])).as_matrix()
    estimate[3, :3, :3] = turn @ estimate[3, :3, :3]
    ids = [v for v in data.view_ids if v != 5]  # a pose file may cover only the training views
    poses_file = write_poses_atomic(poses_json(ids, estimate[[data.view_ids.index(v) for v in ids]], True), tmp_path / "p.json")
    mesh = trimesh.load(bunny_dir / "mesh_Gt.ply", force="mesh", process=False)
    mesh.apply_transform(S)
    mesh_path = tmp_path / "moved.ply"
    mesh.export(mesh_path)

    metrics = evaluate(mesh_path, bunny_dir, poses=poses_file)
    poses = metrics["poses"]
    assert poses["view_ids"] == ids
    rotation = dict(zip(ids, poses["rotation_deg"]))
    assert abs(rotation[3] - 2.0) < 1e-6
    assert max(r for v, r in rotation.items() if v != 3) < 1e-6
    assert poses["translation_mean"] < 1e-6 * poses["orbit_radius"]
    np.testing.assert_allclose(np.array(poses["alignment"]) @ S, np.eye(4), atol=1e-8)
    assert metrics["geometry"]["chamfer"] < 1e-6 * metrics["geometry"]["gt_bbox_diagonal"]

    # Without the alignment the moved mesh is far off; both ways of aligning at once are refused with one line.
    unaligned = evaluate(mesh_path, bunny_dir, poses=poses_file, align_to_poses=False)
    assert unaligned["geometry"]["chamfer"] > 1.0 and unaligned["poses"]["rotation_deg_mean"] == poses["rotation_deg_mean"]
    alignment = tmp_path / "T.txt"
    np.savetxt(alignment, np.eye(4))
    assert eval_cli.main(eval_cli.EvalConfig(mesh=mesh_path, data=bunny_dir, poses=poses_file, alignment=alignment)) == 2
    assert eval_cli.main(eval_cli.EvalConfig(mesh=mesh_path, data=bunny_dir, poses=tmp_path / "none.json")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "--no-align-to-poses" in err[0] and "none.json" in err[1]


def test_pose_free_flag_set_turns_consistency_on_wherever_normals_train() -> None:
    from pmni_method.nerfstudio_adapter.presets import make_pose_free
    from pmni_method.pmni_config import trainer_config

    for name in ("pmni-fast", "pmni"):
        config = make_pose_free(trainer_config(name), "ring")
        assert config.pipeline.model.camera_optimizer.mode == "SE3"
        assert config.pipeline.model.camera_optimizer.gauge == "mean"  # a ring start: its frozen camera is far off
        noisy = make_pose_free(trainer_config(name), "noisy")
        assert noisy.pipeline.model.camera_optimizer.gauge == "frozen-camera"
        assert make_pose_free(trainer_config(name), "noisy", gauge="mean").pipeline.model.camera_optimizer.gauge == "mean"
        assert config.pipeline.datamanager.dataparser.pose_init == "ring"
        stages = config.pipeline.model.core.loss_schedule.stages
        assert all(stage.mvc >= 1.0 for stage in stages if stage.normal > 0), stages
        assert all(stage.mvc == 0.0 for stage in stages if stage.normal == 0), stages
    # The calibrated presets keep the consistency term for their last stage only.
    calibrated = trainer_config("pmni-fast").pipeline.model.core.loss_schedule.stages
    assert [stage.mvc > 0 for stage in calibrated] == [False, False, True]


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
