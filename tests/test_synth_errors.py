"""Tests of pmni-synth's realistic input errors: each option gives the statistics it documents, on a sphere (and a
bowl for concavity), the truth stays available, and synth.json reports what the written files hold."""

from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage
import trimesh
import tyro

from pmni_method import cameras, synth, synth_realistic
from pmni_method.data import io, layout
from pmni_method.data.diligent_mv import load_diligent_mv
from pmni_method.errors import PMNIDataError
from pmni_method.npz import read_npz
from pmni_method.synth_errors import CONCAVITY_SATURATION
from pmni_method.synth_masks import mask_statistics

SMALL = dict(num_views=4, width=64, height=64)
"""Sphere datasets: 4 views, 64x64 px, DiLiGenT's field of view (the conftest focal); about 0.3 s each."""


def _info(folder: Path) -> dict:
    return json.loads((folder / synth.INFO_FILE).read_text())


def _maps(folder: Path, i: int, truth: bool = False):
    """(mask, world normals, camera normals) of view i: stored, or with ``truth`` the true ones."""
    dirs = synth_realistic.TRUE_DIRS if truth else (layout.WORLD_NORMAL_DIR, layout.CAMERA_NORMAL_DIR, layout.MASK_DIR)
    stem = f"{i:03d}"
    world = io.read_exr(folder / dirs[0] / f"{stem}.exr").astype(np.float64)
    camera = io.read_exr(folder / dirs[1] / f"{stem}.exr").astype(np.float64)
    return io.read_mask(folder / dirs[2] / f"{stem}.png"), world, camera


def _cameras(folder: Path, name: str = layout.CAMERAS_FILE):
    arrays = read_npz(folder / name)
    num_views = _info(folder)["options"]["num_views"]
    return [cameras.decompose_projection(arrays[f"world_mat_{i}"]) for i in range(num_views)]


def _angles(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return np.degrees(np.arccos(np.clip(np.sum(a * b, axis=-1), -1, 1)))


def _view_errors(folder: Path, i: int) -> np.ndarray:
    """Angular errors (deg) of the stored world normals against the true ones, over pixels in both masks."""
    mask, world, _ = _maps(folder, i)
    true_mask, true_world, _ = _maps(folder, i, truth=True)
    both = mask & true_mask
    return _angles(world[both], true_world[both])


@pytest.fixture(scope="module")
def make(make_tiny_dataset, sphere_mesh_path):
    return lambda **options: make_tiny_dataset(sphere_mesh_path, **{**SMALL, **options})


@pytest.fixture(scope="module")
def clean(make):
    return make()


@pytest.fixture(scope="module")
def realistic(make):
    return make(realistic=True)


# --- normals ---------------------------------------------------------------------------------------------------------


def test_low_frequency_bias_has_its_mean_and_is_smooth(make):
    amplitude = 5.0
    biased = make(normal_bias_deg=amplitude)
    # Per-pixel noise with the same mean error, for comparison: |N(0, s)| has mean s sqrt(2 / pi).
    noisy = make(normal_noise_deg=amplitude / np.sqrt(2 / np.pi))
    steps = {}
    for name, folder in (("bias", biased), ("noise", noisy)):
        means, jumps = [], []
        for i in range(SMALL["num_views"]):
            mask, _, camera = _maps(folder, i)
            _, _, true_camera = _maps(folder, i, truth=True)
            means.append(_view_errors(folder, i).mean())
            error = camera - true_camera
            for axis in (0, 1):
                both = np.swapaxes(mask, 0, axis)
                both = both[1:] & both[:-1]
                e = np.swapaxes(error, 0, axis)
                jumps.append(np.degrees(np.linalg.norm(e[1:] - e[:-1], axis=-1))[both])
        steps[name] = np.concatenate(jumps)
        if name == "bias":
            # The field is scaled to this mean in every view; pushing limb normals back toward the camera changes it
            # by a few hundredths of a degree.
            np.testing.assert_allclose(means, amplitude, atol=0.15)
    assert np.median(steps["bias"]) < 0.15 * amplitude and np.percentile(steps["bias"], 90) < 0.3 * amplitude
    assert np.median(steps["noise"]) > amplitude


def test_grazing_error_grows_with_one_minus_nz_and_flattens(make):
    amplitude = 20.0
    folder = make(grazing_error_deg=amplitude)
    slant, errors = [], []
    for i in range(SMALL["num_views"]):
        mask, _, camera = _maps(folder, i)
        _, _, true_camera = _maps(folder, i, truth=True)
        slant.append(1.0 - true_camera[mask][:, 2])
        errors.append(_angles(camera[mask], true_camera[mask]))
        # Tilted toward the camera: the stored normal is more frontal than the true one.
        assert np.all(camera[mask][:, 2] >= true_camera[mask][:, 2] - 1e-6)
    slant, errors = np.concatenate(slant), np.concatenate(errors)
    graze = slant > 0.2
    # Error = amplitude (1 - n_z) times a smooth factor of mean 1 and spread 0.25.
    assert np.mean(errors[graze] / slant[graze]) == pytest.approx(amplitude, rel=0.1)
    bins = [np.mean(errors[(slant >= lo) & (slant < lo + 0.2)]) for lo in (0.0, 0.2, 0.4, 0.6)]
    assert all(a < b for a, b in zip(bins, bins[1:])), bins
    assert np.all(errors[slant < 0.01] < 0.5)


def test_concavity_error_follows_the_curvature(make, make_tiny_dataset, tmp_path):
    amplitude = 10.0
    # A sphere is convex everywhere: the proxy is 0.
    sphere = make(concavity_error_deg=amplitude)
    assert _info(sphere)["input_errors"]["normals"]["overall"]["mean_deg"] < 0.05
    # The inside of a unit hemisphere, seen from +z: mean curvature -1, so c = R / CONCAVITY_SATURATION with R the
    # bounding radius of the bowl.
    shell = trimesh.creation.icosphere(subdivisions=4, radius=1.0)
    keep = np.all(shell.vertices[shell.faces][:, :, 2] < -0.1, axis=1)
    bowl = trimesh.Trimesh(shell.vertices, shell.faces[keep])
    bowl.remove_unreferenced_vertices()
    bowl.export(tmp_path / "bowl.ply")
    folder = make_tiny_dataset(tmp_path / "bowl.ply", num_views=4, width=96, height=96, concavity_error_deg=amplitude)
    info = _info(folder)
    inside_view = int(np.argmax([c2w[2, 3] for _, c2w in _cameras(folder)]))
    mask = _maps(folder, inside_view)[0]
    interior = scipy.ndimage.binary_erosion(mask, iterations=4)[mask]
    expected = amplitude * info["bounding_sphere_radius_world"] / CONCAVITY_SATURATION
    assert np.median(_view_errors(folder, inside_view)[interior]) == pytest.approx(expected, rel=0.1)
    outside_view = (inside_view + 2) % 4  # sees the convex outside of the bowl
    assert info["input_errors"]["normals"]["per_view"][outside_view]["mean_deg"] < 0.05


def test_errors_are_one_normal_in_both_frames_facing_the_true_camera(realistic):
    true_cameras = _cameras(realistic, layout.GT_CAMERAS_FILE)
    for i, (K, c2w) in enumerate(true_cameras):
        mask, world, camera = _maps(realistic, i)
        np.testing.assert_allclose(cameras.camera_normals_to_world(camera[mask], c2w), world[mask], atol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(world[mask], axis=-1), 1.0, atol=1e-5)
        assert np.all(world[~mask] == 0) and np.all(camera[~mask] == 0)
        _, dirs = cameras.pixel_rays(K, c2w, *mask.shape, pixels=np.argwhere(mask))
        assert np.all(np.einsum("ij,ij->i", world[mask], dirs) < 0)


def test_the_true_maps_are_kept_beside_the_stored_ones(clean, realistic):
    assert not any((clean / d).exists() for d in synth_realistic.TRUE_DIRS)
    pairs = zip(synth_realistic.TRUE_DIRS, (layout.WORLD_NORMAL_DIR, layout.CAMERA_NORMAL_DIR, layout.MASK_DIR))
    for true_dir, clean_dir in pairs:
        for i in range(SMALL["num_views"]):
            name = f"{i:03d}" + (".png" if "mask" in clean_dir else ".exr")
            assert (realistic / true_dir / name).read_bytes() == (clean / clean_dir / name).read_bytes()
            assert (realistic / clean_dir / name).read_bytes() != (clean / clean_dir / name).read_bytes()
    assert _info(realistic)["input_errors"]["maps_perturbed"] and not _info(clean)["input_errors"]["maps_perturbed"]
    truth = _info(realistic)["input_errors"]["truth"]
    assert truth["world_normals"] == synth_realistic.TRUE_WORLD_NORMAL_DIR and truth["masks"] == "mask_true"
    assert (realistic / layout.GT_MESH_FILE).read_bytes() == (clean / layout.GT_MESH_FILE).read_bytes()


# --- masks -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("offset", [2.0, -2.0])
def test_dilation_and_erosion_move_the_boundary_by_the_offset(make, offset):
    folder = make(mask_offset_px=offset)
    info = _info(folder)["input_errors"]["masks"]
    for i in range(SMALL["num_views"]):
        stored, true = _maps(folder, i)[0], _maps(folder, i, truth=True)[0]
        # Every pixel whose centre lies within |offset| + 1/2 px of the other side is added (removed).
        if offset > 0:
            expected = true | (scipy.ndimage.distance_transform_edt(~true) < offset + 0.5)
        else:
            expected = true & (scipy.ndimage.distance_transform_edt(true) > -offset + 0.5)
        np.testing.assert_array_equal(stored, expected)
        assert info["per_view"][i]["boundary_offset_mean_px"] == pytest.approx(offset, abs=0.2)
    assert info["overall"]["boundary_error_mean_px"] == pytest.approx(abs(offset), abs=0.2)


def test_holes_and_spurs_change_the_iou_by_their_area(make, clean):
    radius, count = 2.0, 3
    disk = int((scipy.ndimage.distance_transform_edt(np.arange(25).reshape(5, 5) != 12) <= radius).sum())  # 13 px
    holes = make(mask_holes=count, mask_blob_radius_px=radius)
    spurs = make(mask_spurs=count, mask_blob_radius_px=radius)
    for i in range(SMALL["num_views"]):
        true = _maps(clean, i)[0]
        with_holes, with_spurs = _maps(holes, i)[0], _maps(spurs, i)[0]
        removed = true & ~with_holes
        assert not (with_holes & ~true).any()
        # Each hole is a whole disk strictly inside the mask (unless two overlap), so the boundary is untouched.
        assert 2 * disk <= removed.sum() <= count * disk
        assert scipy.ndimage.label(removed)[1] >= 2
        assert not (removed & ~scipy.ndimage.binary_erosion(true)).any()
        stats = _info(holes)["input_errors"]["masks"]["per_view"][i]
        assert stats["iou"] == pytest.approx(1 - removed.sum() / true.sum(), abs=1e-12)
        added = with_spurs & ~true
        assert not (true & ~with_spurs).any() and 0 < added.sum() <= count * disk
        # Spurs are attached to the boundary: within one disk diameter of the mask.
        assert np.all(scipy.ndimage.distance_transform_edt(~true)[added] <= 2 * radius + 0.5)
        stats = _info(spurs)["input_errors"]["masks"]["per_view"][i]
        assert stats["iou"] == pytest.approx(true.sum() / with_spurs.sum(), abs=1e-12)
        assert stats["false_positive_px"] == added.sum()


def test_boundary_jitter_gives_its_boundary_error_and_added_pixels_get_normals(make):
    folder = make(mask_boundary_jitter_px=1.5)
    masks = _info(folder)["input_errors"]["masks"]
    # |N(0, 1.5)| has mean 1.2 px; pixel rounding adds a little.
    assert 1.0 < masks["overall"]["boundary_error_mean_px"] < 1.6
    assert abs(masks["overall"]["boundary_offset_mean_px"]) < 0.5
    for i in range(SMALL["num_views"]):
        stored, world, _ = _maps(folder, i)
        true = _maps(folder, i, truth=True)[0]
        assert (stored & ~true).any() and (true & ~stored).any()
        np.testing.assert_allclose(np.linalg.norm(world[stored], axis=-1), 1.0, atol=1e-5)
        # An added pixel carries its nearest true pixel's stored normal (turned at most slightly to face its ray).
        added = stored & ~true
        _, (rows, cols) = scipy.ndimage.distance_transform_edt(~true, return_indices=True)
        assert _angles(world[added], world[rows[added], cols[added]]).max() < 3.0


# --- intrinsics and poses -------------------------------------------------------------------------------------------


def test_intrinsics_error_is_in_the_stored_cameras_and_the_true_ones_are_recorded(make, clean):
    folder = make(focal_error=0.02, principal_point_error_px=3.0)
    info = _info(folder)
    true_K = np.array(info["K"])
    assert info["intrinsics_perturbed"] is True and info["poses_perturbed"] is False
    np.testing.assert_allclose(info["input_errors"]["intrinsics"]["K_true"], true_K)
    stored = _cameras(folder)
    recorded = info["input_errors"]["intrinsics"]["K_stored"]
    for (K, c2w), (K_gt, c2w_gt), (K_clean, c2w_clean), K_info in zip(
        stored, _cameras(folder, layout.GT_CAMERAS_FILE), _cameras(clean), recorded
    ):
        assert abs(K[0, 0] / true_K[0, 0] - 1) == pytest.approx(0.02, abs=1e-9) and K[1, 1] == pytest.approx(K[0, 0])
        assert np.linalg.norm(K[:2, 2] - true_K[:2, 2]) == pytest.approx(3.0, abs=1e-6)
        np.testing.assert_allclose(K, stored[0][0], atol=1e-9)  # one calibration for all views
        np.testing.assert_allclose(K, K_info, atol=1e-9)
        np.testing.assert_allclose(K_gt, K_clean, atol=1e-9)
        np.testing.assert_allclose(c2w, c2w_clean, atol=1e-9)
        np.testing.assert_allclose(c2w_gt, c2w_clean, atol=1e-9)
    per_view = make(focal_error=0.02, principal_point_error_px=3.0, intrinsics_per_view=True)
    principal_points = {tuple(np.round(K[:2, 2], 6)) for K, _ in _cameras(per_view)}
    assert len(principal_points) == SMALL["num_views"]


def test_joint_calibration_moves_the_cameras_so_that_the_object_stays_in_the_image(make):
    error = dict(focal_error=0.02, principal_point_error_px=3.0)
    joint, alone = make(joint_calibration=True, **error), make(**error)
    info, alone_info = _info(joint), _info(alone)
    assert info["poses_perturbed"] is True and info["intrinsics_perturbed"] is True
    centre = np.array(info["bounding_sphere_centre_world"])
    for (K, c2w), (K_alone, _), (K_gt, c2w_gt) in zip(
        _cameras(joint), _cameras(alone), _cameras(joint, layout.GT_CAMERAS_FILE)
    ):
        np.testing.assert_allclose(K, K_alone, atol=1e-9)  # the same intrinsics error, drawn alike
        np.testing.assert_allclose(c2w[:3, :3] @ c2w[:3, :3].T, np.eye(3), atol=1e-9)
        distance = np.linalg.norm(c2w[:3, 3] - centre) / np.linalg.norm(c2w_gt[:3, 3] - centre)
        assert distance == pytest.approx(K[0, 0] / K_gt[0, 0], abs=1e-9)
        seen, _ = cameras.project_points(K_gt, c2w_gt, centre[None])
        stored, _ = cameras.project_points(K, c2w, centre[None])
        np.testing.assert_allclose(stored, seen, atol=1e-6)
    # The object's image barely moves under the joint error; alone, the same error misplaces it by pixels.
    joint_px = info["input_errors"]["intrinsics"]["reprojection_px"]
    alone_px = alone_info["input_errors"]["intrinsics"]["reprojection_px"]
    assert alone_px["mean"] > 2.0 and joint_px["max"] < 0.1 * alone_px["mean"]
    assert info["input_errors"]["settings"]["joint_calibration"] is True


def test_pose_noise_composes_with_the_realistic_bundle(make, realistic):
    pose = dict(pose_rotation_noise_deg=1.0, pose_translation_noise=0.01)
    both = make(realistic=True, **pose)
    poses_only = make(**pose)
    for (K, c2w), (K_real, _), (_, c2w_pose) in zip(_cameras(both), _cameras(realistic), _cameras(poses_only)):
        np.testing.assert_allclose(K, K_real, atol=1e-9)
        np.testing.assert_allclose(c2w, c2w_pose, atol=1e-9)
    true_cameras = zip(_cameras(both, layout.GT_CAMERAS_FILE), _cameras(realistic, layout.GT_CAMERAS_FILE))
    for (K, c2w), (K_gt, c2w_gt) in true_cameras:
        np.testing.assert_allclose(K, K_gt, atol=1e-9)
        np.testing.assert_allclose(c2w, c2w_gt, atol=1e-9)
    # Maps are rendered with the true cameras: the pose noise leaves them exactly as without it.
    for sub in (layout.WORLD_NORMAL_DIR, layout.MASK_DIR, synth_realistic.TRUE_WORLD_NORMAL_DIR):
        for p in sorted((realistic / sub).iterdir()):
            assert (both / sub / p.name).read_bytes() == p.read_bytes()


# --- the bundle ------------------------------------------------------------------------------------------------------


def test_realistic_bundle_magnitudes_and_determinism(make, realistic):
    info = _info(realistic)["input_errors"]
    assert 6.0 < info["normals"]["overall"]["mean_deg"] < 8.5
    assert 1.0 <= info["masks"]["overall"]["boundary_error_mean_px"] <= 2.0
    offsets = info["intrinsics"]["focal_offset_px"]
    assert abs(offsets[0]) == pytest.approx(0.01 * _info(realistic)["K"][0][0])
    again = make(realistic=True)
    other = make(realistic=True, error_seed=1)
    same_as_seed = make(realistic=True, seed=3)
    for sub in (layout.WORLD_NORMAL_DIR, layout.CAMERA_NORMAL_DIR, layout.MASK_DIR):
        for p in sorted((realistic / sub).iterdir()):
            assert (again / sub / p.name).read_bytes() == p.read_bytes()
            assert (other / sub / p.name).read_bytes() != p.read_bytes()
    assert (again / layout.CAMERAS_FILE).read_bytes() == (realistic / layout.CAMERAS_FILE).read_bytes()
    other_info = _info(other)["input_errors"]
    assert 6.0 < other_info["normals"]["overall"]["mean_deg"] < 8.5
    assert other_info["settings"]["seed"] == 1 and _info(same_as_seed)["input_errors"]["settings"]["seed"] == 3


def test_realistic_options_can_be_overridden_one_by_one(tmp_path):
    args = ["--mesh", "m.obj", "--output", str(tmp_path), "--realistic", "--normal-bias-deg", "0", "--mask-holes", "0"]
    errors = synth_realistic.resolve(tyro.cli(synth.SynthConfig, args=args))
    assert errors.normals.bias_deg == 0 and errors.masks.holes == 0
    assert errors.normals.grazing_deg == synth_realistic.REALISTIC["grazing_error_deg"] > 0
    assert errors.masks.spurs == synth_realistic.REALISTIC["mask_spurs"] > 0
    plain = synth_realistic.resolve(tyro.cli(synth.SynthConfig, args=args[:4] + ["--grazing-error-deg", "3"]))
    assert plain.normals.grazing_deg == 3 and plain.normals.bias_deg == 0 and not plain.masks.active
    assert not plain.intrinsics_active


def test_synth_json_statistics_match_the_written_files(realistic):
    info = _info(realistic)["input_errors"]
    everything = []
    for i in range(SMALL["num_views"]):
        errors = _view_errors(realistic, i)
        everything.append(errors)
        recorded = info["normals"]["per_view"][i]
        for key, value in (("mean_deg", errors.mean()), ("median_deg", np.median(errors)),
                           ("p90_deg", np.percentile(errors, 90)), ("num_pixels", len(errors))):
            assert recorded[key] == pytest.approx(value, rel=1e-9, abs=1e-9), key
        stored, true = _maps(realistic, i)[0], _maps(realistic, i, truth=True)[0]
        masks = info["masks"]["per_view"][i]
        assert masks["iou"] == pytest.approx((stored & true).sum() / (stored | true).sum(), abs=1e-12)
        assert masks["false_negative_px"] == (true & ~stored).sum()
        assert masks == pytest.approx(mask_statistics(stored, true))
    assert info["normals"]["overall"]["mean_deg"] == pytest.approx(np.concatenate(everything).mean(), rel=1e-9)


def test_outputs_load_with_the_project_loader(realistic, make_tiny_dataset, shared_meshes):
    warnings = []
    data = load_diligent_mv(realistic, data_checks="warn", warn=warnings.append)
    assert data.gt_c2w is not None
    for pos, i in enumerate(data.view_ids):
        stored, world, _ = _maps(realistic, i)
        np.testing.assert_array_equal(data.masks[pos], stored)
        loaded = data.normalisation.normals_to_world(data.normals[pos][stored])
        np.testing.assert_allclose(loaded, world[stored], atol=1e-5)
        np.testing.assert_allclose(data.K[pos], _cameras(realistic)[i][0], rtol=1e-9, atol=1e-9)
    bunny = make_tiny_dataset(shared_meshes / "stanford-bunny.obj", world_scale=1000.0, realistic=True)
    load_diligent_mv(bunny, data_checks="warn", warn=warnings.append)
    assert 6.0 < _info(bunny)["input_errors"]["normals"]["overall"]["mean_deg"] < 9.5


@pytest.mark.parametrize(
    "bad, option",
    [(dict(normal_bias_deg=-1.0), "--normal-bias-deg"), (dict(mask_holes=-1), "--mask-holes"),
     (dict(focal_error=1.5), "--focal-error"), (dict(mask_blob_radius_px=0.0), "--mask-blob-radius-px"),
     (dict(grazing_error_deg=float("nan")), "--grazing-error-deg"), (dict(normal_bias_cells=1), "--normal-bias-cells")],
)
def test_bad_error_options_are_refused_in_one_line(tmp_path, sphere_mesh_path, bad, option):
    config = synth.SynthConfig(mesh=sphere_mesh_path, output=tmp_path / "out", **bad)
    with pytest.raises(PMNIDataError) as err:
        synth.render_dataset(config)
    assert str(err.value).startswith(option) and "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


def test_an_erosion_that_empties_a_mask_is_refused(tmp_path, sphere_mesh_path):
    config = synth.SynthConfig(mesh=sphere_mesh_path, output=tmp_path / "out", mask_offset_px=-1000.0, **SMALL)
    with pytest.raises(PMNIDataError, match="mask empty"):
        synth.render_dataset(config)
    assert list(tmp_path.iterdir()) == []


def test_help_states_the_realistic_values():
    source = inspect.getsource(synth.SynthConfig)
    for name, value in synth_realistic.REALISTIC.items():
        doc = source.split(f"\n    {name}:")[1].splitlines()[1]
        assert f"(default 0; realistic {value:g})" in doc, name


def test_cli_summarises_the_errors(monkeypatch, capsys, tmp_path, sphere_mesh_path):
    from pmni_method.scripts import synth as synth_cli

    args = ["--mesh", str(sphere_mesh_path), "--output", str(tmp_path / "out"), "--num-views", "2", "--width", "48",
            "--height", "48", "--focal", "350", "--realistic"]
    monkeypatch.setattr(sys, "argv", ["pmni-synth", *args])
    with pytest.raises(SystemExit) as exit_info:
        synth_cli.entrypoint()
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    for words in ("normal error", "deg mean", "true maps    normal_world_space_true", "mask error   IoU", "intrinsics"):
        assert words in out, words


def test_views_that_miss_the_object_stay_empty(make_tiny_dataset, tmp_path):
    # A square seen edge-on by some cameras of a 4-view ring: those views have empty masks, errors or not.
    square = trimesh.Trimesh(vertices=[[-1, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0]], faces=[[0, 1, 2], [0, 2, 3]])
    square.export(tmp_path / "square.ply")
    folder = make_tiny_dataset(tmp_path / "square.ply", num_views=4, width=32, height=32, realistic=True)
    masks = [_maps(folder, i)[0] for i in range(4)]
    true_masks = [_maps(folder, i, truth=True)[0] for i in range(4)]
    assert any(m.any() for m in true_masks) and not all(m.any() for m in true_masks)
    for stored, true in zip(masks, true_masks):
        assert stored.any() == true.any()


def test_pmni_eval_scores_against_the_truth_and_reports_the_inputs_error(realistic):
    from pmni_method.evaluation import evaluate, reference_maps, true_inputs

    # The true sphere scored against the perturbed maps would read their ~7 degrees of error as its own.
    metrics = evaluate(realistic / layout.GT_MESH_FILE, realistic)
    info = _info(realistic)["input_errors"]
    assert metrics["reference_maps"].startswith("true maps")
    assert metrics["normals"]["all"]["mae_deg"] < 1.5
    assert metrics["input_maps_error"]["normal_mae_deg"] == pytest.approx(info["normals"]["overall"]["mean_deg"], abs=0.05)
    assert metrics["input_maps_error"]["mask_iou"] < 1.0
    data = load_diligent_mv(realistic, data_checks="off")
    ref = reference_maps(realistic, data)
    true_K = _cameras(realistic, layout.GT_CAMERAS_FILE)
    for pos, i in enumerate(data.view_ids):
        np.testing.assert_allclose(ref.K[pos], true_K[i][0], rtol=1e-9, atol=1e-9)
        np.testing.assert_array_equal(ref.masks[pos], _maps(realistic, i, truth=True)[0])
    assert not np.allclose(ref.K, data.K)
    # The same truth as a dataset (what benchmarks render against): true maps, masks and intrinsics.
    true, true_intrinsics = true_inputs(realistic, data)
    assert true_intrinsics and true.view_ids == data.view_ids
    np.testing.assert_array_equal(true.K, ref.K)
    np.testing.assert_array_equal(true.masks, ref.masks)


def test_pmni_eval_of_a_clean_dataset_uses_its_own_maps(clean):
    from pmni_method.evaluation import evaluate, true_inputs

    metrics = evaluate(clean / layout.GT_MESH_FILE, clean)
    assert metrics["input_maps_error"] is None and metrics["reference_maps"].startswith("stored maps")
    assert true_inputs(clean, load_diligent_mv(clean, data_checks="off")) is None
    assert metrics["normals"]["all"]["mae_deg"] < 1.5
