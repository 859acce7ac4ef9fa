"""The ``transforms.json`` loader and the ``nerfstudio-normals-data`` dataparser.

The datasets here are the synthetic bunny of ``tests/conftest.py`` rewritten as nerfstudio captures: OpenGL poses
in world units (millimetres), masks by ``mask_path``, normal maps by file stem from a folder. They must load to the
same cameras, normals and masks as the DiLiGenT-MV original, up to the normalised frame, which each loader picks
its own way (``scale_mat`` there, the visual hull here) and which both keep as their ``Normalisation``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import pytest

from pmni_method import cameras
from pmni_method.data import io
from pmni_method.data.camera_file import read_dataset_cameras
from pmni_method.data.diligent_mv import load_diligent_mv
from pmni_method.data.transforms_loader import load_transforms_json
from pmni_method.errors import PMNIDataError
from pmni_method.poses.starts import PoseInitConfig
from transforms_capture import (
    VIEWS,
    assert_same_views,
    load_both,
    mesh_radius,
    write_transforms,
)


# ------------------------------------------------------------------------------------------ equivalence


def test_camera_space_capture_matches_diligent_mv(bunny_dir: Path, tmp_path: Path) -> None:
    notes: list = []
    path = write_transforms(bunny_dir, tmp_path / "capture")
    ours, theirs = load_both(bunny_dir, path, normal_space="camera", warn=notes.append)
    assert notes == []  # exact poses: the visual hull's sphere, and no plausibility warning
    assert_same_views(ours, theirs)
    assert ours.normal_space == "camera" and ours.pose_init == "gt" and ours.gt_c2w is None
    assert ours.gt_mesh == tmp_path / "capture" / "mesh_Gt.ply"
    # The visual hull's sphere holds the object snugly: pmni-synth's own is 1.05x the object's bounding sphere.
    # Measured 0.90-0.91 at 80x64 and 320x256 (pmni-synth's scale_mat: 0.95).
    assert 0.85 < mesh_radius(ours) < 1.0
    assert not np.allclose(ours.normalisation.scale_mat, theirs.normalisation.scale_mat)


def test_world_space_capture_per_frame_intrinsics(bunny_dir: Path, tmp_path: Path) -> None:
    # nerfstudio's split lists and applied_transform (recorded, not applied) change nothing: every frame loads.
    names = [f"images/{v:03d}.png" for v in VIEWS]
    path = write_transforms(
        bunny_dir, tmp_path / "capture", "normal_world_space_GT", per_frame=True,
        train_filenames=names[:6], val_filenames=names[6:], applied_transform=np.eye(4)[:3, [1, 0, 2, 3]].tolist(),
    )
    # "normals" has no "camera" in its name: auto reads world space, as the DiLiGenT-MV loader does.
    ours, theirs = load_both(bunny_dir, path, "normal_world_space_GT")
    assert ours.normal_space == "world"
    assert_same_views(ours, theirs)


def test_frame_keys_mask_dir_and_pmni_export_files(bunny_dir: Path, tmp_path: Path) -> None:
    """The files pmni-export writes (normal maps as file_path, pmni_view) load back to the same views."""
    from pmni_method.poses.transforms_json import transforms_json

    cams = read_dataset_cameras(bunny_dir, VIEWS)
    normals = [bunny_dir / "normal_camera_space_GT" / f"{v:03d}.exr" for v in VIEWS]
    masks = [bunny_dir / "mask" / f"{v:03d}.png" for v in VIEWS]
    meta = transforms_json(cams.c2w_world, cams.K, 80, 64, normals, masks, view_ids=[10 + v for v in VIEWS])
    path = tmp_path / "exported.transforms.json"
    path.write_text(json.dumps(meta))
    ours = load_transforms_json(path, normal_key="file_path", normal_space="camera")
    theirs = load_diligent_mv(bunny_dir, normal_dir="normal_camera_space_GT", load_depth=False)
    assert ours.view_ids == [10 + v for v in VIEWS]
    theirs.view_ids = ours.view_ids
    assert_same_views(ours, theirs)

    # normal_path per frame (relative), masks by stem from a folder, images named without a view number.
    frames = meta["frames"]
    for frame, view in zip(frames, VIEWS):
        frame.pop("pmni_view")
        frame["normal_path"] = f"maps/camera/{view:03d}.exr"
        frame["file_path"] = f"images/{'abcdefgh'[view]}.jpg"
        frame.pop("mask_path")
    shutil.copytree(bunny_dir / "normal_camera_space_GT", tmp_path / "maps" / "camera")
    (tmp_path / "masks").mkdir()
    for view in VIEWS:
        shutil.copy(masks[view], tmp_path / "masks" / f"{'abcdefgh'[view]}.png")
    path.write_text(json.dumps(meta))
    ours = load_transforms_json(path, mask_dir="masks")
    # No numbers in the image names: views are numbered in nerfstudio's (file name) order; "camera" in the folder.
    assert ours.view_ids == VIEWS and ours.normal_space == "camera"
    theirs.view_ids = VIEWS
    assert_same_views(ours, theirs)


def test_downscale_matches_diligent_mv(bunny_dir: Path, tmp_path: Path) -> None:
    path = write_transforms(bunny_dir, tmp_path / "capture")
    ours = load_transforms_json(path, normal_dir="normals", normal_space="camera", downscale_factor=2)
    theirs = load_diligent_mv(bunny_dir, normal_dir="normal_camera_space_GT", downscale_factor=2, load_depth=False)
    assert ours.masks.shape == (8, 32, 40)
    assert_same_views(ours, theirs)


def test_camera_space_maps_read_as_world_are_refused(bunny_dir: Path, tmp_path: Path) -> None:
    path = write_transforms(bunny_dir, tmp_path / "capture")
    with pytest.raises(PMNIDataError) as e:
        load_transforms_json(path, normal_dir="normals")  # "normals": auto reads world space
    assert "facing away from the camera" in str(e.value) and "--normal-space" in str(e.value)
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------------------------------- pose starts


def test_pose_starts(bunny_dir: Path, tmp_path: Path) -> None:
    path = write_transforms(bunny_dir, tmp_path / "capture")
    calibrated = load_transforms_json(path, normal_dir="normals", normal_space="camera")
    # "file" without a poses file: the transforms.json poses are the start, refined, with no truth to score.
    start = load_transforms_json(path, normal_dir="normals", normal_space="camera", pose_init=PoseInitConfig("file"))
    assert start.pose_init == "file" and start.gt_c2w is None
    np.testing.assert_allclose(start.c2w, calibrated.c2w, atol=1e-12)
    noisy = load_transforms_json(
        path, normal_dir="normals", normal_space="camera",
        pose_init=PoseInitConfig("noisy", pose_noise_rotation_deg=2.0, pose_noise_translation=0.01),
    )
    np.testing.assert_allclose(noisy.gt_c2w, calibrated.c2w, atol=1e-12)
    assert np.abs(noisy.c2w - calibrated.c2w).max() > 1e-3
    # Camera-space normals follow the start's poses: in camera space they are the calibrated ones.
    for pos in (0, 5):
        for data in (noisy, calibrated):
            assert data.normals[pos][data.masks[pos]].shape[0] > 0
        cam_noisy = cameras.world_normals_to_camera(noisy.normals[pos].astype(np.float64), noisy.c2w[pos])
        cam_true = cameras.world_normals_to_camera(calibrated.normals[pos].astype(np.float64), calibrated.c2w[pos])
        np.testing.assert_allclose(cam_noisy, cam_true, atol=1e-5)
    with pytest.raises(PMNIDataError, match="world-space normal maps"):
        load_transforms_json(path, normal_dir="normals", normal_space="world", pose_init=PoseInitConfig("file"))


def test_rough_poses_fall_back_to_the_mask_rays_sphere(make_tiny_dataset, shared_meshes: Path, tmp_path: Path) -> None:
    """Poses off by about a degree carve a hull far smaller than the object; the loader notices and bounds the
    mask rays instead, so the object still fits and a pose-free run can refine the poses."""
    rough = make_tiny_dataset(
        shared_meshes / "stanford-bunny.obj", world_scale=1000.0, pose_rotation_noise_deg=1.0,
        pose_translation_noise=0.01,
    )
    path = write_transforms(rough, tmp_path / "capture")
    notes: list = []
    data = load_transforms_json(
        path, normal_dir="normals", normal_space="camera", pose_init=PoseInitConfig("file"), warn=notes.append
    )
    assert len(notes) == 1 and "the poses and masks disagree" in notes[0] and str(path) in notes[0], notes
    # Measured 0.83 (the hull's sphere: 1.68, the object sticking far out of it).
    assert 0.6 < mesh_radius(data) < 1.0


# ------------------------------------------------------------------------------------------- bad input


def _drop(key: str, index: int = 3):
    def edit(meta: Dict[str, Any]) -> None:
        meta["frames"][index].pop(key)

    return edit


def _set(key: str, value: Any, index: Optional[int] = None):
    def edit(meta: Dict[str, Any]) -> None:
        (meta if index is None else meta["frames"][index])[key] = value

    return edit


def _per_frame_size(meta: Dict[str, Any]) -> None:
    w, h = meta.pop("w"), meta.pop("h")
    for frame in meta["frames"]:
        frame["w"], frame["h"] = w, h
    meta["frames"][2]["w"] = 96


def _no_focal(meta: Dict[str, Any]) -> None:
    meta.pop("fl_x")


BAD_META = {
    "no frames": (_set("frames", []), 'no "frames"'),
    "no file_path": (_drop("file_path"), 'frames[3] has no "file_path"'),
    "no transform_matrix": (_drop("transform_matrix"), "transform_matrix is missing"),
    "scaled pose": (_set("transform_matrix", np.diag([2.0, 2.0, 2.0, 1.0]).tolist(), 1), "not a rigid camera-to-world"),
    "no intrinsics": (_no_focal, 'has no "fl_x" and there is no shared "fl_x"'),
    "mixed sizes": (_per_frame_size, "is 96x64 but frames[0]"),
    "some masks": (_drop("mask_path", 5), 'has no "mask_path" but other frames do'),
    "missing mask file": (_set("mask_path", "masks/nope.png", 0), "nope.png: file not found"),
    "fisheye": (_set("camera_model", "OPENCV_FISHEYE"), "fisheye cameras are not supported"),
    "bad distortion": (_set("distortion_params", [0.1, 0.2]), "distortion_params must be 6 numbers"),
}


@pytest.mark.parametrize("case", sorted(BAD_META))
def test_bad_transforms_give_one_line(bunny_dir: Path, tmp_path: Path, case: str) -> None:
    path = write_transforms(bunny_dir, tmp_path / "capture")
    meta = json.loads(path.read_text())
    edit, expected = BAD_META[case]
    edit(meta)
    path.write_text(json.dumps(meta))
    with pytest.raises(PMNIDataError) as e:
        load_transforms_json(path, normal_dir="normals", normal_space="camera")
    message = str(e.value)
    assert "\n" not in message and expected in message, message
    assert str(tmp_path / "capture") in message


def test_bad_files_give_one_line(bunny_dir: Path, tmp_path: Path) -> None:
    path = write_transforms(bunny_dir, tmp_path / "capture")

    def error(where: Path = path, **options: Any) -> str:
        with pytest.raises(PMNIDataError) as e:
            load_transforms_json(where, **{"normal_dir": "normals", "normal_space": "camera", **options})
        assert "\n" not in str(e.value)
        return str(e.value)

    assert error(normal_dir="nowhere") == f"{path.parent / 'nowhere'}: normal map folder not found"
    assert 'frame images/000.png has no "normal_path"' in error(normal_dir=None)
    assert error(path.parent / "capture.json") == f"{path.parent / 'capture.json'}: file not found"
    assert error(tmp_path) == f"{tmp_path / 'transforms.json'}: file not found"
    path.with_name("broken.json").write_text('{"frames": [')
    assert error(path.with_name("broken.json")).startswith(f"{path.with_name('broken.json')}: unreadable JSON")
    (path.parent / "normals" / "003.exr").unlink()
    assert error() == f"{path.parent / 'normals'}: no normal map for frame 003.png (expected 003.<exr|png|npy>)"
    shutil.copy(bunny_dir / "normal_camera_space_GT" / "003.exr", path.parent / "normals" / "003.exr")
    io.write_mask(path.parent / "masks" / "004.png", np.zeros((64, 80), dtype=bool))
    assert error() == f"{path.parent / 'masks' / '004.png'}: mask is empty (no foreground pixel)"
    io.write_mask(path.parent / "masks" / "004.png", np.ones((32, 40), dtype=bool))
    mask = path.parent / "masks" / "004.png"
    assert error() == f"{mask}: image is 40x32 but transforms.json says 80x64 (width x height)"


# ------------------------------------------------------------------------------------------- dataparser


def _parser(path: Path, **options: Any):
    from pmni_method.dataparsers.nerfstudio_normals_dataparser import NerfstudioNormalsDataParserConfig

    return NerfstudioNormalsDataParserConfig(data=path, **options).setup()


def test_dataparser_outputs_match_diligent_mv_data(bunny_dir: Path, tmp_path: Path) -> None:
    from pmni_method.dataparsers.diligent_mv_dataparser import DiligentMVDataParserConfig

    path = write_transforms(bunny_dir, tmp_path / "capture")
    parser = _parser(path.parent, normal_dir="normals", normal_space="camera", exclude_views=(2, 5))
    ours = parser.get_dataparser_outputs("train")
    theirs = DiligentMVDataParserConfig(
        data=bunny_dir, normal_dir="normal_camera_space_GT", exclude_views=(2, 5)
    ).setup().get_dataparser_outputs("train")
    assert ours.metadata["view_ids"] == theirs.metadata["view_ids"] == [0, 1, 3, 4, 6, 7]
    assert set(ours.metadata) >= {"pmni_data", "gt_mesh", "view_ids"}
    assert [p.name for p in ours.image_filenames] == [p.name for p in theirs.image_filenames]
    assert [p.name for p in ours.metadata["pmni_mask_files"]] == [f"{v:03d}.png" for v in [0, 1, 3, 4, 6, 7]]
    for key in ("fx", "fy", "cx", "cy", "width", "height"):
        assert np.array_equal(getattr(ours.cameras, key).numpy(), getattr(theirs.cameras, key).numpy()), key
    # Camera centres in world units, through each output's dataparser transform and scale.
    def centres(out) -> np.ndarray:
        T = np.vstack([out.dataparser_transform.double().numpy(), [0.0, 0.0, 0.0, 1.0]])
        norm = out.cameras.camera_to_worlds[:, :3, 3].double().numpy() / out.dataparser_scale
        return (norm - T[:3, 3]) @ np.linalg.inv(T[:3, :3]).T

    np.testing.assert_allclose(centres(ours), centres(theirs), rtol=1e-5)
    assert parser.get_dataparser_outputs("val").metadata["view_ids"] == [2, 5]


def test_dataparser_bad_data_exits_with_one_red_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        _parser(tmp_path / "nowhere").get_dataparser_outputs("train")
    assert exc.value.code == 2
    printed = capsys.readouterr().out.strip()
    assert printed.count("\n") == 0 and "nowhere" in printed and "not found" in printed


def test_spec_is_registered_config_and_import_light() -> None:
    import subprocess
    import sys

    from nerfstudio.plugins.registry_dataparser import DataParserSpecification

    from pmni_method.dataparsers.nerfstudio_normals_spec import nerfstudio_normals_dataparser

    assert isinstance(nerfstudio_normals_dataparser, DataParserSpecification)
    assert nerfstudio_normals_dataparser.config.pose_init == "gt"
    entry = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert (
        'nerfstudio-normals-data = "pmni_method.dataparsers.nerfstudio_normals_spec:nerfstudio_normals_dataparser"'
        in entry
    )
    code = (
        "import sys; import pmni_method.dataparsers.nerfstudio_normals_spec; "
        "bad = [m for m in ('nerfstudio.data.datamanagers.base_datamanager', 'nerfstudio.engine.trainer', "
        "'nerfstudio.pipelines.base_pipeline') if m in sys.modules]; print(bad); sys.exit(bool(bad))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_cli_options() -> None:
    import tyro

    from pmni_method.dataparsers.nerfstudio_normals_dataparser import NerfstudioNormalsDataParserConfig

    config = tyro.cli(
        NerfstudioNormalsDataParserConfig,
        args=["--data", "cap", "--normal-dir", "n", "--pose-init", "file", "--exclude-views", "1", "2",
              "--sphere-margin", "1.2"],
    )
    assert config.normal_dir == "n" and config.pose_init_config().pose_init == "file"
    assert config.exclude_views == (1, 2) and config.sphere_margin == 1.2 and config.mask_dir is None


def test_trains_a_few_steps(bunny_dir: Path, tmp_path: Path) -> None:
    from helpers import tiny_config

    from pmni_method import runner
    from pmni_method.dataparsers.nerfstudio_normals_dataparser import NerfstudioNormalsDataParserConfig

    path = write_transforms(bunny_dir, tmp_path / "capture")
    config = tiny_config(path, tmp_path / "runs", iterations=4)
    config.pipeline.datamanager.dataparser = NerfstudioNormalsDataParserConfig(
        data=path, normal_dir="normals", normal_space="camera", pose_init="file"
    )
    trained = runner.train(config)
    pipeline = trained.trainer.pipeline
    data = pipeline.datamanager.train_dataset.data
    assert data.pose_init == "file" and data.num_views == 8
    # pose_init "file" is pose-free: the poses of transforms.json are refined.
    assert pipeline.model.camera_optimizer.poses.enabled
    assert trained.config_path.is_file()
    assert np.isfinite(pipeline.model.refined_c2w()).all()

    # Exported back as transforms.json: refined poses, the capture's own masks/ folder (not the DiLiGenT mask/).
    from pmni_method.scripts import export as export_cli

    mesh = tmp_path / "out" / "capture.ply"
    assert export_cli.main(export_cli.ExportConfig(load_config=trained.config_path, output=mesh, resolution=16)) == 0
    meta = json.loads(mesh.with_name("capture.transforms.json").read_text())
    assert meta["pmni"]["refined"] and {Path(f["mask_path"]).parent.name for f in meta["frames"]} == {"masks"}
    assert all(f["k1"] == 0.0 for f in meta["frames"])  # a pinhole capture stays one


def test_transforms_json_keeps_the_distortion_of_the_files_it_names() -> None:
    from pmni_method.poses.transforms_json import transforms_json

    dist = np.array([[-0.4, 0.1, 0.0, 0.0, 0.001, 0.0]] * 2)
    K = np.array([[[60.0, 0.0, 39.5], [0.0, 60.0, 31.5], [0.0, 0.0, 1.0]]] * 2)
    meta = transforms_json(np.tile(np.eye(4), (2, 1, 1)), K, 80, 64, [Path("a.exr"), Path("b.exr")], distortion=dist)
    assert [(f["k1"], f["k2"], f["p1"]) for f in meta["frames"]] == [(-0.4, 0.1, 0.001)] * 2
    assert meta["frames"][0]["cx"] == 40.0  # nerfstudio's pixel centres at i + 0.5


def test_ns_train_cli(bunny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ns-train reaches the dataparser by name; nerfstudio's environment variable stands in for the entry point
    until the package is reinstalled with it."""
    from helpers import error_lines, ns_train_args, run

    monkeypatch.setenv(
        "NERFSTUDIO_DATAPARSER_CONFIGS",
        "nerfstudio-normals-data=pmni_method.dataparsers.nerfstudio_normals_spec:nerfstudio_normals_dataparser",
    )
    path = write_transforms(bunny_dir, tmp_path / "capture")
    args = ns_train_args(path, tmp_path / "runs", iterations=2)[:-1]  # [-1] is diligent-mv-data
    args += ["nerfstudio-normals-data", "--normal-space", "camera"]
    out = run(args + ["--normal-dir", "normals"])
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    assert len(list((tmp_path / "runs").rglob("config.yml"))) == 1
    bad = run(args + ["--normal-dir", "nowhere"])
    assert bad.returncode == 2 and "Traceback" not in bad.stdout + bad.stderr
    lines = error_lines(bad)
    assert len(lines) == 1 and f"{path.parent / 'nowhere'}: normal map folder not found" in lines[0], lines
