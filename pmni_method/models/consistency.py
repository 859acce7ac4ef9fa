"""Multi-view normal consistency (PMNI's third stage): a surface point seen in two views must get the same world
normal from both normal maps once each is rotated by its current camera pose.

For a training batch: points are the expected-depth points ``x = o + depth * d`` of foreground rays that the
model renders as opaque (accumulation above a threshold), a random subset of at most ``num_points``. Each point,
seen in view ``i``, is projected into ``views_per_point`` other training views ``j`` drawn uniformly at random
(current poses and intrinsics). A pair counts when

* ``x`` is in front of camera ``j`` and projects strictly inside its image, with all four bilinear neighbours inside
  its mask (projections outside the image are dropped, never clamped);
* the surface at ``x`` faces camera ``j`` (``<n_i, dir to c_j> >= min_facing``, ``n_i`` the point's normal from
  view ``i``): back faces and grazing views compare unrelated normals;
* nothing occludes ``x`` from camera ``j``: the current SDF is sphere-traced from ``x`` (started a small offset
  towards the camera) to camera ``j`` until the ray leaves the scene sphere; any SDF value below ``visibility_hit``
  on the way marks the point occluded. Sphere tracing needs a few dozen SDF queries per pair without gradients,
  cheaper than rendering a depth for view ``j`` and free of the blur of a rendered depth near silhouettes.

The loss is the mean over counted pairs of ``|R_i n_i(pixel) - R_j n_j(uv)|^2``, with ``n_j(uv)`` the bilinear
sample of view ``j``'s normal map (renormalised) and ``R_v`` the rotation that takes view ``v``'s loaded normals
to the current world (the pose correction). Gradients reach both poses (through the normals' rotations and the
projection) and, through the point's depth, the surface. Nothing here imports nerfstudio.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import torch
from torch import Tensor

from pmni_method.cameras_torch import project
from pmni_method.data.raystore import TrainingViews

__all__ = ["MultiViewConsistencyConfig", "TrainingViews", "consistency_loss", "sample_normals", "select_points", "unoccluded"]

SDFFn = Callable[[Tensor], Tensor]


@dataclass
class MultiViewConsistencyConfig:
    """How the multi-view normal consistency term picks and checks its point pairs (its weight is in the schedule)."""

    num_points: int = 256
    """Surface points per step, drawn from the batch's opaque foreground rays."""
    views_per_point: int = 2
    """Other training views each point is projected into, drawn uniformly at random (not only neighbours)."""
    pose_free_num_points: int = 512
    """num_points when the poses are refined (pose-free): each camera then needs more pairs a step."""
    pose_free_views_per_point: int = 4
    """views_per_point when the poses are refined (pose-free)."""
    min_accumulation: float = 0.9
    """Rays whose rendered opacity is below this give no point (their expected depth is not on the surface)."""
    min_facing: float = 0.25
    """Minimum cosine between the point's normal and the direction to the other camera."""
    visibility_start: float = 0.04
    """Sphere tracing starts this far (normalised units) from the point towards the other camera."""
    visibility_hit: float = 0.005
    """An SDF value below this on the way to the other camera means the point is occluded there."""
    visibility_min_step: float = 0.005
    """Smallest sphere-tracing step (keeps tracing moving past near-tangent stretches)."""
    visibility_steps: int = 32
    """Sphere-tracing iterations; a ray still inside the scene after them counts as unoccluded."""
    detach_points: bool = False
    """Stop gradients through the point positions (then only the poses receive the term's gradient)."""
    silhouette_weight: float = 0.0
    """Weight of the silhouette term (:mod:`pmni_method.models.silhouette`: the same points projected into every
    other view's mask, distance in pixels beyond a margin, Huber) relative to the stage's consistency weight; 0: off."""
    pose_free_silhouette_weight: float = 0.0
    """silhouette_weight when the poses are refined (pose-free)."""
    silhouette_margin_px: float = 1.0
    """Distance to a mask (pixels at training resolution) that costs nothing: binarisation, segmenter error."""
    silhouette_huber_px: float = 2.0
    """The silhouette cost is quadratic up to this distance beyond the margin and linear after it."""


def sample_normals(views: TrainingViews, view: Tensor, uv: Tensor) -> Tuple[Tensor, Tensor]:
    """Bilinear samples [M, 3] (renormalised) of the views' normal maps at pixel coordinates uv [M, 2].

    Also returns ``valid`` [M]: the four neighbours exist (no clamping at the border) and all lie in the mask.
    """
    _, H, W = views.masks.shape
    u, v = uv[:, 0], uv[:, 1]
    u0f, v0f = torch.floor(u.detach()), torch.floor(v.detach())
    inside = (u0f >= 0) & (v0f >= 0) & (u0f + 1 <= W - 1) & (v0f + 1 <= H - 1) & torch.isfinite(u) & torch.isfinite(v)
    u0 = torch.where(inside, u0f, torch.zeros_like(u0f)).long()
    v0 = torch.where(inside, v0f, torch.zeros_like(v0f)).long()
    fu, fv = (u - u0), (v - v0)
    flat_normals = views.normals.reshape(-1, 3)
    flat_masks = views.masks.reshape(-1)
    base = view.long() * (H * W)
    corners = [(0, 0, (1 - fu) * (1 - fv)), (0, 1, fu * (1 - fv)), (1, 0, (1 - fu) * fv), (1, 1, fu * fv)]
    total = torch.zeros(uv.shape[0], 3, dtype=flat_normals.dtype, device=uv.device)
    in_mask = inside.clone()
    for dv, du, w in corners:
        # Invalid points index pixel (0, 0) of their view; their values are discarded through `valid`.
        idx = base + (v0 + dv).clamp(max=H - 1) * W + (u0 + du).clamp(max=W - 1)
        in_mask &= flat_masks[idx]
        total = total + w[:, None] * flat_normals[idx]
    normals = total / total.norm(dim=-1, keepdim=True).clamp(min=1e-8)
    return normals, in_mask


@torch.no_grad()
def unoccluded(sdf_fn: SDFFn, points: Tensor, centres: Tensor, config: MultiViewConsistencyConfig, radius: float) -> Tensor:
    """Whether the segment from each point [M, 3] towards its camera centre [M, 3] is free of surface (bool [M]),
    by sphere tracing the SDF from the point until the ray leaves the sphere of ``radius``."""
    direction = centres - points
    direction = direction / direction.norm(dim=-1, keepdim=True).clamp(min=1e-8)
    t = torch.full((points.shape[0],), float(config.visibility_start), device=points.device)
    free = torch.ones(points.shape[0], dtype=torch.bool, device=points.device)
    active = torch.arange(points.shape[0], device=points.device)
    for _ in range(max(int(config.visibility_steps), 1)):
        if active.numel() == 0:
            break
        p = points[active] + t[active, None] * direction[active]
        inside = p.norm(dim=-1) < radius
        sdf = sdf_fn(p).reshape(-1)
        hit = inside & (sdf < config.visibility_hit)
        free[active[hit]] = False
        keep = inside & ~hit
        t[active[keep]] += torch.clamp(sdf[keep], min=config.visibility_min_step)
        active = active[keep]
    return free


def consistency_loss(
    points: Tensor,
    normals: Tensor,
    source_views: Tensor,
    views: TrainingViews,
    c2w: Tensor,
    normal_rotations: Optional[Tensor],
    sdf_fn: SDFFn,
    config: MultiViewConsistencyConfig,
    radius: float = 1.0,
    generator: Optional[torch.Generator] = None,
) -> Tuple[Tensor, Dict[str, Tensor]]:
    """Mean squared difference of world normals at corresponding pixels of random view pairs.

    Args:
        points: [P, 3] surface points in the normalised frame (gradients flow unless ``detach_points``).
        normals: [P, 3] their world normals as seen from the source views (current pose applied).
        source_views: [P] training-view index each point was seen from.
        views: normal maps, masks and intrinsics of all training views.
        c2w: [V, 4, 4] current OpenCV camera-to-worlds of all training views (differentiable).
        normal_rotations: [V, 3, 3] rotations from each view's loaded normals to the current world (None: identity).
        sdf_fn: SDF of the current surface (used without gradients for visibility).
        radius: radius of the scene sphere (visibility tracing stops there).
    Returns:
        ``(loss, stats)``; stats hold ``mvc_pairs`` (pairs that counted) and ``mvc_valid_fraction`` (of pairs tried).
    """
    device = points.device
    num_views = views.num_views
    if config.detach_points:
        points = points.detach()
    # An empty term stays in the graph of both inputs, so that a summed objective can always be backpropagated.
    zero = (points.sum() + normals.sum()) * 0.0
    if points.shape[0] == 0 or num_views < 2:
        return zero, {"mvc_pairs": torch.zeros((), device=device), "mvc_valid_fraction": torch.zeros((), device=device)}
    k = max(int(config.views_per_point), 1)
    src = source_views.long().repeat_interleave(k)
    offsets = torch.randint(1, num_views, (src.shape[0],), generator=generator).to(device)
    dst = (src + offsets) % num_views  # uniform over the other views
    x = points.repeat_interleave(k, dim=0)
    n_src = normals.repeat_interleave(k, dim=0)

    cams = c2w[dst]
    uv, z = project(x, cams, views.K[dst].to(x))
    n_dst, valid = sample_normals(views, dst, uv)
    if normal_rotations is not None:
        n_dst = torch.einsum("mij,mj->mi", normal_rotations[dst].to(n_dst), n_dst)
    valid &= z.detach() > 1e-6
    to_cam = cams[:, :3, 3].detach() - x.detach()
    facing = (n_src.detach() * to_cam).sum(-1) / to_cam.norm(dim=-1).clamp(min=1e-8)
    valid &= facing >= config.min_facing
    if bool(valid.any()):
        idx = torch.nonzero(valid).squeeze(-1)
        seen = unoccluded(sdf_fn, x[idx].detach(), cams[idx, :3, 3].detach(), config, radius)
        valid[idx[~seen]] = False
    count = valid.sum()
    stats = {"mvc_pairs": count.float(), "mvc_valid_fraction": count.float() / float(valid.numel())}
    if not bool(valid.any()):
        return zero, stats
    diff = n_src[valid] - n_dst[valid]
    return diff.square().sum(-1).mean(), stats


def select_points(
    origins: Tensor,
    directions: Tensor,
    depth: Tensor,
    accumulation: Tensor,
    fg_mask: Tensor,
    config: MultiViewConsistencyConfig,
    generator: Optional[torch.Generator] = None,
) -> Tuple[Tensor, Tensor]:
    """Expected-depth points [P, 3] of up to ``num_points`` opaque foreground rays, and which rays they are [P].

    ``depth`` is the expected distance along unit ``directions``; all inputs are per ray ([N, 3] or [N, 1]).
    """
    ok = (fg_mask.reshape(-1) > 0.5) & (accumulation.detach().reshape(-1) >= config.min_accumulation)
    rays = torch.nonzero(ok).squeeze(-1)
    if rays.numel() > config.num_points:
        pick = torch.randperm(rays.numel(), generator=generator)[: config.num_points].to(rays.device)
        rays = rays[pick]
    points = origins[rays] + directions[rays] * depth.reshape(-1, 1)[rays]
    return points, rays
