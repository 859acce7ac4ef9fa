"""Camera conventions and the world <-> normalised transform: the one place where they are defined.

Conventions used throughout pmni:

* ``world_mat`` (from ``cameras_sphere.npz``) is ``K [R | t]`` padded to 4x4; it maps *world* points to pixels.
* ``scale_mat`` maps the *normalised* unit sphere to world: ``x_world = A x_norm + c``.
  ``P = world_mat @ scale_mat`` therefore maps normalised points to pixels, and all training happens in
  normalised space (object inside the unit sphere, scene box [-1, 1]^3).
* Camera-to-world matrices are in OpenCV axes (x right, y down, z forward) unless a name says otherwise;
  nerfstudio uses OpenGL axes (x right, y up, z backward). ``opencv_to_nerfstudio_c2w`` converts.
* Pixel coordinates follow OpenCV: the centre of pixel column ``i`` is at ``u = i``. nerfstudio puts the
  centre of pixel ``i`` at ``i + 0.5``, so principal points shift by +0.5 on the way into nerfstudio.
* Camera-space normal maps follow DiLiGenT / SDM-UniPS: x right, y up, z toward the camera (OpenGL axes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import scipy.linalg

# Flips y and z: maps OpenCV camera axes to OpenGL / DiLiGenT normal-map axes and back (it is its own inverse).
CV_TO_GL = np.diag([1.0, -1.0, -1.0])


class CameraMatrixError(ValueError):
    """A projection matrix that cannot be decomposed into intrinsics and a pose."""


def decompose_projection(P: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Split a 3x4 (or 4x4) projection ``K [R | t]`` into ``K`` (3x3, K[2,2]=1) and an OpenCV camera-to-world (4x4)."""
    P = np.asarray(P, dtype=np.float64)[:3, :4]
    if not np.all(np.isfinite(P)):
        raise CameraMatrixError("projection matrix has NaN or Inf entries")
    M = P[:, :3]
    # A near-singular M has no camera centre; the threshold is relative so that mm- and m-scale files behave alike.
    if abs(np.linalg.det(M)) <= 1e-12 * max(np.abs(M).max(), 1e-300) ** 3:
        raise CameraMatrixError("projection matrix is singular (its 3x3 part has no inverse)")
    K, R = scipy.linalg.rq(M)
    signs = np.diag(np.sign(np.diag(K)))
    K = K @ signs
    R = signs @ R
    if np.linalg.det(R) < 0:
        # P is defined up to scale, including sign: -P = K (-R) [...]
        R = -R
    centre = -np.linalg.solve(M, P[:, 3])
    c2w = np.eye(4)
    c2w[:3, :3] = R.T
    c2w[:3, 3] = centre
    return K / K[2, 2], c2w


def compose_world_mat(K: np.ndarray, c2w: np.ndarray) -> np.ndarray:
    """Build the 4x4 ``world_mat`` (``K [R | t]`` padded) from intrinsics and an OpenCV camera-to-world."""
    w2c = np.linalg.inv(np.asarray(c2w, dtype=np.float64))
    out = np.eye(4)
    out[:3, :4] = np.asarray(K, dtype=np.float64) @ w2c[:3, :4]
    return out


def opencv_to_nerfstudio_c2w(c2w: np.ndarray) -> np.ndarray:
    """Convert OpenCV-axes camera-to-world matrices (..., 3|4, 4) to nerfstudio's OpenGL axes."""
    out = np.array(c2w, dtype=np.float64, copy=True)
    out[..., :3, :3] = out[..., :3, :3] @ CV_TO_GL
    return out


def opencv_to_nerfstudio_principal_point(cx: float, cy: float) -> Tuple[float, float]:
    """Shift an OpenCV principal point to nerfstudio's pixel-centre convention (centre of pixel i at i + 0.5)."""
    return cx + 0.5, cy + 0.5


def camera_normals_to_world(normals_cam: np.ndarray, c2w: np.ndarray) -> np.ndarray:
    """Rotate DiLiGenT camera-space normals (x right, y up, z to camera) into the frame of an OpenCV ``c2w``."""
    rot = np.asarray(c2w)[:3, :3] @ CV_TO_GL
    return normals_cam @ rot.T


def world_normals_to_camera(normals_world: np.ndarray, c2w: np.ndarray) -> np.ndarray:
    """Inverse of :func:`camera_normals_to_world`."""
    rot = np.asarray(c2w)[:3, :3] @ CV_TO_GL
    return normals_world @ rot


def pixel_rays(
    K: np.ndarray, c2w: np.ndarray, height: int, width: int, pixels: Optional[np.ndarray] = None
) -> Tuple[np.ndarray, np.ndarray]:
    """Rays through pixel centres (OpenCV convention) as ``(origins, unit directions)``, each (N, 3).

    ``pixels`` is an optional (N, 2) integer array of (row, col); by default every pixel, row-major.
    """
    if pixels is None:
        rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
        pixels = np.stack([rows.ravel(), cols.ravel()], axis=-1)
    pixels = np.asarray(pixels)
    uv1 = np.stack([pixels[:, 1], pixels[:, 0], np.ones(len(pixels))], axis=-1).astype(np.float64)
    dirs_cam = uv1 @ np.linalg.inv(K).T
    dirs = dirs_cam @ np.asarray(c2w)[:3, :3].T
    dirs /= np.linalg.norm(dirs, axis=-1, keepdims=True)
    origins = np.broadcast_to(np.asarray(c2w)[:3, 3], dirs.shape).copy()
    return origins, dirs


def project_points(K: np.ndarray, c2w: np.ndarray, points: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Project world points to OpenCV pixel coordinates ``(u, v)`` (N, 2); also return camera-z depth (N,)."""
    w2c = np.linalg.inv(c2w)
    cam = points @ w2c[:3, :3].T + w2c[:3, 3]
    uvw = cam @ np.asarray(K).T
    z = cam[:, 2]
    return uvw[:, :2] / uvw[:, 2:3], z


def rotation_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The smallest rotation (3x3) taking unit vector ``a`` to unit vector ``b`` (about ``a x b``)."""
    a = np.asarray(a, dtype=np.float64) / np.linalg.norm(a)
    b = np.asarray(b, dtype=np.float64) / np.linalg.norm(b)
    axis = np.cross(a, b)
    s, c = np.linalg.norm(axis), float(a @ b)
    if s < 1e-12:
        if c > 0:
            return np.eye(3)
        # Opposite vectors: any axis perpendicular to a works.
        perp = np.cross(a, [1.0, 0.0, 0.0] if abs(a[0]) < 0.9 else [0.0, 1.0, 0.0])
        perp /= np.linalg.norm(perp)
        return 2.0 * np.outer(perp, perp) - np.eye(3)
    k = axis / s
    skew = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    return np.eye(3) + s * skew + (1.0 - c) * skew @ skew


def look_at_c2w(eye: np.ndarray, target: np.ndarray, up: np.ndarray) -> np.ndarray:
    """OpenCV camera-to-world for a camera at ``eye`` looking at ``target`` with image-up roughly along ``up``."""
    forward = np.asarray(target, dtype=np.float64) - np.asarray(eye, dtype=np.float64)
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, np.asarray(up, dtype=np.float64))
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, down, forward, eye
    return c2w


def ring_poses(
    num_views: int,
    radius: float,
    elevation_deg: float | np.ndarray = 0.0,
    up: np.ndarray = np.array([0.0, 1.0, 0.0]),
    start_azimuth_deg: float = 0.0,
    target: np.ndarray = np.zeros(3),
) -> np.ndarray:
    """Turntable ring: ``num_views`` OpenCV camera-to-worlds evenly spaced in azimuth around ``up``, looking at ``target``.

    The view order is the turntable's (increasing azimuth). ``elevation_deg`` may be one value or one per view.
    """
    up = np.asarray(up, dtype=np.float64) / np.linalg.norm(up)
    # Any vector not parallel to up gives the azimuth-zero direction.
    ref = np.array([0.0, 0.0, 1.0]) if abs(up[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
    e0 = ref - up * (ref @ up)
    e0 /= np.linalg.norm(e0)
    e1 = np.cross(up, e0)
    elev = np.deg2rad(np.broadcast_to(np.asarray(elevation_deg, dtype=np.float64), (num_views,)))
    poses = []
    for i in range(num_views):
        az = np.deg2rad(start_azimuth_deg) + 2.0 * np.pi * i / num_views
        direction = np.cos(elev[i]) * (np.cos(az) * e0 + np.sin(az) * e1) + np.sin(elev[i]) * up
        poses.append(look_at_c2w(np.asarray(target) + radius * direction, target, up))
    return np.stack(poses)


@dataclass(frozen=True)
class Normalisation:
    """The affine map between the object's world units and the normalised unit sphere, from ``scale_mat``."""

    scale_mat: np.ndarray
    world_units: bool = True
    """False when the dataset gave no ``scale_mat`` (intrinsics only): "world" is then the normalised frame itself and
    the object's true size is unknown, so meshes and poses carry no physical unit."""

    @classmethod
    def unknown_units(cls) -> "Normalisation":
        """The identity map of a dataset without a ``scale_mat``: the normalised frame is all there is."""
        return cls(np.eye(4), world_units=False)

    @property
    def units(self) -> str:
        """How to read a length in the world frame, for metadata: ``"world"`` or ``"normalised (unknown scale)"``."""
        return "world" if self.world_units else "normalised (unknown scale)"

    @property
    def linear(self) -> np.ndarray:
        return np.asarray(self.scale_mat, dtype=np.float64)[:3, :3]

    @property
    def offset(self) -> np.ndarray:
        return np.asarray(self.scale_mat, dtype=np.float64)[:3, 3]

    @property
    def scale(self) -> float:
        """World units per normalised unit (the cube root of the determinant: exact for uniform scales)."""
        return float(abs(np.linalg.det(self.linear)) ** (1.0 / 3.0))

    def nerfstudio_transform(self) -> Tuple[np.ndarray, float]:
        """nerfstudio's ``(dataparser_transform, dataparser_scale)``: ``x_norm = scale * (T @ [x_world; 1])``.

        With ``scale_mat = [A | c]`` and ``s = det(A)^(1/3)``: ``T = [s A^-1 | -s A^-1 c]`` (3x4), ``scale = 1 / s``;
        for a uniform ``scale_mat`` (A = s I) that is ``T = [I | -c]``. The same map as :meth:`to_normalised`.
        """
        s = self.scale
        rot = s * np.linalg.inv(self.linear)
        return np.concatenate([rot, -(rot @ self.offset)[:, None]], axis=1), 1.0 / s

    def to_world(self, points: np.ndarray) -> np.ndarray:
        return np.asarray(points) @ self.linear.T + self.offset

    def to_normalised(self, points: np.ndarray) -> np.ndarray:
        return np.linalg.solve(self.linear, (np.asarray(points) - self.offset).T).T

    def normals_to_normalised(self, normals: np.ndarray) -> np.ndarray:
        """Normals transform with the inverse transpose of the point map: world -> normalised is ``A^T n``."""
        n = np.asarray(normals) @ self.linear
        return n / np.clip(np.linalg.norm(n, axis=-1, keepdims=True), 1e-12, None)

    def normals_to_world(self, normals: np.ndarray) -> np.ndarray:
        n = np.linalg.solve(self.linear.T, np.asarray(normals).reshape(-1, 3).T).T.reshape(np.shape(normals))
        return n / np.clip(np.linalg.norm(n, axis=-1, keepdims=True), 1e-12, None)

    def c2w_to_normalised(self, c2w_world: np.ndarray) -> np.ndarray:
        """World-frame OpenCV camera-to-worlds (..., 4, 4) -> normalised frame (valid for similarity scale_mats).

        The centre maps as a point; the rotation loses the scale_mat's rotation (identity for DiLiGenT-MV's
        diagonal scale_mats); intrinsics are unchanged because the uniform scale cancels in the projection.
        """
        c2w = np.asarray(c2w_world, dtype=np.float64)
        out = c2w.copy()
        rot = np.linalg.inv(self.linear / self.scale)
        out[..., :3, :3] = np.einsum("ij,...jk->...ik", rot, c2w[..., :3, :3])
        out[..., :3, 3] = self.to_normalised(c2w[..., :3, 3].reshape(-1, 3)).reshape(c2w[..., :3, 3].shape)
        return out

    def c2w_to_world(self, c2w_normalised: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`c2w_to_normalised`."""
        c2w = np.asarray(c2w_normalised, dtype=np.float64)
        out = c2w.copy()
        out[..., :3, :3] = np.einsum("ij,...jk->...ik", self.linear / self.scale, c2w[..., :3, :3])
        out[..., :3, 3] = self.to_world(c2w[..., :3, 3].reshape(-1, 3)).reshape(c2w[..., :3, 3].shape)
        return out

    def transform_to_world(self, transform: np.ndarray) -> np.ndarray:
        """A 4x4 map of the normalised frame (e.g. the similarity aligning estimated poses to true ones) as the same
        map in world units, ``S T S^-1``: the form pmni-eval's ``--alignment`` applies to a world-units mesh."""
        S = np.asarray(self.scale_mat, dtype=np.float64)
        return S @ np.asarray(transform, dtype=np.float64) @ np.linalg.inv(S)


def downscale_intrinsics(K: np.ndarray, factor: int) -> np.ndarray:
    """Intrinsics for an image block-averaged by an integer ``factor`` (OpenCV pixel centres).

    New pixel j covers old pixels [f j, f j + f - 1], whose centre is at f j + (f - 1) / 2.
    """
    K = np.array(K, dtype=np.float64, copy=True)
    K[..., 0, :] /= factor
    K[..., 1, :] /= factor
    K[..., 0, 2] -= (factor - 1) / (2.0 * factor)
    K[..., 1, 2] -= (factor - 1) / (2.0 * factor)
    return K


def upscale_intrinsics(K: np.ndarray, factor: int) -> np.ndarray:
    """Inverse of :func:`downscale_intrinsics`: the intrinsics of the full-resolution images."""
    K = np.array(K, dtype=np.float64, copy=True)
    K[..., 0, 2] += (factor - 1) / (2.0 * factor)
    K[..., 1, 2] += (factor - 1) / (2.0 * factor)
    K[..., 0, :] *= factor
    K[..., 1, :] *= factor
    return K
