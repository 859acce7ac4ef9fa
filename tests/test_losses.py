"""Loss terms and the staged schedule."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pmni_method.models import losses as L
from pmni_method.models.schedule import LossScheduleConfig, LRScheduleConfig, log_interp, pmni_diligent_stages


def test_depth_scale_closed_form_recovers_per_view_scales() -> None:
    g = torch.Generator().manual_seed(0)
    n = 600
    view = torch.randint(0, 3, (n,), generator=g)
    z_true = 2.0 + torch.rand(n, generator=g)
    true_scale = torch.tensor([0.5, 2.0, 7.0])
    target = z_true / true_scale[view]  # depth files carry an unknown per-view scale
    fg = torch.ones(n, 1)
    scale, ok = L.per_view_depth_scale(z_true, target, view, torch.ones(n, dtype=torch.bool))
    assert ok.all()
    torch.testing.assert_close(scale, true_scale[view])
    loss, _ = L.depth_loss(z_true[:, None], target[:, None], fg, view)
    assert float(loss) == pytest.approx(0.0, abs=1e-5)
    # A wrong render gives a positive loss with a gradient toward the scaled target.
    z_r = (z_true * 1.1).requires_grad_(True)
    loss, _ = L.depth_loss(z_r[:, None], target[:, None], fg, view)
    loss.backward()
    assert float(loss.detach()) > 0 and torch.isfinite(z_r.grad).all()


def test_depth_loss_uses_only_masked_valid_pixels_per_view() -> None:
    z = torch.tensor([1.0, 2.0, 3.0, 4.0, 100.0, 5.0])
    target = torch.tensor([0.5, 1.0, 1.5, 2.0, 1.0, 0.0])  # pixel 4 outside mask, pixel 5 unknown depth
    fg = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0, 1.0])[:, None]
    view = torch.zeros(6, dtype=torch.long)
    loss, scale = L.depth_loss(z[:, None], target[:, None], fg, view, min_pixels=1)
    assert float(loss) == pytest.approx(0.0, abs=1e-6)
    assert float(scale[0]) == pytest.approx(2.0)


@pytest.mark.parametrize("case", ["no_mask", "no_depth", "too_few"])
def test_depth_loss_guarded_without_valid_pixels(case: str) -> None:
    n = 5
    z = torch.rand(n, 1, requires_grad=True)
    target = torch.rand(n, 1) + 0.5
    fg = torch.ones(n, 1)
    if case == "no_mask":
        fg = torch.zeros(n, 1)
    elif case == "no_depth":
        target = torch.zeros(n, 1)
    loss, _ = L.depth_loss(z, target, fg, torch.arange(n), min_pixels=2 if case == "too_few" else 1)
    assert torch.isfinite(loss) and float(loss.detach()) == 0.0
    loss.backward()
    assert torch.isfinite(z.grad).all()


def test_normal_and_mask_losses() -> None:
    pred = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    target = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    fg = torch.tensor([[1.0], [1.0], [0.0]])
    assert float(L.normal_loss(pred, target, fg, "l2")) == pytest.approx(1.0)  # (0 + 2) / 2
    assert float(L.normal_loss(pred, target, fg, "l1")) == pytest.approx(1.0)  # (0 + 2) / 2
    none = L.normal_loss(pred, target, torch.zeros(3, 1))
    assert float(none) == 0.0
    acc = torch.tensor([[1.0], [0.0], [0.5]])
    fg = torch.tensor([[1.0], [0.0], [1.0]])
    expected = -(math.log(1 - 1e-3) + math.log(1 - 1e-3) + math.log(0.5)) / 3
    assert float(L.mask_loss(acc, fg)) == pytest.approx(expected, rel=1e-5)
    assert float(L.eikonal_loss(torch.tensor([[3.0, 4.0, 0.0]]))) == pytest.approx(16.0)
    assert float(L.eikonal_loss(torch.zeros(0, 3))) == 0.0


def test_pmni_stage_schedule_scales_with_run_length() -> None:
    sched = LossScheduleConfig(stages=pmni_diligent_stages(), total_steps=30000)
    # PMNI's third stage adds multi-view normal consistency.
    assert sched.weights_at(0, True) == {"normal": 0.0, "depth": 0.1, "mask": 3.0, "eikonal": 1.0, "mvc": 0.0}
    assert sched.weights_at(10000, True) == {"normal": 1.0, "depth": 1.0, "mask": 5.0, "eikonal": 1.0, "mvc": 0.0}
    assert sched.weights_at(25000, True) == {"normal": 1.0, "depth": 0.0, "mask": 5.0, "eikonal": 1.0, "mvc": 1.0}
    short = LossScheduleConfig(stages=pmni_diligent_stages(), total_steps=300)
    assert short.weights_at(99, True)["normal"] == 0.0 and short.weights_at(100, True)["normal"] == 1.0
    # Without depth: depth off everywhere, and the depth-only first stage falls back to normals.
    assert sched.weights_at(0, False) == {"normal": 1.0, "depth": 0.0, "mask": 3.0, "eikonal": 1.0, "mvc": 0.0}


def test_lr_schedule_returns_python_floats() -> None:
    sched = LRScheduleConfig(warmup_steps=10, warmup_start_factor=0.1, final_factor=0.05, total_steps=100)
    values = [sched.factor(s) for s in (0, 5, 10, 55, 100, 200)]
    assert all(type(v) is float for v in values)
    assert values[0] == pytest.approx(0.1) and values[2] == pytest.approx(1.0) and values[4] == pytest.approx(0.05)
    assert type(log_interp(1.0, 4.0, 0.5)) is float and log_interp(1.0, 4.0, 0.5) == pytest.approx(2.0)


def test_one_run_length_rescales_every_schedule_and_old_scheduler_configs_load() -> None:
    import yaml

    from pmni_method.models.presets import core_preset, with_iterations
    from pmni_method.nerfstudio_adapter.model import WarmupCosineSchedulerConfig
    from pmni_method.nerfstudio_adapter.presets import optimizers

    preset = core_preset("pmni-fast")
    short = with_iterations(preset, 90)
    assert (short.core.loss_schedule.total_steps, short.lr_schedule.total_steps, short.pose_lr_schedule.total_steps) == (90,) * 3
    assert preset.lr_schedule.total_steps == 900  # a copy: the preset itself is unchanged
    scheduler = optimizers("pmni-fast")["hash_grid"]["scheduler"]
    assert isinstance(scheduler, LRScheduleConfig) and scheduler.factor(900) == preset.lr_schedule.factor(900)
    scheduler.max_steps = 90  # what the trainer sets for --max-num-iterations
    assert scheduler.total_steps == 90
    # A config.yml written before the two classes merged stores the run length as max_steps.
    old = yaml.dump(scheduler).replace("total_steps: 90", "max_steps: 1234")
    loaded = yaml.load(old, Loader=yaml.Loader)
    assert type(loaded) is WarmupCosineSchedulerConfig and loaded.total_steps == 1234 and loaded.max_steps == 1234


def test_robust_and_weighted_normal_loss() -> None:
    target = torch.tensor([[0.0, 0.0, 1.0]] * 4)
    # Three rays off by ~0.05 and one outlier off by 1 (in |n - n*|).
    pred = target + torch.tensor([[0.05, 0, 0], [0, 0.05, 0], [-0.05, 0, 0], [1.0, 0, 0]])
    fg = torch.ones(4, 1)
    l2 = L.normal_loss(pred, target, fg, "l2")
    cauchy = L.normal_loss(pred, target, fg, "cauchy", robust_scale=0.1)
    assert float(l2) == pytest.approx((3 * 0.05**2 + 1.0) / 4)
    assert float(cauchy) == pytest.approx((3 * 0.01 * math.log1p(0.25) + 0.01 * math.log1p(100.0)) / 4, rel=1e-5)
    # Small residuals: Cauchy ~ l2.
    assert float(L.normal_loss(pred[:3], target[:3], fg[:3], "cauchy", robust_scale=1.0)) == pytest.approx(
        float(L.normal_loss(pred[:3], target[:3], fg[:3], "l2")), rel=0.01
    )
    weight = torch.tensor([[1.0], [1.0], [1.0], [0.0]])
    assert float(L.normal_loss(pred, target, fg, "l2", weight)) == pytest.approx(0.05**2)


def test_grazing_weight_and_boundary_weighted_mask_loss() -> None:
    normals = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.6, 0.8], [0.0, 0.0, -1.0]])
    rays = torch.tensor([[0.0, 0.0, -1.0]] * 4)
    w = L.grazing_weight(normals, rays, 0.5)
    assert w[:, 0].tolist() == pytest.approx([1.0, 0.0, 1.0, 0.0])
    assert float(L.grazing_weight(normals[2:3], rays[:1], 1.0)) == pytest.approx(0.8)
    acc = torch.tensor([[0.9], [0.1], [0.5]])
    fg = torch.tensor([[1.0], [0.0], [1.0]])
    full = L.mask_loss(acc, fg)
    kept = L.mask_loss(acc, fg, weight=torch.tensor([[1.0], [1.0], [0.0]]))
    assert float(kept) == pytest.approx(float(L.mask_loss(acc[:2], fg[:2])))
    assert float(kept) < float(full)


def test_mask_boundary_distance() -> None:
    from pmni_method.data.raystore import mask_boundary_distance

    mask = np.zeros((1, 9, 9), dtype=bool)
    mask[0, 2:7, 2:7] = True
    d = mask_boundary_distance(mask)[0].numpy()
    assert d[2, 4] == 1.0 and d[1, 4] == 1.0 and d[4, 4] == 3.0 and d[0, 4] == 2.0
    assert np.isinf(mask_boundary_distance(np.ones((1, 3, 3), dtype=bool))).all()
