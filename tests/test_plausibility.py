"""Load-time plausibility checks: data in a wrong convention is refused (one line, exit 2), borderline data warns,
good data loads silently, and ``data_checks`` / ``--data-checks`` overrides.

Wrong data is made from the pmni-synth fixtures of ``conftest.py`` the way it goes wrong in practice: normal maps
with a flipped sign or axis, world-space maps read as camera space, a scale_mat with a smaller radius.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Callable, List

import numpy as np
import pytest

from helpers import error_lines, ns_train_args, render_sphere, run
from pmni_method import cameras
from pmni_method.data import io, plausibility
from pmni_method.data.diligent_mv import load_diligent_mv
from pmni_method.errors import PMNIDataError, PMNIDataWarning
from pmni_method.poses.starts import PoseInitConfig


WORLD = "normal_world_space_GT"
CAMERA = "normal_camera_space_GT"


def copy_dataset(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / folder.name))


def edit_normals(folder: Path, normal_dir: str, edit: Callable[[np.ndarray], np.ndarray], views=None) -> List[Path]:
    """Apply ``edit`` to the (H, W, 3) maps of ``views`` (default: all); returns the edited files."""
    paths = sorted((folder / normal_dir).glob("*.exr"))
    paths = [p for p in paths if views is None or int(p.stem) in views]
    for path in paths:
        io.write_exr(path, edit(io.read_exr(path)))
    return paths


def scale_sphere(folder: Path, factor: float, file: str = "cameras_sphere.npz") -> None:
    """Multiply the unit sphere's radius in world units (scale_mat's linear part) by ``factor`` for every view."""
    arrays = dict(np.load(folder / file))
    for key in [k for k in arrays if k.startswith("scale_mat_")]:
        arrays[key] = arrays[key].copy()
        arrays[key][:3, :3] *= factor
    np.savez(folder / file, **arrays)


def load_quietly(folder: Path, **kwargs) -> List[str]:
    """Load and return the plausibility warnings; any other warning path (warnings.warn) fails the test."""
    found: List[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("error", PMNIDataWarning)
        load_diligent_mv(folder, load_depth=False, warn=found.append, **kwargs)
    return found


def refusal(folder: Path, **kwargs) -> str:
    with pytest.raises(PMNIDataError) as exc:
        load_diligent_mv(folder, load_depth=False, **kwargs)
    message = str(exc.value)
    assert "\n" not in message, message
    assert "--data-checks warn" in message, message
    return message


def one_line_warning(lines: List[str], starts_with: Path, fragment: str) -> None:
    assert len(lines) == 1, lines
    assert "\n" not in lines[0] and lines[0].startswith(f"{starts_with}: ") and fragment in lines[0], lines


# ------------------------------------------------------------------------------------------------ measurements


def test_away_facing_is_judged_along_the_pixel_ray() -> None:
    # A normal that leans back (n_z < 0 in pmni camera axes) still faces the camera in the right part of a wide
    # image, where the rays lean right; in the left part it faces away. An n_z test would call both away.
    h, w, f = 64, 200, 100.0
    K = np.array([[f, 0.0, (w - 1) / 2], [0.0, f, (h - 1) / 2], [0.0, 0.0, 1.0]])
    n = np.array([-1.0, 0.0, -0.1]) / np.linalg.norm([-1.0, 0.0, -0.1])
    normals = np.broadcast_to(n, (h, w, 3)).astype(np.float32)
    u = np.arange(w)[None, :].repeat(h, axis=0)
    right = u - K[0, 2] > 0.2 * f
    left = u - K[0, 2] < -0.2 * f
    assert plausibility.away_facing_fraction(normals, right, K) == 0.0
    assert plausibility.away_facing_fraction(normals, left, K) == 1.0


def test_silhouette_agreement_sees_a_flipped_axis() -> None:
    K = np.array([[110.0, 0.0, 31.5], [0.0, 110.0, 31.5], [0.0, 0.0, 1.0]])
    c2w = cameras.look_at_c2w(np.array([0.0, 0.0, 4.0]), np.zeros(3), np.array([0.0, 1.0, 0.0]))
    mask, normals, _ = render_sphere(K, c2w, 64, 64, np.zeros(3), 1.0)
    cam = cameras.world_normals_to_camera(normals, c2w)
    u, v = plausibility.silhouette_agreement(cam, mask, K)
    assert u > 0.95 and v > 0.95
    # World-space normals through the camera's pose give the same numbers.
    assert plausibility.silhouette_agreement(normals, mask, K, c2w) == pytest.approx((u, v))
    u, v = plausibility.silhouette_agreement(cam * [1.0, -1.0, 1.0], mask, K)  # y down instead of up
    assert u > 0.95 and v < -0.95
    assert plausibility.away_facing_fraction(cam * [1.0, -1.0, 1.0], mask, K) == 0.0  # invisible to that check


def test_sphere_ray_distances_against_geometry() -> None:
    K = np.array([[100.0, 0.0, 50.0], [0.0, 100.0, 50.0], [0.0, 0.0, 1.0]])
    c2w = cameras.look_at_c2w(np.array([0.0, 0.0, -5.0]), np.zeros(3), np.array([0.0, 1.0, 0.0]))
    mask = np.zeros((101, 101), dtype=bool)
    mask[50, 50] = mask[50, 100] = True  # the optical axis, and a ray atan(0.5) off it
    d = plausibility.sphere_ray_distances(mask, K, c2w)
    np.testing.assert_allclose(sorted(d), [0.0, 5.0 * np.sin(np.arctan(0.5))], atol=1e-12)


# ------------------------------------------------------------------------------------------------ good data


@pytest.mark.parametrize("fixture", ["bunny_dir", "spot_dir", "sphere_dir"])
@pytest.mark.parametrize("normal_dir", [WORLD, CAMERA])
def test_good_data_loads_silently(fixture: str, normal_dir: str, request: pytest.FixtureRequest) -> None:
    assert load_quietly(request.getfixturevalue(fixture), normal_dir=normal_dir) == []


@pytest.mark.parametrize(
    "options",
    [dict(normal_noise_deg=20.0), dict(flat_normals=True), dict(sphere_margin=1.01), dict(sphere_margin=3.0)],
    ids=["noise20", "flat", "tight-sphere", "roomy-sphere"],
)
def test_good_variants_load_silently(make_tiny_dataset, shared_meshes: Path, options: dict) -> None:
    folder = make_tiny_dataset(shared_meshes / "stanford-bunny.obj", world_scale=1000.0, **options)
    assert load_quietly(folder, normal_dir=WORLD) == []
    assert load_quietly(folder, normal_dir=CAMERA) == []


def test_perturbed_stored_poses_are_judged_by_cameras_gt(make_tiny_dataset, shared_meshes: Path) -> None:
    # pmni-synth's pose-noise datasets keep the truth in cameras_gt.npz; the checks use it, not the perturbed poses.
    folder = make_tiny_dataset(shared_meshes / "spot.obj", world_scale=100.0, pose_rotation_noise_deg=4.0)
    assert load_quietly(folder) == []
    # Without the true poses, stored poses 4 degrees off do not fit the masks: a calibrated run would train garbage.
    (folder / "cameras_gt.npz").unlink()
    assert "miss the unit sphere" in refusal(folder)


# ------------------------------------------------------------------------------------------------ wrong normals


@pytest.mark.parametrize(
    "normal_dir, flip, problem",
    [
        (WORLD, [-1.0, -1.0, -1.0], "facing away from the camera"),
        (CAMERA, [-1.0, -1.0, -1.0], "facing away from the camera"),
        (CAMERA, [1.0, -1.0, -1.0], "facing away from the camera"),  # OpenCV camera axes: y down, z forward
        (CAMERA, [1.0, -1.0, 1.0], "y axis looks flipped"),  # y down, z toward the camera
        (CAMERA, [-1.0, 1.0, 1.0], "x axis looks flipped"),
    ],
    ids=["world-negated", "camera-negated", "camera-opencv", "camera-y-down", "camera-x-left"],
)
def test_wrong_convention_normals_are_refused(
    bunny_dir: Path, tmp_path: Path, normal_dir: str, flip: list, problem: str
) -> None:
    folder = copy_dataset(bunny_dir, tmp_path)
    paths = edit_normals(folder, normal_dir, lambda n: n * np.float32(flip))
    message = refusal(folder, normal_dir=normal_dir)
    # The worst view is named; here every view is wrong alike.
    assert any(message.startswith(f"{p}: ") for p in paths) and problem in message, message
    assert "8 of 8 views" in message


def test_one_flipped_view_is_named(bunny_dir: Path, tmp_path: Path) -> None:
    folder = copy_dataset(bunny_dir, tmp_path)
    (path,) = edit_normals(folder, WORLD, lambda n: -n, views={5})
    message = refusal(folder)
    assert message.startswith(f"{path}: 100% of the mask pixels") and "1 of 8 views" in message, message


def test_world_maps_read_as_camera_space_are_refused(bunny_dir: Path) -> None:
    message = refusal(bunny_dir, normal_dir=WORLD, normal_space="camera")
    assert message.startswith(f"{bunny_dir / WORLD}") and "facing away" in message, message


def test_partly_flipped_view_warns(bunny_dir: Path, tmp_path: Path) -> None:
    folder = copy_dataset(bunny_dir, tmp_path)
    mask = io.read_mask(folder / "mask" / "003.png")
    rows, cols = np.nonzero(mask)
    pick = np.random.default_rng(0).random(len(rows)) < 0.2  # a fifth of the pixels: far beyond noise, not a flip

    def flip_some(n: np.ndarray) -> np.ndarray:
        n[rows[pick], cols[pick]] *= -1.0
        return n

    (path,) = edit_normals(folder, WORLD, flip_some, views={3})
    one_line_warning(load_quietly(folder), path, "facing away from the camera")


# ------------------------------------------------------------------------------------------------ wrong scale


def test_half_radius_scale_mat_is_refused(bunny_dir: Path, tmp_path: Path) -> None:
    folder = copy_dataset(bunny_dir, tmp_path)
    scale_sphere(folder, 0.5)
    message = refusal(folder)
    assert message.startswith(f"{folder / 'cameras_sphere.npz'}: ") and "miss the unit sphere" in message, message
    assert "does not contain the object" in message and ".png" in message  # the worst view's mask is named


def test_slightly_small_sphere_warns(bunny_dir: Path, tmp_path: Path) -> None:
    folder = copy_dataset(bunny_dir, tmp_path)
    scale_sphere(folder, 0.85)  # measured: up to 0.7% of a view's mask rays miss (the ears stick out)
    one_line_warning(load_quietly(folder), folder / "cameras_sphere.npz", "will be clipped")


def test_far_too_large_sphere_warns(bunny_dir: Path, tmp_path: Path) -> None:
    folder = copy_dataset(bunny_dir, tmp_path)
    scale_sphere(folder, 8.0)
    one_line_warning(load_quietly(folder), folder / "cameras_sphere.npz", "far larger than the object")


def test_cameras_inside_the_sphere_are_refused(bunny_dir: Path, tmp_path: Path) -> None:
    folder = copy_dataset(bunny_dir, tmp_path)
    scale_sphere(folder, 30.0)
    assert "lie inside the unit sphere" in refusal(folder)


# ------------------------------------------------------------------------------------------------ overrides


def test_warn_and_off_let_wrong_data_through(bunny_dir: Path, tmp_path: Path) -> None:
    folder = copy_dataset(bunny_dir, tmp_path)
    edit_normals(folder, WORLD, lambda n: -n)
    lines = load_quietly(folder, data_checks="warn")
    assert lines and all("\n" not in line for line in lines)
    assert any("facing away" in line for line in lines)
    assert load_quietly(folder, data_checks="off") == []
    # Without a warn callback, warnings go through the warnings module.
    with pytest.warns(PMNIDataWarning, match="facing away"):
        load_diligent_mv(folder, load_depth=False, data_checks="warn")


def test_unknown_mode_is_one_line(bunny_dir: Path) -> None:
    with pytest.raises(PMNIDataError, match="data_checks: 'strict' is not one of error, warn, off"):
        load_diligent_mv(bunny_dir, data_checks="strict")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------ pose inits


def _placeholder_rotations(folder: Path) -> None:
    """Keep intrinsics and camera centres but point every stored camera along +z, as a pose-free dataset might."""
    arrays = dict(np.load(folder / "cameras_sphere.npz"))
    for key in [k for k in arrays if k.startswith("world_mat_")]:
        K, c2w = cameras.decompose_projection(arrays[key])
        c2w[:3, :3] = np.eye(3)
        arrays[key] = cameras.compose_world_mat(K, c2w)
    np.savez(folder / "cameras_sphere.npz", **arrays)


def test_ring_and_file_starts_skip_checks_that_need_the_stored_poses(bunny_dir: Path, tmp_path: Path) -> None:
    folder = copy_dataset(bunny_dir, tmp_path)
    _placeholder_rotations(folder)
    assert "miss the unit sphere" in refusal(folder)  # as calibrated poses, placeholders are wrong
    ring = PoseInitConfig(pose_init="ring")
    assert load_quietly(folder, pose_init=ring, normal_dir=CAMERA) == []
    file = PoseInitConfig(pose_init="file", poses_file=bunny_dir / "cameras_sphere.npz")
    assert load_quietly(folder, pose_init=file, normal_dir=CAMERA) == []
    # Camera-space maps need no pose to be judged: a flipped one is refused from a ring start too.
    paths = edit_normals(folder, CAMERA, lambda n: -n)
    assert refusal(folder, pose_init=ring, normal_dir=CAMERA).startswith(f"{paths[0]}: ")


def test_noisy_start_is_not_judged(bunny_dir: Path) -> None:
    # The checks see the stored (true) poses, not the perturbed start: 10 degrees off would fail every view.
    noisy = PoseInitConfig(pose_init="noisy", pose_noise_rotation_deg=10.0, pose_noise_distribution="fixed")
    assert load_quietly(bunny_dir, pose_init=noisy, normal_dir=CAMERA) == []


# ------------------------------------------------------------------------------------------------ dataparser


def _parser(data: Path, **kwargs):
    from pmni_method.dataparsers.diligent_mv_dataparser import DiligentMVDataParserConfig

    return DiligentMVDataParserConfig(data=data, load_depth=False, **kwargs).setup()


def _printed(monkeypatch: pytest.MonkeyPatch) -> List[tuple]:
    """Record (text, style) of everything the dataparser prints (through nerfstudio's console or pmni's errors)."""
    from rich.console import Console

    printed: List[tuple] = []
    monkeypatch.setattr(Console, "print", lambda self, text, **kw: printed.append((str(text), kw.get("style"))))
    return printed


def test_dataparser_refuses_with_one_red_line(bunny_dir: Path, tmp_path: Path, monkeypatch) -> None:
    folder = copy_dataset(bunny_dir, tmp_path)
    paths = edit_normals(folder, WORLD, lambda n: -n)
    printed = _printed(monkeypatch)
    with pytest.raises(SystemExit) as exc:
        _parser(folder).get_dataparser_outputs("train")
    assert exc.value.code == 2
    assert len(printed) == 1 and printed[0][1] == "bold red", printed
    assert printed[0][0].startswith(f"pmni: {paths[0]}: ") and "\n" not in printed[0][0]


def test_dataparser_warns_with_one_yellow_line(bunny_dir: Path, tmp_path: Path, monkeypatch) -> None:
    folder = copy_dataset(bunny_dir, tmp_path)
    scale_sphere(folder, 0.85)
    printed = _printed(monkeypatch)
    parser = _parser(folder)
    parser.get_dataparser_outputs("train")
    parser.get_dataparser_outputs("test")  # the data is read (and judged) once
    assert len(printed) == 1 and printed[0][1] == "yellow", printed
    assert printed[0][0].startswith(f"pmni: warning: {folder / 'cameras_sphere.npz'}: ")


@pytest.mark.parametrize("mode, lines", [("warn", 1), ("off", 0)])
def test_dataparser_flag_overrides(bunny_dir: Path, tmp_path: Path, monkeypatch, mode: str, lines: int) -> None:
    folder = copy_dataset(bunny_dir, tmp_path)
    scale_sphere(folder, 0.5)
    printed = _printed(monkeypatch)
    out = _parser(folder, data_checks=mode).get_dataparser_outputs("train")
    assert len(out.metadata["pmni_data"].view_ids) == 8
    assert len(printed) == lines and all(style == "yellow" for _, style in printed), printed


# ------------------------------------------------------------------------------------------------ ns-train


def test_ns_train_refuses_flipped_normals_then_trains_with_the_override(bunny_dir: Path, tmp_path: Path) -> None:
    folder = copy_dataset(bunny_dir, tmp_path)
    paths = edit_normals(folder, WORLD, lambda n: -n)
    out = run(ns_train_args(folder, tmp_path / "out", iterations=2))
    text = out.stdout + out.stderr
    assert out.returncode == 2, text[-3000:]
    assert "Traceback" not in text
    lines = error_lines(out)
    assert len(lines) == 1 and lines[0].startswith(f"pmni: {paths[0]}: ") and "facing away" in lines[0], lines

    out = run(ns_train_args(folder, tmp_path / "out", iterations=2) + ["--data-checks", "warn"])
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-3000:]
    assert any(line.startswith(f"pmni: warning: {paths[0]}: ") for line in error_lines(out)), error_lines(out)
