"""The shared-calibration refinement: rays recast under the refined intrinsics, its optimiser group and schedule."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pmni_method.cameras_torch import pixel_directions, unproject
from pmni_method.models.intrinsics_model import IntrinsicsModel, IntrinsicsModelConfig
from pmni_method.models.presets import INTRINSICS_HOLD, core_preset, with_iterations
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
    on = IntrinsicsModel(IntrinsicsModelConfig(enabled=True), c2w)
    assert set(on.param_groups()) == {"intrinsics"}


@pytest.mark.parametrize("name", ["pmni", "pmni-fast"])
def test_the_group_learns_on_the_pose_schedule_after_its_hold(name: str) -> None:
    preset = with_iterations(core_preset(name), 100)
    schedule = preset.intrinsics_lr_schedule()
    hold = round(INTRINSICS_HOLD * 100)
    assert all(schedule.factor(step) == 0.0 for step in range(hold))
    for step in range(hold, 100):
        assert schedule.factor(step) == pytest.approx(preset.pose_lr_schedule.factor(step)) and schedule.factor(step) > 0
    # The preset itself is untouched: its pose schedule holds nothing.
    assert preset.pose_lr_schedule.factor(0) > 0


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


def test_ns_train_refines_the_calibration_and_exports_it(sphere_dir, tmp_path) -> None:
    """Through nerfstudio's trainer: the intrinsics group is optimised after its hold, saved in the checkpoint,
    reloaded by ns-viewer/ns-export's eval_setup, and written into the exported transforms.json."""
    from nerfstudio.utils.eval_utils import eval_setup

    from helpers import tiny_config
    from pmni_method import runner
    from pmni_method.scripts.export_poses import pipeline_transforms, run_poses

    config = tiny_config(sphere_dir, tmp_path, iterations=10)
    config.pipeline.model.intrinsics = IntrinsicsModelConfig(enabled=True)
    config.steps_per_save = 10
    run = runner.train(config)
    (checkpoint,) = (run.config_path.parent / "nerfstudio_models").glob("step-*.ckpt")
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["pipeline"]
    scale = state["_model.intrinsics.log_focal_scale"]
    shift = state["_model.intrinsics.principal_shift"]
    assert float(scale) != 0.0 and float(shift.abs().sum()) > 0  # 8 steps of learning after a hold of 2

    def cpu(cfg):
        cfg.machine.device_type = "cpu"
        return cfg

    _, pipeline, _, _ = eval_setup(run.config_path, test_mode="inference", update_config_callback=cpu)
    assert float(pipeline.model.intrinsics.log_focal_scale.detach()) == pytest.approx(float(scale))
    view_ids, c2w, _ = run_poses(pipeline)
    frames = pipeline_transforms(pipeline, view_ids, c2w)["frames"]
    data = pipeline.datamanager.train_dataparser_outputs.metadata["pmni_data"]
    loaded_focal = float(data.K[0, 0, 0])  # the sphere trains at full size
    assert frames[0]["fl_x"] == pytest.approx(loaded_focal * math.exp(float(scale)), rel=1e-6)
    assert frames[0]["fl_x"] != pytest.approx(loaded_focal, rel=1e-9)
