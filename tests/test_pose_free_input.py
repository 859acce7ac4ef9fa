"""Truly pose-free input: intrinsics only (K.txt, intrinsics.json, intrinsics_<i>), a ring guessed from the masks,
file starts in their own frame, world-space maps refused, and the refined poses out as nerfstudio's transforms.json."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pmni_method import cameras
from pmni_method.data.diligent_mv import load_diligent_mv
from pmni_method.data.layout import CAMERA_NORMAL_DIR, WORLD_NORMAL_DIR
from pmni_method.errors import PMNIDataError
from pmni_method.npz import read_npz, write_npz
from pmni_method.poses.from_masks import estimate_camera_distance
from pmni_method.poses.maths import pose_errors
from pmni_method.poses.starts import PoseInitConfig

from helpers import error_lines, ns_train_args, run

RING = PoseInitConfig(pose_init="ring")


def intrinsics_only(source: Path, folder: Path, how: str = "K.txt") -> Path:
    """A copy of a generated dataset with camera-space maps and masks but no poses, no scale_mat, no truth."""
    shutil.copytree(source / CAMERA_NORMAL_DIR, folder / CAMERA_NORMAL_DIR)
    shutil.copytree(source / "mask", folder / "mask")
    K, _ = cameras.decompose_projection(read_npz(source / "cameras_sphere.npz")["world_mat_0"])
    if how == "K.txt":
        np.savetxt(folder / "K.txt", K)
    elif how == "json":
        (folder / "intrinsics.json").write_text(json.dumps({"K": K.tolist()}))
    else:
        write_npz(folder / "cameras_sphere.npz", {f"intrinsics_{i}": K for i in range(8)})
    return folder


def test_ring_distance_from_masks_and_focal_is_within_10_percent(bunny_dir: Path, spot_dir: Path) -> None:
    for folder in (bunny_dir, spot_dir):
        clean = load_diligent_mv(folder, load_depth=False)
        truth = float(np.linalg.norm(clean.c2w[:, :3, 3], axis=1).mean())
        estimate = estimate_camera_distance(clean.K, clean.masks)
        assert abs(estimate / truth - 1.0) < 0.10, (folder.name, estimate, truth)
        # The ring start uses it (never the stored poses) and PMNI's 25-degree elevation, unless the masks say
        # otherwise (tests/test_ring_search.py).
        for search, elevation in ((0.0, 25.0), (45.0, None)):
            config = PoseInitConfig(pose_init="ring", ring_elevation_search_deg=search)
            ring = load_diligent_mv(folder, load_depth=False, normal_dir=CAMERA_NORMAL_DIR, pose_init=config)
            np.testing.assert_allclose(np.linalg.norm(ring.c2w[:, :3, 3], axis=1), estimate)
            if elevation is not None:
                np.testing.assert_allclose(np.rad2deg(np.arcsin(ring.c2w[:, 1, 3] / estimate)), elevation, atol=1e-6)


@pytest.mark.parametrize("how", ["K.txt", "json", "npz"])
def test_intrinsics_only_dataset_loads_from_a_ring(bunny_dir: Path, tmp_path: Path, how: str) -> None:
    folder = intrinsics_only(bunny_dir, tmp_path / "object", how)
    clean = load_diligent_mv(bunny_dir, load_depth=False)
    data = load_diligent_mv(folder, load_depth=False, normal_dir=CAMERA_NORMAL_DIR, pose_init=RING)
    assert data.gt_c2w is None and data.gt_mesh is None  # nothing true is read
    assert not data.normalisation.world_units and data.normalisation.units.startswith("normalised")
    np.testing.assert_allclose(data.K, clean.K, atol=1e-9)
    np.testing.assert_allclose(data.c2w, load_diligent_mv(bunny_dir, load_depth=False, normal_dir=CAMERA_NORMAL_DIR,
                                                           pose_init=RING).c2w)
    # A calibrated or noisy start needs poses: one line that says what to pass instead.
    for start in ("gt", "noisy"):
        with pytest.raises(PMNIDataError, match="intrinsics only.*--pose-init ring") as info:
            load_diligent_mv(folder, normal_dir=CAMERA_NORMAL_DIR, pose_init=PoseInitConfig(pose_init=start))
        assert "\n" not in str(info.value)


def test_bad_intrinsics_are_one_line(bunny_dir: Path, tmp_path: Path) -> None:
    folder = intrinsics_only(bunny_dir, tmp_path / "object")
    (folder / "K.txt").write_text("500 0 40\n0 500 32\n")
    with pytest.raises(PMNIDataError, match=r"K\.txt: holds 6 numbers"):
        load_diligent_mv(folder, normal_dir=CAMERA_NORMAL_DIR, pose_init=RING)
    (folder / "K.txt").write_text("-500 0 40\n0 500 32\n0 0 1\n")
    with pytest.raises(PMNIDataError, match="not an intrinsics matrix"):
        load_diligent_mv(folder, normal_dir=CAMERA_NORMAL_DIR, pose_init=RING)
    (folder / "K.txt").unlink()
    (folder / "intrinsics.json").write_text(json.dumps({"views": [{"view": 0, "K": np.eye(3).tolist()}]}))
    with pytest.raises(PMNIDataError, match="no intrinsics for views 1, 2, 3"):
        load_diligent_mv(folder, normal_dir=CAMERA_NORMAL_DIR, pose_init=RING)
    (folder / "intrinsics.json").unlink()
    with pytest.raises(PMNIDataError, match="camera file not found"):
        load_diligent_mv(folder, normal_dir=CAMERA_NORMAL_DIR, pose_init=RING)


def test_file_start_without_scale_mat_is_placed_by_the_masks(bunny_dir: Path, tmp_path: Path) -> None:
    """A DUSt3R / COLMAP start lives in its own frame and unit: the masks move it into the normalised frame."""
    folder = intrinsics_only(bunny_dir, tmp_path / "object")
    clean = load_diligent_mv(bunny_dir, load_depth=False)
    rng = np.random.default_rng(3)
    R = cameras.look_at_c2w(rng.normal(size=3), np.zeros(3), np.array([0.0, 1.0, 0.0]))[:3, :3]
    own = clean.c2w.copy()
    own[:, :3, :3] = np.einsum("ij,njk->nik", R, clean.c2w[:, :3, :3])
    own[:, :3, 3] = 0.37 * clean.c2w[:, :3, 3] @ R.T + np.array([5.0, -2.0, 1.0])
    path = tmp_path / "dust3r.json"
    path.write_text(json.dumps([{"view": v, "c2w": c.tolist()} for v, c in zip(clean.view_ids, own)]))
    start = PoseInitConfig(pose_init="file", poses_file=path)
    data = load_diligent_mv(folder, load_depth=False, normal_dir=CAMERA_NORMAL_DIR, pose_init=start)
    distances = np.linalg.norm(data.c2w[:, :3, 3], axis=1)
    truth = np.linalg.norm(clean.c2w[:, :3, 3], axis=1)
    assert abs(np.median(distances) / truth.mean() - 1.0) < 0.10  # the unit comes from the masks
    errors = pose_errors(data.c2w, clean.c2w)
    assert max(errors["rotation_deg"]) < 1e-4 and errors["translation_relative_mean"] < 1e-6  # a similarity away
    # The origin is where the mask rays meet: near the object's centre (the truth's origin), well inside its sphere.
    to_truth = np.asarray(errors["alignment"])
    assert np.linalg.norm(to_truth[:3, 3]) < 0.3, to_truth


def test_world_space_maps_with_a_pose_free_start_are_refused(bunny_dir: Path) -> None:
    for start in ("ring", "noisy"):
        options = PoseInitConfig(pose_init=start)
        with pytest.raises(PMNIDataError, match="world-space normal maps.*camera-space maps") as info:
            load_diligent_mv(bunny_dir, normal_dir=WORLD_NORMAL_DIR, pose_init=options)
        assert "\n" not in str(info.value) and WORLD_NORMAL_DIR in str(info.value)
        # Left to itself (normal_dir auto), a pose-free start reads the camera-space maps.
        assert load_diligent_mv(bunny_dir, load_depth=False, pose_init=options).normal_space == "camera"
    assert load_diligent_mv(bunny_dir, load_depth=False).normal_space == "world"  # calibrated: the world maps


def test_ns_train_refuses_world_space_maps_from_a_ring_in_one_line(bunny_dir: Path, tmp_path: Path) -> None:
    out = run(ns_train_args(bunny_dir, tmp_path / "runs") + ["--pose-init", "ring", "--normal-dir", WORLD_NORMAL_DIR])
    assert out.returncode == 2
    lines = error_lines(out)
    assert len(lines) == 1 and "world-space normal maps" in lines[0] and "--normal-dir" in lines[0], lines
    assert "Traceback" not in out.stdout + out.stderr


def test_intrinsics_only_trains_from_a_ring_and_exports_transforms_json(bunny_dir: Path, tmp_path: Path) -> None:
    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig

    from pmni_method import runner
    from pmni_method.export import read_mesh_source
    from pmni_method.scripts import eval as eval_cli
    from pmni_method.scripts import export as export_cli

    folder = intrinsics_only(bunny_dir, tmp_path / "object")
    config = runner.scripted_config(
        "pmni-fast", folder, tmp_path / "runs", max_num_iterations=6, experiment_name="ring", pose_init="ring",
        # The true elevation: 6 steps cannot move a ring, and pmni-eval below needs the mesh near the truth.
        ring_elevation_deg=(10.0, 10.0),
    )
    config.machine.device_type = "cpu"
    config.pipeline.datamanager.train_num_rays_per_batch = 128
    trained = runner.train(config)
    model = trained.trainer.pipeline.model
    # The one switch turned on everything pose-free training needs.
    poses = model.camera_optimizer.poses
    assert poses.enabled and poses.config.gauge == "mean" and poses.config.recentre_on_masks
    assert all(stage.mvc >= 1.0 for stage in model.core.config.loss_schedule.stages if stage.normal > 0)
    refined = model.refined_c2w()

    mesh = tmp_path / "export" / "bunny.ply"
    assert export_cli.main(export_cli.ExportConfig(load_config=trained.config_path, output=mesh, resolution=32)) == 0
    assert read_mesh_source(mesh)["units"].startswith("normalised")
    transforms = mesh.with_name("bunny.transforms.json")
    meta = json.loads(transforms.read_text())
    assert len(meta["frames"]) == 8 and meta["pmni"]["refined"] and meta["pmni"]["units"].startswith("normalised")

    # nerfstudio's own parser reads it back to the refined poses (world = normalised frame here) and intrinsics.
    parser = NerfstudioDataParserConfig(
        data=transforms, orientation_method="none", center_method="none", auto_scale_poses=False,
        scale_factor=1.0, downscale_factor=1, eval_mode="all",
    ).setup()
    outputs = parser.get_dataparser_outputs("train")
    expected = cameras.opencv_to_nerfstudio_c2w(refined)[:, :3, :4]
    np.testing.assert_allclose(outputs.cameras.camera_to_worlds.numpy(), expected, atol=1e-5)
    data = trained.trainer.pipeline.datamanager.train_dataset.data
    np.testing.assert_allclose(outputs.cameras.fx.numpy()[:, 0], data.K[:, 0, 0], rtol=1e-6)
    np.testing.assert_allclose(outputs.cameras.cx.numpy()[:, 0], data.K[:, 0, 2] + 0.5, rtol=1e-6)
    assert [Path(p).name for p in outputs.image_filenames] == [f"{v:03d}.exr" for v in data.view_ids]
    assert [Path(p).parent.name for p in outputs.mask_filenames] == ["mask"] * 8

    # Without a physical unit, pmni-eval only scores the mesh through its poses (a similarity to the truth): given,
    # or found beside the mesh.
    assert eval_cli.main(eval_cli.EvalConfig(mesh=mesh, data=bunny_dir, find_poses=False)) == 2
    assert eval_cli.main(
        eval_cli.EvalConfig(mesh=mesh, data=bunny_dir, poses=mesh.with_name("bunny.poses.json"))
    ) == 0
    assert eval_cli.main(eval_cli.EvalConfig(mesh=mesh, data=bunny_dir)) == 0


@pytest.mark.parametrize("start", ["ring", "noisy"])
def test_plain_loop_and_ns_train_decide_the_same_pose_free_settings(bunny_dir: Path, start: str) -> None:
    from pmni_method.models.presets import core_preset, pose_free_consistency, pose_settings
    from pmni_method.pmni_config import trainer_config
    from pmni_method.train_core import build_run

    data = load_diligent_mv(bunny_dir, load_depth=False, pose_init=PoseInitConfig(pose_init=start))
    run = build_run(core_preset("pmni-fast"), data, "cpu")
    model = trainer_config("pmni-fast").pipeline.model
    pose, schedule = pose_settings(model.camera_optimizer, model.core.loss_schedule, start)
    plain = run.context.poses.config
    for name in (
        "mode", "gauge", "recentre_on_masks", "recentre_target", "frozen_camera", "translation_unit", "coordinates",
        "motion_scales",
    ):
        assert getattr(plain, name) == getattr(pose, name), name
    assert plain.recentre_on_masks and not np.allclose(run.context.poses.start.numpy(), np.eye(4))
    assert run.preset.core.loss_schedule.stages == schedule.stages
    assert run.context.consistency == pose_free_consistency(model.consistency)
    if start == "noisy":
        # The other coordinates start from the same poses: only what the optimiser steps differs.
        camera = build_run(core_preset("pmni-fast"), data, "cpu", pose_coordinates="camera").context.poses
        assert camera.config.coordinates == "camera" and camera.xi_basis.shape == (data.num_views, 6, 6)
        np.testing.assert_allclose(camera.refined_c2w(), run.context.poses.refined_c2w(), atol=1e-6)
