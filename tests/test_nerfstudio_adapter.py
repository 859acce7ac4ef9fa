"""The nerfstudio side is a thin adapter: the model only unpacks ray bundles for the core's step, and runs saved
before the wrappers moved (config.yml naming ``pmni_method.models.pmni_model`` ..., checkpoints with the pose
tensors directly under ``camera_optimizer``) still load."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from pmni_method.data.diligent_mv import load_diligent_mv
from pmni_method.data.raystore import RayStore
from pmni_method.models import step as core_step

REPO = Path(__file__).resolve().parents[1]


def test_core_package_and_old_paths_import_no_nerfstudio() -> None:
    code = (
        "import sys, pmni_method.models, pmni_method.models.step, pmni_method.models.pose_model, "
        "pmni_method.models.pmni_model, pmni_method.models.pose_refine, pmni_method.models.presets, "
        "pmni_method.data.raystore, pmni_method.cameras_torch; print('nerfstudio' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_old_style_config_yml_loads_the_moved_classes() -> None:
    from pmni_method.nerfstudio_adapter.model import PMNIModel, PMNIModelConfig, WarmupCosineSchedulerConfig
    from pmni_method.nerfstudio_adapter.pose_adapter import PoseRefiner, PoseRefinerConfig
    from pmni_method.pmni_config import trainer_config

    text = yaml.dump(trainer_config("pmni-fast"))
    # What a config.yml written before the move says.
    old = text.replace("pmni_method.nerfstudio_adapter.model", "pmni_method.models.pmni_model").replace(
        "pmni_method.nerfstudio_adapter.pose_adapter", "pmni_method.models.pose_refine"
    )
    assert "pmni_method.models.pmni_model.PMNIModelConfig" in old and "nerfstudio_adapter" not in old
    assert "pmni_method.models.pose_refine.PoseRefinerConfig" in old
    config = yaml.load(old, Loader=yaml.Loader)
    model = config.pipeline.model
    assert type(model) is PMNIModelConfig and model._target is PMNIModel
    assert type(model.camera_optimizer) is PoseRefinerConfig and model.camera_optimizer._target is PoseRefiner
    assert type(config.optimizers["hash_grid"]["scheduler"]) is WarmupCosineSchedulerConfig


def test_checkpoint_with_pose_tensors_under_camera_optimizer_loads() -> None:
    from pmni_method import cameras
    from pmni_method.nerfstudio_adapter.pose_adapter import PoseRefinerConfig

    c2w = cameras.ring_poses(4, 4.0, elevation_deg=10.0)
    config = PoseRefinerConfig(mode="SE3", recentre_on_masks=False)
    refiner = config.setup(num_cameras=4, device="cpu", c2w_init=c2w)
    with torch.no_grad():
        refiner.poses.xi.copy_(torch.randn(4, 6, generator=torch.Generator().manual_seed(0)) * 0.1)
    # Before the move the adapter held xi, start and xi_scale itself.
    state = {k.replace("poses.", ""): v for k, v in refiner.state_dict().items()}
    assert set(state) >= {"xi", "start", "xi_scale"}
    fresh = config.setup(num_cameras=4, device="cpu", c2w_init=c2w)
    fresh.load_state_dict(state)
    torch.testing.assert_close(torch.as_tensor(fresh.refined_c2w()), torch.as_tensor(refiner.refined_c2w()), atol=0, rtol=0)


def test_model_losses_are_the_core_steps(bunny_dir: Path) -> None:
    """get_outputs + get_loss_dict on a ray bundle give exactly what the core's step gives on the same batch,
    with pose corrections, rotated targets, the consistency term and the pose regulariser all active."""
    from nerfstudio.data.scene_box import SceneBox

    from pmni_method.data.datamanager import PMNIDataManager
    from pmni_method.nerfstudio_adapter.presets import model_config

    data = load_diligent_mv(bunny_dir, normal_dir="normal_camera_space_GT")
    config = model_config("pmni-fast")
    config.camera_optimizer.mode = "SE3"
    config.camera_optimizer.rot_l2_penalty = 0.1
    stages = config.core.loss_schedule.stages
    config.core.loss_schedule.stages = (dataclasses.replace(stages[0], normal=1.0, mvc=1.0),)
    model = config.setup(
        scene_box=SceneBox(aabb=torch.tensor([[-1.0, -1, -1], [1, 1, 1]])),
        num_train_data=data.num_views,
        metadata={"pmni_data": data},
        device="cpu",
    )
    model.train()
    poses = model.camera_optimizer.poses
    with torch.no_grad():
        poses.xi.copy_(torch.randn(data.num_views, 6, generator=torch.Generator().manual_seed(1)) * 0.02)
    model.core.before_train_step(0)
    assert model.step_context.targets_follow_poses and model.step_context.views is not None
    batch = RayStore(data, seed=0).sample(256)
    ray_bundle, targets = PMNIDataManager._to_ray_bundle(batch, torch.as_tensor(data.K, dtype=torch.float32))

    torch.manual_seed(0)
    outputs = model(ray_bundle)
    metrics = model.get_metrics_dict(outputs, targets)
    losses = model.get_loss_dict(outputs, targets, metrics)
    torch.manual_seed(0)
    expected = core_step.train_step(model.core, batch, model.step_context)

    assert set(losses) == set(expected.losses) >= {"normal_loss", "mvc_loss", "camera_opt_regularizer"}
    for name, value in expected.losses.items():
        torch.testing.assert_close(losses[name], value, atol=0, rtol=0, msg=name)
    assert float(metrics["mvc_pairs"]) == float(expected.stats["mvc_pairs"]) > 0
    assert "camera_opt_rotation_mean" in metrics
    # The regulariser and the rotated targets give the poses a gradient from the model's losses.
    sum(losses.values()).backward()
    assert poses.xi.grad is not None and float(poses.xi.grad.abs().sum()) > 0
