"""Tests of the camera conventions in :mod:`pmni_method.cameras`."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from helpers import nerfstudio_to_opencv_c2w
from pmni_method import cameras


def _random_K(rng: np.random.Generator) -> np.ndarray:
    fx, fy = rng.uniform(100, 5000, size=2)
    return np.array([[fx, rng.uniform(-2, 2), rng.uniform(0, 800)], [0, fy, rng.uniform(0, 600)], [0, 0, 1.0]])


def _random_c2w(rng: np.random.Generator, scale: float = 1000.0) -> np.ndarray:
    c2w = np.eye(4)
    c2w[:3, :3] = Rotation.random(random_state=rng).as_matrix()
    c2w[:3, 3] = rng.normal(size=3) * scale
    return c2w


def _rotation_angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip((np.trace(a.T @ b) - 1) / 2, -1, 1))))


@pytest.mark.parametrize("seed", range(5))
def test_decompose_inverts_compose(seed):
    rng = np.random.default_rng(seed)
    K, c2w = _random_K(rng), _random_c2w(rng)
    P = cameras.compose_world_mat(K, c2w)
    assert P.shape == (4, 4) and np.array_equal(P[3], [0, 0, 0, 1])
    # Any non-zero scale of P is the same camera, including a negative one (det < 0).
    for variant in (P, P[:3], 3.7 * P[:3], -P[:3], -0.01 * P):
        K2, c2w2 = cameras.decompose_projection(variant)
        np.testing.assert_allclose(K2, K, rtol=1e-8, atol=1e-7)
        np.testing.assert_allclose(c2w2[:3, :3], c2w[:3, :3], atol=1e-9)
        np.testing.assert_allclose(c2w2[:3, 3], c2w[:3, 3], rtol=1e-9, atol=1e-7)
        assert np.linalg.det(c2w2[:3, :3]) == pytest.approx(1.0)
        assert np.array_equal(c2w2[3], [0, 0, 0, 1])


def test_decomposed_camera_projects_like_the_matrix():
    rng = np.random.default_rng(11)
    K, c2w = _random_K(rng), _random_c2w(rng)
    P = -2.0 * cameras.compose_world_mat(K, c2w)[:3]
    # Points in front of the camera.
    points = c2w[:3, 3] + (rng.uniform(-0.2, 0.2, size=(20, 3)) + [0, 0, 1]) * 500 @ c2w[:3, :3].T
    uvw = np.c_[points, np.ones(len(points))] @ P.T
    K2, c2w2 = cameras.decompose_projection(P)
    uv, z = cameras.project_points(K2, c2w2, points)
    np.testing.assert_allclose(uv, uvw[:, :2] / uvw[:, 2:], rtol=1e-9)
    assert np.all(z > 0)


@pytest.mark.parametrize(
    "P",
    [
        np.zeros((3, 4)),
        np.array([[1.0, 2, 3, 4], [2, 4, 6, 8], [0, 0, 1, 1]]),  # rank-deficient 3x3 part
        np.c_[np.eye(3) * 1e3, np.ones(3)] @ np.diag([1, 1, 0, 1]),  # a zero column
        np.full((3, 4), np.nan),
    ],
)
def test_degenerate_projection_raises(P):
    with pytest.raises(cameras.CameraMatrixError):
        cameras.decompose_projection(P)


def test_camera_matrix_error_is_a_value_error():
    assert issubclass(cameras.CameraMatrixError, ValueError)


def test_camera_normals_point_toward_the_camera_in_world():
    eye, target, up = np.array([300.0, 200.0, 1500.0]), np.array([10.0, -20.0, 5.0]), np.array([0.0, 1.0, 0.0])
    c2w = cameras.look_at_c2w(eye, target, up)
    to_camera = (eye - target) / np.linalg.norm(eye - target)
    # DiLiGenT camera space: +z toward the camera, +y image-up, +x image-right.
    facing = cameras.camera_normals_to_world(np.array([[0.0, 0.0, 1.0]]), c2w)[0]
    np.testing.assert_allclose(facing, to_camera, atol=1e-12)
    image_up = cameras.camera_normals_to_world(np.array([[0.0, 1.0, 0.0]]), c2w)[0]
    assert image_up @ up > 0.9 and abs(image_up @ to_camera) < 1e-12
    image_right = cameras.camera_normals_to_world(np.array([[1.0, 0.0, 0.0]]), c2w)[0]
    np.testing.assert_allclose(image_right, c2w[:3, 0], atol=1e-12)
    # Right-handed: right x up = toward the camera.
    np.testing.assert_allclose(np.cross(image_right, image_up), to_camera, atol=1e-12)


def test_world_normals_to_camera_inverts_camera_normals_to_world():
    rng = np.random.default_rng(3)
    c2w = _random_c2w(rng)
    normals = rng.normal(size=(4, 5, 3))
    back = cameras.world_normals_to_camera(cameras.camera_normals_to_world(normals, c2w), c2w)
    np.testing.assert_allclose(back, normals, atol=1e-12)


def test_opencv_to_nerfstudio_c2w_looks_along_minus_z():
    rng = np.random.default_rng(5)
    batch = np.stack([_random_c2w(rng) for _ in range(3)])
    ns = cameras.opencv_to_nerfstudio_c2w(batch[:, :3])
    assert ns.shape == (3, 3, 4)
    for cv, gl in zip(batch, ns):
        np.testing.assert_allclose(-gl[:3, 2], cv[:3, 2])  # forward
        np.testing.assert_allclose(gl[:3, 1], -cv[:3, 1])  # up = -down
        np.testing.assert_allclose(gl[:3, 0], cv[:3, 0])
        np.testing.assert_allclose(gl[:3, 3], cv[:3, 3])
        assert np.linalg.det(gl[:3, :3]) == pytest.approx(1.0)
    np.testing.assert_allclose(nerfstudio_to_opencv_c2w(ns), batch[:, :3])
    # The input is not modified in place.
    assert not np.allclose(ns[:, :3, 1], batch[:, :3, 1])


def test_opencv_to_nerfstudio_principal_point_shifts_half_a_pixel():
    assert cameras.opencv_to_nerfstudio_principal_point(305.5, 255.5) == (306.0, 256.0)


@pytest.mark.parametrize("factor", [1, 2, 3, 4])
def test_downscale_intrinsics_maps_pixel_centres(factor):
    rng = np.random.default_rng(factor)
    K, c2w = _random_K(rng), _random_c2w(rng)
    points = c2w[:3, 3] + (rng.uniform(-0.1, 0.1, size=(10, 3)) + [0, 0, 1]) * 800 @ c2w[:3, :3].T
    uv_old, _ = cameras.project_points(K, c2w, points)
    uv_new, _ = cameras.project_points(cameras.downscale_intrinsics(K, factor), c2w, points)
    np.testing.assert_allclose(uv_new, (uv_old - (factor - 1) / 2) / factor, rtol=1e-12, atol=1e-9)
    # Batched intrinsics give the same.
    np.testing.assert_allclose(cameras.downscale_intrinsics(np.stack([K, K]), factor)[1],
                               cameras.downscale_intrinsics(K, factor))


def _non_uniform_scale_mat(rng: np.random.Generator) -> np.ndarray:
    A = Rotation.random(random_state=rng).as_matrix() @ np.diag([120.0, 40.0, 75.0]) @ Rotation.random(
        random_state=rng
    ).as_matrix()
    scale_mat = np.eye(4)
    scale_mat[:3, :3] = A
    scale_mat[:3, 3] = rng.normal(size=3) * 100
    return scale_mat


def test_normalisation_point_round_trip():
    rng = np.random.default_rng(8)
    norm = cameras.Normalisation(_non_uniform_scale_mat(rng))
    points = rng.normal(size=(50, 3))
    world = norm.to_world(points)
    np.testing.assert_allclose(world, points @ norm.linear.T + norm.offset)
    np.testing.assert_allclose(norm.to_normalised(world), points, atol=1e-12)
    assert norm.scale == pytest.approx(abs(np.linalg.det(norm.linear)) ** (1 / 3))


def test_normalisation_normals_stay_perpendicular_to_tangents():
    rng = np.random.default_rng(9)
    norm = cameras.Normalisation(_non_uniform_scale_mat(rng))
    normals = rng.normal(size=(100, 3))
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    tangents = np.cross(normals, rng.normal(size=(100, 3)))
    world_normals = norm.normals_to_world(normals)
    world_tangents = tangents @ norm.linear.T  # tangent vectors map with the linear part
    np.testing.assert_allclose(np.linalg.norm(world_normals, axis=1), 1.0)
    np.testing.assert_allclose(np.einsum("ij,ij->i", world_normals, world_tangents), 0.0, atol=1e-9)
    # And back.
    np.testing.assert_allclose(norm.normals_to_normalised(world_normals), normals, atol=1e-12)
    # Orientation is kept: the normal stays on the same side as a point pushed along it.
    pushed = norm.to_world(normals * 1e-3) - norm.to_world(np.zeros((100, 3)))
    assert np.all(np.einsum("ij,ij->i", world_normals, pushed) > 0)


def test_normalisation_normals_keep_image_shape():
    norm = cameras.Normalisation(_non_uniform_scale_mat(np.random.default_rng(1)))
    assert norm.normals_to_world(np.ones((4, 5, 3))).shape == (4, 5, 3)


def test_c2w_to_normalised_projects_like_world_mat_times_scale_mat():
    rng = np.random.default_rng(10)
    scale_mat = np.eye(4)
    scale_mat[:3, :3] = 85.0 * Rotation.random(random_state=rng).as_matrix()
    scale_mat[:3, 3] = [10.0, -50.0, 300.0]
    norm = cameras.Normalisation(scale_mat)
    K = _random_K(rng)
    c2w_world = np.stack([_random_c2w(rng) for _ in range(3)])
    c2w_norm = norm.c2w_to_normalised(c2w_world)
    for world, normalised in zip(c2w_world, c2w_norm):
        P = cameras.compose_world_mat(K, world) @ scale_mat
        P2 = cameras.compose_world_mat(K, normalised)
        # Same camera up to the projective scale.
        np.testing.assert_allclose(P2[:3] / np.linalg.norm(P2[:3]), P[:3] / np.linalg.norm(P[:3]), atol=1e-12)
        np.testing.assert_allclose(normalised, norm.c2w_to_normalised(world), atol=1e-12)


@pytest.mark.parametrize("up", [np.array([0.0, 1.0, 0.0]), np.array([0.0, 0.0, 1.0]), np.array([1.0, 1.0, 0.0])])
def test_ring_poses(up):
    n, radius, elevation = 12, 7.5, 20.0
    target = np.array([1.0, -2.0, 0.5])
    poses = cameras.ring_poses(n, radius, elevation_deg=elevation, up=up, target=target)
    up = up / np.linalg.norm(up)
    assert poses.shape == (n, 4, 4)
    offsets = poses[:, :3, 3] - target
    np.testing.assert_allclose(np.linalg.norm(offsets, axis=1), radius)
    np.testing.assert_allclose(offsets @ up, radius * np.sin(np.radians(elevation)))
    for pose, offset in zip(poses, offsets):
        np.testing.assert_allclose(pose[:3, :3].T @ pose[:3, :3], np.eye(3), atol=1e-12)
        assert np.linalg.det(pose[:3, :3]) == pytest.approx(1.0)
        np.testing.assert_allclose(pose[:3, 2], -offset / radius, atol=1e-12)  # looks at the target
        assert pose[:3, 1] @ up < 0  # image-down points away from up
        # The target projects to the principal point.
        uv, z = cameras.project_points(np.eye(3), pose, target[None])
        np.testing.assert_allclose(uv, 0.0, atol=1e-12)
        assert z[0] == pytest.approx(radius)
    # Evenly spaced in azimuth, in increasing order about up.
    flat = offsets - np.outer(offsets @ up, up)
    flat /= np.linalg.norm(flat, axis=1, keepdims=True)
    nxt = np.roll(flat, -1, axis=0)
    steps = np.degrees(np.arctan2(np.cross(flat, nxt) @ up, np.einsum("ij,ij->i", flat, nxt)))
    np.testing.assert_allclose(steps, 360.0 / n, atol=1e-9)


def test_ring_poses_per_view_elevation_and_start_azimuth():
    elevations = np.array([0.0, 10.0, -10.0, 45.0])
    poses = cameras.ring_poses(4, 2.0, elevation_deg=elevations, start_azimuth_deg=90.0)
    np.testing.assert_allclose(poses[:, 1, 3], 2.0 * np.sin(np.radians(elevations)), atol=1e-12)
    shifted = cameras.ring_poses(4, 2.0, start_azimuth_deg=90.0)
    np.testing.assert_allclose(shifted[0, :3, 3], cameras.ring_poses(4, 2.0)[1, :3, 3], atol=1e-12)


def test_pixel_rays_pass_through_pixel_centres():
    rng = np.random.default_rng(4)
    K, c2w = _random_K(rng), _random_c2w(rng, scale=10.0)
    pixels = np.array([[0, 0], [5, 17], [479, 639]])
    origins, dirs = cameras.pixel_rays(K, c2w, 480, 640, pixels)
    np.testing.assert_allclose(np.linalg.norm(dirs, axis=1), 1.0)
    np.testing.assert_allclose(origins, np.broadcast_to(c2w[:3, 3], origins.shape))
    uv, z = cameras.project_points(K, c2w, origins + 3.0 * dirs)
    np.testing.assert_allclose(uv, pixels[:, ::-1], atol=1e-6)
    assert np.all(z > 0)
    all_origins, all_dirs = cameras.pixel_rays(K, c2w, 4, 6)
    assert all_dirs.shape == (24, 3)
    np.testing.assert_allclose(all_dirs[6 * 2 + 3], cameras.pixel_rays(K, c2w, 4, 6, np.array([[2, 3]]))[1][0])
