"""Bad DiLiGenT-MV input: each case raises PMNIDataError with one line naming the file and the problem.

Every bad dataset is a mutated copy of one small good dataset (the analytic sphere of ``test_dataparser``).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from helpers import make_sphere_dataset
from pmni_method.data import io
from pmni_method.data.diligent_mv import load_diligent_mv
from pmni_method.errors import PMNIDataError

# Import the builder by path so this works under any pytest import mode.

NORMALS = "normal_world_space_GT"


@pytest.fixture(scope="module")
def good_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_sphere_dataset(tmp_path_factory.mktemp("good"), num_views=3)


@pytest.fixture
def data_dir(good_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(good_dir, tmp_path / "obj"))


def expect_error(fn: Callable[[], object], path: Path, *fragments: str) -> str:
    with pytest.raises(PMNIDataError) as exc:
        fn()
    message = str(exc.value)
    assert "\n" not in message, message
    assert message.startswith(f"{path}: "), message
    for fragment in fragments:
        assert fragment in message, message
    return message


def _rewrite_npz(path: Path, edit: Callable[[dict], None]) -> None:
    arrays = dict(np.load(path))
    edit(arrays)
    np.savez(path, **arrays)


def test_good_dataset_loads(data_dir: Path) -> None:
    assert load_diligent_mv(data_dir).num_views == 3


def test_missing_dataset_folder(tmp_path: Path) -> None:
    expect_error(lambda: load_diligent_mv(tmp_path / "absent"), tmp_path / "absent", "not found")


def test_empty_dataset_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    expect_error(lambda: load_diligent_mv(tmp_path / "empty"), tmp_path / "empty", "empty")


def test_missing_camera_file(data_dir: Path) -> None:
    (data_dir / "cameras_sphere.npz").unlink()
    expect_error(lambda: load_diligent_mv(data_dir), data_dir / "cameras_sphere.npz", "not found")


def test_missing_normal_folder(data_dir: Path) -> None:
    expect_error(
        lambda: load_diligent_mv(data_dir, normal_dir="normal_world_space_sdmunips"),
        data_dir / "normal_world_space_sdmunips",
        "not found",
    )


def test_missing_mask_folder(data_dir: Path) -> None:
    shutil.rmtree(data_dir / "mask")
    expect_error(lambda: load_diligent_mv(data_dir), data_dir / "mask", "not found")


def test_normal_folder_without_images(data_dir: Path) -> None:
    for f in (data_dir / NORMALS).iterdir():
        f.rename(f.with_suffix(".txt"))
    expect_error(lambda: load_diligent_mv(data_dir), data_dir / NORMALS, "no files")


def test_mask_missing_for_a_view(data_dir: Path) -> None:
    (data_dir / "mask" / "001.png").unlink()
    expect_error(lambda: load_diligent_mv(data_dir), data_dir, "3 normal maps but 2", "lacks views 1")


def test_normal_map_missing_for_a_view(data_dir: Path) -> None:
    (data_dir / NORMALS / "002.exr").unlink()
    expect_error(lambda: load_diligent_mv(data_dir), data_dir, "2 normal maps but 3", "lacks views 2")


def test_camera_missing_for_a_view(data_dir: Path) -> None:
    _rewrite_npz(data_dir / "cameras_sphere.npz", lambda a: a.pop("world_mat_1"))
    expect_error(lambda: load_diligent_mv(data_dir), data_dir / "cameras_sphere.npz", "world_mat_1", "views 1")


def test_extra_camera_without_images(data_dir: Path) -> None:
    _rewrite_npz(data_dir / "cameras_sphere.npz", lambda a: a.update(world_mat_7=a["world_mat_0"]))
    expect_error(lambda: load_diligent_mv(data_dir), data_dir / "cameras_sphere.npz", "4 cameras", "views 7")


def test_missing_scale_mat(data_dir: Path) -> None:
    _rewrite_npz(data_dir / "cameras_sphere.npz", lambda a: a.pop("scale_mat_2"))
    expect_error(lambda: load_diligent_mv(data_dir), data_dir / "cameras_sphere.npz", "scale_mat_2")


def test_scale_mats_differ(data_dir: Path) -> None:
    _rewrite_npz(data_dir / "cameras_sphere.npz", lambda a: a.update(scale_mat_1=a["scale_mat_1"] * 1.5))
    expect_error(lambda: load_diligent_mv(data_dir), data_dir / "cameras_sphere.npz", "scale_mat_1 differs")


def test_singular_camera_matrix(data_dir: Path) -> None:
    def make_singular(arrays: dict) -> None:
        mat = arrays["world_mat_2"].copy()
        mat[2, :3] = mat[0, :3]  # rank-2 3x3 part: no camera centre
        arrays["world_mat_2"] = mat

    _rewrite_npz(data_dir / "cameras_sphere.npz", make_singular)
    expect_error(lambda: load_diligent_mv(data_dir), data_dir / "cameras_sphere.npz", "world_mat_2", "singular")


def test_corrupt_camera_file(data_dir: Path) -> None:
    (data_dir / "cameras_sphere.npz").write_bytes(b"not a zip file")
    expect_error(lambda: load_diligent_mv(data_dir), data_dir / "cameras_sphere.npz", "unreadable")


def test_bad_gt_camera_file(data_dir: Path) -> None:
    arrays = dict(np.load(data_dir / "cameras_sphere.npz"))
    arrays.pop("world_mat_0")
    np.savez(data_dir / "cameras_gt.npz", **arrays)
    expect_error(lambda: load_diligent_mv(data_dir), data_dir / "cameras_gt.npz", "world_mat_0")


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_normal_map(data_dir: Path, damage: str) -> None:
    path = data_dir / NORMALS / "001.exr"
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2] if damage == "truncate" else b"\x00garbage" * 64)
    expect_error(lambda: load_diligent_mv(data_dir), path, "EXR")


def test_truncated_png_normal_map(tmp_path: Path) -> None:
    root = make_sphere_dataset(tmp_path / "png", num_views=2, suffix=".png")
    path = root / NORMALS / "001.png"
    path.write_bytes(path.read_bytes()[:200])
    expect_error(lambda: load_diligent_mv(root), path, "truncated")


def test_corrupt_npy_normal_map(tmp_path: Path) -> None:
    root = make_sphere_dataset(tmp_path / "npy", num_views=2, suffix=".npy")
    path = root / NORMALS / "000.npy"
    path.write_bytes(path.read_bytes()[:100])
    expect_error(lambda: load_diligent_mv(root), path, "unreadable")


def test_corrupt_mask(data_dir: Path) -> None:
    path = data_dir / "mask" / "000.png"
    path.write_bytes(path.read_bytes()[:40])
    expect_error(lambda: load_diligent_mv(data_dir), path, "truncated")


def test_empty_mask(data_dir: Path) -> None:
    path = data_dir / "mask" / "002.png"
    io.write_mask(path, np.zeros_like(io.read_mask(path)))
    expect_error(lambda: load_diligent_mv(data_dir), path, "empty")


def test_mask_resolution_differs_from_normals(data_dir: Path) -> None:
    path = data_dir / "mask" / "001.png"
    io.write_mask(path, io.read_mask(path)[:-2])
    expect_error(lambda: load_diligent_mv(data_dir), data_dir / NORMALS / "001.exr", "mask 001.png")


def test_resolution_differs_across_views(data_dir: Path) -> None:
    for folder, name in ((NORMALS, "002.exr"), ("mask", "002.png")):
        path = data_dir / folder / name
        image = io.read_exr(path) if name.endswith(".exr") else io.read_mask(path)
        padded = np.pad(image, [(0, 3), (0, 0)] + [(0, 0)] * (image.ndim - 2))
        io.write_exr(path, padded) if name.endswith(".exr") else io.write_mask(path, padded)
    expect_error(lambda: load_diligent_mv(data_dir), data_dir / NORMALS / "002.exr", "one resolution")


def test_non_unit_normals(data_dir: Path) -> None:
    path = data_dir / NORMALS / "000.exr"
    io.write_exr(path, io.read_exr(path) * 0.5)  # e.g. a [0,1]-encoded map saved as float
    message = expect_error(lambda: load_diligent_mv(data_dir), path, "non-unit or NaN normals")
    mask_pixels = int(io.read_mask(data_dir / "mask" / "000.png").sum())
    assert f"{mask_pixels} of {mask_pixels} mask pixels" in message


def test_nan_normals(data_dir: Path) -> None:
    path = data_dir / NORMALS / "001.exr"
    normals = io.read_exr(path)
    mask = io.read_mask(data_dir / "mask" / "001.png")
    rows, cols = np.nonzero(mask)
    normals[rows[::10], cols[::10]] = np.nan  # 10% of the mask
    io.write_exr(path, normals)
    expect_error(lambda: load_diligent_mv(data_dir), path, f"{len(rows[::10])} of {len(rows)} mask pixels")


def test_nan_outside_mask_is_fine(data_dir: Path) -> None:
    path = data_dir / NORMALS / "001.exr"
    normals = io.read_exr(path)
    normals[~io.read_mask(data_dir / "mask" / "001.png")] = np.nan
    io.write_exr(path, normals)
    assert np.all(np.isfinite(load_diligent_mv(data_dir).normals))


def test_exr_without_rgb_channels(data_dir: Path) -> None:
    import OpenEXR

    path = data_dir / NORMALS / "000.exr"
    z = np.zeros((4, 4), np.float32)
    with OpenEXR.File({"type": OpenEXR.scanlineimage}, {"Y": z}) as f:
        f.write(str(path))
    expect_error(lambda: load_diligent_mv(data_dir), path, "channels")


def test_file_without_view_index(data_dir: Path) -> None:
    shutil.copy(data_dir / "mask" / "000.png", data_dir / "mask" / "extra.png")
    expect_error(lambda: load_diligent_mv(data_dir), data_dir / "mask" / "extra.png", "view index")


def test_two_files_for_one_view(data_dir: Path) -> None:
    shutil.copy(data_dir / "mask" / "000.png", data_dir / "mask" / "view_0.png")
    expect_error(lambda: load_diligent_mv(data_dir), data_dir / "mask", "two files for view 0")


def test_depth_resolution_mismatch(data_dir: Path) -> None:
    path = data_dir / "integration/perspective/001.npy"
    np.save(path, np.load(path)[:-1])
    expect_error(lambda: load_diligent_mv(data_dir), path, "depth map")
    assert load_diligent_mv(data_dir, load_depth=False).depths is None


@pytest.mark.parametrize("factor", [0, 1000])
def test_downscale_factor_does_not_fit(data_dir: Path, factor: int) -> None:
    expect_error(lambda: load_diligent_mv(data_dir, downscale_factor=factor), data_dir, "downscale factor")


def test_downscale_factor_that_empties_masks(data_dir: Path) -> None:
    path = data_dir / "mask" / "001.png"
    mask = io.read_mask(path)
    r, c = np.argwhere(mask).mean(axis=0).astype(int)
    tiny = np.zeros_like(mask)
    tiny[r : r + 2, c : c + 2] = True  # a 2x2 object vanishes in 8x8 blocks
    io.write_mask(path, tiny)
    load_diligent_mv(data_dir)
    expect_error(lambda: load_diligent_mv(data_dir, downscale_factor=8), data_dir, "empty masks in views 1")


# Plausibility checks (pmni_method.data.plausibility): files that read fine but hold data in a wrong convention.


def test_normals_facing_away_from_their_camera(data_dir: Path) -> None:
    path = data_dir / NORMALS / "001.exr"
    io.write_exr(path, -io.read_exr(path))  # a sign-flipped map
    expect_error(lambda: load_diligent_mv(data_dir), path, "100% of the mask pixels", "facing away from the camera")


def test_camera_space_normals_in_opencv_axes(data_dir: Path) -> None:
    folder = data_dir / "normal_camera_space_GT"
    for path in sorted(folder.iterdir()):
        io.write_exr(path, io.read_exr(path) * np.float32([1.0, -1.0, -1.0]))  # y down, z forward
    message = expect_error(
        lambda: load_diligent_mv(data_dir, normal_dir=folder.name), folder / "000.exr", "facing away", "3 of 3 views"
    )
    assert "x right, y up, z toward the camera" in message


def test_scale_mat_sphere_too_small(data_dir: Path) -> None:
    def halve_radius(arrays: dict) -> None:
        for key in [k for k in arrays if k.startswith("scale_mat_")]:
            arrays[key] = arrays[key] @ np.diag([0.5, 0.5, 0.5, 1.0])

    _rewrite_npz(data_dir / "cameras_sphere.npz", halve_radius)
    expect_error(lambda: load_diligent_mv(data_dir), data_dir / "cameras_sphere.npz", "miss the unit sphere")
