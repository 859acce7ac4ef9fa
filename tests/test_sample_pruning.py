"""Per-sample pruning (opacity and transmittance from a no-grad pass): far fewer samples, the same render."""

from __future__ import annotations

import dataclasses

import torch

from pmni_method.models.core import normal_angular_error_deg

from test_surface_normal import AnalyticField, analytic_core, camera_rays


def test_pruning_keeps_the_render_with_a_fraction_of_the_samples() -> None:
    core = analytic_core(AnalyticField())
    pruned = analytic_core(AnalyticField())
    pruned.config = dataclasses.replace(pruned.config, prune_alpha=1e-3, prune_transmittance=1e-3)
    o, d = camera_rays(24)
    with torch.no_grad():
        full, few = core.render(o, d), pruned.render(o, d)
    n_full, n_few = float(full["num_samples"].sum()), float(few["num_samples"].sum())
    assert n_few < 0.5 * n_full, (n_few, n_full)
    diff = (few["accumulation"] - full["accumulation"]).abs()
    # Only grazing rays change: there dozens of samples below the opacity threshold add up to about 1 %.
    assert float(diff.mean()) < 1e-3 and float(diff.max()) < 0.02, (float(diff.mean()), float(diff.max()))
    fg = full["accumulation"][:, 0] > 0.5
    assert float(normal_angular_error_deg(few["normal"][fg], full["normal"][fg]).max()) < 0.5
    assert torch.allclose(few["surface_normal"], full["surface_normal"], atol=1e-4)


def test_sharpness_floor_ramps_with_the_step_decay_to_the_ceiling() -> None:
    from pmni_method.models.core import PMNICore, PMNICoreConfig
    from pmni_method.models.sampler import OccupancySamplerConfig
    from pmni_method.models.schedule import LossScheduleConfig

    sampler = OccupancySamplerConfig(grid_resolution=16, step_size_start=2.0 / 64, step_size_end=2.0 / 256)
    config = PMNICoreConfig(
        sampler=sampler, loss_schedule=LossScheduleConfig(total_steps=100), inv_s_min=1.0, inv_s_floor_factor_end=2.0
    )
    core = PMNICore(config)
    assert core.inv_s_floor(0) == torch.tensor(32.0).item()
    # Half-way through the decay the factor is sqrt(2): geometric, like the step.
    assert abs(core.inv_s_floor_factor(25) - 2.0**0.5) < 1e-9
    assert abs(core.inv_s_floor(50) - 256.0) < 1e-6 and abs(core.inv_s_ceiling(50) - 256.0) < 1e-6
    assert core.inv_s_floor(100) == core.inv_s_floor(50)
    constant = PMNICore(dataclasses.replace(config, inv_s_floor_factor_end=0.0))
    assert abs(constant.inv_s_floor(50) - 128.0) < 1e-6
