"""Loss terms of PMNI / SuperNormal (nerfstudio-free). Each returns an unweighted scalar; empty inputs give 0."""

from __future__ import annotations

from typing import Literal, Optional, Tuple

import torch
from torch import Tensor


def _zero_like(t: Tensor) -> Tensor:
    # Keeps the graph (and the device) so that a sum of losses can always be backpropagated.
    return t.sum() * 0.0


def normal_loss(
    pred: Tensor,
    target: Tensor,
    fg_mask: Tensor,
    kind: Literal["l2", "l1", "cauchy"] = "l2",
    weight: Optional[Tensor] = None,
    robust_scale: float = 0.1,
) -> Tensor:
    """Mean over foreground rays of the squared (l2) or absolute (l1) difference of rendered and target normals,
    or its Cauchy loss ``c^2 log(1 + |d|^2 / c^2)`` (c = ``robust_scale``, in units of |d| ~ the angle in radians).

    pred, target: [N, 3] in the same (normalised world) frame; fg_mask: [N, 1] (or [N]) 0/1; weight: optional
    per-ray confidence [N, 1] (or [N]), the mean then weighted by it.
    """
    m = fg_mask.reshape(-1) > 0.5
    if not bool(m.any()):
        return _zero_like(pred)
    diff = pred[m] - target[m]
    if kind == "l1":
        per_ray = diff.abs().sum(-1)
    elif kind == "cauchy":
        c2 = float(robust_scale) ** 2
        per_ray = c2 * torch.log1p(diff.square().sum(-1) / c2)
    else:
        per_ray = diff.square().sum(-1)
    return _weighted_mean(per_ray, None if weight is None else weight.reshape(-1)[m])


def _weighted_mean(values: Tensor, weight: Optional[Tensor]) -> Tensor:
    if weight is None:
        return values.mean()
    weight = weight.to(values)
    return (weight * values).sum() / weight.sum().clamp(min=1e-8)


def mask_loss(accumulation: Tensor, fg_mask: Tensor, eps: float = 1e-3, weight: Optional[Tensor] = None) -> Tensor:
    """Binary cross-entropy of accumulated opacity against the silhouette, over all rays (background included);
    ``weight`` [N(, 1)] weighs each ray (0 leaves it out)."""
    acc = accumulation.reshape(-1).clamp(eps, 1.0 - eps)
    target = fg_mask.reshape(-1).to(acc.dtype)
    # Written out rather than F.binary_cross_entropy, which raises on a NaN input instead of returning NaN: a
    # diverged step must reach the non-finite guard (skip, count, save and stop) like every other loss term.
    bce = -(target * acc.log() + (1.0 - target) * (-acc).log1p())
    return _weighted_mean(bce, None if weight is None else weight.reshape(-1))


def grazing_weight(target: Tensor, directions: Tensor, cos_full: float) -> Tensor:
    """Per-ray confidence ``min(1, cos / cos_full)`` [N, 1] of a target normal seen at ``cos = <n*, -d>`` from its
    unit ray ``d``: estimated normals are worst at grazing angles, and other views see those points frontally."""
    cos = -(target * directions).sum(-1, keepdim=True)
    return (cos / float(cos_full)).clamp(0.0, 1.0)


def eikonal_loss(gradients: Tensor) -> Tensor:
    """Mean of ``(|grad sdf| - 1)^2``."""
    if gradients.numel() == 0:
        return _zero_like(gradients)
    return (gradients.norm(dim=-1) - 1.0).square().mean()


def per_view_depth_scale(
    rendered_z: Tensor, target_z: Tensor, view: Tensor, valid: Tensor, min_pixels: int = 1
) -> Tuple[Tensor, Tensor]:
    """Closed-form scale ``a_v = <z_r, z_t> / <z_t, z_t>`` per view, over the valid pixels of that view.

    Args:
        rendered_z, target_z: [N] camera-z of the render and of the (arbitrarily scaled) depth map.
        view: [N] integer view (camera) index of each pixel.
        valid: [N] bool, pixels that take part.
        min_pixels: views with fewer valid pixels get no scale.
    Returns:
        ``(scale_per_pixel [N], has_scale [N] bool)``: the scale of each pixel's view (1 where none).
    """
    view = view.reshape(-1).long()
    _, inverse = torch.unique(view, return_inverse=True)
    groups = int(inverse.max().item()) + 1 if inverse.numel() else 0
    w = valid.reshape(-1).to(rendered_z.dtype)
    num = torch.zeros(groups, dtype=rendered_z.dtype, device=rendered_z.device).index_add(
        0, inverse, w * rendered_z * target_z
    )
    den = torch.zeros_like(num).index_add(0, inverse, w * target_z * target_z)
    count = torch.zeros_like(num).index_add(0, inverse, w)
    ok = (count >= min_pixels) & (den > 0)
    scale = torch.where(ok, num / den.clamp(min=1e-20), torch.ones_like(num))
    return scale[inverse], ok[inverse]


def depth_loss(
    rendered_z: Tensor,
    target_z: Tensor,
    fg_mask: Tensor,
    view: Tensor,
    min_pixels: int = 4,
    accumulation: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor]:
    """Scale-invariant depth loss: per view, fit ``a`` (detached) so ``a * z_t ~ z_r``, then mean L1 of the gap.

    Compares camera z with camera z. Pixels count when in the mask, with known (> 0) target depth and, if given,
    some rendered opacity. Returns ``(loss, scale_per_pixel)``; 0 when no view has enough pixels.
    """
    z_r = rendered_z.reshape(-1)
    z_t = target_z.reshape(-1).to(z_r.dtype)
    valid = (fg_mask.reshape(-1) > 0.5) & (z_t > 0) & torch.isfinite(z_t)
    if accumulation is not None:
        valid &= accumulation.reshape(-1).detach() > 0.5
    scale, has_scale = per_view_depth_scale(z_r.detach(), z_t, view, valid, min_pixels)
    use = valid & has_scale
    if not bool(use.any()):
        return _zero_like(z_r), scale
    return (scale[use] * z_t[use] - z_r[use]).abs().mean(), scale
