"""Camera poses for pose-free reconstruction: initialisations, pose files, perturbation and pose-error metrics.

Every pose here is an OpenCV camera-to-world (x right, y down, z forward; see :mod:`pmni_method.cameras`), in the
normalised frame (object inside the unit sphere) unless a name or docstring says ``world``.

Nothing here imports nerfstudio or torch: the core runs without them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple, Union

import numpy as np
from scipy.spatial.transform import Rotation

from pmni_method import cameras
from pmni_method.data import io
from pmni_method.errors import PMNIDataError


def umeyama(src: np.ndarray, dst: np.ndarray, with_scale: bool = True) -> Tuple[float, np.ndarray, np.ndarray]:
    """Least-squares similarity ``dst ~ s R src + t`` between corresponding (N, 3) points (Umeyama 1991).

    Returns ``(s, R, t)`` with ``R`` a proper rotation; ``s`` is 1 when ``with_scale`` is False.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 3 or len(src) < 3:
        raise ValueError(f"umeyama needs two (N, 3) arrays of equal shape with N >= 3, got {src.shape} and {dst.shape}")
    mu_src, mu_dst = src.mean(0), dst.mean(0)
    xs, xd = src - mu_src, dst - mu_dst
    cov = xd.T @ xs / len(src)
    U, D, Vt = np.linalg.svd(cov)
    S = np.eye(3)
    # The reflection fix keeps R a rotation when the best orthogonal fit would be a mirror.
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:
        S[2, 2] = -1.0
    R = U @ S @ Vt
    var_src = (xs**2).sum() / len(src)
    s = float(np.trace(np.diag(D) @ S) / var_src) if with_scale else 1.0
    t = mu_dst - s * R @ mu_src
    return s, R, t


def similarity_matrix(s: float, R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """4x4 matrix of ``x -> s R x + t``."""
    T = np.eye(4)
    T[:3, :3] = s * np.asarray(R, dtype=np.float64)
    T[:3, 3] = np.asarray(t, dtype=np.float64)
    return T


PoseInit = Literal["gt", "noisy", "ring", "file"]
POSE_INITS: Tuple[str, ...] = PoseInit.__args__  # type: ignore[attr-defined]

PoseNoiseDistribution = Literal["half-normal", "fixed"]

POSE_NOISE_DEFINITION = (
    "stored camera-to-world rotation = R_delta @ R_true, R_delta a rotation by |N(0, pose_rotation_noise_deg)| "
    "degrees about a uniformly random axis (the camera turns about its own centre); stored camera centre = true "
    "centre + N(0, (pose_translation_noise * camera_distance)^2 I_3)"
)
"""The default ("half-normal") pose noise in words; pmni-synth records it in synth.json."""

ROTATION_TOLERANCE = 1e-3
"""A pose-file rotation may be off orthonormal by this much (max |R^T R - I| entry) and is then re-orthonormalised."""


# --------------------------------------------------------------------------------------------------------------------
# Perturbation
# --------------------------------------------------------------------------------------------------------------------


def perturb_poses(
    c2w: np.ndarray,
    rotation_deg: float,
    translation: float,
    seed: Union[int, np.random.Generator] = 0,
    reference_radius: float = 1.0,
    distribution: PoseNoiseDistribution = "half-normal",
) -> np.ndarray:
    """Noisy copies of (N, 4, 4) OpenCV camera-to-worlds.

    Each camera turns about its own centre: ``R_noisy = R_delta @ R``, ``R_delta`` a rotation about a uniformly random
    axis, and its centre moves by a random offset; the scale of that offset is ``translation * reference_radius``
    (pass the orbit radius so that ``translation`` is a fraction of it).

    * ``"half-normal"`` (default, :data:`POSE_NOISE_DEFINITION`): angle ``|N(0, rotation_deg)|`` degrees, offset
      ``N(0, (translation * reference_radius)^2 I_3)`` (per axis). The mean angle is ``rotation_deg * sqrt(2/pi)``,
      the RMS offset length ``sqrt(3) * translation * reference_radius``.
    * ``"fixed"``: angle exactly ``rotation_deg``, offset of length exactly ``translation * reference_radius`` in a
      uniformly random direction: every view has the same, known error.

    ``seed`` is an int or a numpy Generator (which is advanced). Every view draws the same numbers whatever the
    magnitudes and distribution, so turning one noise on leaves the other's draws alone, and zero magnitudes give
    back the input exactly.
    """
    if distribution not in ("half-normal", "fixed"):
        raise ValueError(f"distribution must be 'half-normal' or 'fixed', not {distribution!r}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    out = np.array(c2w, dtype=np.float64, copy=True)
    translation_std = translation * reference_radius
    for i in range(len(out)):
        axis = rng.normal(size=3)
        angle_draw = abs(rng.normal())
        offset_draw = rng.normal(size=3)
        if distribution == "fixed":
            angle = np.deg2rad(rotation_deg)
            offset = offset_draw / np.linalg.norm(offset_draw) * translation_std
        else:
            angle = np.deg2rad(angle_draw * rotation_deg)
            offset = offset_draw * translation_std
        rot = Rotation.from_rotvec(axis / np.linalg.norm(axis) * angle).as_matrix()
        out[i, :3, :3] = rot @ out[i, :3, :3]
        out[i, :3, 3] += offset
    return out


# --------------------------------------------------------------------------------------------------------------------
# Ring initialisation
# --------------------------------------------------------------------------------------------------------------------


def ring_initialisation(
    num_views: int,
    radius: float,
    elevation_deg: Union[float, Tuple[float, float]] = 0.0,
    up: Sequence[float] = (0.0, 1.0, 0.0),
    start_azimuth_deg: float = 0.0,
    reverse: bool = False,
) -> np.ndarray:
    """(N, 4, 4) OpenCV camera-to-worlds on a turntable ring around ``up`` through the origin, looking at the origin.

    Views are evenly spaced in azimuth, in turntable order (view k at ``start + k * 360 / N`` degrees, right-handed
    about ``up``; ``reverse`` goes the other way). ``elevation_deg`` is one value for all views, or a ``(min, max)``
    range spread linearly over the views in order (a helical path, e.g. for a capture that rises as it turns).
    Intrinsics do not enter: a ring initialisation keeps the dataset's.
    """
    if num_views < 1:
        raise ValueError(f"ring_initialisation needs at least one view, got {num_views}")
    if not (np.isfinite(radius) and radius > 0):
        raise ValueError(f"ring radius must be a positive number, got {radius}")
    up_vec = np.asarray(up, dtype=np.float64)
    if up_vec.shape != (3,) or not np.linalg.norm(up_vec) > 0:
        raise ValueError(f"ring up must be a non-zero 3-vector, got {tuple(up)}")
    elev = np.asarray(elevation_deg, dtype=np.float64)
    if elev.ndim == 1:
        if elev.shape != (2,):
            raise ValueError(f"ring elevation must be one angle or a (min, max) pair, got {tuple(elev)}")
        elev = np.linspace(elev[0], elev[1], num_views)
    if not np.all(np.isfinite(elev)) or np.any(np.abs(elev) >= 89.0):
        # Looking straight down the up axis leaves the image-up direction undefined.
        raise ValueError(f"ring elevation must lie strictly between -89 and 89 degrees, got {np.unique(elev).tolist()}")
    if not reverse:
        return cameras.ring_poses(num_views, radius, elev, up_vec, start_azimuth_deg=start_azimuth_deg)
    # ring_poses only turns one way: view k of the reversed ring (azimuth start - k * 360 / N) is view (N - k) mod N
    # of the forward ring, given view k's elevation.
    order = (-np.arange(num_views)) % num_views
    elev_forward = np.empty(num_views)
    elev_forward[order] = np.broadcast_to(elev, (num_views,))
    forward = cameras.ring_poses(num_views, radius, elev_forward, up_vec, start_azimuth_deg=start_azimuth_deg)
    return forward[order]


# --------------------------------------------------------------------------------------------------------------------
# Pose files
# --------------------------------------------------------------------------------------------------------------------


def _file_error(path: Path, problem: str) -> PMNIDataError:
    return PMNIDataError(f"{path}: {problem}")


def _as_c2w(path: Path, what: str, matrix: Any) -> np.ndarray:
    """A 3x4 / 4x4 camera-to-world checked for finiteness and a proper rotation (re-orthonormalised)."""
    try:
        m = np.asarray(matrix, dtype=np.float64)
    except (TypeError, ValueError):
        raise _file_error(path, f"{what} is not a numeric matrix") from None
    if m.shape not in ((3, 4), (4, 4)):
        raise _file_error(path, f"{what} has shape {m.shape}; expected 4x4 or 3x4 camera-to-world")
    if not np.all(np.isfinite(m)):
        raise _file_error(path, f"{what} has NaN or Inf entries")
    if m.shape == (4, 4) and not np.allclose(m[3], [0.0, 0.0, 0.0, 1.0], atol=1e-6):
        raise _file_error(path, f"{what} has last row {m[3].tolist()}; expected [0, 0, 0, 1]")
    R = m[:3, :3]
    if np.abs(R.T @ R - np.eye(3)).max() > ROTATION_TOLERANCE or np.linalg.det(R) < 0:
        raise _file_error(
            path, f"{what} rotation part is not a rotation (det {np.linalg.det(R):.3g}); expected an OpenCV c2w"
        )
    # SfM tools write rotations to a few digits; snap to the nearest rotation so later maths stays exact.
    U, _, Vt = np.linalg.svd(R)
    out = np.eye(4)
    out[:3, :3] = U @ Vt
    out[:3, 3] = m[:3, 3]
    return out


def _stack_to_matrices(path: Path, array: np.ndarray) -> np.ndarray:
    """(N, 4, 4) / (N, 3, 4) / (N, 16) / (N, 12) / (4N, 4) / (3N, 4) arrays -> (N, 3|4, 4)."""
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[1:] in ((4, 4), (3, 4)):
        return a
    if a.ndim == 2 and a.shape[1] in (16, 12):
        return a.reshape(len(a), a.shape[1] // 4, 4)
    if a.ndim == 2 and a.shape[1] == 4:
        rows = a.shape[0]
        # Stacked 4x4 blocks end every fourth row with [0, 0, 0, 1]; anything else is read as 3x4 blocks.
        if rows % 4 == 0 and rows > 0 and np.allclose(a[3::4], [0.0, 0.0, 0.0, 1.0]):
            return a.reshape(rows // 4, 4, 4)
        if rows % 3 == 0 and rows > 0:
            return a.reshape(rows // 3, 3, 4)
    if a.ndim == 2 and a.shape in ((4, 4), (3, 4)):
        return a[None]
    raise _file_error(
        path, f"array has shape {a.shape}; expected (N, 4, 4) or (N, 3, 4) camera-to-worlds (or N rows of 16 / 12)"
    )


def _read_npz_poses(path: Path) -> Tuple[Dict[int, np.ndarray], bool]:
    """world_mat_<i> (+ optional shared scale_mat_<i>) -> view id -> c2w; also whether the poses are normalised."""
    arrays = io.read_npz(path)
    ids = sorted(int(k[len("world_mat_"):]) for k in arrays if k.startswith("world_mat_") and k[10:].isdigit())
    if not ids:
        raise _file_error(path, "no world_mat_<i> keys (expected a cameras_sphere.npz-style file)")
    scale_mat = None
    scale_ids = [i for i in ids if f"scale_mat_{i}" in arrays]
    if scale_ids:
        if len(scale_ids) != len(ids):
            missing = sorted(set(ids) - set(scale_ids))
            raise _file_error(path, f"scale_mat_<i> given for some views but not for {missing}")
        scale_mat = _as_matrix4(path, f"scale_mat_{ids[0]}", arrays[f"scale_mat_{ids[0]}"])
        for i in ids[1:]:
            if not np.allclose(_as_matrix4(path, f"scale_mat_{i}", arrays[f"scale_mat_{i}"]), scale_mat, rtol=1e-6):
                raise _file_error(path, f"scale_mat_{i} differs from scale_mat_{ids[0]}; all views must share one")
    poses: Dict[int, np.ndarray] = {}
    for i in ids:
        world_mat = _as_matrix4(path, f"world_mat_{i}", arrays[f"world_mat_{i}"])
        try:
            _, c2w = cameras.decompose_projection(world_mat if scale_mat is None else world_mat @ scale_mat)
        except cameras.CameraMatrixError as e:
            raise _file_error(path, f"world_mat_{i}: {e}") from None
        poses[i] = c2w
    return poses, scale_mat is not None


def _as_matrix4(path: Path, key: str, matrix: np.ndarray) -> np.ndarray:
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape not in ((3, 4), (4, 4)):
        raise _file_error(path, f"{key} has shape {m.shape}; expected 3x4 or 4x4")
    if not np.all(np.isfinite(m)):
        raise _file_error(path, f"{key} has NaN or Inf entries")
    out = np.eye(4)
    out[: m.shape[0]] = m
    return out


def _read_json_poses(path: Path) -> Dict[int, np.ndarray]:
    try:
        entries = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _file_error(path, f"not valid JSON ({' '.join(str(e).split())})") from None
    if not isinstance(entries, list) or not entries:
        raise _file_error(path, 'expected a non-empty JSON list of {"view": i, "c2w": 4x4}')
    poses: Dict[int, np.ndarray] = {}
    for n, entry in enumerate(entries):
        if not isinstance(entry, dict) or "view" not in entry or "c2w" not in entry:
            raise _file_error(path, f'entry {n} is not an object with "view" and "c2w"')
        view = entry["view"]
        if isinstance(view, bool) or not isinstance(view, int):
            raise _file_error(path, f'entry {n}: "view" must be an integer view id, not {view!r}')
        if view in poses:
            raise _file_error(path, f"view {view} appears twice")
        poses[view] = _as_c2w(path, f"view {view} c2w", entry["c2w"])
    return poses


def read_poses_file(
    path: Union[Path, str],
    normalisation: Optional[cameras.Normalisation] = None,
    ordered_view_ids: Optional[Sequence[int]] = None,
) -> Tuple[Optional[List[int]], np.ndarray]:
    """Every pose in a pose file (formats and frames as in :func:`load_poses_file`) with the view id of each.

    Returns ``(view_ids, c2w)``: the ids the file names (npz keys in ascending order, JSON entries in file order), or
    for plain arrays ``ordered_view_ids`` (their count must match the file's) or None when not given.
    """
    path = Path(path)
    if not path.is_file():
        raise _file_error(path, "poses file not found" if not path.exists() else "not a regular file")
    suffix = path.suffix.lower()
    normalised = False
    if suffix == ".npz":
        by_view, normalised = _read_npz_poses(path)
    elif suffix == ".json":
        by_view = _read_json_poses(path)
    elif suffix in (".npy", ".txt"):
        try:
            raw = np.load(path, allow_pickle=False) if suffix == ".npy" else np.loadtxt(path, ndmin=2)
        except Exception as e:  # numpy raises ValueError / OSError / UnpicklingError on bad files
            detail = " ".join(str(e).split())
            raise _file_error(path, f"cannot read {suffix} array ({type(e).__name__}: {detail})") from None
        stack = _stack_to_matrices(path, raw)
        ordered = np.stack([_as_c2w(path, f"pose {k}", m) for k, m in enumerate(stack)])
        if ordered_view_ids is not None and len(ordered) != len(ordered_view_ids):
            raise _file_error(
                path,
                f"{len(ordered)} poses but the dataset has {len(ordered_view_ids)} views (one pose per view, in order)",
            )
        by_view = None
    else:
        raise _file_error(path, f"unknown poses file type {suffix or '(none)'}; expected .npz, .npy, .txt or .json")

    if by_view is not None:
        ids: Optional[List[int]] = list(by_view)
        c2w = np.stack(list(by_view.values()))
    else:
        ids = None if ordered_view_ids is None else [int(v) for v in ordered_view_ids]
        c2w = ordered
    if normalisation is not None and not normalised:
        c2w = normalisation.c2w_to_normalised(c2w)
    return ids, c2w


def load_poses_file(
    path: Union[Path, str],
    view_ids: Optional[Sequence[int]] = None,
    normalisation: Optional[cameras.Normalisation] = None,
) -> np.ndarray:
    """Camera poses from a file (e.g. an SfM tool's output) as (N, 4, 4) OpenCV camera-to-worlds.

    Formats, chosen by suffix:

    * ``.npz``: ``cameras_sphere.npz`` style, ``world_mat_<i>`` (``K [R | t]``, world -> pixels; its intrinsics are
      ignored) per view id ``i``. With ``scale_mat_<i>`` (one shared by all views) the poses are returned in *that
      file's* normalised frame (``world_mat @ scale_mat``) and ``normalisation`` is not applied; without, they are in
      the dataset's world units and ``normalisation`` is applied.
    * ``.npy`` / ``.txt``: an (N, 4, 4) or (N, 3, 4) array (``.txt``: 4N or 3N rows of 4 numbers, or N rows of 16 / 12
      numbers, row-major) of camera-to-worlds, the k-th for the k-th view in ascending view-id order.
    * ``.json``: a list of ``{"view": i, "c2w": 4x4 or 3x4 nested list}``.

    Unless said otherwise above, poses must be in the dataset's *world* units and frame (DiLiGenT-MV: millimetres,
    the frame of ``cameras_sphere.npz`` and ``mesh_Gt.ply``) with OpenCV camera axes (x right, y down, z forward); with
    ``normalisation`` given they are converted to the normalised frame. A pose-free run does not need the world frame
    to be the true one (scoring aligns by a similarity), but world-space normal maps do live in the true frame.

    ``view_ids`` selects and orders the poses (ids from the npz keys / JSON ``view``; for plain arrays the count must
    match). Raises :class:`PMNIDataError` with one line, ``"<path>: <problem>"``, on a bad file.
    """
    ids, c2w = read_poses_file(path, normalisation, ordered_view_ids=view_ids)
    if ids is None:
        return c2w
    index = {v: k for k, v in enumerate(ids)}
    wanted = sorted(ids) if view_ids is None else [int(v) for v in view_ids]
    missing = [v for v in wanted if v not in index]
    if missing:
        raise _file_error(Path(path), f"no pose for views {missing} (file has views {sorted(ids)})")
    return c2w[[index[v] for v in wanted]]


# --------------------------------------------------------------------------------------------------------------------
# Choosing the poses training starts from
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class PoseInitConfig:
    """How the poses training starts from are chosen. A plain dataclass: the dataparser copies its defaults."""

    pose_init: PoseInit = "gt"
    """Start poses: gt = cameras_sphere.npz as is; noisy = true poses + noise; ring = turntable; file = poses_file."""
    pose_noise_rotation_deg: float = 5.0
    """noisy: rotation noise in degrees (half-normal scale, or the exact angle with the fixed distribution)."""
    pose_noise_translation: float = 0.05
    """noisy: camera-centre noise as a fraction of the camera distance (per-axis std, or the exact offset if fixed)."""
    pose_noise_seed: int = 0
    """noisy: seed of the pose noise."""
    pose_noise_distribution: PoseNoiseDistribution = "half-normal"
    """noisy: half-normal = angle |N(0, s)| and Gaussian offsets; fixed = the same exact angle and offset per view."""
    ring_radius: Optional[float] = None
    """ring: camera distance from the origin in normalised units; None = mean camera distance of the file's poses."""
    ring_elevation_deg: Tuple[float, float] = (0.0, 0.0)
    """ring: elevation above the ring plane in degrees, (min, max) spread linearly over the views in order."""
    ring_up: Tuple[float, float, float] = (0.0, 1.0, 0.0)
    """ring: turntable axis and image-up direction in the normalised frame (pmni-synth's default is +y)."""
    ring_start_azimuth_deg: float = 0.0
    """ring: azimuth of the first view in degrees (0 = on +z for up = +y, as in pmni-synth)."""
    ring_reverse: bool = False
    """ring: go round the other way (left-handed about ring_up)."""
    poses_file: Optional[Path] = None
    """file: poses file (.npz world_mat_<i>, .npy/.txt (N,4,4) or (N,3,4), .json [{"view", "c2w"}]), world units."""


def camera_distances(c2w: np.ndarray, target: np.ndarray = np.zeros(3)) -> np.ndarray:
    """(N,) distance of each camera centre from ``target`` (the origin: the object centre in the normalised frame)."""
    return np.linalg.norm(np.asarray(c2w)[:, :3, 3] - np.asarray(target), axis=-1)


def orbit_radius(c2w: np.ndarray) -> float:
    """Mean distance of the camera centres from their centroid: the scale of a camera rig in its own frame."""
    centres = np.asarray(c2w, dtype=np.float64)[:, :3, 3]
    return float(np.linalg.norm(centres - centres.mean(axis=0), axis=-1).mean())


def initial_poses(
    config: PoseInitConfig,
    file_c2w: np.ndarray,
    true_c2w: np.ndarray,
    view_ids: Sequence[int],
    normalisation: cameras.Normalisation,
) -> np.ndarray:
    """(N, 4, 4) normalised-frame poses training starts from, for all views (ascending view ids) at once.

    ``file_c2w`` are the dataset's stored poses (``cameras_sphere.npz``), ``true_c2w`` the true ones
    (``cameras_gt.npz`` when present, else the stored ones). Noise scales with the mean true camera distance from the
    origin (the object centre), the same reference pmni-synth uses. Raises :class:`PMNIDataError` on bad options.
    """
    mode = config.pose_init
    if mode not in POSE_INITS:
        raise PMNIDataError(f"pose_init: {mode!r} is not one of {', '.join(POSE_INITS)}")
    if config.poses_file is not None and mode != "file":
        # A poses file that is silently ignored would make a run look pose-free-from-file when it is not.
        raise PMNIDataError(f"poses_file: given ({config.poses_file}) but pose_init is {mode!r}; use pose_init 'file'")
    if mode == "gt":
        return np.array(file_c2w, dtype=np.float64, copy=True)
    if mode == "noisy":
        for name in ("pose_noise_rotation_deg", "pose_noise_translation"):
            value = getattr(config, name)
            if not (np.isfinite(value) and value >= 0):
                raise PMNIDataError(f"{name}: must be a number >= 0, not {value}")
        return perturb_poses(
            true_c2w,
            config.pose_noise_rotation_deg,
            config.pose_noise_translation,
            seed=config.pose_noise_seed,
            reference_radius=float(camera_distances(true_c2w).mean()),
            distribution=config.pose_noise_distribution,
        )
    if mode == "ring":
        radius = float(camera_distances(file_c2w).mean()) if config.ring_radius is None else config.ring_radius
        if not (np.isfinite(radius) and radius > 1.0):
            # The object fills the unit sphere: a camera at distance <= 1 would sit inside it.
            raise PMNIDataError(f"ring_radius: {radius} puts the cameras inside the unit sphere; it must be > 1")
        try:
            return ring_initialisation(
                len(view_ids),
                radius,
                elevation_deg=tuple(config.ring_elevation_deg),
                up=config.ring_up,
                start_azimuth_deg=config.ring_start_azimuth_deg,
                reverse=config.ring_reverse,
            )
        except ValueError as e:
            raise PMNIDataError(f"ring initialisation: {e}") from None
    if config.poses_file is None:
        raise PMNIDataError("poses_file: required with pose_init 'file'")
    return load_poses_file(config.poses_file, view_ids, normalisation)


# --------------------------------------------------------------------------------------------------------------------
# Pose metrics
# --------------------------------------------------------------------------------------------------------------------


def rotation_errors_deg(R_est: np.ndarray, R_gt: np.ndarray) -> np.ndarray:
    """Geodesic angle in degrees between rotations, (..., 3, 3) each: the angle of ``R_est R_gt^T``."""
    R_est = np.asarray(R_est, dtype=np.float64)[..., :3, :3]
    R_gt = np.asarray(R_gt, dtype=np.float64)[..., :3, :3]
    rel = R_est @ np.swapaxes(R_gt, -1, -2)
    cos = (np.trace(rel, axis1=-2, axis2=-1) - 1.0) / 2.0
    # arccos is ill-conditioned near 0 and 180 degrees; atan2 of the skew part and the trace is not.
    skew = np.stack(
        [rel[..., 2, 1] - rel[..., 1, 2], rel[..., 0, 2] - rel[..., 2, 0], rel[..., 1, 0] - rel[..., 0, 1]], axis=-1
    )
    sin = np.linalg.norm(skew, axis=-1) / 2.0
    return np.degrees(np.arctan2(sin, cos))


def _check_alignable(centres: np.ndarray, what: str) -> None:
    if len(centres) < 3:
        raise ValueError(f"pose alignment needs at least 3 cameras, {what} has {len(centres)}")
    spread = centres - centres.mean(axis=0)
    sv = np.linalg.svd(spread, compute_uv=False)
    # Collinear centres leave the rotation about their line undetermined: Umeyama would return an arbitrary one.
    if sv[0] == 0 or sv[1] <= 1e-6 * sv[0]:
        raise ValueError(f"pose alignment is degenerate: the {what} camera centres are collinear or coincide")


def align_cameras(c2w_est: np.ndarray, c2w_gt: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Similarity-align estimated cameras to the true ones by Umeyama on the camera centres.

    Returns ``(aligned c2w (N, 4, 4), T (4, 4))`` with ``T: x -> s R x + t`` mapping the estimate's frame to the true
    one: centres move by ``T``, rotations by ``R`` (camera axes stay orthonormal). Raises ``ValueError`` when fewer
    than 3 cameras are given or the centres are collinear (the alignment is then not unique).
    """
    c2w_est = np.asarray(c2w_est, dtype=np.float64)
    c2w_gt = np.asarray(c2w_gt, dtype=np.float64)
    if c2w_est.shape != c2w_gt.shape or c2w_est.ndim != 3 or c2w_est.shape[1:] not in ((4, 4), (3, 4)):
        raise ValueError(f"expected two (N, 4, 4) pose arrays of equal shape, got {c2w_est.shape} and {c2w_gt.shape}")
    src, dst = c2w_est[:, :3, 3], c2w_gt[:, :3, 3]
    _check_alignable(src, "estimated")
    _check_alignable(dst, "true")
    s, R, t = umeyama(src, dst, with_scale=True)
    aligned = np.tile(np.eye(4), (len(c2w_est), 1, 1))
    aligned[:, :3, :3] = R @ c2w_est[:, :3, :3]
    aligned[:, :3, 3] = s * src @ R.T + t
    return aligned, similarity_matrix(s, R, t)


def alignment_to_world(alignment: np.ndarray, normalisation: cameras.Normalisation) -> np.ndarray:
    """A normalised-frame similarity (e.g. ``pose_errors(...)["alignment"]`` of normalised poses) as the same map in
    world units, ``S T S^-1`` with ``S`` the scale_mat: the form :func:`pmni_method.evaluation.apply_alignment` takes
    for a mesh exported in world units."""
    S = np.asarray(normalisation.scale_mat, dtype=np.float64)
    return S @ np.asarray(alignment, dtype=np.float64) @ np.linalg.inv(S)


def pose_errors(c2w_est: np.ndarray, c2w_gt: np.ndarray) -> Dict[str, Any]:
    """Pose accuracy after similarity alignment (:func:`align_cameras`), in the units of ``c2w_gt``.

    Keys: ``rotation_deg`` / ``translation`` / ``translation_relative`` (per-view lists), their ``_mean`` and
    ``_median``; ``translation`` is the camera-centre distance, ``translation_relative`` that over ``orbit_radius``
    (mean distance of the true centres from their centroid); ``relative_rotation_deg_mean`` is the mean error of the
    relative rotations of all camera pairs (independent of the alignment); ``alignment`` is the 4x4 similarity (list
    of lists) that maps the estimate's frame onto the true one, to apply to a reconstruction before geometry metrics.
    """
    aligned, T = align_cameras(c2w_est, c2w_gt)
    gt = np.asarray(c2w_gt, dtype=np.float64)
    rot = rotation_errors_deg(aligned[:, :3, :3], gt[:, :3, :3])
    trans = np.linalg.norm(aligned[:, :3, 3] - gt[:, :3, 3], axis=-1)
    radius = orbit_radius(gt)
    rel = trans / radius

    def summary(name: str, values: np.ndarray) -> Dict[str, Any]:
        return {
            name: values.tolist(),
            f"{name}_mean": float(values.mean()),
            f"{name}_median": float(np.median(values)),
        }

    # Gauge-free: the angle between estimated and true relative rotations R_i^T R_j over all pairs, which no choice
    # of alignment can shift.
    R_est = np.asarray(c2w_est, dtype=np.float64)[:, :3, :3]
    i, j = np.triu_indices(len(R_est), k=1)
    relative = rotation_errors_deg(
        np.swapaxes(R_est[i], -1, -2) @ R_est[j], np.swapaxes(gt[i, :3, :3], -1, -2) @ gt[j, :3, :3]
    )
    return {
        **summary("rotation_deg", rot),
        "relative_rotation_deg_mean": float(relative.mean()) if len(relative) else 0.0,
        **summary("translation", trans),
        **summary("translation_relative", rel),
        "orbit_radius": radius,
        "alignment": T.tolist(),
        "alignment_scale": float(np.cbrt(np.linalg.det(T[:3, :3]))),
    }
