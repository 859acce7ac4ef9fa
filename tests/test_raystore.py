"""The ray store builds the same rays as cameras.pixel_rays and honours the foreground share."""

from pathlib import Path

import numpy as np
import torch

from pmni_method.cameras import Normalisation, pixel_rays, ring_poses
from pmni_method.data.raystore import RayStore
from pmni_method.data.types import MultiViewNormalData

from helpers import nerfstudio_camera_to_worlds


def _toy_data(num_views: int = 3, height: int = 12, width: int = 16) -> MultiViewNormalData:
    rng = np.random.default_rng(0)
    K = np.array([[40.0, 0.5, 7.3], [0.0, 42.0, 5.1], [0.0, 0.0, 1.0]])
    masks = rng.random((num_views, height, width)) < 0.2
    normals = rng.normal(size=(num_views, height, width, 3)).astype(np.float32)
    normals /= np.linalg.norm(normals, axis=-1, keepdims=True)
    normals[~masks] = 0
    return MultiViewNormalData(
        data_dir=Path("."),
        view_ids=list(range(num_views)),
        K=np.repeat(K[None], num_views, 0),
        c2w=ring_poses(num_views, 3.0, 15.0),
        normals=normals,
        masks=masks,
        normalisation=Normalisation(np.eye(4)),
        depths=rng.random((num_views, height, width)).astype(np.float32),
    )


def test_rays_match_pixel_rays_and_targets():
    data = _toy_data()
    store = RayStore(data)
    view = 2
    rays = store.rays_for(store.image_indices(view))
    origins, dirs = pixel_rays(data.K[view], data.c2w[view], data.height, data.width)
    np.testing.assert_allclose(rays["origins"].numpy(), origins, atol=1e-5)
    np.testing.assert_allclose(rays["directions"].numpy(), dirs, atol=1e-5)
    np.testing.assert_allclose(rays["normal"].numpy(), data.normals[view].reshape(-1, 3))
    np.testing.assert_array_equal(rays["fg_mask"].numpy()[:, 0] > 0, data.masks[view].ravel())
    np.testing.assert_allclose(rays["depth"].numpy()[:, 0], data.depths[view].ravel())
    # camera z of the point at distance t must be t / directions_norm
    t = 2.5
    points = rays["origins"] + t * rays["directions"]
    w2c = np.linalg.inv(data.c2w[view])
    z = points.numpy() @ w2c[2, :3] + w2c[2, 3]
    np.testing.assert_allclose(z, t / rays["directions_norm"].numpy()[:, 0], rtol=1e-5)


def test_fg_fraction_and_one_copy_of_the_maps():
    data = _toy_data()
    store = RayStore(data, fg_fraction=0.75, seed=1)
    batch = store.sample(4000)
    # 3000 drawn from the masks, the remaining 1000 uniformly (about 20% of which land in the masks too)
    share = batch["fg_mask"].mean().item()
    assert 0.75 < share < 0.85
    # The flat per-pixel targets and the consistency term's views are the same storage (the loader's arrays on CPU).
    assert store.normals.data_ptr() == store.views.normals.data_ptr() == data.normals.ctypes.data
    assert store.fg_mask.data_ptr() == store.views.masks.data_ptr()


def test_nerfstudio_camera_to_worlds_flips_axes():
    c2w = torch.as_tensor(ring_poses(2, 3.0), dtype=torch.float32)
    ns = nerfstudio_camera_to_worlds(c2w)
    # nerfstudio cameras look along their -z axis: that must be the OpenCV +z (forward) axis
    torch.testing.assert_close(-ns[:, :3, 2], c2w[:, :3, 2])
    torch.testing.assert_close(ns[:, :3, 3], c2w[:, :3, 3])
