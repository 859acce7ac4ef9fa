"""Non-finite guard, gradient clipping, per-term logging, CPU eval/export, checkpoint contents and exact resume.

Trainings here are in-process and tiny (64 rays, a handful of steps) so the file runs in well under a minute.
"""

from __future__ import annotations

import copy
import random
import re
from pathlib import Path
from typing import Callable, Dict, Iterable, Optional

import numpy as np
import pytest
import torch

from helpers import tiny_config
from pmni_method import runner
from pmni_method.checkpoints import checkpoint_steps
from pmni_method.errors import EXIT_DIVERGED
from pmni_method.stability import NonFiniteGuard

PACKAGE = Path(__file__).resolve().parents[1] / "pmni_method"


def seed_everything(seed: int = 0) -> None:
    """What ns-train's train_loop does before building the trainer (runner.train does not)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def poison_losses(monkeypatch: pytest.MonkeyPatch, bad_steps: Iterable[int], term: str = "mask_loss") -> Callable:
    """Make the model's ``term`` NaN on the training steps in ``bad_steps``; returns the ``on_step`` to pass to train.

    The model's loss is the only thing patched: the trainer, pipeline and optimisers are the real ones.
    """
    from pmni_method.models.pmni_model import PMNIModel

    bad = set(bad_steps)
    state = {"next": 0}
    original = PMNIModel.get_loss_dict

    def get_loss_dict(self, outputs, batch, metrics_dict=None):
        loss_dict = original(self, outputs, batch, metrics_dict)
        if self.training and state["next"] in bad:
            loss_dict[term] = loss_dict[term] * float("nan")
        return loss_dict

    monkeypatch.setattr(PMNIModel, "get_loss_dict", get_loss_dict)

    def on_step(step: int) -> None:
        state["next"] = step + 1

    return on_step


def snapshot(trainer) -> Dict[str, Dict[str, torch.Tensor]]:
    """Every parameter and every per-parameter optimiser state tensor, cloned."""
    params = {n: p.detach().clone() for n, p in trainer.pipeline.model.named_parameters()}
    optim = {}
    for group, optimizer in trainer.optimizers.optimizers.items():
        for i, per_param in optimizer.state_dict()["state"].items():
            for key, value in per_param.items():
                optim[f"{group}/{i}/{key}"] = torch.as_tensor(value).detach().clone()
    return {"params": params, "optim": optim}


def identical(a: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------------------------------------------------
# the guard on a toy problem (exact, fast)
# --------------------------------------------------------------------------------------------------------------------


class Toy:
    """Two parameter groups with their own Adam, like nerfstudio's Optimizers."""

    def __init__(self, max_consecutive: int = 20, check_gradients: bool = True) -> None:
        torch.manual_seed(0)
        self.a = torch.nn.Linear(3, 3)
        self.b = torch.nn.Linear(3, 1)
        self.optimizers = {
            "a": torch.optim.Adam(self.a.parameters(), lr=0.1),
            "b": torch.optim.Adam(self.b.parameters(), lr=0.1),
        }
        self.saved = []
        self.guard = NonFiniteGuard(
            self.optimizers,
            {"a": list(self.a.parameters()), "b": list(self.b.parameters())},
            max_consecutive=max_consecutive,
            check_gradients=check_gradients,
            save_checkpoint=lambda step: self.saved.append(step) or Path(f"step-{step}.ckpt"),
        )

    def state(self) -> Dict[str, torch.Tensor]:
        out = {f"p{i}": p.detach().clone() for i, p in enumerate(list(self.a.parameters()) + list(self.b.parameters()))}
        for name, opt in self.optimizers.items():
            for i, s in opt.state.items():
                for key, value in s.items():
                    out[f"{name}/{id(i)}/{key}"] = value.clone()
        return out

    def step(self, step: int, poison: Optional[str] = None):
        for opt in self.optimizers.values():
            opt.zero_grad()
        x = torch.randn(8, 3)
        loss = {"fit": self.b(self.a(x)).square().mean(), "reg": 1e-3 * self.a.weight.square().sum()}
        if poison == "loss":
            loss["reg"] = loss["reg"] * float("nan")
        self.guard.begin_step(step, loss)
        sum(loss.values()).backward()
        if poison == "grad":
            self.a.weight.grad[0, 0] = float("inf")
        for opt in self.optimizers.values():
            opt.step()
        verdict = self.guard.end_step(step)
        self.guard.stop_if_diverged(step)
        return verdict


def test_guard_skips_the_whole_step_on_a_nan_loss_term():
    toy = Toy()
    toy.step(0)
    before = toy.state()
    verdict = toy.step(1, poison="loss")
    # Only group a's gradient is NaN (reg depends on a alone), yet b must not move either: the step is skipped whole.
    assert verdict is not None and verdict.losses == ["reg"] and verdict.groups == ["a"]
    assert identical(before, toy.state())
    assert (toy.guard.skipped_total, toy.guard.consecutive) == (1, 1)
    assert toy.step(2) is None
    assert not identical(before, toy.state())
    assert (toy.guard.skipped_total, toy.guard.consecutive) == (1, 0)


def test_guard_skips_on_a_nonfinite_gradient_with_finite_losses():
    toy = Toy()
    toy.step(0)
    before = toy.state()
    verdict = toy.step(1, poison="grad")
    assert verdict is not None and verdict.losses == [] and verdict.groups == ["a"]
    assert identical(before, toy.state())


def test_guard_leaves_gradient_overflow_to_an_active_grad_scaler():
    # With a CUDA GradScaler the scaled gradients may overflow on purpose; the scaler skips those, not us.
    toy = Toy(check_gradients=False)
    toy.step(0)
    assert toy.step(1, poison="loss").losses == ["reg"]  # a NaN loss term is still caught
    assert toy.step(2, poison="grad") is None


def test_guard_stops_after_too_many_in_a_row(capsys):
    toy = Toy(max_consecutive=3)
    toy.step(0)
    toy.step(1, poison="loss")
    toy.step(2, poison="loss")
    with pytest.raises(SystemExit) as exc:
        toy.step(3, poison="loss")
    assert exc.value.code == EXIT_DIVERGED
    assert toy.saved == [3]
    out = capsys.readouterr().out
    assert "training stopped at step 3: 3 steps in a row had a non-finite loss reg" in out.replace("\n", " ")


def test_guard_ignores_optimiser_steps_outside_training():
    toy = Toy()
    toy.a.weight.grad = torch.full_like(toy.a.weight, float("nan"))
    toy.optimizers["a"].step()  # no begin_step: not a training step, so the guard must not interfere
    assert torch.isnan(toy.a.weight).any()


# --------------------------------------------------------------------------------------------------------------------
# the guard inside nerfstudio's real training loop
# --------------------------------------------------------------------------------------------------------------------


def test_nan_loss_step_is_skipped_in_real_training(sphere_dir: Path, tmp_path: Path, monkeypatch, capsys):
    poison = poison_losses(monkeypatch, bad_steps=[3])
    config = tiny_config(sphere_dir, tmp_path, iterations=6)
    states: Dict[int, dict] = {}

    def after_step(trainer, step: int, seconds: float) -> None:
        states[step] = snapshot(trainer)

    run = runner.train(config, on_step=poison, every_seconds=0.0, hook=after_step)
    guard = run.trainer.pipeline.guard
    assert (guard.skipped_total, guard.consecutive) == (1, 0)
    assert guard.last_verdict.step == 3 and "mask_loss" in guard.last_verdict.losses
    # Bit-identical parameters and Adam moments/step counts across the skipped step, and training went on.
    assert identical(states[2]["params"], states[3]["params"])
    assert identical(states[2]["optim"], states[3]["optim"])
    assert not identical(states[3]["params"], states[4]["params"])
    assert all(torch.isfinite(p).all() for p in states[5]["params"].values())
    out = capsys.readouterr().out.replace("\n", " ")
    assert re.search(r"step 3: non-finite loss mask_loss; gradients of [a-z_, ]+; step skipped", out), out


def test_persistent_nan_saves_a_checkpoint_and_stops(sphere_dir: Path, tmp_path: Path, monkeypatch, capsys):
    poison = poison_losses(monkeypatch, bad_steps=range(2, 100))
    config = tiny_config(sphere_dir, tmp_path, iterations=50)
    config.pipeline.max_consecutive_skipped_steps = 3
    good: Dict[str, dict] = {}

    def after_step(trainer, step: int, seconds: float) -> None:
        if step == 1:
            good.update(snapshot(trainer))

    with pytest.raises(SystemExit) as exc:
        runner.train(config, on_step=poison, every_seconds=0.0, hook=after_step)
    assert exc.value.code == EXIT_DIVERGED
    run_dir = config.get_base_dir()
    assert checkpoint_steps(run_dir / "nerfstudio_models") == [4]  # steps 2, 3, 4 skipped
    state = torch.load(run_dir / "nerfstudio_models" / "step-000000004.ckpt", map_location="cpu")
    saved = {k[len("_model."):]: v for k, v in state["pipeline"].items() if k[len("_model."):] in good["params"]}
    assert identical(saved, good["params"])  # the checkpoint holds the last good state, no NaN in it
    out = capsys.readouterr().out.replace("\n", " ")
    assert "pmni: training stopped at step 4: 3 steps in a row had a non-finite loss mask_loss" in out
    assert "last good state saved to" in out and "--resume True" in out


# --------------------------------------------------------------------------------------------------------------------
# configuration: clipping, mixed precision
# --------------------------------------------------------------------------------------------------------------------


def test_every_parameter_group_is_clipped():
    from pmni_method.pipeline import PMNIPipelineConfig
    from pmni_method.pmni_config import METHODS

    for name, spec in METHODS.items():
        assert isinstance(spec.config.pipeline, PMNIPipelineConfig), name
        norms = {group: settings["optimizer"].max_norm for group, settings in spec.config.optimizers.items()}
        assert set(norms) >= {"hash_grid", "sdf_mlp", "variance", "camera_opt", "intrinsics"}, name
        assert all(isinstance(v, float) and v > 0 for v in norms.values()), (name, norms)


def test_mixed_precision_request_is_ignored_on_cpu(sphere_dir: Path, tmp_path: Path):
    config = tiny_config(sphere_dir, tmp_path, iterations=2)
    config.mixed_precision = True
    run = runner.train(config)
    assert not run.trainer.mixed_precision
    assert not run.trainer.grad_scaler.is_enabled()
    assert run.trainer.pipeline.guard.check_gradients


# --------------------------------------------------------------------------------------------------------------------
# logging, CPU-only evaluation and export, checkpoint contents
# --------------------------------------------------------------------------------------------------------------------


def scalar_tags(run_dir: Path) -> set:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir))
    events.Reload()
    return set(events.Tags()["scalars"]), set(events.Tags()["images"])


def test_logging_eval_and_export_on_cpu(sphere_dir: Path, tmp_path: Path):
    """Per-term losses, diagnostics and pose error in TensorBoard; eval batch/image steps and pmni-export on CPU."""
    config = tiny_config(
        sphere_dir, tmp_path / "runs", iterations=5, pose_init="noisy", normal_dir="normal_camera_space_GT"
    )
    config.steps_per_eval_batch = 2
    config.steps_per_eval_image = 2
    config.steps_per_save = 2
    run = runner.train(config)
    run_dir = run.config_path.parent
    assert run.trainer.device == "cpu" and run.trainer.pipeline.device.type == "cpu"

    scalars, images = scalar_tags(run_dir)
    for tag in (
        "Loss/mask", "Loss/eikonal", "Loss/depth", "Train/inv_s", "Train/samples_per_ray", "Train/loss_stage",
        "Loss weight/normal", "Stability/skipped_steps", "Poses/rotation_deg_mean", "Poses/translation_relative_mean",
        "Eval Loss", "Eval Images Metrics/normal_mae_deg",
    ):
        assert tag in scalars, (tag, sorted(scalars))
    assert {"Eval Images/normal", "Eval Images/depth", "Eval Images/accumulation"} <= images

    # Everything a resumed run needs, in one checkpoint.
    state = torch.load(run_dir / "nerfstudio_models" / "step-000000004.ckpt", map_location="cpu")
    assert set(state) >= {"step", "pipeline", "optimizers", "schedulers", "scalers", "rng"}
    assert {"_model.core.grid.binaries", "_model.core.step"} <= set(state["pipeline"])
    assert any(k.startswith("_model.camera_optimizer.") for k in state["pipeline"])  # the refined poses
    assert {"camera_opt", "hash_grid", "sdf_mlp", "variance"} <= set(state["optimizers"]) & set(state["schedulers"])
    assert set(state["rng"]) >= {"python", "numpy", "torch", "train_rays_generator", "eval_rays_generator", "eval_rng"}

    from pmni_method.scripts import export as export_cli

    mesh = tmp_path / "mesh.ply"
    assert export_cli.main(export_cli.ExportConfig(load_config=run.config_path, output=mesh, resolution=32)) == 0
    assert mesh.stat().st_size > 0


def test_pose_error_is_not_logged_without_refinement(sphere_dir: Path, tmp_path: Path):
    config = tiny_config(sphere_dir, tmp_path, iterations=2, pose_init="noisy", normal_dir="normal_camera_space_GT")
    config.pipeline.model.camera_optimizer.mode = "off"  # explicit beats the one switch: train on the noisy poses
    run = runner.train(config)
    scalars, _ = scalar_tags(run.config_path.parent)
    assert "Loss/mask" in scalars and not any(t.startswith("Poses/") for t in scalars)


def test_no_hard_coded_cuda_in_the_package():
    pattern = re.compile(r"""\.cuda\(|device\s*=\s*["']cuda|torch\.device\(\s*["']cuda|\.to\(\s*["']cuda""")
    offenders = [
        f"{path.relative_to(PACKAGE.parent)}:{n}: {line.strip()}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert not offenders, offenders


# --------------------------------------------------------------------------------------------------------------------
# resume continues the same random streams
# --------------------------------------------------------------------------------------------------------------------


class Interrupt(Exception):
    """Stands in for a crash right after a checkpoint."""


@pytest.mark.parametrize("same_second", [False, True])
def test_resume_is_bit_identical_to_an_uninterrupted_run(
    sphere_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, same_second: bool
):
    if same_second:
        # A run restarted within the second it crashed in gets the crashed run's folder name.
        from nerfstudio.engine.trainer import TrainerConfig

        monkeypatch.setattr(TrainerConfig, "set_timestamp", lambda self: setattr(self, "timestamp", "2026-01-01_000000"))

    def config(output: Path):
        cfg = tiny_config(sphere_dir, output, iterations=10)
        cfg.steps_per_save = 5
        return cfg

    seed_everything()
    straight = runner.train(config(tmp_path / "straight"))
    reference = copy.deepcopy(snapshot(straight.trainer))

    seed_everything()

    def crash(step: int) -> None:
        if step == 6:
            raise Interrupt

    with pytest.raises(Interrupt):
        runner.train(config(tmp_path / "resumed"), on_step=crash)
    # Scramble every global stream: the resumed run must take them from the checkpoint, not from chance.
    seed_everything(1234)
    again = config(tmp_path / "resumed")
    again.resume = True
    resumed = runner.train(again)
    assert resumed.trainer._start_step == 6
    result = snapshot(resumed.trainer)
    assert identical(reference["params"], result["params"])
    assert identical(reference["optim"], result["optim"])


def test_refined_poses_follow_the_camera_optimizer_as_it_moves_rays():
    """Pose error is computed from the poses the rays were actually rendered from."""
    from types import SimpleNamespace

    from nerfstudio.cameras.camera_optimizers import CameraOptimizerConfig
    from nerfstudio.cameras.rays import RayBundle

    from pmni_method.pipeline import PMNIPipeline

    torch.manual_seed(0)
    n = 3
    optimizer = CameraOptimizerConfig(mode="SE3").setup(num_cameras=n, device="cpu")
    with torch.no_grad():
        optimizer.pose_adjustment.normal_(std=0.2)
    q, _ = torch.linalg.qr(torch.randn(n, 3, 3, dtype=torch.float64))
    c2w = np.tile(np.eye(4), (n, 1, 1))
    c2w[:, :3, :3] = q.numpy()
    c2w[:, :3, 3] = np.random.default_rng(0).normal(size=(n, 3))
    fake = SimpleNamespace(
        datamanager=SimpleNamespace(train_dataset=SimpleNamespace(data=SimpleNamespace(c2w=c2w))),
        model=SimpleNamespace(camera_optimizer=optimizer),
    )
    refined = PMNIPipeline.refined_poses(fake)

    d_cam = torch.tensor([[0.1, -0.2, 1.0]] * n, dtype=torch.float64)
    d_cam = d_cam / d_cam.norm(dim=-1, keepdim=True)
    rays = RayBundle(
        origins=torch.as_tensor(c2w[:, :3, 3]).float(),
        directions=torch.einsum("nij,nj->ni", torch.as_tensor(c2w[:, :3, :3]), d_cam).float(),
        pixel_area=torch.ones(n, 1),
        camera_indices=torch.arange(n)[:, None],
    )
    with torch.no_grad():
        optimizer.apply_to_raybundle(rays)
    expected_dirs = np.einsum("nij,nj->ni", refined[:, :3, :3], d_cam.numpy())
    assert np.allclose(rays.origins.numpy(), refined[:, :3, 3], atol=1e-5)
    assert np.allclose(rays.directions.numpy(), expected_dirs, atol=1e-5)

    # pmni's own pose refiner reports its poses itself.
    fake.model.camera_optimizer = SimpleNamespace(config=SimpleNamespace(mode="SE3"), refined_c2w=lambda: c2w * 2)
    assert np.array_equal(PMNIPipeline.refined_poses(fake), c2w * 2)
    fake.model.camera_optimizer = SimpleNamespace(config=SimpleNamespace(mode="off"))
    assert PMNIPipeline.refined_poses(fake) is None


@pytest.mark.parametrize("num_views", [2, 4])
def test_pose_errors_of_an_unalignable_rig_are_absent_not_a_crash(num_views: int):
    """Fewer than three camera centres, or collinear ones, have no alignment: logging skips the pose error."""
    from types import SimpleNamespace

    from pmni_method.pipeline import PMNIPipeline

    gt = np.tile(np.eye(4), (num_views, 1, 1))
    gt[:, 0, 3] = np.arange(num_views)  # on one line: collinear even with four views
    fake = SimpleNamespace(
        datamanager=SimpleNamespace(train_dataset=SimpleNamespace(data=SimpleNamespace(gt_c2w=gt))),
        refined_poses=lambda: gt.copy(),
    )
    assert PMNIPipeline.pose_errors(fake) is None
    if num_views == 4:
        # Once the centres span a plane, the same call measures the (zero) error.
        gt[:, 1, 3] = [0.0, 1.0, 3.0, 7.0]
        assert PMNIPipeline.pose_errors(fake)["rotation_deg_mean"] < 1e-9
