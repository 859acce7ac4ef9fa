"""Pose-free data side: pose perturbation, ring initialisation, pose files, pose metrics, and the loader's pose_init."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from pmni_method import cameras, synth
from pmni_method.data.diligent_mv import load_diligent_mv
from pmni_method.data.layout import CAMERA_NORMAL_DIR
from pmni_method.errors import PMNIDataError
from pmni_method.npz import write_npz
from pmni_method.poses import starts
from pmni_method.poses.files import load_poses_file
from pmni_method.poses.maths import align_cameras, pose_errors, rotation_errors_deg
from pmni_method.poses.starts import PoseInitConfig, perturb_poses, ring_initialisation


def _identity_cameras(n: int) -> np.ndarray:
    c2w = np.tile(np.eye(4), (n, 1, 1))
    c2w[:, :3, 3] = np.random.default_rng(123).normal(size=(n, 3))
    return c2w


def _similarity(seed: int):
    rng = np.random.default_rng(seed)
    return float(rng.uniform(0.2, 5.0)), Rotation.random(random_state=seed).as_matrix(), rng.normal(size=3) * 3.0


def _apply_similarity(c2w: np.ndarray, s: float, R: np.ndarray, t: np.ndarray) -> np.ndarray:
    out = np.array(c2w, copy=True)
    out[:, :3, :3] = R @ c2w[:, :3, :3]
    out[:, :3, 3] = s * c2w[:, :3, 3] @ R.T + t
    return out


def _one_line(error: PMNIDataError, path: Path) -> None:
    message = str(error)
    assert "\n" not in message and message.startswith(f"{path}: "), message


# ------------------------------------------------------------------------------------------------- perturbation


def test_perturbation_is_seeded_and_zero_is_identity() -> None:
    c2w = cameras.ring_poses(10, 3.0, 10.0)
    a = perturb_poses(c2w, 5.0, 0.05, seed=3, reference_radius=3.0)
    np.testing.assert_array_equal(a, perturb_poses(c2w, 5.0, 0.05, seed=3, reference_radius=3.0))
    assert not np.allclose(a, perturb_poses(c2w, 5.0, 0.05, seed=4, reference_radius=3.0))
    np.testing.assert_array_equal(perturb_poses(c2w, 0.0, 0.0, seed=3), c2w)
    # Rotation noise alone turns each camera about its own centre.
    rot_only = perturb_poses(c2w, 5.0, 0.0, seed=3)
    np.testing.assert_array_equal(rot_only[:, :3, 3], c2w[:, :3, 3])
    np.testing.assert_allclose(rot_only[:, :3, :3], a[:, :3, :3])  # same draws whatever the other magnitude
    # A Generator seed is advanced, as pmni-synth uses it.
    rng = np.random.default_rng(3)
    np.testing.assert_array_equal(perturb_poses(c2w, 5.0, 0.05, rng, 3.0), a)


def test_half_normal_noise_statistics() -> None:
    n, sigma_deg, frac, radius = 4000, 4.0, 0.05, 2.5
    c2w = _identity_cameras(n)
    noisy = perturb_poses(c2w, sigma_deg, frac, seed=0, reference_radius=radius)
    angles = rotation_errors_deg(noisy, c2w)
    # |N(0, s)| has mean s sqrt(2 / pi) and RMS s.
    assert abs(angles.mean() / (sigma_deg * np.sqrt(2.0 / np.pi)) - 1.0) < 0.04
    assert abs(np.sqrt((angles**2).mean()) / sigma_deg - 1.0) < 0.04
    offsets = noisy[:, :3, 3] - c2w[:, :3, 3]
    np.testing.assert_allclose(offsets.std(axis=0), frac * radius, rtol=0.05)
    assert np.abs(offsets.mean(axis=0)).max() < 0.1 * frac * radius
    # The rotation axes are uniformly spread, not biased to one direction.
    axes = Rotation.from_matrix(noisy[:, :3, :3] @ np.swapaxes(c2w[:, :3, :3], 1, 2)).as_rotvec()
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    assert np.abs(axes.mean(axis=0)).max() < 0.06


def test_fixed_noise_has_exact_magnitude() -> None:
    c2w = _identity_cameras(50)
    noisy = perturb_poses(c2w, 7.0, 0.1, seed=1, reference_radius=2.0, distribution="fixed")
    np.testing.assert_allclose(rotation_errors_deg(noisy, c2w), 7.0, atol=1e-9)
    np.testing.assert_allclose(np.linalg.norm(noisy[:, :3, 3] - c2w[:, :3, 3], axis=1), 0.2, atol=1e-12)


def test_synth_uses_the_shared_perturbation() -> None:
    assert synth.perturb_poses is starts.perturb_poses
    assert synth.POSE_NOISE_DEFINITION is starts.POSE_NOISE_DEFINITION


# ------------------------------------------------------------------------------------------------- ring


@pytest.mark.parametrize("reverse", [False, True])
def test_ring_looks_at_origin_evenly_spaced(reverse: bool) -> None:
    n, radius, up = 12, 3.5, np.array([0.0, 0.0, 1.0])
    c2w = ring_initialisation(n, radius, (-10.0, 20.0), up=up, start_azimuth_deg=30.0, reverse=reverse)
    assert c2w.shape == (n, 4, 4)
    centres = c2w[:, :3, 3]
    np.testing.assert_allclose(np.linalg.norm(centres, axis=1), radius)
    # Optical axis (OpenCV +z) points at the origin; image-up (-y) leans along the ring's up.
    np.testing.assert_allclose(c2w[:, :3, 2], -centres / radius, atol=1e-12)
    assert np.all(-c2w[:, :3, 1] @ up > 0)
    np.testing.assert_allclose(np.linalg.det(c2w[:, :3, :3]), 1.0)
    elevation = np.degrees(np.arcsin(centres @ up / radius))
    np.testing.assert_allclose(elevation, np.linspace(-10.0, 20.0, n), atol=1e-9)
    azimuth = np.degrees(np.arctan2(centres[:, 1], centres[:, 0]))  # for up = z, ring_poses' e0 is x
    steps = (np.diff(azimuth) + 180.0) % 360.0 - 180.0
    np.testing.assert_allclose(steps, (-1.0 if reverse else 1.0) * 360.0 / n, atol=1e-9)
    np.testing.assert_allclose(azimuth[0], 30.0, atol=1e-9)


def test_ring_single_elevation_matches_cameras_ring_poses() -> None:
    np.testing.assert_allclose(ring_initialisation(8, 2.0, 15.0), cameras.ring_poses(8, 2.0, 15.0))
    with pytest.raises(ValueError, match="radius"):
        ring_initialisation(8, -1.0)
    with pytest.raises(ValueError, match="elevation"):
        ring_initialisation(8, 2.0, (0.0, 90.0))


# ------------------------------------------------------------------------------------------------- pose files


def _world_poses() -> tuple[np.ndarray, cameras.Normalisation]:
    scale_mat = np.eye(4)
    scale_mat[:3, :3] = 40.0 * Rotation.from_euler("xyz", [0.3, -0.2, 0.5]).as_matrix()
    scale_mat[:3, 3] = [5.0, -2.0, 7.0]
    norm = cameras.Normalisation(scale_mat)
    c2w_norm = cameras.ring_poses(5, 3.0, 10.0)
    world = np.stack([np.eye(4)] * 5)
    world[:, :3, :3] = np.einsum("ij,njk->nik", scale_mat[:3, :3] / 40.0, c2w_norm[:, :3, :3])
    world[:, :3, 3] = norm.to_world(c2w_norm[:, :3, 3])
    return world, norm


@pytest.mark.parametrize("fmt", ["npz", "npz-scale", "npy44", "npy34", "txt-blocks", "txt-rows", "json"])
def test_load_poses_file_formats(tmp_path: Path, fmt: str) -> None:
    world, norm = _world_poses()
    expected = norm.c2w_to_normalised(world)
    ids = [3, 4, 5, 6, 7]
    K = np.array([[100.0, 0, 20], [0, 100.0, 15], [0, 0, 1]])
    if fmt.startswith("npz"):
        path = tmp_path / "cams.npz"
        arrays = {f"world_mat_{v}": cameras.compose_world_mat(K, c) for v, c in zip(ids, world)}
        if fmt == "npz-scale":
            arrays.update({f"scale_mat_{v}": norm.scale_mat for v in ids})
        write_npz(path, arrays)
    elif fmt.startswith("npy"):
        path = tmp_path / "cams.npy"
        np.save(path, world if fmt == "npy44" else world[:, :3])
    elif fmt == "txt-blocks":
        path = tmp_path / "cams.txt"
        np.savetxt(path, world.reshape(-1, 4))
    elif fmt == "txt-rows":
        path = tmp_path / "cams.txt"
        np.savetxt(path, world[:, :3].reshape(5, 12))
    else:
        path = tmp_path / "cams.json"
        path.write_text(json.dumps([{"view": v, "c2w": c.tolist()} for v, c in reversed(list(zip(ids, world)))]))
    got = load_poses_file(path, ids, norm)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    # Without a normalisation the file's own frame comes back (world units, or the npz's normalised frame).
    raw = load_poses_file(path)
    np.testing.assert_allclose(raw, expected if fmt == "npz-scale" else world, atol=1e-6)


@pytest.mark.parametrize(
    "name, content, problem",
    [
        ("missing.npy", None, "not found"),
        ("cams.yaml", "x: 1", "unknown poses file type"),
        ("cams.json", "{not json", "not valid JSON"),
        ("cams.json", json.dumps([{"view": 0}]), '"view" and "c2w"'),
        ("cams.json", json.dumps([{"view": 3, "c2w": np.eye(4).tolist()}]), "no pose for views [0, 1, 2, 4]"),
        ("cams.npy", np.zeros((5, 2, 2)), "has shape"),
        ("cams.npy", np.tile(np.diag([1.0, 1.0, -1.0, 1.0]), (5, 1, 1)), "not a rotation"),
        ("cams.npy", np.tile(np.eye(4), (4, 1, 1)), "4 poses but the dataset has 5 views"),
        ("cams.txt", "1 2 3\n4 5\n", "cannot read"),
        ("cams.npz", {"foo": np.eye(4)}, "no world_mat_<i> keys"),
        ("cams.npz", b"not a zip", "unreadable .npz"),
    ],
)
def test_load_poses_file_bad(tmp_path: Path, name: str, content, problem: str) -> None:
    path = tmp_path / name
    if isinstance(content, str):
        path.write_text(content)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, dict):
        write_npz(path, content)
    elif content is not None:
        np.save(path, content)
    with pytest.raises(PMNIDataError) as info:
        load_poses_file(path, [0, 1, 2, 3, 4])
    assert problem in str(info.value)
    _one_line(info.value, path)


# ------------------------------------------------------------------------------------------------- metrics


def test_rotation_errors() -> None:
    R = Rotation.random(20, random_state=0).as_matrix()
    np.testing.assert_allclose(rotation_errors_deg(R, R), 0.0, atol=1e-6)
    angles = np.array([0.01, 1.0, 30.0, 90.0, 179.9])
    axes = np.random.default_rng(0).normal(size=(5, 3))
    delta = Rotation.from_rotvec(axes / np.linalg.norm(axes, axis=1, keepdims=True) * np.radians(angles)[:, None])
    np.testing.assert_allclose(rotation_errors_deg(delta.as_matrix() @ R[:5], R[:5]), angles, atol=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pose_errors_undo_a_similarity(seed: int) -> None:
    gt = cameras.ring_poses(8, 3.0, np.linspace(-5.0, 25.0, 8))
    s, R, t = _similarity(seed)
    est = _apply_similarity(gt, s, R, t)
    errors = pose_errors(est, gt)
    assert errors["rotation_deg_mean"] < 1e-6 and max(errors["rotation_deg"]) < 1e-6
    assert errors["relative_rotation_deg_mean"] < 1e-6
    assert errors["translation_mean"] < 1e-9 and errors["translation_relative_median"] < 1e-9
    assert len(errors["translation"]) == 8
    # The alignment is the inverse similarity: applying it to the estimate gives back the truth.
    T = np.array(errors["alignment"])
    np.testing.assert_allclose(T[:3, :3], R.T / s, atol=1e-9)
    np.testing.assert_allclose(errors["alignment_scale"], 1.0 / s)
    aligned, T2 = align_cameras(est, gt)
    np.testing.assert_allclose(aligned, gt, atol=1e-9)
    np.testing.assert_allclose(T2, T)


def test_transform_to_world_moves_world_points_like_the_normalised_alignment() -> None:
    world, norm = _world_poses()
    gt = norm.c2w_to_normalised(world)
    est = _apply_similarity(gt, *_similarity(5))
    T_world = norm.transform_to_world(np.array(pose_errors(est, gt)["alignment"]))
    est_world_centres = norm.to_world(est[:, :3, 3])
    moved = est_world_centres @ T_world[:3, :3].T + T_world[:3, 3]
    np.testing.assert_allclose(moved, world[:, :3, 3], atol=1e-6)


def test_pose_errors_measure_noise_and_reject_degenerate_rigs() -> None:
    gt = cameras.ring_poses(16, 3.0, 10.0)
    noisy = perturb_poses(gt, 3.0, 0.0, seed=0, distribution="fixed")
    errors = pose_errors(noisy, gt)
    np.testing.assert_allclose(errors["rotation_deg"], 3.0, atol=1e-6)
    np.testing.assert_allclose(errors["orbit_radius"], 3.0 * np.cos(np.radians(10.0)))
    # One camera of 16 turned by 3 degrees: it takes part in 15 of the 120 view pairs, each off by 3 degrees.
    one = gt.copy()
    one[5] = perturb_poses(gt[5:6], 3.0, 0.0, seed=1, distribution="fixed")[0]
    np.testing.assert_allclose(pose_errors(one, gt)["relative_rotation_deg_mean"], 3.0 * 15 / 120, atol=1e-6)
    line = np.tile(np.eye(4), (4, 1, 1))
    line[:, :3, 3] = np.outer(np.arange(4.0), [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="collinear"):
        pose_errors(line, gt[:4])
    with pytest.raises(ValueError, match="at least 3"):
        align_cameras(gt[:2], gt[:2])


# ------------------------------------------------------------------------------------------------- loader / dataparser


def test_default_init_is_unchanged(bunny_dir: Path) -> None:
    data = load_diligent_mv(bunny_dir, load_depth=False)
    assert data.gt_c2w is None  # a clean dataset's stored poses are the truth
    gt = load_diligent_mv(bunny_dir, load_depth=False, pose_init=PoseInitConfig(pose_init="gt"))
    np.testing.assert_array_equal(gt.c2w, data.c2w)


def test_noisy_init_through_dataparser(bunny_dir: Path) -> None:
    from pmni_method.dataparsers.diligent_mv_dataparser import DiligentMVDataParserConfig

    clean = load_diligent_mv(bunny_dir, load_depth=False)
    distance = np.linalg.norm(clean.c2w[:, :3, 3], axis=1).mean()
    config = DiligentMVDataParserConfig(
        data=bunny_dir,
        exclude_views=(2, 5),
        pose_init="noisy",
        pose_noise_rotation_deg=6.0,
        pose_noise_translation=0.04,
        pose_noise_seed=11,
        pose_noise_distribution="fixed",
        load_depth=False,
        normal_dir=CAMERA_NORMAL_DIR,
    )
    parser = config.setup()
    train, test = parser.get_dataparser_outputs("train"), parser.get_dataparser_outputs("test")
    data = parser.load()
    np.testing.assert_allclose(data.gt_c2w, clean.c2w)
    np.testing.assert_allclose(rotation_errors_deg(data.c2w, data.gt_c2w), 6.0, atol=1e-6)
    offsets = np.linalg.norm(data.c2w[:, :3, 3] - data.gt_c2w[:, :3, 3], axis=1)
    np.testing.assert_allclose(offsets, 0.04 * distance, rtol=1e-9)
    # Both splits see the same initial poses, and nerfstudio gets them.
    for out in (train, test):
        subset = out.metadata["pmni_data"]
        expected = np.stack([data.c2w[data.view_ids.index(v)] for v in subset.view_ids])
        np.testing.assert_allclose(subset.c2w, expected)
        np.testing.assert_allclose(
            out.cameras.camera_to_worlds.numpy(), cameras.opencv_to_nerfstudio_c2w(expected)[:, :3], atol=1e-6
        )
    assert train.metadata["view_ids"] == [0, 1, 3, 4, 6, 7] and test.metadata["view_ids"] == [2, 5]

    # The default half-normal draw is reproducible and has the requested scale (8 views: loose bounds).
    half = load_diligent_mv(
        bunny_dir, load_depth=False, pose_init=PoseInitConfig(pose_init="noisy", pose_noise_rotation_deg=6.0),
        normal_dir=CAMERA_NORMAL_DIR,
    )
    np.testing.assert_array_equal(half.c2w, perturb_poses(clean.c2w, 6.0, 0.05, 0, distance))
    angles = rotation_errors_deg(half.c2w, half.gt_c2w)
    assert 0.5 < angles.mean() < 12.0 and angles.max() < 4 * 6.0


def test_noisy_init_perturbs_the_true_poses(make_tiny_dataset, sphere_mesh_path: Path) -> None:
    folder = make_tiny_dataset(sphere_mesh_path, width=32, height=32, pose_rotation_noise_deg=5.0)
    stored = load_diligent_mv(folder, load_depth=False)
    noisy = load_diligent_mv(
        folder, load_depth=False, pose_init=PoseInitConfig(pose_init="noisy", pose_noise_distribution="fixed"),
        normal_dir=CAMERA_NORMAL_DIR,
    )
    np.testing.assert_allclose(noisy.gt_c2w, stored.gt_c2w)
    np.testing.assert_allclose(rotation_errors_deg(noisy.c2w, stored.gt_c2w), 5.0, atol=1e-6)


def test_ring_init_through_loader(bunny_dir: Path) -> None:
    clean = load_diligent_mv(bunny_dir, load_depth=False)
    distance = float(np.linalg.norm(clean.c2w[:, :3, 3], axis=1).mean())
    # pmni-synth's rig is a ring at 10 degrees elevation starting on +z around +y: the ring guess reproduces it.
    data = load_diligent_mv(
        bunny_dir, load_depth=False, normal_dir=CAMERA_NORMAL_DIR,
        pose_init=PoseInitConfig(
            pose_init="ring", ring_elevation_deg=(10.0, 10.0), ring_radius=distance, ring_elevation_search_deg=0.0
        ),
    )
    assert data.view_ids == clean.view_ids and data.c2w.shape == (8, 4, 4) and data.pose_init == "ring"
    np.testing.assert_array_equal(data.K, clean.K)
    np.testing.assert_allclose(data.gt_c2w, clean.c2w)
    np.testing.assert_allclose(data.c2w, clean.c2w, atol=1e-6)
    # A flat ring of another radius is a different start, but a similarity away in centres only.
    flat = load_diligent_mv(
        bunny_dir, load_depth=False, pose_init=PoseInitConfig(pose_init="ring", ring_radius=5.0, ring_elevation_search_deg=0.0),
        downscale_factor=2,
        normal_dir=CAMERA_NORMAL_DIR,
    )
    np.testing.assert_allclose(np.linalg.norm(flat.c2w[:, :3, 3], axis=1), 5.0)
    np.testing.assert_allclose(flat.K, cameras.downscale_intrinsics(clean.K, 2))
    assert pose_errors(flat.c2w, flat.gt_c2w)["rotation_deg_mean"] > 1.0


def test_file_init_through_loader(bunny_dir: Path, tmp_path: Path) -> None:
    clean = load_diligent_mv(bunny_dir, load_depth=False)
    norm = clean.normalisation
    world = np.stack([np.eye(4)] * clean.num_views)
    world[:, :3, :3] = clean.c2w[:, :3, :3]  # scale_mat of pmni-synth has no rotation
    world[:, :3, 3] = norm.to_world(clean.c2w[:, :3, 3])
    path = tmp_path / "sfm.json"
    path.write_text(json.dumps([{"view": v, "c2w": c.tolist()} for v, c in zip(clean.view_ids, world)]))
    data = load_diligent_mv(
        bunny_dir, load_depth=False, pose_init=PoseInitConfig(pose_init="file", poses_file=path),
        normal_dir=CAMERA_NORMAL_DIR,
    )
    np.testing.assert_allclose(data.c2w, clean.c2w, atol=1e-9)
    np.testing.assert_allclose(data.gt_c2w, clean.c2w)
    # cameras_sphere.npz itself is a valid poses file.
    options = PoseInitConfig(pose_init="file", poses_file=bunny_dir / "cameras_sphere.npz")
    same = load_diligent_mv(bunny_dir, load_depth=False, pose_init=options, normal_dir=CAMERA_NORMAL_DIR)
    np.testing.assert_allclose(same.c2w, clean.c2w, atol=1e-9)


@pytest.mark.parametrize(
    "options, problem",
    [
        (dict(pose_init="file"), "poses_file: required"),
        (dict(pose_init="gt", poses_file=Path("x.npy")), "but pose_init is 'gt'"),
        (dict(pose_init="ring", ring_radius=0.5), "ring_radius"),
        (dict(pose_init="ring", ring_elevation_search_deg=-1.0), "ring_elevation_search_deg"),
        (dict(pose_init="ring", ring_elevation_search_deg=float("nan")), "ring_elevation_search_deg"),
        (dict(pose_init="noisy", pose_noise_rotation_deg=-1.0), "pose_noise_rotation_deg"),
        (dict(pose_init="sideways"), "pose_init"),
    ],
)
def test_bad_pose_options(bunny_dir: Path, options: dict, problem: str) -> None:
    with pytest.raises(PMNIDataError, match=problem) as info:
        load_diligent_mv(bunny_dir, load_depth=False, pose_init=PoseInitConfig(**options), normal_dir=CAMERA_NORMAL_DIR)
    assert "\n" not in str(info.value)


def test_bad_poses_file_through_dataparser_is_one_red_line(bunny_dir: Path, tmp_path: Path, capsys) -> None:
    from pmni_method.dataparsers.diligent_mv_dataparser import DiligentMVDataParserConfig

    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((3, 4, 4)))
    parser = DiligentMVDataParserConfig(
        data=bunny_dir, pose_init="file", poses_file=bad, load_depth=False, normal_dir=CAMERA_NORMAL_DIR
    ).setup()
    with pytest.raises(SystemExit) as info:
        parser.get_dataparser_outputs("train")
    assert info.value.code == 2
    assert str(bad) in capsys.readouterr().out


def test_pose_modules_import_without_image_libraries_or_the_data_loader() -> None:
    """The pose maths, starts and files run in a process that has neither OpenCV / OpenEXR, torch nor data/."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from pmni_method.poses import files, maths, starts\n"
        "print(sorted(m for m in ('cv2', 'OpenEXR', 'torch', 'nerfstudio', 'pmni_method.data') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
