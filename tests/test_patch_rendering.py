"""SuperNormal-style patch rendering: finite-difference gradients, sphere normals, poses, patch batches, training."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from pmni_method import cameras
from pmni_method.cameras_torch import pixel_directions, unproject
from pmni_method.data.diligent_mv import load_diligent_mv
from pmni_method.data.raystore import RayStore
from pmni_method.fields.sdf_field import SDFFieldConfig
from pmni_method.models.core import PMNICore, PMNICoreConfig, _solve_directional, normal_angular_error_deg
from pmni_method.models.pose_model import PoseModel, PoseModelConfig
from pmni_method.models.presets import core_preset, with_iterations
from pmni_method.models.sampler import OccupancyGrid, OccupancySamplerConfig, sphere_near_far
from pmni_method.models.schedule import LossScheduleConfig
from pmni_method.models.step import StepContext, render_rays, train_step
from pmni_method.train_core import build_run, optimise

from helpers import make_sphere_dataset

RADIUS = 0.5
FOCAL, SIZE = 200.0, 64


def sphere_core(exact: bool = True, **overrides) -> PMNICore:
    """A small core whose SDF is the exact sphere |x| - 0.5 (``exact``) or its geometric init (a near-sphere)."""
    torch.manual_seed(0)
    options = dict(
        sdf_field=SDFFieldConfig(num_levels=4, log2_hashmap_size=12, base_resolution=8, sphere_init_radius=RADIUS),
        sampler=OccupancySamplerConfig(grid_resolution=32, step_size_start=2.0 / 128, step_size_end=2.0 / 128),
        loss_schedule=LossScheduleConfig(total_steps=100),
        inv_s_min=400.0,
        inv_s_step_factor=100.0,
        gradient_method="patch",
    )
    options.update(overrides)
    core = PMNICore(PMNICoreConfig(**options))
    if exact:
        # Only the patch path and the grid go through field.sdf; the analytic path keeps the network.
        core.field.sdf = lambda x: x.norm(dim=-1, keepdim=True) - RADIUS
    core.update_grid()
    return core.eval()


def camera_c2w(num: int = 2) -> torch.Tensor:
    """OpenCV cameras on a ring at distance 2.5 looking at the origin, [num, 4, 4]."""
    return torch.as_tensor(cameras.ring_poses(num, radius=2.5, elevation_deg=15.0, target=np.zeros(3)), dtype=torch.float32)


def patch_rays(c2w: torch.Tensor, cam: int, k: int = 3, stride: int = 3):
    """Rays of k x k patches tiling a SIZE x SIZE image of camera ``cam`` (patch-major, row-major)."""
    lo = (k - 1) // 2
    centres = torch.arange(lo, SIZE - k + lo + 1, stride)
    rows, cols = torch.meshgrid(centres, centres, indexing="ij")
    off = torch.arange(k) - lo
    rr = (rows.reshape(-1, 1, 1) + off[None, :, None]).expand(-1, k, k).reshape(-1)
    cc = (cols.reshape(-1, 1, 1) + off[None, None, :]).expand(-1, k, k).reshape(-1)
    K = torch.tensor([[FOCAL, 0.0, (SIZE - 1) / 2], [0.0, FOCAL, (SIZE - 1) / 2], [0.0, 0.0, 1.0]])
    n = rr.numel()
    dirs_cam, dnorm = pixel_directions(K.expand(n, 3, 3), rr, cc)
    origins, dirs = unproject(c2w[cam].expand(n, 4, 4), dirs_cam)
    return origins.contiguous(), dirs, dnorm, torch.full((n,), cam, dtype=torch.long)


def sphere_hits(origins: torch.Tensor, dirs: torch.Tensor):
    b = (origins * dirs).sum(-1)
    disc = b * b - ((origins * origins).sum(-1) - RADIUS**2)
    t = -b - disc.clamp(min=0).sqrt()
    return disc > 0, (origins + dirs * t[:, None]) / RADIUS


def test_cramer_solve_matches_linalg() -> None:
    g = torch.Generator().manual_seed(0)
    e = torch.randn(200, 3, 3, generator=g, dtype=torch.float64)
    truth = torch.randn(200, 3, generator=g, dtype=torch.float64)
    b = torch.einsum("nij,nj->ni", e, truth)
    got = _solve_directional(e[:, 0], e[:, 1], e[:, 2], b[:, 0], b[:, 1], b[:, 2])
    assert torch.allclose(got, truth, atol=1e-8)


@pytest.mark.parametrize("k", [2, 3, 5])
def test_patch_gradient_matches_analytic_sphere_gradient(k: int) -> None:
    """Every pixel's finite-difference estimate at its own sample points is the sphere's true gradient x / |x|."""
    core = sphere_core()
    o, d, dn, _ = patch_rays(camera_c2w(), 0, k=k, stride=k)
    with torch.no_grad():
        out = core.render(o, d, dn, patch_size=k)
    samples = out["samples"]
    ray = samples["ray_indices"]
    x = o[ray] + d[ray] * samples["t_mid"][:, None]
    grad = samples["gradients"]
    assert grad.shape[0] > 1000
    err = normal_angular_error_deg(grad, x)
    # k = 2 has only one-sided (first-order) differences; k >= 3 is second order everywhere.
    assert float(err.max()) < (2.0 if k == 2 else 0.2)
    assert float((grad.norm(dim=-1) - 1.0).abs().max()) < (0.03 if k == 2 else 0.005)
    # The SDF at the section midpoint is the mean of the section ends: within the chord error of the sphere.
    assert float((samples["sdf"][:, 0] - (x.norm(dim=-1) - RADIUS)).abs().max()) < 1e-3


def test_patch_render_of_a_sphere_gives_its_normals() -> None:
    core = sphere_core()
    o, d, dn, _ = patch_rays(camera_c2w(), 1)
    with torch.no_grad():
        out = core.render(o, d, dn, patch_size=3)
    hit, normal = sphere_hits(o, d)
    opaque = hit & (out["accumulation"][:, 0] > 0.99)
    assert int(opaque.sum()) > 0.8 * int(hit.sum()) > 1000
    assert float(normal_angular_error_deg(out["normal"][opaque], normal[opaque]).max()) < 1.0
    # Pixels far from the sphere stay empty (neighbours of hits are sampled, but see no surface).
    far_miss = ~hit & (out["depth"][:, 0] == 0)
    assert float(out["accumulation"][~hit & far_miss].max()) < 1e-3 if bool(far_miss.any()) else True
    depth_err = (out["depth"][opaque, 0] - ((normal[opaque] * RADIUS - o[opaque]) * d[opaque]).sum(-1)).abs()
    assert float(depth_err.max()) < 0.02


def test_patch_and_analytic_render_agree_on_the_network_field() -> None:
    """Same network, same rays: the patch path's normals and opacity match the analytic path's."""
    core = sphere_core(exact=False)
    o, d, dn, _ = patch_rays(camera_c2w(), 0, stride=5)
    with torch.no_grad():
        patch = core.render(o, d, dn, patch_size=3)
        analytic = core.render(o, d, dn)
    both = (patch["accumulation"][:, 0] > 0.99) & (analytic["accumulation"][:, 0] > 0.99)
    assert int(both.sum()) > 500
    assert float(normal_angular_error_deg(patch["normal"][both], analytic["normal"][both]).mean()) < 0.5
    assert float((patch["accumulation"] - analytic["accumulation"]).abs().mean()) < 0.02


def test_union_marching_samples_a_patch_whose_centre_misses() -> None:
    grid = OccupancyGrid(OccupancySamplerConfig(grid_resolution=16, terminate_inside=False))
    grid.binaries.zero_()
    grid.binaries[10, 8, 8] = True  # one cell at x in [0.25, 0.375]
    o = torch.tensor([[0.0, 0.0, -2.0]]).repeat(4, 1)
    # Only the last two rays cross the cell (x = 0.3 at z = 0.06); the first one plays the patch centre.
    d = torch.tensor([[0.0, 0.03, 1.0], [0.0, 0.04, 1.0], [0.15, 0.03, 1.0], [0.15, 0.04, 1.0]])
    d = d / d.norm(dim=-1, keepdim=True)
    near, far = sphere_near_far(o, d)
    centre_only = grid.march(o[:1], d[:1], near[:1], far[:1], 0.02, stratified=False)
    patch_idx, t0, t1 = grid.march_patches(o[None], d[None], near[None], far[None], 0.02, stratified=False)
    assert centre_only[0].numel() == 0
    assert patch_idx.numel() > 0 and bool((patch_idx == 0).all())
    # Only steps where some ray of the patch is inside the occupied cell.
    mid = 0.5 * (t0 + t1)
    inside = grid.occupied((o[None] + mid[:, None, None] * d[None]).reshape(-1, 3)).view(-1, 4)
    assert bool(inside.any(dim=1).all())


def test_pose_corrections_move_every_patch_ray_and_get_gradients() -> None:
    core = sphere_core(exact=False).train()
    c2w = camera_c2w(3)
    poses = PoseModel(PoseModelConfig(mode="SE3", gauge="frozen-camera"), c2w_init=c2w)
    with torch.no_grad():
        poses.xi.data[1] = torch.tensor([0.01, -0.02, 0.0, 0.05, -0.03, 0.04])
    o, d, dn, cam = patch_rays(c2w, 1, stride=6)
    rays = {"origins": o, "directions": d, "directions_norm": dn, "camera_indices": cam}
    context = StepContext(poses=poses)
    torch.manual_seed(1)
    out = render_rays(core, rays, context)
    corrected = out["train_rays"]
    # Every pixel's ray is the current pose's ray (not only the patch centres, nor offsets kept from the start).
    with torch.no_grad():
        o_ref, d_ref, _ = poses.correct_rays(o, d, cam)
    assert float((corrected["directions"] - d).norm(dim=-1).min()) > 1e-3
    assert torch.allclose(corrected["directions"], d_ref, atol=1e-6)
    assert torch.allclose(corrected["origins"], o_ref, atol=1e-6)
    # The same corrected rays rendered analytically give the same normals: the finite-difference directions are
    # the current rays' (built from uncorrected neighbours they would be off by the ~4 degree correction).
    core.eval()
    with torch.no_grad():
        analytic = core.render(corrected["origins"].detach(), corrected["directions"].detach(), dn)
        patch = core.render(corrected["origins"].detach(), corrected["directions"].detach(), dn, patch_size=3)
    both = (patch["accumulation"][:, 0] > 0.99) & (analytic["accumulation"][:, 0] > 0.99)
    assert int(both.sum()) > 200
    assert float(normal_angular_error_deg(patch["normal"][both], analytic["normal"][both]).max()) < 2.0
    # Gradients reach the moving camera's correction through the patch path.
    loss = (out["normal"] - torch.tensor([0.0, 0.0, -1.0])).pow(2).sum() + out["accumulation"].sum()
    loss.backward()
    grad = poses.xi.grad
    assert grad is not None and bool(torch.isfinite(grad).all())
    assert float(grad[1].abs().sum()) > 0 and float(grad[0].abs().sum()) == 0.0  # camera 0 is frozen


def test_patch_normals_follow_a_large_pose_correction() -> None:
    """A correction of 15-20 degrees about the origin leaves the exact sphere where it is: rendered from the
    current pose, the patch normals must still be the sphere's normals where the corrected rays hit it."""
    core = sphere_core().train()
    c2w = camera_c2w(2)
    poses = PoseModel(PoseModelConfig(mode="SE3", gauge="frozen-camera"), c2w_init=c2w)
    with torch.no_grad():
        poses.xi.data[1] = torch.tensor([0.0, 0.0, 0.0, 0.2, 0.25, -0.1])
    o, d, dn, cam = patch_rays(c2w, 1, stride=4)
    torch.manual_seed(2)
    with torch.no_grad():
        out = render_rays(core, {"origins": o, "directions": d, "directions_norm": dn, "camera_indices": cam},
                          StepContext(poses=poses))
    rays = out["train_rays"]
    turned = torch.rad2deg(torch.acos((rays["directions"] * d).sum(-1).clamp(-1, 1)))
    assert float(turned.min()) > 10.0
    hit, normal = sphere_hits(rays["origins"], rays["directions"])
    opaque = hit & (out["accumulation"][:, 0] > 0.99)
    assert int(opaque.sum()) > 300
    assert float(normal_angular_error_deg(out["normal"][opaque], normal[opaque]).max()) < 1.0


@pytest.fixture(scope="module")
def sphere_data(tmp_path_factory: pytest.TempPathFactory):
    root = make_sphere_dataset(tmp_path_factory.mktemp("patch") / "sphere", num_views=3)
    return load_diligent_mv(root)


@pytest.mark.parametrize("k", [2, 3])
def test_patch_batches_are_one_view_and_inside_the_image(sphere_data, k: int) -> None:
    store = RayStore(sphere_data, seed=0, patch_size=k)
    batch = store.sample(64 * k * k)
    idx = batch["indices"].view(-1, k, k, 3)
    assert idx.shape[0] == 64
    assert bool((idx[..., 0] == idx[:, :1, :1, 0]).all())  # one view per patch
    rows, cols = idx[..., 1], idx[..., 2]
    assert bool((rows[:, 1:, :] - rows[:, :-1, :] == 1).all()) and bool((rows[:, :, 1:] == rows[:, :, :1]).all())
    assert bool((cols[:, :, 1:] - cols[:, :, :-1] == 1).all()) and bool((cols[:, 1:, :] == cols[:, :1, :]).all())
    assert int(rows.min()) >= 0 and int(rows.max()) < store.height
    assert int(cols.min()) >= 0 and int(cols.max()) < store.width
    # Targets belong to the pixels: the patch's normals are the store's maps at those pixels.
    flat = (idx[..., 0] * store.height + idx[..., 1]) * store.width + idx[..., 2]
    assert torch.equal(batch["normal"], store.normals[flat.reshape(-1)])
    # Half the patches are anchored inside the masks.
    anchor = batch["fg_mask"].view(-1, k, k)[:, (k - 1) // 2, (k - 1) // 2]
    assert float(anchor.mean()) >= 0.5
    # Anchors at the four corners of every view are moved inward, and still cover their corner pixel.
    h, w, hw = store.height, store.width, store.height * store.width
    corners = torch.tensor([v * hw + r * w + c for v in range(store.num_views) for r in (0, h - 1) for c in (0, w - 1)])
    p = store.patch_indices(corners, k).view(-1, k * k)
    assert bool((p // hw == (corners // hw)[:, None]).all())
    assert bool((p == corners[:, None]).any(dim=1).all())
    rows_c, cols_c = (p % hw) // w, p % w
    assert bool(((rows_c.max(1).values - rows_c.min(1).values) == k - 1).all())
    assert bool(((cols_c.max(1).values - cols_c.min(1).values) == k - 1).all())


def test_tiny_patch_training_runs_and_refuses_loose_rays(sphere_data) -> None:
    preset = with_iterations(core_preset("pmni-fast"), 6)
    preset.train_num_rays_per_batch = 9 * 24
    preset.core.gradient_method = "patch"
    # A small field and grid: this checks the wiring, not the preset's capacity.
    preset.core.sdf_field = dataclasses.replace(preset.core.sdf_field, num_levels=4, log2_hashmap_size=12)
    preset.core.sampler = dataclasses.replace(preset.core.sampler, grid_resolution=32)
    run = build_run(preset, sphere_data, "cpu", refine_poses=True, gauge="frozen-camera")
    assert run.store.patch_size == 3
    before = [p.detach().clone() for p in run.core.field.layers.parameters()]
    for step in range(3):
        losses = optimise(run, step)
        assert "skipped" not in losses and all(math.isfinite(v) for v in losses.values())
    assert any(not torch.equal(a, b) for a, b in zip(before, run.core.field.layers.parameters()))
    assert float(run.context.poses.xi.detach()[1:].abs().sum()) > 0
    # Single-pixel batches cannot be differenced as patches.
    loose = RayStore(sphere_data, seed=0).sample(9 * 4 + 1)
    run.core.train()
    with pytest.raises(ValueError, match="patch"):
        train_step(run.core, loose, run.context)
