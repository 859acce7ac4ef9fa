"""Helpers shared by several test modules (pytest puts this folder on sys.path: ``from helpers import ...``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import pytest
import torch
from torch import Tensor

from pmni_method import cameras, cameras_torch
from pmni_method.data import io
from pmni_method.models.rendering import segment_starts


def nerfstudio_to_opencv_c2w(c2w: np.ndarray) -> np.ndarray:
    """Inverse of :func:`pmni_method.cameras.opencv_to_nerfstudio_c2w` (the axis flip is its own inverse)."""
    return cameras.opencv_to_nerfstudio_c2w(c2w)


# ------------------------------------------------------------------------------------------- analytic sphere data

SPHERE_CENTRE = np.array([10.0, -5.0, 3.0])
SPHERE_RADIUS = 50.0
HEIGHT, WIDTH = 41, 49  # odd on purpose: downscaling must crop


def rotation_about(axis: np.ndarray, angle: float) -> np.ndarray:
    axis = axis / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def sphere_scale_mat(rotated: bool = False) -> np.ndarray:
    """Normalised -> world; optionally with a rotation, which a pure-scale scale_mat would not exercise."""
    scale_mat = np.eye(4)
    rot = rotation_about(np.array([1.0, 2.0, 0.5]), 0.7) if rotated else np.eye(3)
    scale_mat[:3, :3] = 60.0 * rot
    scale_mat[:3, 3] = SPHERE_CENTRE + np.array([2.0, 1.0, -1.0])  # not the sphere centre: offsets must matter
    return scale_mat


def sphere_intrinsics() -> np.ndarray:
    return np.array([[110.0, 0.0, 24.3], [0.0, 112.0, 19.6], [0.0, 0.0, 1.0]])


def sphere_poses(num_views: int) -> np.ndarray:
    return cameras.ring_poses(num_views, radius=300.0, elevation_deg=20.0, target=SPHERE_CENTRE)


def render_sphere(K: np.ndarray, c2w: np.ndarray, height: int, width: int, centre: np.ndarray, radius: float):
    """Mask, unit normals and camera-z depth of a sphere seen by an OpenCV camera (in c2w's frame)."""
    origins, dirs = cameras.pixel_rays(K, c2w, height, width)
    oc = origins - centre
    b = np.sum(dirs * oc, axis=-1)
    disc = b**2 - (np.sum(oc * oc, axis=-1) - radius**2)
    hit = disc > 0
    t = -b - np.sqrt(np.clip(disc, 0, None))
    points = origins + t[:, None] * dirs
    normals = np.where(hit[:, None], (points - centre) / radius, 0.0)
    depth = np.where(hit, t * (dirs @ c2w[:3, 2]), 0.0)
    return hit.reshape(height, width), normals.reshape(height, width, 3), depth.reshape(height, width)


def make_sphere_dataset(
    root: Path, num_views: int = 5, rotated: bool = False, suffix: str = ".exr", first_id: int = 0
) -> Path:
    """Write an analytic-sphere dataset in the DiLiGenT-MV layout (world units ~ mm, like the real data)."""
    root.mkdir(parents=True, exist_ok=True)
    for sub in ("normal_world_space_GT", "normal_camera_space_GT", "mask", "integration/perspective"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    K, scale_mat = sphere_intrinsics(), sphere_scale_mat(rotated)
    npz: Dict[str, np.ndarray] = {}
    for pos, c2w in enumerate(sphere_poses(num_views)):
        view = first_id + pos
        mask, normals, depth = render_sphere(K, c2w, HEIGHT, WIDTH, SPHERE_CENTRE, SPHERE_RADIUS)
        io.write_normal_map(root / "normal_world_space_GT" / f"{view:03d}{suffix}", normals)
        cam = np.where(mask[..., None], cameras.world_normals_to_camera(normals, c2w), 0.0)
        io.write_normal_map(root / "normal_camera_space_GT" / f"{view:03d}{suffix}", cam)
        io.write_mask(root / "mask" / f"{view:03d}.png", mask)
        np.save(root / "integration/perspective" / f"{view:03d}.npy", depth.astype(np.float32))
        npz[f"world_mat_{view}"] = cameras.compose_world_mat(K, c2w)
        npz[f"scale_mat_{view}"] = scale_mat
    np.savez(root / "cameras_sphere.npz", **npz)
    return root


# ---------------------------------------------------------------------------------------------- tiny trainings

def tiny_config(data: Path, output: Path, iterations: int = 6, rays: int = 64, **datamanager_overrides):
    """pmni-fast on CPU with a tiny batch, tensorboard logging every step, eval and saves out of the way."""
    from pmni_method import runner

    config = runner.scripted_config(
        "pmni-fast", data, output, max_num_iterations=iterations, experiment_name="e", **datamanager_overrides
    )
    config.machine.device_type = "cpu"
    config.pipeline.datamanager.train_num_rays_per_batch = rays
    config.pipeline.datamanager.eval_num_rays_per_batch = rays
    config.logging.steps_per_log = 1
    config.steps_per_save = 10**6
    config.steps_per_eval_batch = 10**6
    config.steps_per_eval_image = 10**6
    return config


# ------------------------------------------------------------------------------------------------ ns-train runs

BIN = Path(sys.executable).parent


def ns_train_args(
    data: Path, output: Path, *extra: str, iterations: int = 4, save_every: Optional[int] = None
) -> List[str]:
    """A tiny CPU ``ns-train pmni-fast`` command line; ``extra`` trainer flags go before the dataparser."""
    exe = BIN / "ns-train"
    if not exe.exists():
        pytest.skip("ns-train not installed in this environment (run `make install`)")
    saves = [] if save_every is None else ["--steps-per-save", str(save_every)]
    return [
        str(exe), "pmni-fast", "--data", str(data), "--output-dir", str(output),
        "--max-num-iterations", str(iterations), *saves, "--vis", "tensorboard",
        "--viewer.quit-on-train-completion", "True", "--machine.device-type", "cpu",
        "--pipeline.datamanager.train-num-rays-per-batch", "64", "--logging.local-writer.enable", "False",
        *extra, "diligent-mv-data",
    ]


def run(args: List[str], timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "COLUMNS": "400"}
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=timeout)


def error_lines(out: subprocess.CompletedProcess) -> List[str]:
    """The lines our code printed as errors (nerfstudio's own log lines before them are not ours to judge)."""
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("pmni")]


# ------------------------------------------------------------------------------------------- reference implementations

def dense_reference_weights(alpha: Tensor, ray_indices: Tensor, n_rays: int) -> Tensor:
    """Straightforward padded ``cumprod`` version of ``rendering.render_weights``: weights [S] of alphas [S]."""
    starts, counts = segment_starts(ray_indices, n_rays)
    width = int(counts.max().item()) if counts.numel() else 0
    pos = torch.arange(alpha.shape[0], device=alpha.device) - starts[ray_indices]
    padded = alpha.new_zeros(n_rays, max(width, 1))
    padded[ray_indices, pos] = alpha
    trans = torch.cumprod(torch.cat([torch.ones_like(padded[:, :1]), 1.0 - padded[:, :-1]], dim=1), dim=1)
    return (padded * trans)[ray_indices, pos]


def nerfstudio_camera_to_worlds(c2w_cv: Tensor) -> Tensor:
    """OpenCV camera-to-worlds [N, 4, 4] -> nerfstudio's [N, 3, 4] OpenGL-axes form."""
    return cameras_torch.opencv_to_nerfstudio_c2w(c2w_cv)[:, :3, :4]


def evaluate_pipeline(
    pipeline: Any,
    data_dir: Path,
    mesh_path: Path,
    resolution: int = 256,
    threshold: float = 0.5,
    heldout_views: Sequence[int] = (),
) -> Dict[str, Any]:
    """Export a pipeline's current surface to ``mesh_path`` and score it with ``pmni-eval``'s metrics."""
    from pmni_method import runner
    from pmni_method.evaluation import evaluate
    from pmni_method.export import write_mesh_atomic

    write_mesh_atomic(runner.pipeline_mesh(pipeline, resolution), mesh_path)
    return evaluate(mesh_path, data_dir, threshold=threshold, heldout_views=heldout_views)
