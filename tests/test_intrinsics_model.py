"""The shared-calibration refinement: rays recast under the refined intrinsics, its optimiser group and schedule."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pmni_method.cameras_torch import pixel_directions, unproject
from pmni_method.models.intrinsics_model import IntrinsicsModel, IntrinsicsModelConfig
from pmni_method.models.step import StepContext, render_rays
from test_rendering import small_core


def _cameras(num: int = 3):
    K = np.array([[[240.0, 0.0, 76.0], [0.0, 240.0, 64.0], [0.0, 0.0, 1.0]]] * num)
    c2w = np.repeat(np.eye(4)[None], num, axis=0)
    for i in range(num):
        a = 2 * np.pi * i / num
        R = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
        c2w[i, :3, :3] = R
        c2w[i, :3, 3] = -3.0 * R[:, 2]
    return K, c2w


def _rays(K: np.ndarray, c2w: np.ndarray, cams: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor):
    Kt, Ct = torch.as_tensor(K, dtype=torch.float32), torch.as_tensor(c2w, dtype=torch.float32)
    dirs_cam, norm = pixel_directions(Kt[cams], rows, cols)
    origins, dirs = unproject(Ct[cams], dirs_cam)
    return origins, dirs, norm


def test_refined_rays_are_the_rays_of_the_refined_intrinsics() -> None:
    K, c2w = _cameras()
    g = torch.Generator().manual_seed(0)
    cams = torch.randint(3, (64,), generator=g)
    rows, cols = torch.randint(128, (64,), generator=g), torch.randint(153, (64,), generator=g)
    _, dirs, norm = _rays(K, c2w, cams, rows, cols)
    model = IntrinsicsModel(IntrinsicsModelConfig(enabled=True), c2w)
    # At its start the model changes nothing.
    same, same_norm = model.correct_rays(dirs, cams)
    torch.testing.assert_close(same, dirs, atol=1e-6, rtol=0)
    torch.testing.assert_close(same_norm, norm, atol=1e-6, rtol=0)
    with torch.no_grad():
        model.log_focal_scale.fill_(np.log(0.99))
        model.principal_shift.copy_(torch.tensor([0.002, -0.001]))
    refined_K = model.corrected_K(K)
    np.testing.assert_allclose(refined_K[:, 0, 0], 240.0 * 0.99, rtol=1e-6)
    np.testing.assert_allclose(refined_K[:, :2, 2], [[76.0 + 0.48, 64.0 - 0.24]] * 3, atol=1e-5)
    _, expected, expected_norm = _rays(refined_K, c2w, cams, rows, cols)
    got, got_norm = model.correct_rays(dirs, cams)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(got_norm, expected_norm, atol=1e-6, rtol=0)
    report = model.report(K)
    assert report["focal_scale"] == pytest.approx(0.99)
    assert report["focal_change_px"] == pytest.approx(-2.4, abs=1e-5)  # float32 parameters
    assert report["principal_shift_px"] == pytest.approx([0.48, -0.24], abs=1e-5)
    assert "loaded_error_px" not in report
    # Against a truth the refinement reaches exactly, the refined error vanishes and the loaded one is the change.
    errors = model.report(K, true_K=refined_K)
    assert errors["refined_error_px"]["focal"] == pytest.approx(0.0, abs=1e-9)
    assert errors["refined_error_px"]["principal_point"] == pytest.approx(0.0, abs=1e-9)
    assert errors["loaded_error_px"]["focal"] == pytest.approx(2.4, abs=1e-5)
    assert errors["loaded_error_px"]["principal_point"] == pytest.approx(math.hypot(0.48, 0.24), abs=1e-5)
    # Gradients reach both parameters.
    got.sum().backward()
    assert model.log_focal_scale.grad is not None and model.principal_shift.grad.abs().sum() > 0


def test_off_by_default_and_no_optimiser_group() -> None:
    _, c2w = _cameras()
    model = IntrinsicsModel(IntrinsicsModelConfig(), c2w)
    assert not model.enabled and model.param_groups() == {}
    on = IntrinsicsModel(IntrinsicsModelConfig(enabled=True, start=0.25), c2w)
    assert set(on.param_groups()) == {"intrinsics"}
    assert on.lr_factor(24, 100) == 0.0 and on.lr_factor(25, 100) == 1.0


def test_the_training_step_renders_with_the_refined_rays() -> None:
    K, c2w = _cameras()
    cams = torch.zeros(16, dtype=torch.long)
    rows, cols = torch.arange(56, 72), torch.full((16,), 76)
    origins, dirs, norm = _rays(K, c2w, cams, rows, cols)
    model = IntrinsicsModel(IntrinsicsModelConfig(enabled=True), c2w)
    with torch.no_grad():
        model.principal_shift.copy_(torch.tensor([0.01, 0.0]))
    core = small_core()
    core.update_grid()
    core.train()
    rays = {"origins": origins, "directions": dirs, "directions_norm": norm, "camera_indices": cams}
    out = render_rays(core, rays, StepContext(intrinsics=model))
    expected, _ = model.correct_rays(dirs, cams)
    torch.testing.assert_close(out["train_rays"]["directions"], expected)
    out["normal"].sum().backward()
    assert model.principal_shift.grad is not None and float(model.principal_shift.grad.abs().sum()) > 0
    # Without the context's model the rays render as given.
    plain = render_rays(core, rays, StepContext())
    torch.testing.assert_close(plain["train_rays"]["directions"], dirs)
