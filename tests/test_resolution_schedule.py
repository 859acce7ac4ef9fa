"""Coarse-to-fine training over an image pyramid (``data/pyramid.py``): levels, ray counts, targets, runs, resume."""

from __future__ import annotations

import json
import random
from pathlib import Path
from types import SimpleNamespace
from typing import List

import numpy as np
import pytest
import torch

from pmni_method.checkpoints import capture_rng_state, restore_rng_state
from pmni_method.data.diligent_mv import load_diligent_mv
from pmni_method.data.pyramid import ResolutionPyramid, ResolutionScheduleConfig
from pmni_method.data.raystore import RayStore, mask_boundary_distance

SCHEDULE = ResolutionScheduleConfig(factors=(4, 2, 1), switch_at=(0.3, 0.6))


@pytest.fixture(scope="module")
def bunny(bunny_dir: Path):
    return load_diligent_mv(bunny_dir)


def test_levels_switch_at_the_configured_fractions(bunny) -> None:
    expected = {0: 0, 29: 0, 30: 1, 59: 1, 60: 2, 99: 2}
    assert {step: SCHEDULE.level_at(step, 100) for step in expected} == expected
    # Fractions of the run length, whatever it is.
    assert [SCHEDULE.level_at(s, 10) for s in range(10)] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 2]
    assert ResolutionScheduleConfig().level_at(5, 10) == 0  # off: one level
    pyramid = ResolutionPyramid(bunny, SCHEDULE)
    assert [(s.width, s.height) for s in pyramid.levels] == [(20, 16), (40, 32), (80, 64)]
    assert pyramid.levels[-1] is pyramid.finest
    for step, level in expected.items():
        batch = pyramid.sample(1024, step, 100)
        store = pyramid.levels[level]
        assert pyramid.store_at(step, 100) is store
        rows, cols = batch["indices"][:, 1], batch["indices"][:, 2]
        assert int(rows.max()) < store.height and int(cols.max()) < store.width
        cams = batch["indices"][:, 0]
        assert torch.equal(batch["normal"], store.views.normals[cams, rows, cols])  # that level's targets
        if level < 2:
            finer = pyramid.levels[level + 1].views.normals[cams, rows, cols]
            assert not torch.equal(batch["normal"], finer)


def test_ray_counts_follow_the_pixel_count_and_the_floor(bunny) -> None:
    linear = ResolutionScheduleConfig(factors=(4, 2, 1), switch_at=(0.3, 0.6), min_rays_per_batch=16)
    assert [linear.rays_for_level(1024, r) for r in (1 / 16, 1 / 4, 1.0)] == [64, 256, 1024]
    root = ResolutionScheduleConfig(factors=(4, 2, 1), switch_at=(0.3, 0.6), rays_follow_pixels=0.5)
    assert [root.rays_for_level(1024, r) for r in (1 / 16, 1 / 4, 1.0)] == [256, 512, 1024]
    floor = ResolutionScheduleConfig(factors=(4, 2, 1), switch_at=(0.3, 0.6), min_rays_per_batch=200)
    assert [floor.rays_for_level(1024, r) for r in (1 / 16, 1 / 4)] == [200, 256]
    # The floor never raises a level above the run's own rays per batch.
    assert floor.rays_for_level(100, 1 / 16) == 100
    same = ResolutionScheduleConfig(factors=(4, 2, 1), switch_at=(0.3, 0.6), rays_follow_pixels=0.0)
    assert same.rays_for_level(1024, 1 / 16) == 1024

    pyramid = ResolutionPyramid(bunny, linear)
    counts = [len(pyramid.sample(1024, step, 100)["normal"]) for step in (0, 30, 60)]
    assert counts == [64, 256, 1024] == [pyramid.rays_at(1024, s, 100) for s in (0, 30, 60)]


@pytest.mark.parametrize("factor", [4, 2])
def test_each_level_holds_what_loading_at_its_factor_gives(bunny, bunny_dir: Path, factor: int) -> None:
    level = ResolutionPyramid(bunny, SCHEDULE).levels[SCHEDULE.factors.index(factor)]
    loaded = load_diligent_mv(bunny_dir, downscale_factor=factor)
    reference = RayStore(loaded)
    assert (level.height, level.width) == (loaded.height, loaded.width)
    np.testing.assert_allclose(level.views.normals.numpy(), loaded.normals, atol=1e-6)
    assert torch.equal(level.views.masks, torch.from_numpy(loaded.masks))
    np.testing.assert_allclose(level.K.numpy(), loaded.K, rtol=1e-6)
    assert loaded.depths is not None and level.views.depths is not None
    np.testing.assert_allclose(level.views.depths.numpy(), loaded.depths, rtol=1e-5)
    # Boundary distances in loaded pixels: the core's mask_boundary_px band is as wide on every level.
    torch.testing.assert_close(level.boundary_px, mask_boundary_distance(loaded.masks).reshape(-1) * factor)
    pixels = torch.arange(0, level.num_pixels, 7)
    ours, theirs = level.rays_for(pixels), reference.rays_for(pixels)
    for key in ("origins", "directions", "directions_norm", "normal", "fg_mask", "depth"):
        torch.testing.assert_close(ours[key], theirs[key], atol=1e-5, rtol=1e-5)


def test_schedule_off_draws_exactly_what_a_ray_store_draws(bunny) -> None:
    pyramid, store = ResolutionPyramid(bunny, ResolutionScheduleConfig(), seed=3), RayStore(bunny, seed=3)
    for step in range(3):
        a, b = pyramid.sample(300, step, 10), store.sample(300)
        assert all(torch.equal(a[k], b[k]) for k in b)


def test_rng_state_round_trip_continues_the_level_and_draws(bunny) -> None:
    """What a checkpoint saves (train_rays_generator) restores the pyramid's one stream, old checkpoints included."""
    run = SimpleNamespace(train_rays=None)
    first = ResolutionPyramid(bunny, SCHEDULE, seed=5)
    run.train_rays = first.finest
    for step in range(40):
        first.sample(256, step, 100)
    state = capture_rng_state(run)
    expected = [first.sample(256, step, 100) for step in (40, 41)]  # level 1, drawn from a coarse store

    resumed = ResolutionPyramid(bunny, SCHEDULE, seed=99)
    restore_rng_state(state, SimpleNamespace(train_rays=resumed.finest))
    again = [resumed.sample(256, step, 100) for step in (40, 41)]
    assert all(torch.equal(a[k], b[k]) for a, b in zip(expected, again) for k in a)
    assert int(again[0]["indices"][:, 1].max()) < 32  # the half-resolution level

    # A checkpoint of a run without a schedule (one plain RayStore) loads into a run with one.
    plain = RayStore(bunny, seed=7)
    plain.sample(100)
    old_state = capture_rng_state(SimpleNamespace(train_rays=plain))
    reference = plain.sample(100)
    scheduled = ResolutionPyramid(bunny, SCHEDULE, seed=0)
    restore_rng_state(old_state, SimpleNamespace(train_rays=scheduled.finest))
    assert torch.equal(scheduled.sample(100, 99, 100)["indices"], reference["indices"])


@pytest.mark.parametrize(
    "settings, words",
    [
        (dict(factors=(4, 2, 1), switch_at=(0.5,)), "3 factors need 2 switch_at fractions"),
        (dict(factors=(4, 2, 1), switch_at=(0.6, 0.3)), "strictly increasing"),
        (dict(factors=(4, 2, 1), switch_at=(0.3, 1.0)), "strictly increasing fractions in (0, 1)"),
        (dict(factors=(3, 2, 1), switch_at=(0.3, 0.6)), "each a multiple of the next (3 then 2)"),
        (dict(factors=(2, 4, 1), switch_at=(0.3, 0.6)), "coarse to fine"),
        (dict(factors=(4, 2), switch_at=(0.5,)), "must end at 1"),
        (dict(factors=(4, 0, 1), switch_at=(0.3, 0.6)), "positive integers"),
        (dict(switch_at=(0.5,)), "without factors"),
        (dict(factors=(2, 1), switch_at=(0.5,), rays_follow_pixels=-1.0), "rays_follow_pixels -1.0 must be >= 0"),
        (dict(factors=(2, 1), switch_at=(0.5,), min_rays_per_batch=0), "min_rays_per_batch 0 must be >= 1"),
    ],
)
def test_bad_schedules_give_one_line(settings, words: str) -> None:
    with pytest.raises(ValueError) as err:
        ResolutionScheduleConfig(**settings).validate()
    assert words in str(err.value) and "\n" not in str(err.value)
    ResolutionScheduleConfig(factors=(4, 2, 1), switch_at=(0.3, 0.6)).validate()  # the good one passes


def test_train_core_refuses_a_bad_schedule_in_one_line(tmp_path: Path, capsys) -> None:
    from pmni_method import train_core

    code = train_core.main(["--data", str(tmp_path / "none"), "--output", str(tmp_path / "out"),
                            "--resolution-schedule", "4", "2", "1", "--switch-at", "0.5"])
    err = capsys.readouterr().err
    assert code == 2 and err.strip().count("\n") == 0 and "switch_at" in err, err
    assert not (tmp_path / "out").exists()


def test_ns_train_datamanager_refuses_a_bad_schedule_in_one_line(sphere_dir: Path, tmp_path: Path, capsys) -> None:
    from helpers import tiny_config

    config = tiny_config(sphere_dir, tmp_path)
    config.pipeline.datamanager.resolution_schedule = ResolutionScheduleConfig(factors=(3, 2, 1), switch_at=(0.3, 0.6))
    with pytest.raises(SystemExit) as exit_info:
        config.pipeline.datamanager.setup(device="cpu")
    out = capsys.readouterr().out
    assert exit_info.value.code == 2 and out.strip().count("\n") == 0 and "3 then 2" in out, out


def test_train_core_run_with_a_schedule_draws_each_level_and_finishes(bunny_dir: Path, tmp_path: Path, capsys) -> None:
    from pmni_method import train_core
    from pmni_method.models.presets import core_preset, with_iterations

    data = load_diligent_mv(bunny_dir)
    schedule = ResolutionScheduleConfig(factors=(4, 2, 1), switch_at=(0.3, 0.6), min_rays_per_batch=8)
    run = train_core.build_run(with_iterations(core_preset("pmni-fast"), 10), data, resolution_schedule=schedule)
    assert run.store is run.rays.finest and run.context.views is run.store.views  # consistency: loaded resolution
    sizes: List[tuple] = []
    for step in range(10):
        batch = run.batch(step)
        # The largest row drawn tells the level: coarse rows never reach the next level's height.
        sizes.append((len(batch["normal"]), 1 + int(batch["indices"][:, 1].max()) // 16))
    # pmni-fast's 1024 rays follow the pixels: 64 at 20x16 (rows < 16), 256 at 40x32, 1024 at 80x64.
    assert sizes == [(64, 1)] * 3 + [(256, 2)] * 3 + [(1024, 4)] * 4

    out = tmp_path / "run"
    code = train_core.main(["--data", str(bunny_dir), "--output", str(out), "--device", "cpu", "--iterations", "4",
                            "--rays", "128", "--mesh-resolution", "32", "--log-every", "0",
                            "--resolution-schedule", "4", "2", "1", "--switch-at", "0.25", "0.5"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "resolution schedule: 1/4 (20x16) from step 0, 128 rays; 1/2 (40x32) from step 1" in captured.out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 4 and metrics["resolution_schedule"]["factors"] == [4, 2, 1]
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 4


class Interrupt(Exception):
    """Stands in for a crash right after a checkpoint."""


def trained_state(trainer) -> dict:
    """Every parameter and per-parameter optimiser state tensor, cloned."""
    state = {f"param/{n}": p.detach().clone() for n, p in trainer.pipeline.model.named_parameters()}
    for group, optimizer in trainer.optimizers.optimizers.items():
        for i, per_param in optimizer.state_dict()["state"].items():
            for key, value in per_param.items():
                state[f"{group}/{i}/{key}"] = torch.as_tensor(value).detach().clone()
    return state


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def test_ns_train_resume_mid_schedule_is_bit_identical(
    sphere_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from helpers import tiny_config
    from pmni_method import runner

    counts: List[int] = []
    sample = ResolutionPyramid.sample

    def counted(self, num_rays, step, total_steps):
        batch = sample(self, num_rays, step, total_steps)
        counts.append(len(batch["normal"]))
        return batch

    monkeypatch.setattr(ResolutionPyramid, "sample", counted)

    def config(output: Path):
        cfg = tiny_config(sphere_dir, output, iterations=6)
        cfg.steps_per_save = 3
        cfg.pipeline.datamanager.resolution_schedule = ResolutionScheduleConfig(
            factors=(4, 2, 1), switch_at=(0.2, 0.8), min_rays_per_batch=8
        )
        return cfg

    seed_everything(0)
    straight = runner.train(config(tmp_path / "straight"))
    # 64 rays at 64x64: 4 (floor 8) at 16x16 from step 0, 16 at 32x32 from step 1, 64 at 64x64 from step 5.
    assert counts == [8, 16, 16, 16, 16, 64]
    reference = trained_state(straight.trainer)

    seed_everything(0)

    def crash(step: int) -> None:
        if step == 4:
            raise Interrupt

    with pytest.raises(Interrupt):
        runner.train(config(tmp_path / "resumed"), on_step=crash)
    # Scramble every global stream: the resumed run must take them from the checkpoint.
    seed_everything(1234)
    counts.clear()
    again = config(tmp_path / "resumed")
    again.resume = True
    resumed = runner.train(again)
    assert resumed.trainer._start_step == 4
    # The fractions stay those of the whole run, not of the 2 steps left after the checkpoint.
    assert resumed.trainer.pipeline.datamanager.run_length == 6
    assert counts == [16, 64]
    result = trained_state(resumed.trainer)
    assert result.keys() == reference.keys()
    assert all(torch.equal(reference[k], result[k]) for k in reference)
