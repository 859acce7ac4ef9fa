"""nerfstudio captures made from the synthetic DiLiGenT-MV datasets of ``tests/conftest.py``, and the measures
``tests/test_transforms_dataparser.py`` judges their loading by (pytest puts this folder on sys.path)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

from pmni_method import cameras
from pmni_method.data import io
from pmni_method.data.camera_file import read_dataset_cameras
from pmni_method.data.diligent_mv import load_diligent_mv
from pmni_method.data.transforms_loader import load_transforms_json

VIEWS = list(range(8))
K1, K2 = -0.4, 0.1
"""Barrel distortion of the wide-angle capture (focal 60 px, 80x64): it moves mask pixels by up to 1.9 px."""


def write_transforms(
    src: Path,
    dst: Path,
    normal_folder: str = "normal_camera_space_GT",
    distortion: Optional[Dict[str, float]] = None,
    per_frame: bool = False,
    **extra: Any,
) -> Path:
    """``src`` (DiLiGenT-MV layout) as a nerfstudio capture in ``dst``: transforms.json, normals/, masks/."""
    dst.mkdir(parents=True, exist_ok=True)
    cams = read_dataset_cameras(src, VIEWS)
    c2w_gl = cameras.opencv_to_nerfstudio_c2w(cams.c2w_world)
    height, width = io.read_mask(src / "mask" / "000.png").shape
    shutil.copytree(src / normal_folder, dst / "normals", dirs_exist_ok=True)
    shutil.copytree(src / "mask", dst / "masks", dirs_exist_ok=True)
    K = cams.K[0]
    intrinsics = {"fl_x": K[0, 0], "fl_y": K[1, 1], "cx": K[0, 2] + 0.5, "cy": K[1, 2] + 0.5, "w": width, "h": height}
    frames = []
    # Reverse order on purpose: the loader must sort the frames by view id.
    for view in reversed(VIEWS):
        frame: Dict[str, Any] = {
            "file_path": f"images/{view:03d}.png",
            "transform_matrix": c2w_gl[view].tolist(),
            "mask_path": f"masks/{view:03d}.png",
        }
        if per_frame:
            frame.update(intrinsics)
        frames.append(frame)
    meta: Dict[str, Any] = {"camera_model": "OPENCV", "frames": frames}
    if not per_frame:
        meta.update(intrinsics)
    meta.update(distortion or {})
    meta.update(extra)
    (dst / "transforms.json").write_text(json.dumps(meta, indent=1))
    if (src / "mesh_Gt.ply").is_file():
        shutil.copy(src / "mesh_Gt.ply", dst / "mesh_Gt.ply")
    return dst / "transforms.json"


def world_normals(data) -> np.ndarray:
    return np.where(data.masks[..., None], data.normalisation.normals_to_world(data.normals.astype(np.float64)), 0.0)


def distort_capture(src: Path, dst: Path, k1: float = K1, k2: float = K2) -> Path:
    """``src`` as a capture whose lens has radial distortion ``k1, k2``: its masks and camera-space normals
    ray cast from ``mesh_Gt.ply`` through each distorted pixel's ray (the pinhole ray through nerfstudio's own
    ``radial_and_tangential_undistort`` of the pixel), so the maps are exact and no resampling blurs them."""
    import torch
    import trimesh
    from nerfstudio.cameras.camera_utils import radial_and_tangential_undistort

    from pmni_method.raycast import cast_first_hits

    path = write_transforms(src, dst, distortion={"k1": k1, "k2": k2})
    cams = read_dataset_cameras(src, VIEWS)
    K = cams.K[0]
    height, width = io.read_mask(src / "mask" / "000.png").shape
    rows, cols = np.meshgrid(np.arange(height, dtype=np.float64), np.arange(width, dtype=np.float64), indexing="ij")
    distorted = torch.from_numpy(np.stack([(cols - K[0, 2]) / K[0, 0], (rows - K[1, 2]) / K[1, 1]], axis=-1))
    params = torch.tensor([k1, k2, 0.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    pinhole = radial_and_tangential_undistort(distorted, params, eps=1e-12, max_iterations=50).numpy().reshape(-1, 2)
    rays_cam = np.concatenate([pinhole, np.ones((len(pinhole), 1))], axis=1)
    mesh = trimesh.load(src / "mesh_Gt.ply", force="mesh")
    for view in VIEWS:
        c2w = cams.c2w_world[view]
        dirs = rays_cam @ c2w[:3, :3].T
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        hits = cast_first_hits(mesh, np.broadcast_to(c2w[:3, 3], dirs.shape).copy(), dirs)
        mask = hits.hit.reshape(height, width)
        normals = cameras.world_normals_to_camera(np.nan_to_num(hits.normals), c2w).reshape(height, width, 3)
        io.write_mask(dst / "masks" / f"{view:03d}.png", mask)
        io.write_exr(dst / "normals" / f"{view:03d}.exr", np.where(mask[..., None], normals, 0.0))
    return path


def silhouette_scores(data) -> np.ndarray:
    """(N, 2) per view: IoU of the GT mesh's silhouette (ray cast through the loaded pinhole cameras) with the
    loaded mask, and the mean angle (degrees) between the loaded and the mesh's normals where both exist."""
    import trimesh

    from pmni_method.raycast import render_view

    mesh = trimesh.load(data.gt_mesh, force="mesh")
    c2w_world = data.normalisation.c2w_to_world(data.c2w)
    normals = world_normals(data)
    out = []
    for pos in range(data.num_views):
        pixels, hits = render_view(mesh, data.K[pos], c2w_world[pos], data.height, data.width)
        silhouette = hits.hit.reshape(data.height, data.width)
        mask = data.masks[pos]
        iou = (silhouette & mask).sum() / (silhouette | mask).sum()
        both = hits.hit & mask.reshape(-1)
        cosines = np.sum(hits.normals[both] * normals[pos].reshape(-1, 3)[both], axis=-1)
        out.append((iou, np.degrees(np.mean(np.arccos(np.clip(cosines, -1.0, 1.0))))))
    return np.array(out)


def load_both(bunny_dir: Path, path: Path, normal_folder: str = "normal_camera_space_GT", **options: Any):
    ours = load_transforms_json(path, normal_dir="normals", **options)
    theirs = load_diligent_mv(bunny_dir, normal_dir=normal_folder, load_depth=False)
    return ours, theirs


def assert_same_views(ours, theirs, normal_atol: float = 1e-6) -> None:
    """Same cameras, rays, masks and world-space normals in the world frame; each in its own normalised frame."""
    assert ours.view_ids == theirs.view_ids
    np.testing.assert_allclose(ours.K, theirs.K, rtol=0, atol=1e-9)
    scale = np.abs(theirs.normalisation.c2w_to_world(theirs.c2w)[:, :3, 3]).max()
    np.testing.assert_allclose(
        ours.normalisation.c2w_to_world(ours.c2w), theirs.normalisation.c2w_to_world(theirs.c2w), rtol=0,
        atol=1e-9 * scale,
    )
    for pos in (0, ours.num_views - 1):
        h, w = theirs.height, theirs.width
        o_ours, d_ours = cameras.pixel_rays(ours.K[pos], ours.normalisation.c2w_to_world(ours.c2w[pos]), h, w)
        o_theirs, d_theirs = cameras.pixel_rays(theirs.K[pos], theirs.normalisation.c2w_to_world(theirs.c2w[pos]), h, w)
        np.testing.assert_allclose(o_ours, o_theirs, rtol=0, atol=1e-9 * scale)
        np.testing.assert_allclose(d_ours, d_theirs, rtol=0, atol=1e-9)
    assert np.array_equal(ours.masks, theirs.masks)
    np.testing.assert_allclose(world_normals(ours), world_normals(theirs), rtol=0, atol=normal_atol)


def mesh_radius(data) -> float:
    import trimesh

    vertices = trimesh.load(data.gt_mesh, force="mesh").vertices
    return float(np.linalg.norm(data.normalisation.to_normalised(np.asarray(vertices)), axis=1).max())



def vertices_in_masks(data, dilation: int = 1) -> np.ndarray:
    """(N,) fraction of the GT mesh's vertices that project into each view's mask dilated by ``dilation`` px."""
    import scipy.ndimage
    import trimesh

    vertices = data.normalisation.to_normalised(np.asarray(trimesh.load(data.gt_mesh, force="mesh").vertices))
    out = []
    for pos in range(data.num_views):
        uv, _ = cameras.project_points(data.K[pos], data.c2w[pos], vertices)
        mask = scipy.ndimage.binary_dilation(data.masks[pos], iterations=dilation)
        cols, rows = np.round(uv[:, 0]).astype(int), np.round(uv[:, 1]).astype(int)
        seen = (rows >= 0) & (rows < data.height) & (cols >= 0) & (cols < data.width)
        inside = np.zeros(len(vertices), dtype=bool)
        inside[seen] = mask[rows[seen], cols[seen]]
        out.append(inside.mean())
    return np.array(out)


