"""NeuS opacity and per-ray compositing of packed samples (nerfstudio-free).

Samples are "packed": one flat list sorted by ray and then by distance, with ``ray_indices`` telling which ray
each belongs to (nerfacc's layout). Compositing runs in pure torch on CPU (a segmented cumulative product through
a cumulative sum of log-transmittance) and through nerfacc on CUDA.
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from pmni_method import backends

Backend = backends.Backend


def neus_alpha(
    sdf: Tensor,
    gradients: Tensor,
    directions: Tensor,
    dists: Tensor,
    inv_s: Tensor,
    cos_anneal_ratio: float = 1.0,
) -> Tensor:
    """NeuS discrete opacity of each section from the SDF at its midpoint ("estimated SDF at section ends").

    Args:
        sdf: [S] SDF at the section midpoints.
        gradients: [S, 3] SDF gradients there.
        directions: [S, 3] unit ray directions.
        dists: [S] section lengths.
        inv_s: scalar sharpness s (the logistic density's inverse standard deviation scale).
        cos_anneal_ratio: 0 starts NeuS's annealing (soft cosine, opacity on both sides), 1 is the exact form.
    Returns:
        [S] opacities in [0, 1].
    """
    true_cos = (directions * gradients).sum(-1)
    return neus_alpha_from_cos(sdf, true_cos, dists, inv_s, cos_anneal_ratio)


def neus_alpha_from_cos(
    sdf: Tensor, true_cos: Tensor, dists: Tensor, inv_s: Tensor | float, cos_anneal_ratio: float = 1.0
) -> Tensor:
    """:func:`neus_alpha` given the directional derivative ``cos = <d, grad sdf>`` [S] instead of the gradient."""
    # Annealed cosine: early on also lets back-facing sections contribute, which helps escape bad minima.
    iter_cos = -(
        torch.relu(-true_cos * 0.5 + 0.5) * (1.0 - cos_anneal_ratio) + torch.relu(-true_cos) * cos_anneal_ratio
    )
    prev_sdf = sdf - iter_cos * dists * 0.5
    next_sdf = sdf + iter_cos * dists * 0.5
    prev_cdf = torch.sigmoid(prev_sdf * inv_s)
    next_cdf = torch.sigmoid(next_sdf * inv_s)
    p = prev_cdf - next_cdf
    c = prev_cdf
    return ((p + 1e-5) / (c + 1e-5)).clamp(0.0, 1.0)


def _use_nerfacc(alpha: Tensor, backend: Backend) -> bool:
    return backends.choose_backend(backend, "nerfacc", alpha.is_cuda) == "nerfacc"


def segment_starts(ray_indices: Tensor, n_rays: int) -> Tuple[Tensor, Tensor]:
    """First packed position and sample count of every ray ([n_rays] each)."""
    counts = torch.bincount(ray_indices, minlength=n_rays)
    starts = torch.cumsum(counts, 0) - counts
    return starts, counts


def render_weights(
    alpha: Tensor, ray_indices: Tensor, n_rays: int, backend: Backend = "auto"
) -> Tuple[Tensor, Tensor]:
    """Volume-rendering weights ``w_i = alpha_i * T_i`` and transmittances ``T_i = prod_{j<i} (1 - alpha_j)``.

    Both [S]. Per ray, ``sum w = 1 - prod (1 - alpha) <= 1``.
    """
    if alpha.numel() == 0:
        return alpha.clone(), alpha.clone()
    if _use_nerfacc(alpha, backend):
        from nerfacc import render_weight_from_alpha  # pylint: disable=import-outside-toplevel

        weights, trans = render_weight_from_alpha(alpha, ray_indices=ray_indices, n_rays=n_rays)
        return weights, trans
    # log(1 - alpha), clamped so that an opaque section gives a finite (very negative) value.
    log_t = torch.log((1.0 - alpha).clamp(min=1e-10))
    # Accumulate in float64: a global cumulative sum over many rays would otherwise lose the small per-ray terms.
    inclusive = torch.cumsum(log_t.double(), 0)
    exclusive = inclusive - log_t.double()
    starts, _ = segment_starts(ray_indices, n_rays)
    # Subtract each ray's running sum at its first sample: the exclusive sum restarts at zero per ray.
    offset = exclusive[starts[ray_indices]]
    trans = torch.exp(exclusive - offset).to(alpha.dtype)
    return alpha * trans, trans


def accumulate(values: Tensor, weights: Tensor, ray_indices: Tensor, n_rays: int) -> Tensor:
    """Per-ray weighted sums ``sum_i w_i v_i``: values [S, C] (or [S]) -> [n_rays, C]."""
    if values.dim() == 1:
        values = values[:, None]
    out = values.new_zeros(n_rays, values.shape[-1])
    if weights.numel() == 0:
        return out
    return out.index_add(0, ray_indices, weights[:, None] * values)


def first_zero_crossing(sdf: Tensor, t_mid: Tensor, ray_indices: Tensor, n_rays: int) -> Tuple[Tensor, Tensor]:
    """Distance [n_rays] of each ray's first outside-to-inside sign change of the SDF between consecutive samples,
    linearly interpolated, and whether it has one (bool [n_rays]; distance 0 where not).

    Samples are packed (sorted by ray, then distance); ``sdf`` and ``t_mid`` [S] are at the sample midpoints.
    """
    t_hit = t_mid.new_zeros(n_rays)
    hit = torch.zeros(n_rays, dtype=torch.bool, device=t_mid.device)
    if sdf.numel() < 2:
        return t_hit, hit
    s0, s1 = sdf[:-1], sdf[1:]
    crossing = (ray_indices[1:] == ray_indices[:-1]) & (s0 > 0) & (s1 <= 0)
    pos = torch.nonzero(crossing).squeeze(-1)
    if pos.numel() == 0:
        return t_hit, hit
    # Packed order: the smallest position among a ray's crossings is its first one along the ray.
    first = torch.full((n_rays,), sdf.numel(), dtype=torch.long, device=sdf.device)
    first = first.scatter_reduce(0, ray_indices[pos], pos, reduce="amin")
    rays = torch.nonzero(first < sdf.numel()).squeeze(-1)
    i = first[rays]
    frac = s0[i] / (s0[i] - s1[i]).clamp(min=1e-12)
    t_hit[rays] = t_mid[i] + frac * (t_mid[i + 1] - t_mid[i])
    hit[rays] = True
    return t_hit, hit
