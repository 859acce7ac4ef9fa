"""DiLiGenT-MV loader and the ``diligent-mv-data`` nerfstudio dataparser.

Most tests use a tiny analytic sphere dataset rendered here with numpy (exact ground truth, no dependency on the
mesh renderer); the round-trip tests at the end use the synthetic bunny from ``tests/conftest.py``.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage

from helpers import (
    HEIGHT,
    SPHERE_CENTRE,
    SPHERE_RADIUS,
    WIDTH,
    make_sphere_dataset,
    render_sphere,
    sphere_intrinsics,
    sphere_poses,
    sphere_scale_mat,
)
from pmni_method import cameras
from pmni_method.data import io
from pmni_method.data.diligent_mv import load_diligent_mv, split_indices, view_index
from pmni_method.errors import PMNIDataError

@pytest.fixture(scope="module")
def sphere_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_sphere_dataset(tmp_path_factory.mktemp("sphere"))


def normalised_sphere(scale_mat: np.ndarray):
    norm = cameras.Normalisation(scale_mat)
    return norm.to_normalised(SPHERE_CENTRE[None])[0], SPHERE_RADIUS / norm.scale


def angle_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angle between vectors; atan2 stays accurate near 0 where arccos of a float32 dot product does not."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.degrees(np.arctan2(np.linalg.norm(np.cross(a, b), axis=-1), np.sum(a * b, axis=-1)))


# ----------------------------------------------------------------------------------------------------- loader


def test_view_index_is_last_integer() -> None:
    assert view_index(Path("000.exr")) == 0
    assert view_index(Path("view_01.png")) == 1
    assert view_index(Path("cam2_view_17.npy")) == 17
    assert view_index(Path("normal.exr")) is None


@pytest.mark.parametrize("rotated", [False, True])
def test_loader_matches_analytic_sphere(tmp_path: Path, rotated: bool) -> None:
    root = make_sphere_dataset(tmp_path / "s", num_views=3, rotated=rotated, first_id=1)
    data = load_diligent_mv(root)
    scale_mat = sphere_scale_mat(rotated)
    norm = cameras.Normalisation(scale_mat)
    centre, radius = normalised_sphere(scale_mat)
    assert data.view_ids == [1, 2, 3]
    assert data.normals.shape == (3, HEIGHT, WIDTH, 3) and data.normals.dtype == np.float32
    assert data.masks.dtype == bool and data.depths is not None
    np.testing.assert_allclose(data.normalisation.scale_mat, scale_mat)
    for pos, c2w_world in enumerate(sphere_poses(3)):
        np.testing.assert_allclose(data.K[pos], sphere_intrinsics(), atol=1e-6)
        np.testing.assert_allclose(data.c2w[pos], norm.c2w_to_normalised(c2w_world), atol=1e-6)
        # Rendering in the normalised frame with the loaded camera reproduces the loaded maps.
        mask, normals, depth = render_sphere(data.K[pos], data.c2w[pos], HEIGHT, WIDTH, centre, radius)
        np.testing.assert_array_equal(mask, data.masks[pos])
        assert angle_deg(normals[mask], data.normals[pos][mask]).max() < 0.01
        np.testing.assert_allclose(data.depths[pos][mask], depth[mask], rtol=1e-5)
        assert not data.normals[pos][~mask].any()
    assert data.gt_mesh is None and data.gt_c2w is None


@pytest.mark.parametrize("rotated", [False, True])
def test_camera_space_normals_match_world_space(tmp_path: Path, rotated: bool) -> None:
    root = make_sphere_dataset(tmp_path / "s", num_views=3, rotated=rotated)
    world = load_diligent_mv(root, normal_dir="normal_world_space_GT")
    camera = load_diligent_mv(root, normal_dir="normal_camera_space_GT")  # "auto" must pick camera space
    forced = load_diligent_mv(root, normal_dir="normal_camera_space_GT", normal_space="camera")
    m = world.masks
    assert angle_deg(world.normals[m], camera.normals[m]).max() < 0.01
    np.testing.assert_array_equal(camera.normals, forced.normals)
    # Reading camera-space maps as world-space must be visibly wrong (guards against a no-op conversion); the
    # plausibility checks refuse such data, so they are off here.
    wrong = load_diligent_mv(root, normal_dir="normal_camera_space_GT", normal_space="world", data_checks="off")
    assert angle_deg(world.normals[m], wrong.normals[m]).mean() > 20.0
    with pytest.raises(PMNIDataError, match="facing away from the camera"):
        load_diligent_mv(root, normal_dir="normal_camera_space_GT", normal_space="world")


def test_png16_and_npy_read_like_exr(tmp_path: Path, sphere_data: Path) -> None:
    exr = load_diligent_mv(sphere_data, load_depth=False)
    m = exr.masks
    for suffix in (".png", ".npy"):
        data = load_diligent_mv(make_sphere_dataset(tmp_path / suffix[1:], suffix=suffix), load_depth=False)
        np.testing.assert_array_equal(data.masks, m)
        assert angle_deg(exr.normals[m], data.normals[m]).max() < (0.01 if suffix == ".png" else 1e-3)


def test_png_normals_are_rgb_not_bgr(tmp_path: Path) -> None:
    n = np.zeros((4, 4, 3), np.float32)
    n[..., 0] = 1.0  # pure +x: an RGB/BGR mix-up would read +z instead
    io.write_normal_map(tmp_path / "n.png", n)
    np.testing.assert_allclose(io.read_normal_map(tmp_path / "n.png"), n, atol=1e-4)


def test_mask_any_bit_depth(tmp_path: Path) -> None:
    import cv2

    mask = np.zeros((6, 7), bool)
    mask[1:4, 2:6] = True
    for name, image in {
        "bin.png": mask.astype(np.uint8),
        "u8.png": mask.astype(np.uint8) * 255,
        "u16.png": mask.astype(np.uint16) * 65535,
        "rgb.png": np.repeat(mask[..., None].astype(np.uint8) * 200, 3, axis=-1),
    }.items():
        cv2.imwrite(str(tmp_path / name), image)
        np.testing.assert_array_equal(io.read_mask(tmp_path / name), mask, err_msg=name)


def test_downscale_keeps_reprojection(sphere_data: Path) -> None:
    full = load_diligent_mv(sphere_data)
    half = load_diligent_mv(sphere_data, downscale_factor=2)
    h, w = HEIGHT // 2, WIDTH // 2
    assert half.normals.shape == (full.num_views, h, w, 3)
    np.testing.assert_allclose(half.K, cameras.downscale_intrinsics(full.K, 2))
    centre, radius = normalised_sphere(full.normalisation.scale_mat)
    for pos in range(half.num_views):
        mask, normals, depth = render_sphere(half.K[pos], half.c2w[pos], h, w, centre, radius)
        # Block-averaged masks may differ from a point-sampled rendering only on the silhouette.
        assert (mask != half.masks[pos]).mean() < 0.05
        # Away from the silhouette a block average equals the value at the block centre to first order.
        inner = scipy.ndimage.binary_erosion(mask & half.masks[pos])
        assert angle_deg(normals[inner], half.normals[pos][inner]).max() < 2.0
        np.testing.assert_allclose(half.depths[pos][inner], depth[inner], rtol=0.01)
        np.testing.assert_allclose(np.linalg.norm(half.normals[pos][half.masks[pos]], axis=-1), 1.0, atol=1e-5)


def test_few_broken_normals_are_repaired(tmp_path: Path) -> None:
    root = make_sphere_dataset(tmp_path / "s", num_views=2)
    path = root / "normal_world_space_GT" / "000.exr"
    normals = io.read_exr(path)
    mask = io.read_mask(root / "mask" / "000.png")
    r, c = np.argwhere(mask)[len(np.argwhere(mask)) // 2]
    normals[r, c] = np.nan  # one pixel: below the 1% threshold
    io.write_exr(path, normals)
    data = load_diligent_mv(root)
    assert np.all(np.isfinite(data.normals))
    np.testing.assert_allclose(np.linalg.norm(data.normals[0][data.masks[0]], axis=-1), 1.0, atol=1e-5)


def test_split_indices() -> None:
    ids = [0, 1, 2, 3, 5]
    assert split_indices(ids, (), "train") == [0, 1, 2, 3, 4]
    assert split_indices(ids, (), "test") == [0, 1, 2, 3, 4]
    assert split_indices(ids, (1, 5), "train") == [0, 2, 3]
    assert split_indices(ids, (1, 5), "val") == [1, 4]
    assert split_indices(ids, [5], "test") == [4]
    with pytest.raises(PMNIDataError, match="not in the dataset"):
        split_indices(ids, (4,), "train")
    with pytest.raises(PMNIDataError, match="every view"):
        split_indices(ids, ids, "train")


# ------------------------------------------------------------------------------------------------ dataparser

# The loader must work without nerfstudio (GPU boxes may lack it); only these tests need it.
requires_nerfstudio = pytest.mark.skipif(importlib.util.find_spec("nerfstudio") is None, reason="needs nerfstudio")


def _parser(data: Path, **kwargs):
    from pmni_method.dataparsers.diligent_mv_dataparser import DiligentMVDataParserConfig

    return DiligentMVDataParserConfig(data=data, **kwargs).setup()


def _normals_through_nerfstudio(outputs, centre: np.ndarray, radius: float, index: int):
    """Intersect the sphere with the rays nerfstudio generates for a camera (nerfstudio world = normalised)."""
    rays = outputs.cameras.generate_rays(camera_indices=index)
    o = rays.origins.numpy().reshape(-1, 3).astype(np.float64)
    d = rays.directions.numpy().reshape(-1, 3).astype(np.float64)
    oc = o - centre
    b = np.sum(d * oc, axis=-1)
    disc = b**2 - (np.sum(oc * oc, axis=-1) - radius**2)
    t = -b - np.sqrt(np.clip(disc, 0, None))
    h, w = rays.shape[:2]
    return (disc > 0).reshape(h, w), ((o + t[:, None] * d - centre) / radius).reshape(h, w, 3)


@requires_nerfstudio
def test_dataparser_outputs_render_the_loaded_normals(sphere_data: Path) -> None:
    from nerfstudio.cameras.cameras import CameraType

    parser = _parser(sphere_data)
    out = parser.get_dataparser_outputs("train")
    data = out.metadata["pmni_data"]
    assert out.mask_filenames is None
    assert out.metadata["view_ids"] == data.view_ids == [0, 1, 2, 3, 4]
    assert [view_index(p) for p in out.image_filenames] == data.view_ids
    assert all(p.parent.name == "normal_world_space_GT" for p in out.image_filenames)
    assert out.cameras.camera_to_worlds.shape == (5, 3, 4) and out.cameras.camera_to_worlds.dtype.is_floating_point
    assert int(out.cameras.camera_type[0]) == CameraType.PERSPECTIVE.value
    assert int(out.cameras.width[0]) == WIDTH and int(out.cameras.height[0]) == HEIGHT
    np.testing.assert_allclose(out.scene_box.aabb.numpy(), [[-1, -1, -1], [1, 1, 1]])
    assert "scale_mat" not in out.metadata  # the Normalisation in pmni_data is the one copy
    np.testing.assert_allclose(data.normalisation.scale_mat, sphere_scale_mat())
    assert out.metadata["gt_mesh"] is None

    centre, radius = normalised_sphere(sphere_scale_mat())
    for i in range(len(data.view_ids)):
        mask, normals = _normals_through_nerfstudio(out, centre, radius, i)
        np.testing.assert_array_equal(mask, data.masks[i])
        assert angle_deg(normals[mask], data.normals[i][mask]).max() < 0.05

    # dataparser_transform / scale map world points to the normalised frame, like Normalisation.to_normalised.
    T, s = out.dataparser_transform.numpy().astype(np.float64), out.dataparser_scale
    world_pts = np.array([SPHERE_CENTRE, SPHERE_CENTRE + [SPHERE_RADIUS, 0, 0], [0.0, 0.0, 0.0]])
    mapped = s * (world_pts @ T[:, :3].T + T[:, 3])
    np.testing.assert_allclose(mapped, cameras.Normalisation(sphere_scale_mat()).to_normalised(world_pts), atol=1e-5)


@requires_nerfstudio
def test_dataparser_splits_and_caches(sphere_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pmni_method.dataparsers import diligent_mv_dataparser as module

    calls = []
    original = module.load_diligent_mv
    monkeypatch.setattr(module, "load_diligent_mv", lambda *a, **k: calls.append(1) or original(*a, **k))
    parser = _parser(sphere_data, exclude_views=(1, 3))
    train = parser.get_dataparser_outputs("train")
    test = parser.get_dataparser_outputs("test")
    assert len(calls) == 1
    assert train.metadata["view_ids"] == [0, 2, 4] and test.metadata["view_ids"] == [1, 3]
    assert len(train.cameras) == 3 and len(test.cameras) == 2
    assert [view_index(p) for p in test.image_filenames] == [1, 3]
    full = parser.load()
    np.testing.assert_array_equal(test.metadata["pmni_data"].normals, full.normals[[1, 3]])


@requires_nerfstudio
def test_dataparser_downscale(sphere_data: Path) -> None:
    out = _parser(sphere_data, downscale_factor=2).get_dataparser_outputs("train")
    data = out.metadata["pmni_data"]
    assert int(out.cameras.width[0]) == WIDTH // 2 and int(out.cameras.height[0]) == HEIGHT // 2
    centre, radius = normalised_sphere(sphere_scale_mat())
    mask, normals = _normals_through_nerfstudio(out, centre, radius, 0)
    assert (mask != data.masks[0]).mean() < 0.05


@requires_nerfstudio
def test_dataparser_bad_data_exits_with_one_red_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        _parser(tmp_path / "nowhere").get_dataparser_outputs("train")
    assert exc.value.code == 2
    printed = capsys.readouterr().out.strip()
    assert printed.count("\n") == 0 and "nowhere" in printed and "not found" in printed


@requires_nerfstudio
def test_spec_is_registered_config() -> None:
    from nerfstudio.plugins.registry_dataparser import DataParserSpecification

    from pmni_method.dataparsers.diligent_mv_spec import diligent_mv_dataparser

    assert isinstance(diligent_mv_dataparser, DataParserSpecification)
    assert diligent_mv_dataparser.config.normal_space == "auto"


@requires_nerfstudio
def test_spec_module_is_import_light() -> None:
    import subprocess
    import sys

    code = (
        "import sys; import pmni_method.dataparsers.diligent_mv_spec; "
        "bad = [m for m in ('nerfstudio.data.datamanagers.base_datamanager', 'nerfstudio.engine.trainer', "
        "'nerfstudio.pipelines.base_pipeline') if m in sys.modules]; print(bad); sys.exit(bool(bad))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


# ------------------------------------------------------------------------------- round trips on the bunny


def _mesh_in_normalised_frame(data) -> "trimesh.Trimesh":
    import trimesh

    mesh = trimesh.load(data.gt_mesh, force="mesh")
    mesh.vertices = data.normalisation.to_normalised(np.asarray(mesh.vertices))
    return mesh


def _distance_to_mask(mask: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Pixel distance from each projected point's pixel (OpenCV coords) to the mask; inf outside the image."""
    dist = scipy.ndimage.distance_transform_edt(~mask)
    cols, rows = np.round(uv[:, 0]).astype(int), np.round(uv[:, 1]).astype(int)
    inside = (rows >= 0) & (rows < mask.shape[0]) & (cols >= 0) & (cols < mask.shape[1])
    out = np.full(len(uv), np.inf)
    out[inside] = dist[rows[inside], cols[inside]]
    return out


@pytest.mark.parametrize("downscale_factor", [1, 2])
def test_bunny_cameras_reproject_mesh_into_masks(bunny_dir: Path, downscale_factor: int) -> None:
    data = load_diligent_mv(bunny_dir, downscale_factor=downscale_factor)
    assert data.gt_mesh is not None
    vertices = np.asarray(_mesh_in_normalised_frame(data).vertices)
    assert np.linalg.norm(vertices, axis=-1).max() < 1.0  # the object is inside the unit sphere
    for pos in range(data.num_views):
        mask = data.masks[pos]
        uv, z = cameras.project_points(data.K[pos], data.c2w[pos], vertices)
        assert np.all(z > 0)
        # The silhouette is the projection of the whole object, so every vertex (visible or not) lands in it, up
        # to a (diagonal) pixel of rasterisation where sub-pixel parts (the ears at 80x64 px) miss pixel centres.
        dist = _distance_to_mask(mask, uv)
        assert dist.max() <= 1.5, (pos, dist.max())
        assert (dist == 0).mean() > 0.9
        # And the mask is no bigger than the projection: a half-pixel shift would break one of these two checks.
        covered = np.zeros_like(mask)
        covered[np.round(uv[:, 1]).astype(int), np.round(uv[:, 0]).astype(int)] = True
        assert (mask & ~scipy.ndimage.binary_dilation(covered, iterations=2)).sum() <= 0.02 * mask.sum()


@requires_nerfstudio
def test_bunny_normals_rendered_through_nerfstudio_cameras(bunny_dir: Path) -> None:
    import trimesh

    out = _parser(bunny_dir).get_dataparser_outputs("train")
    data = out.metadata["pmni_data"]
    assert out.metadata["gt_mesh"] == bunny_dir / "mesh_Gt.ply"
    mesh = _mesh_in_normalised_frame(data)
    for i in (0, 3, 6):
        rays = out.cameras.generate_rays(camera_indices=i)
        h, w = rays.shape[:2]
        o = rays.origins.numpy().reshape(-1, 3).astype(np.float64)
        d = rays.directions.numpy().reshape(-1, 3).astype(np.float64)
        tri = np.asarray(mesh.ray.intersects_first(o, d))
        hit = (tri >= 0).reshape(h, w)
        # Float32 ray generation may flip a grazing silhouette pixel or two, no more.
        assert (hit != data.masks[i]).sum() <= 0.01 * data.masks[i].sum() + 2
        both = (hit & data.masks[i]).ravel()
        o, d, tri = o[both], d[both], tri[both]
        corners = mesh.vertices[mesh.faces[tri]]
        fn = mesh.face_normals[tri]
        t = np.einsum("ij,ij->i", corners[:, 0] - o, fn) / np.einsum("ij,ij->i", d, fn)
        bary = np.clip(trimesh.triangles.points_to_barycentric(corners, o + t[:, None] * d), 0.0, None)
        smooth = np.einsum("ij,ijk->ik", bary / bary.sum(axis=1, keepdims=True), mesh.vertex_normals[mesh.faces[tri]])
        smooth /= np.linalg.norm(smooth, axis=1, keepdims=True)
        smooth *= -np.sign(np.einsum("ij,ij->i", smooth, d))[:, None]  # seen from the camera (open mesh)
        loaded = data.normals[i].reshape(-1, 3)[both]
        errors = angle_deg(smooth, loaded)
        assert errors.mean() < 1.0, (i, errors.mean())


def test_bunny_world_and_camera_normals_agree(bunny_dir: Path) -> None:
    world = load_diligent_mv(bunny_dir, normal_dir="normal_world_space_GT")
    camera = load_diligent_mv(bunny_dir, normal_dir="normal_camera_space_GT")
    m = world.masks
    np.testing.assert_array_equal(m, camera.masks)
    assert angle_deg(world.normals[m], camera.normals[m]).max() < 0.01


def test_bunny_png16_and_npy_match_exr(bunny_dir: Path, tmp_path: Path) -> None:
    exr = load_diligent_mv(bunny_dir, load_depth=False)
    for suffix in (".png", ".npy"):
        root = Path(shutil.copytree(bunny_dir, tmp_path / suffix[1:]))
        folder = root / "normal_world_space_GT"
        for path in sorted(folder.glob("*.exr")):
            io.write_normal_map(path.with_suffix(suffix), io.read_exr(path))
            path.unlink()
        data = load_diligent_mv(root, load_depth=False)
        assert angle_deg(exr.normals[exr.masks], data.normals[exr.masks]).max() < 0.01


@requires_nerfstudio
def test_bunny_exclude_views(bunny_dir: Path) -> None:
    parser = _parser(bunny_dir, exclude_views=(2, 5))
    train, val = parser.get_dataparser_outputs("train"), parser.get_dataparser_outputs("val")
    assert train.metadata["view_ids"] == [0, 1, 3, 4, 6, 7] and val.metadata["view_ids"] == [2, 5]
    np.testing.assert_allclose(
        val.cameras.camera_to_worlds.numpy(),
        cameras.opencv_to_nerfstudio_c2w(parser.load().c2w[[2, 5]])[:, :3, :4],
        atol=1e-6,
    )
