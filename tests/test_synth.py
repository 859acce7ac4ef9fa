"""Tests of the synthetic dataset generator: layout, exactness of the ground truth, noise, determinism, CLI errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import trimesh

from pmni_method import cameras
from pmni_method.data import io, layout
from pmni_method import synth
from pmni_method.errors import PMNIDataError
from pmni_method.npz import read_npz
from pmni_method.scripts import synth as synth_cli
from pmni_method.synth_noise import perturb_normals

REPO_ROOT = Path(__file__).resolve().parents[1]


def _info(folder: Path) -> dict:
    return json.loads((folder / synth.INFO_FILE).read_text())


def _cameras(folder: Path, name: str = layout.CAMERAS_FILE):
    """(K, c2w, scale_mat) per view, recovered from the npz by decomposition."""
    arrays = read_npz(folder / name)
    n = _info(folder)["options"]["num_views"]
    out = []
    for i in range(n):
        K, c2w = cameras.decompose_projection(arrays[f"world_mat_{i}"])
        out.append((K, c2w, arrays[f"scale_mat_{i}"]))
    return out


def _view(folder: Path, i: int):
    stem = f"{i:03d}"
    mask = io.read_mask(folder / layout.MASK_DIR / f"{stem}.png")
    world = io.read_exr(folder / layout.WORLD_NORMAL_DIR / f"{stem}.exr")
    camera = io.read_exr(folder / layout.CAMERA_NORMAL_DIR / f"{stem}.exr")
    depth = np.load(folder / layout.DEPTH_DIR / f"{stem}.npy")
    return mask, world, camera, depth


def _pixel_grid(mask: np.ndarray) -> np.ndarray:
    rows, cols = np.nonzero(mask)
    return np.stack([rows, cols], axis=-1)


def _backproject(K: np.ndarray, c2w: np.ndarray, pixels: np.ndarray, depth: np.ndarray) -> np.ndarray:
    uv1 = np.stack([pixels[:, 1], pixels[:, 0], np.ones(len(pixels))], axis=-1)
    cam = (uv1 @ np.linalg.inv(K).T) * depth[:, None]
    return cam @ c2w[:3, :3].T + c2w[:3, 3]


# --- layout --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["bunny_dir", "spot_dir", "sphere_dir"])
def test_layout_complete(name, request):
    folder: Path = request.getfixturevalue(name)
    info = _info(folder)
    n = info["options"]["num_views"]
    stems = [f"{i:03d}" for i in range(n)]
    for sub, suffix in [
        (layout.WORLD_NORMAL_DIR, ".exr"),
        (layout.CAMERA_NORMAL_DIR, ".exr"),
        (layout.MASK_DIR, ".png"),
        (layout.DEPTH_DIR, ".npy"),
    ]:
        assert sorted(p.name for p in (folder / sub).iterdir()) == [s + suffix for s in stems], sub
    keys = set(read_npz(folder / layout.CAMERAS_FILE))
    assert keys == {f"world_mat_{i}" for i in range(n)} | {f"scale_mat_{i}" for i in range(n)}
    assert (folder / layout.GT_MESH_FILE).is_file()
    assert not (folder / layout.GT_CAMERAS_FILE).exists()  # no pose noise: stored poses are the true ones
    # The staging folder was renamed, not left beside the output.
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]
    h, w = info["image_size_wh"][1], info["image_size_wh"][0]
    mask, world, camera, depth = _view(folder, 0)
    assert mask.shape == (h, w) and world.shape == camera.shape == (h, w, 3) and depth.shape == (h, w)
    assert world.dtype == camera.dtype == depth.dtype == np.float32


def test_tiny_fixture_sizes(bunny_dir, spot_dir, sphere_dir):
    assert _info(bunny_dir)["image_size_wh"] == [80, 64] and _info(bunny_dir)["options"]["world_scale"] == 1000
    assert _info(spot_dir)["image_size_wh"] == [80, 64] and _info(spot_dir)["options"]["world_scale"] == 100
    assert _info(sphere_dir)["image_size_wh"] == [64, 64]
    for folder in (bunny_dir, spot_dir, sphere_dir):
        assert _info(folder)["options"]["num_views"] == 8


def test_masks_binary_nonempty_and_consistent(bunny_dir):
    for i in range(8):
        raw = io.read_image(bunny_dir / layout.MASK_DIR / f"{i:03d}.png")
        assert raw.dtype == np.uint8 and raw.ndim == 2 and set(np.unique(raw)) <= {0, 255}
        mask, world, camera, depth = _view(bunny_dir, i)
        assert mask.sum() > 50
        # The object fills the frame without touching its border.
        assert not mask[0].any() and not mask[-1].any() and not mask[:, 0].any() and not mask[:, -1].any()
        assert np.all(depth[mask] > 0) and np.all(depth[~mask] == 0)
        assert np.all(world[~mask] == 0) and np.all(camera[~mask] == 0)


@pytest.mark.parametrize("name", ["bunny_dir", "spot_dir", "sphere_dir"])
def test_normals_unit_and_facing_the_camera(name, request):
    folder: Path = request.getfixturevalue(name)
    for i, (K, c2w, _) in enumerate(_cameras(folder)):
        mask, world, camera, _ = _view(folder, i)
        np.testing.assert_allclose(np.linalg.norm(world[mask], axis=-1), 1.0, atol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(camera[mask], axis=-1), 1.0, atol=1e-5)
        _, dirs = cameras.pixel_rays(K, c2w, *mask.shape, pixels=_pixel_grid(mask))
        assert np.all(np.einsum("ij,ij->i", world[mask], dirs) < 0)


@pytest.mark.parametrize("name", ["bunny_dir", "spot_dir"])
def test_world_and_camera_normals_agree_through_the_npz_cameras(name, request):
    folder: Path = request.getfixturevalue(name)
    for i, (_, c2w, _) in enumerate(_cameras(folder)):
        mask, world, camera, _ = _view(folder, i)
        np.testing.assert_allclose(cameras.camera_normals_to_world(camera[mask], c2w), world[mask], atol=1e-5)


def test_cameras_are_the_configured_ring(bunny_dir):
    info = _info(bunny_dir)
    focal = info["options"]["focal"]
    centre = np.array(info["bounding_sphere_centre_world"])
    for K, c2w, scale_mat in _cameras(bunny_dir):
        np.testing.assert_allclose(K, [[focal, 0, 39.5], [0, focal, 31.5], [0, 0, 1]], rtol=1e-9, atol=1e-9)
        assert np.linalg.norm(c2w[:3, 3] - centre) == pytest.approx(info["camera_distance_world"], rel=1e-9)
        # Looks at the centre, with image-down opposite to world up (+y).
        towards = (centre - c2w[:3, 3]) / np.linalg.norm(centre - c2w[:3, 3])
        np.testing.assert_allclose(c2w[:3, 2], towards, atol=1e-9)
        assert c2w[1, 1] < 0
        np.testing.assert_array_equal(scale_mat, _cameras(bunny_dir)[0][2])


@pytest.mark.parametrize("name", ["bunny_dir", "spot_dir", "sphere_dir"])
def test_scale_mat_puts_the_object_strictly_inside_the_unit_sphere(name, request):
    folder: Path = request.getfixturevalue(name)
    scale_mat = _cameras(folder)[0][2]
    assert np.allclose(scale_mat[:3, :3], scale_mat[0, 0] * np.eye(3))
    mesh = trimesh.load(folder / layout.GT_MESH_FILE, process=False)
    radii = np.linalg.norm(cameras.Normalisation(scale_mat).to_normalised(mesh.vertices), axis=1)
    assert 0.9 < radii.max() < 1.0


def test_gt_mesh_is_in_world_units(bunny_dir, shared_meshes):
    source = trimesh.load(shared_meshes / "stanford-bunny.obj", force="mesh", process=False)
    gt = trimesh.load(bunny_dir / layout.GT_MESH_FILE, process=False)
    # PLY stores float32 vertices.
    np.testing.assert_allclose(gt.bounds, source.bounds * 1000.0, rtol=1e-6)
    assert _info(bunny_dir)["bbox_diagonal_world"] == pytest.approx(np.linalg.norm(np.ptp(gt.bounds, axis=0)), rel=1e-6)


@pytest.mark.parametrize("name", ["bunny_dir", "spot_dir", "sphere_dir"])
def test_gt_mesh_vertices_project_inside_the_masks(name, request):
    import scipy.ndimage

    folder: Path = request.getfixturevalue(name)
    vertices = trimesh.load(folder / layout.GT_MESH_FILE, process=False).vertices
    for i, (K, c2w, _) in enumerate(_cameras(folder)):
        mask = _view(folder, i)[0]
        uv, z = cameras.project_points(K, c2w, vertices)
        assert np.all(z > 0)
        cols, rows = np.round(uv).astype(int).T
        inside = (rows >= 0) & (rows < mask.shape[0]) & (cols >= 0) & (cols < mask.shape[1])
        assert inside.all()
        # Pixel centres can miss sub-pixel slivers (ears, tail) at 80x64: allow one pixel of slack.
        grown = scipy.ndimage.binary_dilation(mask, iterations=1)
        assert grown[rows, cols].mean() > 0.99


@pytest.mark.parametrize("name", ["bunny_dir", "sphere_dir"])
def test_depth_backprojects_onto_the_mesh(name, request):
    folder: Path = request.getfixturevalue(name)
    mesh = trimesh.load(folder / layout.GT_MESH_FILE, process=False)
    diagonal = _info(folder)["bbox_diagonal_world"]
    for i, (K, c2w, _) in enumerate(_cameras(folder)[:3]):
        mask, _, _, depth = _view(folder, i)
        points = _backproject(K, c2w, _pixel_grid(mask), depth[mask].astype(np.float64))
        _, distance, _ = trimesh.proximity.closest_point(mesh, points)
        # float32 depth: about 1e-7 of the camera distance (~17 bounding radii).
        assert distance.max() < 1e-5 * diagonal


def test_sphere_smooth_normals_are_radial_and_depth_is_first_hit(sphere_dir):
    for i, (K, c2w, _) in enumerate(_cameras(sphere_dir)):
        mask, world, _, depth = _view(sphere_dir, i)
        points = _backproject(K, c2w, _pixel_grid(mask), depth[mask].astype(np.float64))
        radial = points / np.linalg.norm(points, axis=1, keepdims=True)
        # Interpolated vertex normals of a subdivided icosahedron are within a degree or two of radial.
        assert np.degrees(np.arccos(np.clip(np.einsum("ij,ij->i", world[mask], radial), -1, 1))).max() < 3.0
        # First hit: the near side of the sphere, closer than the centre.
        centre_depth = cameras.project_points(K, c2w, np.zeros((1, 3)))[1][0]
        assert np.all(depth[mask] < centre_depth)


def test_flat_normals_are_face_normals(make_tiny_dataset, sphere_mesh_path):
    folder = make_tiny_dataset(sphere_mesh_path, num_views=2, width=48, height=48, flat_normals=True)
    mesh = trimesh.load(sphere_mesh_path, process=False)
    mask, world, _, _ = _view(folder, 0)
    # Every written normal is one of the (outward) face normals.
    cosines = world[mask] @ mesh.face_normals.T
    assert np.all(cosines.max(axis=1) > 1 - 1e-6)


def test_back_faces_of_open_meshes_are_flipped_toward_the_camera(make_tiny_dataset, tmp_path):
    # A single square facing +z: on a ring around y half of the cameras see its back.
    square = trimesh.Trimesh(
        vertices=[[-1, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0]], faces=[[0, 1, 2], [0, 2, 3]], process=False
    )
    path = tmp_path / "square.off"
    square.export(path)
    folder = make_tiny_dataset(path, num_views=4, width=32, height=32, start_azimuth_deg=10.0)
    seen_back = 0
    for i, (_, c2w, _) in enumerate(_cameras(folder)):
        mask, world, _, _ = _view(folder, i)
        if not mask.any():
            continue
        facing = np.sign(c2w[2, 3])  # the camera's side of the plane z = 0
        np.testing.assert_allclose(world[mask], np.broadcast_to([0, 0, facing], world[mask].shape), atol=1e-6)
        seen_back += facing < 0
    assert seen_back >= 1


def test_up_axis_z(make_tiny_dataset, sphere_mesh_path):
    folder = make_tiny_dataset(sphere_mesh_path, num_views=4, width=32, height=32, up_axis="z")
    for _, c2w, _ in _cameras(folder):
        # Image-down points against +z; the elevation puts the cameras above the ring plane.
        assert c2w[2, 1] < 0 and c2w[2, 3] > 0


# --- determinism and noise ------------------------------------------------------------------------------------------

NOISY = dict(normal_noise_deg=2.0, pose_rotation_noise_deg=1.0, pose_translation_noise=0.01, depth_scale_noise=0.3)


def _data_files(folder: Path):
    return sorted(p.relative_to(folder) for p in folder.rglob("*") if p.suffix in {".npz", ".npy", ".png", ".exr"})


def test_same_config_gives_byte_identical_files(make_tiny_dataset, sphere_mesh_path):
    options = dict(num_views=3, width=32, height=24, seed=7, **NOISY)
    a = make_tiny_dataset(sphere_mesh_path, **options)
    b = make_tiny_dataset(sphere_mesh_path, **options)
    files = _data_files(a)
    # 2 camera files; per view 4 stored files and, since normal noise is on, 3 true maps (normals x 2, mask).
    assert files == _data_files(b) and len(files) == 2 + (4 + 3) * 3
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    c = make_tiny_dataset(sphere_mesh_path, **{**options, "seed": 8})
    assert (a / layout.CAMERAS_FILE).read_bytes() != (c / layout.CAMERAS_FILE).read_bytes()


@pytest.fixture(scope="module")
def clean_and_noisy(make_tiny_dataset, sphere_mesh_path):
    options = dict(num_views=4, width=48, height=48)
    return make_tiny_dataset(sphere_mesh_path, **options), make_tiny_dataset(sphere_mesh_path, **options, **NOISY)


def test_normal_noise_perturbs_only_the_normals(clean_and_noisy):
    clean, noisy = clean_and_noisy
    angles = []
    for i in range(4):
        c_mask, c_world, _, _ = _view(clean, i)
        n_mask, n_world, n_camera, _ = _view(noisy, i)
        np.testing.assert_array_equal(c_mask, n_mask)
        np.testing.assert_allclose(np.linalg.norm(n_world[n_mask], axis=-1), 1.0, atol=1e-5)
        dots = np.einsum("ij,ij->i", c_world[c_mask].astype(np.float64), n_world[n_mask])
        angles.append(np.degrees(np.arccos(np.clip(dots, -1, 1))))
    angles = np.concatenate(angles)
    # |N(0, s)| has mean s sqrt(2 / pi).
    assert angles.mean() == pytest.approx(NOISY["normal_noise_deg"] * np.sqrt(2 / np.pi), rel=0.1)
    # Camera-space files carry the same noisy normals, in the true camera; they still face it.
    _, true_c2w, _ = _cameras(noisy, layout.GT_CAMERAS_FILE)[0]
    mask, world, camera, _ = _view(noisy, 0)
    np.testing.assert_allclose(cameras.camera_normals_to_world(camera[mask], true_c2w), world[mask], atol=1e-5)
    K = _cameras(noisy, layout.GT_CAMERAS_FILE)[0][0]
    _, dirs = cameras.pixel_rays(K, true_c2w, *mask.shape, pixels=_pixel_grid(mask))
    assert np.all(np.einsum("ij,ij->i", world[mask], dirs) < 0)


def test_normal_noise_definition_and_facing():
    rng = np.random.default_rng(0)
    view = np.tile([0.0, 0.0, -1.0], (20000, 1))
    # Grazing normals: a 20 degree tilt turns about half of them away from the viewer unless corrected.
    normals = np.tile([np.cos(np.radians(5)), 0.0, np.sin(np.radians(5))], (20000, 1))
    free = perturb_normals(normals, 20.0, np.random.default_rng(1))
    kept = perturb_normals(normals, 20.0, np.random.default_rng(1), view_dirs=view)
    assert np.mean(np.einsum("ij,ij->i", free, view) >= 0) > 0.2
    assert np.all(np.einsum("ij,ij->i", kept, view) < 0)
    for noisy in (free, kept):
        np.testing.assert_allclose(np.linalg.norm(noisy, axis=1), 1.0)
        angles = np.degrees(np.arccos(np.clip(np.einsum("ij,ij->i", noisy, normals), -1, 1)))
        assert angles.mean() == pytest.approx(20.0 * np.sqrt(2 / np.pi), rel=0.03)
    assert perturb_normals(normals[:5], 0.0, rng) == pytest.approx(normals[:5])


def test_pose_noise_perturbs_stored_poses_and_keeps_the_true_ones(clean_and_noisy):
    clean, noisy = clean_and_noisy
    assert not (clean / layout.GT_CAMERAS_FILE).exists()
    true = read_npz(noisy / layout.GT_CAMERAS_FILE)
    reference = read_npz(clean / layout.CAMERAS_FILE)
    assert true.keys() == reference.keys()
    for key in reference:
        np.testing.assert_allclose(true[key], reference[key], rtol=1e-12, atol=1e-9)
    distance = _info(noisy)["camera_distance_world"]
    for (K_s, c2w_s, scale_s), (K_t, c2w_t, scale_t) in zip(_cameras(noisy), _cameras(noisy, layout.GT_CAMERAS_FILE)):
        np.testing.assert_allclose(K_s, K_t, atol=1e-9)
        np.testing.assert_array_equal(scale_s, scale_t)
        angle = np.degrees(np.arccos(np.clip((np.trace(c2w_s[:3, :3].T @ c2w_t[:3, :3]) - 1) / 2, -1, 1)))
        assert 0 < angle < 6 * NOISY["pose_rotation_noise_deg"]
        shift = np.linalg.norm(c2w_s[:3, 3] - c2w_t[:3, 3]) / distance
        assert 0 < shift < 6 * NOISY["pose_translation_noise"]
    assert _info(noisy)["poses_perturbed"] is True


def test_depth_scale_noise_scales_each_view(clean_and_noisy):
    clean, noisy = clean_and_noisy
    factors = _info(noisy)["depth_scale_factors"]
    assert _info(clean)["depth_scale_factors"] == [1.0] * 4
    assert len(set(factors)) == 4
    spread = NOISY["depth_scale_noise"]
    for i, factor in enumerate(factors):
        assert np.exp(-spread) <= factor <= np.exp(spread)
        mask, _, _, c_depth = _view(clean, i)
        n_depth = _view(noisy, i)[3]
        np.testing.assert_allclose(n_depth[mask] / c_depth[mask], factor, rtol=1e-6)
        assert np.all(n_depth[~mask] == 0)


# --- errors and the CLI ---------------------------------------------------------------------------------------------


def _run_cli(monkeypatch, capsys, *args: str):
    monkeypatch.setattr(sys, "argv", ["pmni-synth", *args])
    with pytest.raises(SystemExit) as exit_info:
        synth_cli.entrypoint()
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


@pytest.fixture
def bad_meshes(tmp_path):
    garbage = tmp_path / "garbage.ply"
    garbage.write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 99\nend_header\n\x01\x02")
    empty = tmp_path / "empty.obj"
    empty.write_text("# nothing here\n")
    points = tmp_path / "points.obj"
    points.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\n")
    return {"missing": tmp_path / "missing.obj", "garbage": garbage, "empty": empty, "points": points}


@pytest.mark.parametrize(
    "case, problem",
    [("missing", "not found"), ("garbage", "cannot read mesh"), ("empty", "no triangles"), ("points", "no triangles")],
)
def test_cli_bad_mesh_exits_2_with_one_line(monkeypatch, capsys, tmp_path, bad_meshes, case, problem):
    output = tmp_path / "out"
    code, _, err = _run_cli(monkeypatch, capsys, "--mesh", str(bad_meshes[case]), "--output", str(output))
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and str(bad_meshes[case]) in lines[0] and problem in lines[0], err
    assert "Traceback" not in err
    assert not output.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_cli_refuses_a_non_empty_output_unless_overwrite(monkeypatch, capsys, tmp_path, sphere_mesh_path):
    output = tmp_path / "out"
    output.mkdir()
    (output / "keep.txt").write_text("precious")
    args = ["--mesh", str(sphere_mesh_path), "--output", str(output), "--num-views", "2", "--width", "16",
            "--height", "16", "--focal", "120"]
    code, _, err = _run_cli(monkeypatch, capsys, *args)
    assert code == 2 and len(err.strip().splitlines()) == 1 and str(output) in err and "not empty" in err
    assert (output / "keep.txt").read_text() == "precious"

    code, out, _ = _run_cli(monkeypatch, capsys, *args, "--overwrite")
    assert code == 0 and "views" in out and "16x16" in out
    assert not (output / "keep.txt").exists() and (output / layout.CAMERAS_FILE).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_cli_writes_into_an_existing_empty_folder(monkeypatch, capsys, tmp_path, sphere_mesh_path):
    output = tmp_path / "empty"
    output.mkdir()
    code, _, _ = _run_cli(monkeypatch, capsys, "--mesh", str(sphere_mesh_path), "--output", str(output),
                          "--num-views", "1", "--width", "8", "--height", "8", "--focal", "60")
    assert code == 0 and (output / "mask" / "000.png").is_file()


def test_cli_subprocess_missing_mesh(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "pmni_method.scripts.synth", "--mesh", str(tmp_path / "nope.obj"),
         "--output", str(tmp_path / "out")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"pmni-synth: error: {tmp_path / 'nope.obj'}: mesh file not found"]


def test_bad_options_raise_one_line_errors(tmp_path, sphere_mesh_path):
    for bad in [dict(num_views=0), dict(focal=-1.0), dict(sphere_margin=1.0), dict(normal_noise_deg=-1.0),
                dict(fill_fraction=50.0, focal=10.0)]:
        config = synth.SynthConfig(mesh=sphere_mesh_path, output=tmp_path / "out", **bad)
        with pytest.raises(PMNIDataError) as err:
            synth.render_dataset(config)
        assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


def test_a_failure_mid_render_leaves_nothing_behind(monkeypatch, tmp_path, sphere_mesh_path):
    calls = []

    def failing_render_view(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return real_render_view(*args, **kwargs)

    real_render_view = synth.render_view
    monkeypatch.setattr(synth, "render_view", failing_render_view)
    config = synth.SynthConfig(mesh=sphere_mesh_path, output=tmp_path / "out", num_views=3, width=16, height=16,
                               focal=120.0)
    with pytest.raises(RuntimeError, match="boom"):
        synth.render_dataset(config)
    assert list(tmp_path.iterdir()) == []


# --- killed runs: stale staging folders, SIGTERM and Ctrl-C ---------------------------------------------------------

TINY = dict(num_views=2, width=16, height=16, focal=120.0)


def _dead_pid() -> int:
    """The PID of a process that has exited and been reaped."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def _staging(output: Path, pid: int, kind: str = "partial") -> Path:
    """A staging folder as a run with ``pid`` would have left it (47 MB in real life, one file here)."""
    folder = output.with_name(f".{output.name}.{kind}-{pid}")
    (folder / "mask").mkdir(parents=True)
    (folder / "mask" / "000.png").write_bytes(b"half a dataset")
    return folder


def test_stale_staging_of_a_killed_run_is_removed_but_a_live_runs_is_kept(tmp_path, sphere_mesh_path, capsys):
    output = tmp_path / "out"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = _staging(output, sleeper.pid)
        dead = _staging(output, _dead_pid())
        other = _staging(tmp_path / "other", _dead_pid())  # another output's: not ours to touch
        notes = []
        synth.render_dataset(synth.SynthConfig(mesh=sphere_mesh_path, output=output, **TINY), note=notes.append)
        assert not dead.exists() and live.is_dir() and other.is_dir()
        assert notes == [f"removed {dead}, left by a killed run (PID {dead.name.rsplit('-', 1)[1]})"]
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out", live.name, other.name])
    finally:
        sleeper.kill()
        sleeper.wait()
    # Once that process is gone, its folder is stale too.
    synth.render_dataset(synth.SynthConfig(mesh=sphere_mesh_path, output=output, overwrite=True, **TINY))
    assert not live.exists()


def test_a_reused_pid_does_not_keep_a_stale_folder(tmp_path, sphere_mesh_path):
    output = tmp_path / "out"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        # Written an hour before that process started: the PID belongs to someone else now.
        stale = _staging(output, sleeper.pid)
        hour_ago = time.time() - 3600
        os.utime(stale, (hour_ago, hour_ago))
        synth.render_dataset(synth.SynthConfig(mesh=sphere_mesh_path, output=output, **TINY))
        assert not stale.exists()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_run_killed_between_the_commit_renames_gets_its_old_dataset_back(tmp_path, sphere_mesh_path):
    output = tmp_path / "out"
    pid = _dead_pid()
    old = _staging(output, pid, kind="old")  # the previous dataset, moved aside; the output path is empty
    new = _staging(output, pid)
    notes = []
    with pytest.raises(PMNIDataError, match="not empty"):
        synth.render_dataset(synth.SynthConfig(mesh=sphere_mesh_path, output=output, **TINY), note=notes.append)
    assert (output / "mask" / "000.png").read_bytes() == b"half a dataset" and not old.exists() and not new.exists()
    assert len(notes) == 2 and notes[0].startswith(f"restored {output} from {old.name}")


_SIGNAL_MID_RENDER = """
import os, signal, sys
from pmni_method import synth
from pmni_method.scripts import synth as synth_cli
folder, mesh = sys.argv[1:3]
# A job started in the background by a non-interactive shell inherits SIGINT as ignored, and Python then installs no
# Ctrl-C handler: restore the one a terminal's foreground process has.
signal.signal(signal.SIGINT, signal.default_int_handler)
real, calls = synth.render_view, []
def render_view(*args, **kwargs):
    calls.append(1)
    if len(calls) == 2:  # the first view is written: the staging folder holds files
        assert any(p.name.startswith(".out.partial-") for p in os.scandir(folder))
        os.kill(os.getpid(), signal.{signal})
    return real(*args, **kwargs)
synth.render_view = render_view
sys.argv = ["pmni-synth", "--mesh", mesh, "--output", os.path.join(folder, "out"), "--num-views", "4",
            "--width", "16", "--height", "16", "--focal", "120"]
synth_cli.entrypoint()
"""


@pytest.mark.parametrize(
    "name, code, said", [("SIGTERM", 143, "terminated (SIGTERM)"), ("SIGINT", 130, "interrupted (Ctrl-C)")]
)
def test_a_signal_mid_render_removes_the_staging_folder(tmp_path, sphere_mesh_path, name, code, said):
    result = subprocess.run(
        [sys.executable, "-c", _SIGNAL_MID_RENDER.replace("{signal}", name), str(tmp_path), str(sphere_mesh_path)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == code, result.stderr
    assert result.stderr.strip().splitlines() == [f"pmni-synth: {said}; no partial output left behind"]
    assert list(tmp_path.iterdir()) == []
