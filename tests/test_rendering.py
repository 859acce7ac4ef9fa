"""NeuS alpha, packed compositing, occupancy grid + marcher, and the core's render on empty / sphere scenes."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from pmni_method.fields.sdf_field import SDFFieldConfig
from pmni_method.models import losses as L
from pmni_method.models.core import PMNICore, PMNICoreConfig
from pmni_method.models.rendering import accumulate, neus_alpha, render_weights
from pmni_method.models.sampler import OccupancyGrid, OccupancySamplerConfig, alpha_band, sphere_near_far
from pmni_method.models.schedule import LossScheduleConfig

from helpers import dense_reference_weights


def small_core(**overrides) -> PMNICore:
    torch.manual_seed(0)
    options = dict(
        sdf_field=SDFFieldConfig(num_levels=4, log2_hashmap_size=12, base_resolution=8),
        sampler=OccupancySamplerConfig(grid_resolution=32, step_size_start=2.0 / 128, step_size_end=2.0 / 128),
        loss_schedule=LossScheduleConfig(total_steps=100),
    )
    options.update(overrides)
    return PMNICore(PMNICoreConfig(**options))


def test_neus_alpha_hand_computed() -> None:
    # Ray head-on into the surface (cos = -1): section ends at sdf 0.1 +- 0.05, s = 10.
    sdf = torch.tensor([0.1])
    grad = torch.tensor([[0.0, 0.0, -1.0]])
    d = torch.tensor([[0.0, 0.0, 1.0]])
    alpha = neus_alpha(sdf, grad, d, torch.tensor([0.1]), torch.tensor(10.0), cos_anneal_ratio=1.0)
    prev_cdf = 1 / (1 + math.exp(-10 * 0.15))
    next_cdf = 1 / (1 + math.exp(-10 * 0.05))
    expected = (prev_cdf - next_cdf + 1e-5) / (prev_cdf + 1e-5)
    assert float(alpha) == pytest.approx(expected, rel=1e-6)
    # Leaving the surface (cos > 0) contributes nothing with the exact (annealed-to-1) cosine.
    alpha_out = neus_alpha(sdf, -grad, d, torch.tensor([0.1]), torch.tensor(10.0), cos_anneal_ratio=1.0)
    assert float(alpha_out) == pytest.approx(0.0, abs=1e-4)
    # Annealing start (ratio 0) uses -(0.5 cos + 0.5)... clipped: cos = 1 still gives zero slope.
    alpha_half = neus_alpha(sdf, torch.tensor([[1.0, 0.0, 0.0]]), d, torch.tensor([0.1]), torch.tensor(10.0), 0.0)
    prev_cdf = 1 / (1 + math.exp(-10 * (0.1 + 0.5 * 0.05)))
    next_cdf = 1 / (1 + math.exp(-10 * (0.1 - 0.5 * 0.05)))
    assert float(alpha_half) == pytest.approx((prev_cdf - next_cdf + 1e-5) / (prev_cdf + 1e-5), rel=1e-6)


def packed_example(seed: int = 0, n_rays: int = 7):
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(0, 9, (n_rays,), generator=g)
    counts[2] = 0  # a ray without samples
    ray_indices = torch.repeat_interleave(torch.arange(n_rays), counts)
    alpha = torch.rand(ray_indices.shape[0], generator=g, dtype=torch.float64)
    alpha[0] = 1.0  # an opaque section
    return alpha, ray_indices, n_rays


def test_compositing_matches_dense_reference_and_sums_below_one() -> None:
    alpha, ray_indices, n_rays = packed_example()
    weights, trans = render_weights(alpha, ray_indices, n_rays, backend="torch")
    torch.testing.assert_close(weights, dense_reference_weights(alpha, ray_indices, n_rays), rtol=1e-9, atol=1e-9)
    acc = accumulate(torch.ones_like(alpha), weights, ray_indices, n_rays)
    # <= 1 up to the 1e-10 floor on 1 - alpha that keeps the log finite for opaque sections.
    assert (acc <= 1.0 + 1e-9).all() and (acc >= 0).all()
    assert float(acc[2]) == 0.0
    # Transmittance restarts at 1 on every ray.
    starts = torch.cumsum(torch.bincount(ray_indices, minlength=n_rays), 0) - torch.bincount(ray_indices, minlength=n_rays)
    has = torch.bincount(ray_indices, minlength=n_rays) > 0
    assert torch.allclose(trans[starts[has]], torch.ones(int(has.sum()), dtype=trans.dtype))


def test_compositing_gradients_match_dense_reference() -> None:
    alpha, ray_indices, n_rays = packed_example(1)
    alpha = (alpha * 0.9).requires_grad_(True)  # away from the clamp at alpha = 1
    coeff = torch.randn(alpha.shape[0], dtype=alpha.dtype)
    (g1,) = torch.autograd.grad((render_weights(alpha, ray_indices, n_rays, backend="torch")[0] * coeff).sum(), alpha)
    (g2,) = torch.autograd.grad((dense_reference_weights(alpha, ray_indices, n_rays) * coeff).sum(), alpha)
    torch.testing.assert_close(g1, g2, rtol=1e-8, atol=1e-10)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="nerfacc's compositing and marcher need CUDA; none here")
def test_cpu_and_cuda_paths_agree() -> None:
    alpha, ray_indices, n_rays = packed_example(2)
    alpha = alpha.float()
    w_cpu, _ = render_weights(alpha, ray_indices, n_rays, backend="torch")
    w_gpu, _ = render_weights(alpha.cuda(), ray_indices.cuda(), n_rays, backend="nerfacc")
    torch.testing.assert_close(w_cpu, w_gpu.cpu(), rtol=1e-5, atol=1e-6)
    # Marchers: same grid, same rays, no jitter; renders of a sphere SDF must agree closely.
    core = small_core()
    core.update_grid()
    o = torch.tensor([[0.0, 0.0, -3.0]]).repeat(64, 1)
    d = torch.nn.functional.normalize(torch.randn(64, 3) * 0.1 + torch.tensor([0.0, 0.0, 1.0]), dim=-1)
    core.eval()
    with torch.no_grad():
        cpu = core.render(o, d)
        core_gpu = core.cuda()
        gpu = core_gpu.render(o.cuda(), d.cuda())
    torch.testing.assert_close(cpu["accumulation"], gpu["accumulation"].cpu(), atol=2e-2, rtol=0)
    torch.testing.assert_close(cpu["depth"], gpu["depth"].cpu(), atol=2e-2, rtol=0)


def test_sphere_near_far() -> None:
    o = torch.tensor([[0.0, 0.0, -3.0], [0.0, 2.0, -3.0], [0.0, 0.0, 0.0]])
    d = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    near, far = sphere_near_far(o, d, 1.0)
    assert near[0] == pytest.approx(2.0) and far[0] == pytest.approx(4.0)
    assert not far[1] > near[1]  # miss
    assert near[2] == 0.0 and far[2] == pytest.approx(1.0)  # origin inside


def test_occupancy_grid_follows_a_sphere_sdf() -> None:
    cfg = OccupancySamplerConfig(grid_resolution=32, coarse_factor=4, lipschitz_bound=1.0)
    grid = OccupancyGrid(cfg)
    sdf_fn = lambda x: x.norm(dim=-1, keepdim=True) - 0.5  # noqa: E731
    grid.update(sdf_fn, band=0.0)
    centres = OccupancyGrid.cell_centres(32)
    dist = (centres.norm(dim=-1) - 0.5).abs()
    occ = grid.binaries.view(-1)
    half_diag = math.sqrt(3.0) / 32
    assert occ[dist < 0.5 * half_diag].all()  # cells the surface passes through
    assert not occ[dist > half_diag + 1e-6].any()
    # The coarse pre-pass must not change the answer.
    fine_only = OccupancyGrid(OccupancySamplerConfig(grid_resolution=32, coarse_factor=1, lipschitz_bound=1.0))
    fine_only.update(sdf_fn, band=0.0)
    assert torch.equal(fine_only.binaries, grid.binaries)
    assert alpha_band(0.01, 100.0, 1e-2) == pytest.approx(math.log(100.0) / 100.0)


def test_marcher_samples_only_occupied_cells_sorted() -> None:
    grid = OccupancyGrid(OccupancySamplerConfig(grid_resolution=16))
    grid.update(lambda x: x.norm(dim=-1, keepdim=True) - 0.5, band=0.05)
    o = torch.randn(50, 3) * 0.1 + torch.tensor([0.0, 0.0, -2.5])
    d = torch.nn.functional.normalize(-o + torch.randn(50, 3) * 0.3, dim=-1)
    near, far = sphere_near_far(o, d)
    ri, ts, te = grid.march(o, d, near, far, 0.01, stratified=True)
    assert ri.numel() > 0
    mid = o[ri] + d[ri] * (0.5 * (ts + te))[:, None]
    assert grid.occupied(mid).all()
    assert (ri[1:] >= ri[:-1]).all()
    same = ri[1:] == ri[:-1]
    assert (ts[1:][same] > ts[:-1][same]).all()
    assert (te <= far[ri] + 1e-6).all() and (ts >= near[ri] - 1e-6).all()


def test_interior_cells_lie_deeper_than_the_band_and_match_without_the_coarse_pass() -> None:
    sdf_fn = lambda x: x.norm(dim=-1, keepdim=True) - 0.6  # noqa: E731
    grid = OccupancyGrid(OccupancySamplerConfig(grid_resolution=32, coarse_factor=4, lipschitz_bound=1.0))
    grid.update(sdf_fn, band=0.05)
    centres = OccupancyGrid.cell_centres(32)
    sdf = centres.norm(dim=-1) - 0.6
    interior = grid.interior.view(-1)
    margin = math.sqrt(3.0) / 32 + 0.05
    assert interior.any() and (sdf[interior] < -margin + 1e-6).all()
    assert not (interior & grid.binaries.view(-1)).any()  # an occupied cell is never interior
    assert interior[sdf < -margin - 0.05].all()  # cells well inside are found (also through the coarse pass)
    fine_only = OccupancyGrid(OccupancySamplerConfig(grid_resolution=32, coarse_factor=1, lipschitz_bound=1.0))
    fine_only.update(sdf_fn, band=0.05)
    assert torch.equal(fine_only.interior, grid.interior)


def test_samples_behind_the_interior_are_cut_without_changing_the_render() -> None:
    """Rays through the initial sphere: the far side's samples go, what is rendered stays."""
    torch.manual_seed(0)
    o = torch.randn(64, 3) * 0.05 + torch.tensor([0.0, 0.0, -3.0])
    d = torch.nn.functional.normalize(torch.randn(64, 3) * 0.06 + torch.tensor([0.0, 0.0, 1.0]), dim=-1)
    outs = {}
    for cut in (False, True):
        core = small_core(
            sampler=OccupancySamplerConfig(
                grid_resolution=32, step_size_start=2.0 / 256, step_size_end=2.0 / 256, terminate_inside=cut
            )
        )
        core.update_grid()
        core.eval()
        outs[cut] = core.render(o, d, torch.ones(64, 1))
        if cut:
            near, far = sphere_near_far(o, d)
            ri, ts, te = core.grid.march(o, d, near, far, core.step_size(), stratified=False)
            t_cut = core.grid.first_interior(o, d, near, far)
            assert torch.isfinite(t_cut).sum() > 32 and (ts < t_cut[ri]).all()
            full = OccupancyGrid(dataclasses.replace(core.grid.config, terminate_inside=False))
            full.load_state_dict(core.grid.state_dict())
            ri_all, ts_all, _ = full.march(o, d, near, far, core.step_size(), stratified=False)
            kept = ts_all < t_cut[ri_all]
            assert torch.equal(ri_all[kept], ri) and torch.equal(ts_all[kept], ts)  # a prefix of every ray's samples
    assert outs[True]["num_samples"].sum() < 0.7 * outs[False]["num_samples"].sum()  # measured 0.58
    hit = outs[False]["accumulation"][:, 0] > 0.5
    assert hit.sum() > 32
    for key, tol in (("accumulation", 1e-3), ("depth", 1e-3), ("normal", 1e-3)):
        assert (outs[True][key][hit] - outs[False][key][hit]).abs().max() < tol, key


@pytest.mark.parametrize("case", ["miss_sphere", "empty_grid"])
def test_rays_without_samples_give_zeros_and_finite_losses(case: str) -> None:
    core = small_core()
    core.train()
    n = 8
    if case == "miss_sphere":
        o = torch.tensor([[0.0, 3.0, -3.0]]).repeat(n, 1)
        d = torch.tensor([[0.0, 0.0, 1.0]]).repeat(n, 1)
    else:
        core.grid.binaries.zero_()
        o = torch.tensor([[0.0, 0.0, -3.0]]).repeat(n, 1)
        d = torch.tensor([[0.0, 0.0, 1.0]]).repeat(n, 1)
    out = core.render(o, d, torch.ones(n, 1))
    for key in ("normal", "accumulation", "depth", "depth_z", "rgb", "normal_vis"):
        assert torch.isfinite(out[key]).all(), key
    assert (out["accumulation"] == 0).all() and (out["normal"] == 0).all() and (out["depth"] == 0).all()
    batch = {
        "normal": torch.tensor([[0.0, 0.0, -1.0]]).repeat(n, 1),
        "fg_mask": torch.ones(n, 1),
        "depth": torch.ones(n, 1),
        "indices": torch.zeros(n, 3, dtype=torch.long),
    }
    losses = core.losses(out, batch, step=99)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()  # the graph stays connected
    for p in core.parameters():
        assert p.grad is None or torch.isfinite(p.grad).all()


def test_render_of_initial_sphere() -> None:
    """Geometric init is a sphere of radius 0.5: head-on rays see depth ~2.5 and normal ~(0, 0, -1)."""
    core = small_core(inv_s_min=400.0, inv_s_step_factor=8.0, inv_s_floor_factor=8.0)
    core.update_grid()
    core.eval()
    n = 16
    o = torch.tensor([[0.0, 0.0, -3.0]]).repeat(n, 1)
    d = torch.nn.functional.normalize(torch.randn(n, 3) * 0.02 + torch.tensor([0.0, 0.0, 1.0]), dim=-1)
    with torch.no_grad():  # gradients of the SDF must still be computed
        out = core.render(o, d, directions_norm=torch.full((n, 1), 2.0))
    assert (out["accumulation"] > 0.97).all()
    assert out["depth"].sub(2.5).abs().max() < 0.06
    torch.testing.assert_close(out["depth_z"], out["depth"] / 2.0)
    hit = o + d * out["depth"]
    cos = (torch.nn.functional.normalize(out["normal"], dim=-1) * torch.nn.functional.normalize(hit, dim=-1)).sum(-1)
    # A one-hidden-layer init is piecewise almost linear: its normals are slightly faceted.
    assert (cos > 0.93).all() and cos.mean() > 0.97
    assert ((out["rgb"] >= 0) & (out["rgb"] <= 1)).all() and ((out["normal_vis"] >= 0) & (out["normal_vis"] <= 1)).all()


def _sharp_sphere_core_and_rays(n: int):
    """A training-mode core with a sharp opacity band and surface normal supervision, and ``n`` rays from (0, 0, -3)
    within a few degrees of the initial sphere's centre."""
    core = small_core(surface_normal_weight=0.5, inv_s_min=400.0, inv_s_step_factor=8.0, inv_s_floor_factor=8.0)
    core.update_grid()
    core.train()
    o = torch.tensor([[0.0, 0.0, -3.0]]).repeat(n, 1)
    d = torch.nn.functional.normalize(torch.randn(n, 3) * 0.05 + torch.tensor([0.0, 0.0, 1.0]), dim=-1)
    return core, o, d


def test_surface_normal_loss_supervises_the_gradient_at_the_zero_crossing() -> None:
    """Training rays that cross the level set get its gradient (with graph); the loss against the true sphere
    normals is small, against flipped ones large, and reaches the field's parameters."""
    core, o, d = _sharp_sphere_core_and_rays(32)
    n = 32
    d[:4] = torch.nn.functional.normalize(torch.tensor([0.5, 0.0, 1.0]), dim=-1)  # misses the sphere
    out = core.render(o, d)
    rays = out["samples"]["surface_rays"]
    assert 20 <= rays.numel() <= n - 4 and (rays >= 4).all()
    # The true normal of the sphere of radius 0.5 where each ray enters it.
    b = (o * d).sum(-1)
    t = -b - torch.sqrt((b * b - ((o * o).sum(-1) - 0.25)).clamp(min=0))
    true = torch.nn.functional.normalize(o + d * t[:, None], dim=-1)
    fg = torch.ones(n, 1)
    fg[:4] = 0
    batch = {"normal": true, "fg_mask": fg}
    good = core.losses(out, batch)["surface_normal_loss"]
    bad = core.losses(out, {"normal": -true, "fg_mask": fg})["surface_normal_loss"]
    weights = core.loss_weights(False)
    assert float(good) < 0.05 * weights["normal"] * 0.5 and float(bad) > 1.0 * weights["normal"] * 0.5
    bad.backward()
    # The geometric init gives the hash features zero weight, so the gradient shows in the MLP first.
    grad = core.field.layers[0].weight.grad
    assert grad is not None and float(grad.abs().sum()) > 0
    assert "surface_normal_loss" not in small_core().losses(small_core().render(o, d), batch)


def test_boundary_bands_leave_boundary_pixels_out_of_their_losses() -> None:
    """``normal_boundary_px`` drops foreground rays near a mask boundary from both normal losses (the rest score
    as they would alone), ``mask_boundary_px`` drops them from the mask loss; the other terms stay."""
    core, o, d = _sharp_sphere_core_and_rays(16)
    n = 16
    out = core.render(o, d)
    target = torch.nn.functional.normalize(torch.randn(n, 3), dim=-1)
    near = torch.zeros(n, dtype=torch.bool)
    near[:6] = True
    fg = torch.ones(n, 1)
    batch = {"normal": target, "fg_mask": fg, "mask_boundary_px": torch.where(near, 1.0, 5.0)[:, None]}

    base = dataclasses.replace(core.config, mask_boundary_px=0.0, normal_boundary_px=0.0)

    def losses(**settings: float) -> dict:
        core.config = dataclasses.replace(base, **settings)
        return core.losses(out, batch)

    plain = losses()
    banded = losses(normal_boundary_px=2.0)
    w = core.loss_weights(False)["normal"]
    torch.testing.assert_close(banded["normal_loss"], w * L.normal_loss(out["normal"][~near], target[~near], fg[~near]))
    hit = out["samples"]["surface_rays"]
    grad = out["samples"]["surface_gradients"]
    keep = ~near[hit]
    assert 0 < int(keep.sum()) < hit.numel()
    unit = torch.nn.functional.normalize(grad[keep], dim=-1)
    torch.testing.assert_close(banded["surface_normal_loss"], w * 0.5 * L.normal_loss(unit, target[hit][keep], fg[hit][keep]))
    for key in ("normal_loss", "surface_normal_loss"):
        assert abs(float(banded[key]) - float(plain[key])) > 1e-3 * float(plain[key])
    torch.testing.assert_close(banded["mask_loss"], plain["mask_loss"])
    # A band narrower than every pixel's distance changes nothing.
    torch.testing.assert_close(losses(normal_boundary_px=0.5)["normal_loss"], plain["normal_loss"])
    masked = losses(mask_boundary_px=2.0)
    torch.testing.assert_close(masked["normal_loss"], plain["normal_loss"])
    torch.testing.assert_close(masked["mask_loss"], core.loss_weights(False)["mask"] * L.mask_loss(
        out["accumulation"][~near], fg[~near], core.config.mask_eps))
