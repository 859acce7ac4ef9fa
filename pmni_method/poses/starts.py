"""The poses training starts from: ground truth, noisy copies, a turntable ring, or a poses file.

Every pose is an OpenCV camera-to-world in the normalised frame (object inside the unit sphere). Nothing here
imports nerfstudio, torch or image libraries.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Literal, Optional, Sequence, Tuple, Union

import numpy as np
from scipy.spatial.transform import Rotation

from pmni_method import cameras
from pmni_method.errors import PMNIDataError
from pmni_method.poses.files import load_poses_file
from pmni_method.poses.from_masks import apply_similarity, estimate_camera_distance, normalise_start
from pmni_method.poses.maths import camera_distances
from pmni_method.poses.ring_search import search_ring_elevation

PoseInit = Literal["gt", "noisy", "ring", "file"]
POSE_INITS: Tuple[str, ...] = PoseInit.__args__  # type: ignore[attr-defined]

PoseNoiseDistribution = Literal["half-normal", "fixed"]

POSE_NOISE_DEFINITION = (
    "stored camera-to-world rotation = R_delta @ R_true, R_delta a rotation by |N(0, pose_rotation_noise_deg)| "
    "degrees about a uniformly random axis (the camera turns about its own centre); stored camera centre = true "
    "centre + N(0, (pose_translation_noise * camera_distance)^2 I_3)"
)
"""The default ("half-normal") pose noise in words; pmni-synth records it in synth.json."""

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


@dataclass
class PoseInitConfig:
    """How the poses training starts from are chosen; ``diligent-mv-data`` inherits these fields as its flags."""

    pose_init: PoseInit = "gt"
    """Start poses: gt = cameras_sphere.npz as is (calibrated); noisy = true poses + noise; ring = turntable guessed
    from the masks; file = poses_file. Any start but gt trains pose-free (refinement, recentring, consistency)."""
    pose_noise_rotation_deg: float = 5.0
    """noisy: rotation noise in degrees (half-normal scale, or the exact angle with the fixed distribution)."""
    pose_noise_translation: float = 0.05
    """noisy: camera-centre noise as a fraction of the camera distance (per-axis std, or the exact offset if fixed)."""
    pose_noise_seed: int = 0
    """noisy: seed of the pose noise."""
    pose_noise_distribution: PoseNoiseDistribution = "half-normal"
    """noisy: half-normal = angle |N(0, s)| and Gaussian offsets; fixed = the same exact angle and offset per view."""
    ring_radius: Optional[float] = None
    """ring: camera distance from the origin in normalised units; None = estimated from the masks and focal length
    (the object assumed to fill the unit sphere)."""
    ring_elevation_deg: Tuple[float, float] = (25.0, 25.0)
    """ring: elevation above the ring plane in degrees (PMNI: 25), (min, max) spread linearly over the views in order."""
    ring_elevation_search_deg: float = 45.0
    """ring: shift the elevation by up to this many degrees to where the masks' silhouettes agree best (0: as given)."""
    ring_up: Tuple[float, float, float] = (0.0, 1.0, 0.0)
    """ring: turntable axis and image-up direction in the normalised frame (pmni-synth's default is +y)."""
    ring_start_azimuth_deg: float = 0.0
    """ring: azimuth of the first view in degrees (0 = on +z for up = +y, as in pmni-synth)."""
    ring_reverse: bool = False
    """ring: go round the other way, left-handed about ring_up (PMNI's clock_wise); views are in file order."""
    poses_file: Optional[Path] = None
    """file: poses file (.npz world_mat_<i>, .npy/.txt (N,4,4) or (N,3,4), .json [{"view", "c2w"}]) in the dataset's
    world units, or in any frame and unit when the dataset has no scale_mat (DUSt3R, COLMAP, Metashape starts)."""

    def pose_init_config(self) -> "PoseInitConfig":
        """Just these pose options, as a plain config (a dataparser config inherits them among its own fields)."""
        values = {f.name: getattr(self, f.name) for f in fields(PoseInitConfig)}
        # A config read back from YAML or built by hand may hold lists where the loader expects tuples.
        return PoseInitConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def initial_poses(
    config: PoseInitConfig,
    file_c2w: Optional[np.ndarray],
    true_c2w: Optional[np.ndarray],
    view_ids: Sequence[int],
    normalisation: cameras.Normalisation,
    K: np.ndarray,
    masks: Sequence[np.ndarray],
) -> np.ndarray:
    """(N, 4, 4) normalised-frame poses training starts from, for all views (ascending view ids) at once.

    ``file_c2w`` are the dataset's stored poses (``cameras_sphere.npz``; None for an intrinsics-only dataset),
    ``true_c2w`` the true ones (``cameras_gt.npz`` when present, else the stored ones). A ring and a file start read
    neither: the ring's distance comes from the masks and intrinsics (:mod:`pmni_method.poses.from_masks`), and a
    poses file without a dataset ``scale_mat`` is moved into the normalised frame by the masks too. Noise scales with
    the mean true camera distance from the origin (the object centre), the same reference pmni-synth uses. Raises
    :class:`PMNIDataError` on bad options.
    """
    mode = config.pose_init
    if mode not in POSE_INITS:
        raise PMNIDataError(f"pose_init: {mode!r} is not one of {', '.join(POSE_INITS)}")
    if config.poses_file is not None and mode != "file":
        # A poses file that is silently ignored would make a run look pose-free-from-file when it is not.
        raise PMNIDataError(f"poses_file: given ({config.poses_file}) but pose_init is {mode!r}; use pose_init 'file'")
    if mode in ("gt", "noisy") and (file_c2w is None or true_c2w is None):
        raise PMNIDataError(
            f"pose_init: {mode!r} needs camera poses, and this dataset has intrinsics only; train pose-free with "
            "--pose-init ring, or --pose-init file --poses-file F"
        )
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
        radius = estimate_camera_distance(K, masks) if config.ring_radius is None else config.ring_radius
        if not (np.isfinite(radius) and radius > 1.0):
            # The object fills the unit sphere: a camera at distance <= 1 would sit inside it.
            raise PMNIDataError(f"ring_radius: {radius} puts the cameras inside the unit sphere; it must be > 1")
        search = config.ring_elevation_search_deg
        if not (np.isfinite(search) and search >= 0):
            raise PMNIDataError(f"ring_elevation_search_deg: must be a number >= 0, not {search}")
        guess = np.asarray(config.ring_elevation_deg, dtype=np.float64)

        def ring(shift: float) -> np.ndarray:
            return ring_initialisation(
                len(view_ids),
                radius,
                elevation_deg=tuple(guess + shift),
                up=config.ring_up,
                start_azimuth_deg=config.ring_start_azimuth_deg,
                reverse=config.ring_reverse,
            )

        try:
            start = ring(0.0)  # the guess itself must be a valid ring before anything is searched about it
            if search > 0:
                found = search_ring_elevation(ring, K, masks, guess, search)
                start = ring(found.shift_deg)
                # The estimate replaces what the user typed (or the default): say so, with the evidence.
                print(
                    f"ring start: elevation {np.round(guess + found.shift_deg, 1).tolist()} deg (guess "
                    f"{guess.tolist()}), where the masks' silhouettes agree best: {found.agreement:.3f} of their rays "
                    f"vs {found.guess_agreement:.3f} at the guess",
                    flush=True,
                )
            return start
        except ValueError as e:
            raise PMNIDataError(f"ring initialisation: {e}") from None
    if config.poses_file is None:
        raise PMNIDataError("poses_file: required with pose_init 'file'")
    poses = load_poses_file(config.poses_file, view_ids, normalisation)
    if normalisation.world_units:
        return poses
    # Without a scale_mat the file's frame and unit are its own (DUSt3R, COLMAP): the masks place the object.
    return apply_similarity(normalise_start(poses, K, masks), poses)
