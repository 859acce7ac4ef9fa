"""Render a DiLiGenT-MV-layout multi-view normal dataset from any mesh, with exact ground truth.

Layout written into the output folder (N views; file stems are 3-digit zero-based view indices)::

    cameras_sphere.npz                  world_mat_<i> (4x4 K[R|t], world -> pixels; perturbed with pose or
                                        intrinsics errors), scale_mat_<i> (normalised unit sphere -> world, one for all)
    cameras_gt.npz                      only with pose or intrinsics errors: the true cameras (true K, true pose)
    normal_world_space_GT/<iii>.exr     float32 R,G,B = world x,y,z unit normals, 0 outside the mask
    normal_camera_space_GT/<iii>.exr    the same normals in DiLiGenT camera axes (x right, y up, z toward the camera)
    mask/<iii>.png                      8-bit 0/255
    integration/perspective/<iii>.npy   float32 (H, W) camera-z depth in world units (times a per-view factor with
                                        depth-scale noise), 0 outside the true mask
    mesh_Gt.ply                         the mesh in world units
    synth.json                          every option, the seed, the mesh source, derived quantities and the
                                        statistics of the input errors actually produced (``input_errors``)
    normal_world_space_true/, normal_camera_space_true/, mask_true/
                                        only when the stored normal maps or masks carry errors: the true ones

Normal maps, masks and depth are always rendered with the true cameras; input errors (normal bias, grazing and
concavity errors, mask errors: :mod:`pmni_method.synth_realistic`) are applied to the stored maps afterwards. The
output appears whole or not at all (written into ``.NAME.partial-PID``, then renamed; see :mod:`pmni_method.staging`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Literal, Optional, Tuple

import numpy as np
import trimesh

from pmni_method import cameras, synth_realistic
from pmni_method.data import io
from pmni_method.data.layout import (
    CAMERA_NORMAL_DIR,
    CAMERAS_FILE,
    DEPTH_DIR,
    GT_CAMERAS_FILE,
    GT_MESH_FILE,
    MASK_DIR,
    TRUE_CAMERA_NORMAL_DIR,
    TRUE_MASK_DIR,
    TRUE_WORLD_NORMAL_DIR,
    WORLD_NORMAL_DIR,
)
from pmni_method.errors import PMNIDataError
from pmni_method.npz import write_npz
from pmni_method.poses.starts import POSE_NOISE_DEFINITION, perturb_poses
from pmni_method.raycast import make_intersector
from pmni_method.staging import Interrupts, commit, remove_stale_staging, staging_folder
from pmni_method.synth_noise import NORMAL_NOISE_DEFINITION, depth_scale_factors, perturb_normals
from pmni_method.synth_realistic import StoredView
from pmni_method.synth_render import ViewRender, lean_toward_camera, render_view

__all__ = ["ViewRender", "lean_toward_camera", "render_view"]  # re-exported: callers and tests patch synth.render_view

UpAxis = Literal["x", "y", "z", "-x", "-y", "-z"]

DILIGENT_FOCAL = 3772.0
"""DiLiGenT-MV's focal length in pixels (fx = fy, 612x512 images)."""

INFO_FILE = "synth.json"
"""Every option, the seed, the mesh source and derived quantities of a generated dataset (only pmni-synth writes it)."""

@dataclass
class SynthConfig:
    """Options of the synthetic DiLiGenT-MV dataset generator (``pmni-synth``)."""

    mesh: Path
    """Input mesh: any file trimesh reads (obj, ply, off, stl, glb...)."""
    output: Path
    """Dataset folder to create; it must not exist or must be empty, unless --overwrite."""
    num_views: int = 20
    """Number of views, evenly spaced on a turntable ring around the up axis."""
    width: int = 612
    """Image width in pixels."""
    height: int = 512
    """Image height in pixels."""
    focal: float = DILIGENT_FOCAL
    """Focal length fx = fy in pixels; the principal point is the image centre ((W-1)/2, (H-1)/2), OpenCV."""
    elevation_deg: float = 10.0
    """Camera elevation above the ring plane through the object's centre, in degrees."""
    start_azimuth_deg: float = 0.0
    """Azimuth of view 0 around the up axis, in degrees."""
    up_axis: UpAxis = "y"
    """Mesh axis that points up: the turntable axis and the image-up direction."""
    fill_fraction: float = 0.85
    """Fraction of the shorter image side that the object's bounding sphere covers; sets the camera distance."""
    world_scale: float = 1.0
    """World units per mesh unit (e.g. 1000 turns a mesh in metres into DiLiGenT-like millimetres)."""
    sphere_margin: float = 1.05
    """Radius of the normalisation sphere (scale_mat) over the object's bounding-sphere radius; must be > 1."""
    flat_normals: bool = False
    """Write face normals instead of barycentric-interpolated vertex normals (smooth, like photometric stereo)."""
    normal_noise_deg: float = 0.0
    """Angular noise on the written normals: a tilt by |N(0, s)| degrees toward a uniformly random tangent direction."""
    pose_rotation_noise_deg: float = 0.0
    """Rotation noise on the stored poses: |N(0, s)| degrees about a uniformly random axis through the camera centre."""
    pose_translation_noise: float = 0.0
    """Gaussian noise on the stored camera centres, per axis, as a fraction of the camera distance (orbit radius)."""
    depth_scale_noise: float = 0.0
    """Each view's depth map is multiplied by exp(U(-x, x)), like depth from single-view normal integration."""
    realistic: bool = False
    """Turn on every input error below at SDM-UniPS-like magnitudes (README); an error option given still wins."""
    error_seed: Optional[int] = None
    """Seed of the input-error draws (normal-error fields, masks, intrinsics); default: --seed."""
    normal_bias_deg: Optional[float] = None
    """Smooth low-frequency normal bias, mean tilt over each view's mask in degrees (default 0; realistic 5.5)."""
    normal_bias_cells: int = 3
    """Control points per side of the smooth random fields, spanning the object's image box (their wavelength)."""
    grazing_error_deg: Optional[float] = None
    """Tilt toward the camera by this times (1 - n_z) degrees, n_z camera-space (default 0; realistic 14)."""
    concavity_error_deg: Optional[float] = None
    """Tilt by this times c degrees in a smooth random direction, c a concavity proxy (default 0; realistic 10)."""
    mask_offset_px: Optional[float] = None
    """Move every mask boundary outward by this many pixels, negative erodes (default 0; realistic 0.5)."""
    mask_boundary_jitter_px: Optional[float] = None
    """Std (px) of a smooth random in/out displacement along each mask boundary (default 0; realistic 1.5)."""
    mask_holes: Optional[int] = None
    """Disks removed from each mask just inside its boundary (default 0; realistic 1)."""
    mask_spurs: Optional[int] = None
    """Disks added to each mask just outside its boundary (default 0; realistic 1)."""
    mask_blob_radius_px: float = 2.0
    """Radius in pixels of the mask holes and spurs."""
    focal_error: Optional[float] = None
    """Relative focal error of the stored cameras, f (1 +- x) with a random sign (default 0; realistic 0.01)."""
    principal_point_error_px: Optional[float] = None
    """Stored principal point moved this many pixels in a random direction (default 0; realistic 2)."""
    intrinsics_per_view: bool = False
    """Draw the intrinsics error per view (per-image calibration) instead of once for all views."""
    joint_calibration: bool = False
    """Let the stored poses carry the intrinsics error as a joint calibration does: camera distances scaled with
    the focal error and cameras turned with the principal point, so that the object's image stays in place."""
    seed: int = 0
    """Seed of every random draw."""
    overwrite: bool = False
    """Replace an existing non-empty output folder."""


@dataclass
class Rig:
    """The true cameras and the normalisation of one synthetic dataset (world units)."""

    K: np.ndarray
    """(3, 3) OpenCV intrinsics shared by all views."""
    c2w: np.ndarray
    """(N, 4, 4) true OpenCV camera-to-world."""
    scale_mat: np.ndarray
    """(4, 4) normalised unit sphere -> world."""
    centre: np.ndarray
    """(3,) bounding-sphere centre (centre of the axis-aligned bounding box)."""
    radius: float
    """Bounding-sphere radius about ``centre``."""
    distance: float
    """Camera distance from ``centre`` (the orbit radius)."""


def up_vector(axis: str) -> np.ndarray:
    """Unit vector of an axis name such as ``"y"`` or ``"-z"``."""
    vec = np.zeros(3)
    vec["xyz".index(axis[-1])] = -1.0 if axis.startswith("-") else 1.0
    return vec


def validate_config(config: SynthConfig) -> None:
    """Reject options that cannot produce a dataset (one-line :class:`PMNIDataError`)."""
    checks = [
        (config.num_views >= 1, "--num-views", "must be at least 1"),
        (config.width >= 1 and config.height >= 1, "--width/--height", "must be at least 1 pixel"),
        (np.isfinite(config.focal) and config.focal > 0, "--focal", "must be a positive number of pixels"),
        (np.isfinite(config.fill_fraction) and config.fill_fraction > 0, "--fill-fraction", "must be positive"),
        (np.isfinite(config.world_scale) and config.world_scale > 0, "--world-scale", "must be positive"),
        (np.isfinite(config.sphere_margin) and config.sphere_margin > 1, "--sphere-margin", "must be > 1"),
        (config.up_axis in UpAxis.__args__, "--up-axis", f"must be one of {', '.join(UpAxis.__args__)}"),
    ]
    for name in ("normal_noise_deg", "pose_rotation_noise_deg", "pose_translation_noise", "depth_scale_noise"):
        value = getattr(config, name)
        checks.append((np.isfinite(value) and value >= 0, "--" + name.replace("_", "-"), "must be >= 0"))
    checks.extend(synth_realistic.option_problems(config))
    for ok, option, problem in checks:
        if not ok:
            raise PMNIDataError(f"{option}: {problem}")


def check_output(output: Path, overwrite: bool) -> None:
    """Refuse to clobber anything the user did not ask to replace."""
    if not output.exists() and not output.is_symlink():
        return
    if not output.is_dir():
        raise PMNIDataError(f"{output}: output exists and is not a folder")
    if any(output.iterdir()) and not overwrite:
        raise PMNIDataError(f"{output}: output folder exists and is not empty (use --overwrite to replace it)")


def load_mesh(path: Path, world_scale: float = 1.0) -> trimesh.Trimesh:
    """Read a mesh file as one triangle mesh in world units (mesh units x ``world_scale``)."""
    path = Path(path)
    if not path.exists():
        raise PMNIDataError(f"{path}: mesh file not found")
    if not path.is_file():
        raise PMNIDataError(f"{path}: not a regular file")
    try:
        loaded = trimesh.load(str(path), force="mesh", process=False)
    except Exception as e:  # trimesh's parsers raise anything from ValueError to IndexError on bad files
        detail = " ".join(str(e).split()) or type(e).__name__
        raise PMNIDataError(f"{path}: cannot read mesh ({detail})") from None
    if not isinstance(loaded, trimesh.Trimesh) or len(loaded.faces) == 0:
        raise PMNIDataError(f"{path}: mesh has no triangles")
    vertices = np.asarray(loaded.vertices, dtype=np.float64)
    if not np.all(np.isfinite(vertices)):
        raise PMNIDataError(f"{path}: mesh has NaN or infinite vertex coordinates")
    # Rebuilding without visuals lets process=True merge vertices split at UV seams, so that vertex normals
    # stay smooth across them.
    mesh = trimesh.Trimesh(vertices=vertices * world_scale, faces=np.asarray(loaded.faces), process=True)
    if len(mesh.faces) == 0 or not np.any(mesh.area_faces > 0):
        raise PMNIDataError(f"{path}: mesh has no triangles of non-zero area")
    return mesh


def make_rig(mesh: trimesh.Trimesh, config: SynthConfig) -> Rig:
    """True turntable cameras framing the mesh, and the scale_mat that puts it inside the unit sphere."""
    centre = mesh.bounds.mean(axis=0)
    radius = float(np.linalg.norm(mesh.vertices - centre, axis=1).max())
    # The sphere's silhouette seen from distance d has angular radius asin(r / d) and image radius f tan(asin(r / d)).
    half_extent = 0.5 * config.fill_fraction * min(config.width, config.height)
    distance = radius / np.sin(np.arctan(half_extent / config.focal))
    if not distance > config.sphere_margin * radius:
        raise PMNIDataError(
            f"--fill-fraction: {config.fill_fraction} with --focal {config.focal} puts the camera inside the "
            "normalisation sphere; use a smaller fill fraction or a longer focal length"
        )
    K = np.array(
        [[config.focal, 0.0, (config.width - 1) / 2.0], [0.0, config.focal, (config.height - 1) / 2.0], [0, 0, 1.0]]
    )
    c2w = cameras.ring_poses(
        config.num_views,
        distance,
        elevation_deg=config.elevation_deg,
        up=up_vector(config.up_axis),
        start_azimuth_deg=config.start_azimuth_deg,
        target=centre,
    )
    scale_mat = np.eye(4)
    scale_mat[:3, :3] *= config.sphere_margin * radius
    scale_mat[:3, 3] = centre
    return Rig(K=K, c2w=c2w, scale_mat=scale_mat, centre=centre, radius=radius, distance=float(distance))


def camera_arrays(K: np.ndarray, c2w: np.ndarray, scale_mat: np.ndarray) -> Dict[str, np.ndarray]:
    """The ``cameras_sphere.npz`` dictionary: world_mat_<i> and scale_mat_<i> for every view (K (3, 3) or (N, 3, 3))."""
    arrays: Dict[str, np.ndarray] = {}
    K = np.asarray(K)
    for i, pose in enumerate(c2w):
        arrays[f"world_mat_{i}"] = cameras.compose_world_mat(K[i] if K.ndim == 3 else K, pose)
        arrays[f"scale_mat_{i}"] = np.array(scale_mat, dtype=np.float64)
    return arrays


def _rngs(seed: int) -> Tuple[np.random.Generator, np.random.Generator, np.random.Generator]:
    # One stream per kind of noise: switching one on never changes another's draws.
    return tuple(np.random.default_rng([seed, purpose]) for purpose in range(3))  # type: ignore[return-value]


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _info(
    config: SynthConfig, mesh: trimesh.Trimesh, rig: Rig, factors: np.ndarray, errors: dict, poses_moved: bool
) -> dict:
    options = {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(config).items()}
    return {
        "generator": "pmni-synth",
        "options": options,
        "seed": config.seed,
        "mesh_source": str(Path(config.mesh).resolve()),
        "mesh_source_sha256": _file_sha256(Path(config.mesh)),
        "world_units": f"mesh units x {config.world_scale:g} (world_scale); depth, scale_mat and mesh_Gt.ply use them",
        "bbox_diagonal_world": float(np.linalg.norm(mesh.bounds[1] - mesh.bounds[0])),
        "bbox_world": mesh.bounds.tolist(),
        "num_vertices": int(len(mesh.vertices)),
        "num_faces": int(len(mesh.faces)),
        "bounding_sphere_centre_world": rig.centre.tolist(),
        "bounding_sphere_radius_world": rig.radius,
        "camera_distance_world": rig.distance,
        "K": rig.K.tolist(),
        "image_size_wh": [config.width, config.height],
        "normals": "flat (face normals)" if config.flat_normals else "smooth (interpolated vertex normals)",
        "normal_noise_definition": NORMAL_NOISE_DEFINITION,
        "pose_noise_definition": POSE_NOISE_DEFINITION,
        "poses_perturbed": poses_moved,
        "intrinsics_perturbed": bool(np.any(np.asarray(errors["intrinsics"]["K_stored"]) != rig.K)),
        "depth_scale_factors": factors.tolist(),
        "input_errors": errors,
    }


def render_dataset(
    config: SynthConfig,
    progress: Optional[Callable[[int], None]] = None,
    note: Optional[Callable[[str], None]] = None,
) -> Path:
    """Render the dataset described by ``config`` and return its folder.

    ``progress`` is called with each view index once that view is written; ``note`` with a line for anything
    done besides (stale staging folders of killed runs removed, see :func:`pmni_method.staging.remove_stale_staging`). Bad input
    raises a one-line :class:`PMNIDataError` before anything is written. Ctrl-C (KeyboardInterrupt) and SIGTERM
    (:class:`pmni_method.staging.Terminated`) remove the staging folder before they propagate.
    """
    validate_config(config)
    output = Path(config.output)
    remove_stale_staging(output, note)
    check_output(output, config.overwrite)
    mesh = load_mesh(Path(config.mesh), config.world_scale)
    rig = make_rig(mesh, config)
    normal_rng, pose_rng, depth_rng = _rngs(config.seed)
    errors = synth_realistic.resolve(config)
    stored_K = synth_realistic.stored_intrinsics(rig.K, config.num_views, errors)
    calibrated_c2w = rig.c2w
    if errors.joint_calibration:
        calibrated_c2w = synth_realistic.calibrated_poses(rig.c2w, rig.K, stored_K, rig.centre)
    reprojection = None
    if errors.intrinsics_active:
        reprojection = synth_realistic.reprojection_px(rig.K, rig.c2w, stored_K, calibrated_c2w, mesh.vertices)
    stored_c2w = perturb_poses(
        calibrated_c2w, config.pose_rotation_noise_deg, config.pose_translation_noise, pose_rng,
        reference_radius=rig.distance,
    )
    factors = depth_scale_factors(config.num_views, config.depth_scale_noise, depth_rng)
    poses_moved = bool(np.any(stored_c2w != rig.c2w))
    perturbed = poses_moved or errors.intrinsics_active
    truth = synth_realistic.truth_needed(errors, config.normal_noise_deg)

    staging = staging_folder(output, "partial", os.getpid())
    with Interrupts() as interrupts:
        try:
            output.parent.mkdir(parents=True, exist_ok=True)
            if staging.exists():
                shutil.rmtree(staging)
            for sub in (WORLD_NORMAL_DIR, CAMERA_NORMAL_DIR, MASK_DIR, DEPTH_DIR) + (
                synth_realistic.TRUE_DIRS if truth else ()
            ):
                (staging / sub).mkdir(parents=True)
            write_npz(staging / CAMERAS_FILE, camera_arrays(stored_K, stored_c2w, rig.scale_mat))
            # The true K [R | t] whenever the stored cameras differ, in poses or intrinsics.
            if perturbed:
                write_npz(staging / GT_CAMERAS_FILE, camera_arrays(rig.K, rig.c2w, rig.scale_mat))
            mesh.export(staging / GT_MESH_FILE)
            intersector = make_intersector(mesh)
            noise = None
            if config.normal_noise_deg > 0:
                noise = functools.partial(_legacy_noise, sigma_deg=config.normal_noise_deg, rng=normal_rng)
            stats, angles = [], []
            for i, c2w in enumerate(rig.c2w):
                view = render_view(mesh, intersector, rig.K, c2w, config.height, config.width, config.flat_normals)
                stored = synth_realistic.apply_view_errors(errors, view, rig.K, c2w, i, rig.radius, noise)
                if view.mask.any() and not stored.mask.any():
                    raise PMNIDataError(f"view {i}: the mask errors leave its mask empty; use smaller mask errors")
                _write_view(staging, i, view, stored, c2w, factors[i], truth)
                # Only the statistics are kept: the maps of every view at once would take 150 MB at 612x512.
                stats.append(stored.stats)
                angles.append(stored.angles)
                if progress is not None:
                    progress(i)
            report = synth_realistic.report(errors, stats, angles, rig.K, stored_K, truth, reprojection)
            info = _info(config, mesh, rig, factors, report, poses_moved=poses_moved)
            (staging / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
            # A signal between the two renames of a replacement would leave no dataset at the output path.
            with interrupts.deferred():
                commit(staging, output)
        except OSError as e:
            with interrupts.deferred(reraise=False):
                shutil.rmtree(staging, ignore_errors=True)
            raise PMNIDataError(f"{output}: cannot write the dataset ({' '.join(str(e).split())})") from None
        except BaseException:
            # A second Ctrl-C must not cut the cleanup short; the first interruption is what propagates.
            with interrupts.deferred(reraise=False):
                shutil.rmtree(staging, ignore_errors=True)
            raise
    return output


def _legacy_noise(normals: np.ndarray, dirs: np.ndarray, sigma_deg: float, rng: np.random.Generator) -> np.ndarray:
    return perturb_normals(normals, sigma_deg, rng, dirs)


def _write_view(
    folder: Path, index: int, view: ViewRender, stored: StoredView, c2w: np.ndarray, depth_factor: float, truth: bool
) -> None:
    """Write one view's files (stored maps with their errors; the true ones beside them when they differ)."""
    stem = f"{index:03d}"
    maps = [(WORLD_NORMAL_DIR, CAMERA_NORMAL_DIR, MASK_DIR, stored.normals, stored.mask)]
    if truth:
        maps.append((TRUE_WORLD_NORMAL_DIR, TRUE_CAMERA_NORMAL_DIR, TRUE_MASK_DIR, view.normals, view.mask))
    for world_dir, camera_dir, mask_dir, normals, mask in maps:
        io.write_exr(folder / world_dir / f"{stem}.exr", normals.astype(np.float32))
        # The stored normals are expressed in the TRUE camera: the same normal in both frames.
        camera_normals = cameras.world_normals_to_camera(normals, c2w) * mask[..., None]
        io.write_exr(folder / camera_dir / f"{stem}.exr", camera_normals.astype(np.float32))
        io.write_mask(folder / mask_dir / f"{stem}.png", mask)
    # Depth keeps the true mask's support: it is a pseudo-depth, not a measured input.
    np.save(folder / DEPTH_DIR / f"{stem}.npy", (view.depth * depth_factor).astype(np.float32))
