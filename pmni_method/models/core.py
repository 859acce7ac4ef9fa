"""The whole reconstruction method without nerfstudio: SDF field + variance + occupancy grid, render and losses.

``PMNICore`` is what :mod:`pmni_method.nerfstudio_adapter.model` wraps for nerfstudio; benchmarks and plain training loops
use it directly. Everything that depends on the training step (marching step, sharpness ceiling, coarse-to-fine
levels, loss weights) is derived from the ``step`` buffer, so a loaded checkpoint renders like the run it left.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Literal, Optional, Tuple

import torch
from torch import Tensor, nn

from pmni_method.backends import choose_backend
from pmni_method.fields.sdf_field import SDFField, SDFFieldConfig
from pmni_method.models import losses as L
from pmni_method.models.rendering import (
    Backend,
    accumulate,
    first_zero_crossing,
    neus_alpha,
    neus_alpha_from_cos,
    render_weights,
)
from pmni_method.models.sampler import OccupancyGrid, OccupancySamplerConfig, alpha_band, sphere_near_far
from pmni_method.models.schedule import LossScheduleConfig, log_interp


@dataclass
class PMNICoreConfig:
    """Everything that defines the reconstruction model (shared by the nerfstudio wrapper and plain loops)."""

    sdf_field: SDFFieldConfig = field(default_factory=SDFFieldConfig)
    """SDF network."""
    sampler: OccupancySamplerConfig = field(default_factory=OccupancySamplerConfig)
    """Occupancy grid and ray marcher."""
    loss_schedule: LossScheduleConfig = field(default_factory=LossScheduleConfig)
    """Staged loss weights (its ``total_steps`` is the run length every other schedule also refers to)."""
    init_variance: float = 0.3
    """Initial value of the learned scalar v; the sharpness is s = exp(10 v)."""
    inv_s_min: float = 10.0
    """Floor on the sharpness s."""
    inv_s_max: float = 4096.0
    """Absolute ceiling on the sharpness s."""
    inv_s_step_factor: float = 2.0
    """Ceiling s <= factor / marching step: keeps the opaque transition a few steps wide, so sharpness cannot
    outrun the sampling (too sharp too early freezes false surfaces in place)."""
    inv_s_floor_factor: float = 1.0
    """Floor s >= factor / marching step: bounds the width of the sampled band (cost) and tracks the step decay."""
    inv_s_floor_factor_end: float = 0.0
    """Floor factor reached at the end of the step decay (geometric ramp from ``inv_s_floor_factor``; 0: constant).
    The opacity band spans about 2 ln(1 / prune threshold) / factor steps, so a larger factor late means fewer
    samples per ray and a thinner band for the normal loss to supervise (``pmni-fast``: 2, 7-8 samples per ray late
    against 13-14 with a constant floor)."""
    prune_transmittance: float = 0.0
    """Before the differentiable pass, drop samples whose transmittance (from a no-grad SDF pass with secant
    slopes) is below this (0 disables). ``pmni-fast`` uses 1e-3 with ``prune_alpha`` 1e-3: late in a run that
    removes about 70 % of the samples and pays for the extra pass (0.32 s vs 0.60 s per step)."""
    prune_alpha: float = 0.0
    """With the same no-grad pass, also drop samples whose estimated opacity is below this (0 keeps them): the
    grid keeps whole cells, so most marched samples lie in front of the opacity band or behind the surface."""
    cos_anneal_end: float = 0.0
    """Fraction of the run over which NeuS's cosine annealing goes from 0 to 1 (0: no annealing)."""
    c2f_start_levels: int = 4
    """Hash levels active at the start (coarse-to-fine)."""
    c2f_end: float = 0.5
    """Fraction of the run at which all hash levels are active (levels unlock linearly until then)."""
    normalize_gradients: bool = True
    """Composite unit SDF gradients into the rendered normal (the eikonal term alone keeps their norm near 1)."""
    normal_loss_type: Literal["l2", "l1", "cauchy"] = "l2"
    """Normal loss: squared (l2) or absolute (l1) difference of world-frame normals inside the mask, or its Cauchy
    loss (robust to large per-pixel errors of estimated normal maps)."""
    normal_robust_scale: float = 0.1
    """Scale c of the Cauchy normal loss, in units of |n - n*| (about the angle in radians: 0.1 ~ 5.7 degrees)."""
    grazing_cos: float = 0.0
    """Normal-loss confidence min(1, cos / grazing_cos) of a pixel whose target normal is seen at cos from its ray
    (0: off): estimated normals are worst at grazing angles, where other views see the surface frontally."""
    surface_normal_weight: float = 0.0
    """Also supervise the SDF's own gradient at each ray's first zero crossing with the target normal, at this
    fraction of the normal weight (0: off). The composited normal averages over the opacity band, so it can match
    the targets while the level set a mesh shows stays wrinkled."""
    mask_boundary_px: float = 1.0
    """The mask loss leaves out pixels this close (pixels at training resolution) to a mask boundary (0: off):
    segmenter masks are off by 1-3 px at their boundaries, and a downscaled mask's boundary pixels are part object,
    part background whatever the segmenter did."""
    normal_boundary_px: float = 0.0
    """The normal losses leave out foreground pixels this close to a mask boundary (0: off): there the segmenter's
    boundary error puts target normals off the object and photometric stereo's are at their worst (grazing); other
    views see those points frontally."""
    mask_eps: float = 1e-3
    """Accumulation is clamped to [eps, 1 - eps] inside the mask BCE."""
    depth_min_pixels: int = 4
    """A view takes part in the depth loss only with at least this many masked, valid-depth pixels in the batch."""
    eikonal_random_points: int = 0
    """Extra eikonal points drawn uniformly in the unit sphere each step (0: only the ray samples)."""
    compositing_backend: Backend = "auto"
    """Per-ray compositing: nerfacc on CUDA ("auto") or pure torch."""
    background_shade: float = 0.0
    """Grey level behind the object in the shaded ``rgb`` output."""
    gradient_method: Literal["analytic", "patch"] = "analytic"
    """Training-ray SDF gradients: analytic (every ray marched, exact gradient, double backward) or patch
    (SuperNormal: one marching per k x k pixel patch, gradients from directional finite differences across the
    patch's own rays; the ray store must then draw patches of ``patch_size``). Image renders stay analytic."""
    patch_size: int = 3
    """Pixels per side of a patch (at least 2) with gradient_method patch."""


class PMNICore(nn.Module):
    """SDF field, sharpness and occupancy grid, with ``render`` and ``losses``."""

    def __init__(self, config: PMNICoreConfig) -> None:
        super().__init__()
        self.config = config
        self.field = SDFField(config.sdf_field)
        self.variance = nn.Parameter(torch.tensor(float(config.init_variance)))
        self.grid = OccupancyGrid(config.sampler)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self._sync_levels()

    # ------------------------------------------------------------------ step-dependent state
    @property
    def total_steps(self) -> int:
        return max(int(self.config.loss_schedule.total_steps), 1)

    def progress(self, step: Optional[int] = None) -> float:
        return (int(self.step.item()) if step is None else step) / self.total_steps

    def step_size(self, step: Optional[int] = None) -> float:
        """Marching step (normalised units): decays geometrically over the first ``step_decay_end`` of the run."""
        s = self.config.sampler
        p = self.progress(step) / max(s.step_decay_end, 1e-9)
        return log_interp(s.step_size_start, s.step_size_end, p)

    def inv_s_ceiling(self, step: Optional[int] = None) -> float:
        return min(self.config.inv_s_max, self.config.inv_s_step_factor / self.step_size(step))

    def inv_s_floor(self, step: Optional[int] = None) -> float:
        floor = max(self.config.inv_s_min, self.inv_s_floor_factor(step) / self.step_size(step))
        return min(floor, self.inv_s_ceiling(step))

    def inv_s_floor_factor(self, step: Optional[int] = None) -> float:
        start, end = self.config.inv_s_floor_factor, self.config.inv_s_floor_factor_end
        if end <= 0:
            return start
        return log_interp(start, end, self.progress(step) / max(self.config.sampler.step_decay_end, 1e-9))

    def inv_s(self) -> Tensor:
        """Sharpness s = exp(10 v), kept between the step-dependent floor and ceiling."""
        return torch.exp(self.variance * 10.0).clamp(self.inv_s_floor(), self.inv_s_ceiling())

    def cos_anneal_ratio(self) -> float:
        end = self.config.cos_anneal_end
        return 1.0 if end <= 0 else min(1.0, self.progress() / end)

    def active_levels(self, step: Optional[int] = None) -> int:
        total = self.config.sdf_field.num_levels
        start = min(self.config.c2f_start_levels, total)
        if self.config.c2f_end <= 0:
            return total
        frac = min(1.0, self.progress(step) / self.config.c2f_end)
        return min(total, start + int(math.floor(frac * (total - start) + 1e-9)))

    def _sync_levels(self) -> None:
        levels = self.active_levels()
        if levels != self.field.num_active_levels:
            self.field.set_active_levels(levels)

    def set_step(self, step: int) -> None:
        self.step.fill_(int(step))
        self._sync_levels()

    @torch.no_grad()
    def update_grid(self) -> None:
        """Rebuild the occupancy grid from the current SDF (band from the current step size and sharpness)."""
        band = alpha_band(self.step_size(), float(self.inv_s().item()), self.config.sampler.alpha_eps)
        self.grid.update(self.field.sdf, band)

    def before_train_step(self, step: int) -> None:
        """Call before every training step: sets the step, and rebuilds the grid every ``update_every`` steps."""
        self.set_step(step)
        if step % max(self.config.sampler.update_every, 1) == 0:
            self.update_grid()

    # ------------------------------------------------------------------ rendering
    def render(
        self,
        origins: Tensor,
        directions: Tensor,
        directions_norm: Optional[Tensor] = None,
        nears: Optional[Tensor] = None,
        fars: Optional[Tensor] = None,
        patch_size: int = 0,
    ) -> Dict[str, Any]:
        """Render unit-direction rays [N, 3] in the normalised frame.

        With ``patch_size`` k >= 2 the rays are N / k^2 patches of k x k pixels of one camera each (patch-major,
        row-major inside a patch, as :meth:`RayStore.sample_patches` draws them) and render through
        :meth:`render_patches`; the outputs are the same.

        Returns per-ray tensors ``normal`` [N, 3] (composited SDF gradients, normalised world frame),
        ``accumulation`` [N, 1], ``depth`` [N, 1] (expected distance along the ray, 0 where nothing was hit),
        ``depth_z`` [N, 1] (camera z: depth / directions_norm), ``rgb`` [N, 3] (headlight-shaded normals in [0, 1]),
        ``normal_vis`` [N, 3] (normals mapped to [0, 1]), and ``samples`` (a dict, per-sample tensors for losses).
        Gradients of the SDF are computed even under ``torch.no_grad()``.
        """
        if patch_size and patch_size > 1:
            return self.render_patches(origins, directions, patch_size, directions_norm, nears, fars)
        self._sync_levels()
        create_graph = torch.is_grad_enabled()
        n = origins.shape[0]
        near, far = self._ray_bounds(origins, directions, nears, fars)
        step = self.step_size()
        ray_idx, t_starts, t_ends = self.grid.march(origins, directions, near, far, step, stratified=self.training)
        empty = ray_idx.numel() == 0
        if empty and n > 0:
            # One dummy sample with zero opacity keeps the graph connected (losses stay differentiable, no NaN).
            ray_idx = torch.zeros(1, dtype=torch.long, device=origins.device)
            t_starts = near[:1].detach().clone()
            t_ends = t_starts + step
        t_mid = 0.5 * (t_starts + t_ends)
        dirs = directions[ray_idx]
        points = origins[ray_idx] + dirs * t_mid[:, None]
        if not empty and (self.config.prune_transmittance > 0 or self.config.prune_alpha > 0):
            keep = self._visible_samples(points, t_mid, t_ends - t_starts, ray_idx, n)
            ray_idx, t_starts, t_ends = ray_idx[keep], t_starts[keep], t_ends[keep]
            t_mid, dirs, points = t_mid[keep], dirs[keep], points[keep]
        sdf, grad = self.field.sdf_and_gradient(points, create_graph=create_graph)
        outputs = self._composite(sdf, grad, dirs, t_mid, t_ends - t_starts, ray_idx, n, empty, directions_norm)
        if not self.training:
            outputs.update(self._surface_normals(origins, directions, sdf[:, 0].detach(), t_mid, ray_idx, n, empty))
        elif create_graph and self.config.surface_normal_weight > 0 and not empty:
            outputs["samples"].update(self._surface_gradients(origins, directions, sdf[:, 0].detach(), t_mid, ray_idx, n))
        if self.training and create_graph and self.config.eikonal_random_points > 0:
            pts = self._random_points_in_sphere(self.config.eikonal_random_points, origins.device)
            _, grad_rand = self.field.sdf_and_gradient(pts, create_graph=True)
            outputs["samples"]["random_gradients"] = grad_rand
        return outputs

    def _ray_bounds(
        self, origins: Tensor, directions: Tensor, nears: Optional[Tensor], fars: Optional[Tensor]
    ) -> Tuple[Tensor, Tensor]:
        """Where each ray is inside the bounding sphere, narrowed by the caller's near / far planes when given."""
        near, far = sphere_near_far(origins, directions, self.config.sampler.sphere_radius)
        if nears is not None:
            near = torch.maximum(near, nears.reshape(-1))
        if fars is not None:
            far = torch.minimum(far, fars.reshape(-1))
        return near, far

    def _composite(
        self,
        sdf: Tensor,
        grad: Tensor,
        dirs: Tensor,
        t_mid: Tensor,
        dists: Tensor,
        ray_idx: Tensor,
        n: int,
        empty: bool,
        directions_norm: Optional[Tensor],
    ) -> Dict[str, Any]:
        """NeuS opacity of packed samples (SDF [S, 1] and gradient [S, 3] at the section midpoints) and the per-ray
        outputs of :meth:`render`; shared by the analytic and the patch path so that both feed the same losses."""
        inv_s = self.inv_s()
        alpha = neus_alpha(sdf[:, 0], grad, dirs, dists, inv_s, self.cos_anneal_ratio())
        if empty:
            alpha = alpha * 0.0
        weights, _ = render_weights(alpha, ray_idx, n, backend=self.config.compositing_backend)
        unit = grad / grad.norm(dim=-1, keepdim=True).clamp(min=1e-8)
        normal = accumulate(unit if self.config.normalize_gradients else grad, weights, ray_idx, n)
        acc = accumulate(torch.ones_like(t_mid), weights, ray_idx, n)
        depth = accumulate(t_mid, weights, ray_idx, n) / acc.clamp(min=1e-6)
        depth = torch.where(acc > 1e-6, depth, torch.zeros_like(depth))
        dn = torch.ones_like(depth) if directions_norm is None else directions_norm.reshape(-1, 1).to(depth)
        # Headlight shading for viewers and texturing: weighted per sample so that silhouettes blend smoothly.
        shade = 0.15 + 0.85 * (-(unit * dirs).sum(-1)).clamp(min=0.0)
        grey = accumulate(shade, weights, ray_idx, n) + (1.0 - acc) * self.config.background_shade
        unit_normal = normal / normal.norm(dim=-1, keepdim=True).clamp(min=1e-8)
        outputs: Dict[str, Any] = {
            "normal": normal,
            "accumulation": acc,
            "depth": depth,
            "depth_z": depth / dn,
            "rgb": grey.clamp(0.0, 1.0).expand(-1, 3),
            "normal_vis": ((unit_normal * 0.5 + 0.5) * acc + (1.0 - acc)).clamp(0.0, 1.0),
            "num_samples": torch.bincount(ray_idx, minlength=n)[:, None].to(depth.dtype) * (0.0 if empty else 1.0),
            "samples": {"gradients": grad, "sdf": sdf, "ray_indices": ray_idx, "weights": weights},
        }
        return outputs

    def render_patches(
        self,
        origins: Tensor,
        directions: Tensor,
        patch_size: int,
        directions_norm: Optional[Tensor] = None,
        nears: Optional[Tensor] = None,
        fars: Optional[Tensor] = None,
    ) -> Dict[str, Any]:
        """SuperNormal's patch rendering: the :meth:`render` outputs of N / k^2 patches of k x k rays.

        Each patch is marched once (:meth:`OccupancyGrid.march_patches`) and every ray of the patch takes samples at
        the same distances along its own direction. The SDF is only evaluated forward, at the ends of each section
        (contiguous sections share them). Per pixel and section the gradient solves, exactly, the 3 x 3 system of
        three directional differences at the section midpoint: along the pixel's own ray (its section ends), and
        across the patch's rows and columns (central between the two neighbours, second-order one-sided at the
        patch border: :func:`_difference_stencil`),
        with the displacements between the actual (pose-corrected) points as directions, so they follow whatever
        the rays are. Every pixel composites its own estimates rather than sharing the centre's: its opacity band
        lies at its own points, and a shared normal would give k^2 different targets one prediction (a blur).
        """
        k = int(patch_size)
        q = k * k
        n = origins.shape[0]
        if k < 2 or n == 0 or n % q:
            raise ValueError(f"patch rendering needs k >= 2 and a positive multiple of k^2 rays; got k={k}, {n} rays")
        self._sync_levels()
        num_patches = n // q
        near, far = self._ray_bounds(origins, directions, nears, fars)
        step = self.step_size()
        o = origins.view(num_patches, q, 3)
        d = directions.view(num_patches, q, 3)
        patch_idx, t_starts, t_ends = self.grid.march_patches(
            o, d, near.view(num_patches, q), far.view(num_patches, q), step, stratified=self.training
        )
        # A sliver cut off by the far plane has next to no opacity, and its along-ray difference is all rounding.
        keep = (t_ends - t_starts) > 0.05 * step
        patch_idx, t_starts, t_ends = patch_idx[keep], t_starts[keep], t_ends[keep]
        empty = patch_idx.numel() == 0
        if empty and n > 0:
            patch_idx = torch.zeros(1, dtype=torch.long, device=origins.device)
            t_starts = near[:1].detach().clone()
            t_ends = t_starts + step
        num = patch_idx.numel()
        # Section ends as nodes: a section continuing the previous one of its patch reuses that one's end.
        cont = torch.zeros(num, dtype=torch.bool, device=origins.device)
        if num > 1:
            cont[1:] = (patch_idx[1:] == patch_idx[:-1]) & ((t_starts[1:] - t_ends[:-1]).abs() <= 1e-4 * step)
        end_node = torch.cumsum(1 + (~cont).long(), 0) - 1
        start_node = end_node - 1
        num_nodes = int(end_node[-1].item()) + 1
        t_node = t_ends.new_zeros(num_nodes)
        t_node[end_node] = t_ends
        t_node[start_node[~cont]] = t_starts[~cont]
        node_patch = torch.zeros(num_nodes, dtype=torch.long, device=origins.device)
        node_patch[end_node] = patch_idx
        node_patch[start_node] = patch_idx
        pts = o[node_patch] + d[node_patch] * t_node[:, None, None]  # [M, Q, 3]
        f = self.field.sdf(pts.reshape(-1, 3)).view(num_nodes, k, k)
        x = pts.view(num_nodes, k, k, 3)
        f_s, f_e = f[start_node], f[end_node]  # [S, k, k]
        x_s, x_e = x[start_node], x[end_node]
        f_m, x_m = 0.5 * (f_s + f_e), 0.5 * (x_s + x_e)
        D = _difference_stencil(k, x_m)
        e_ray, df_ray = x_e - x_s, f_e - f_s
        e_u, df_u = torch.einsum("sajc,ij->saic", x_m, D), torch.einsum("saj,ij->sai", f_m, D)
        e_v, df_v = torch.einsum("sjac,ij->siac", x_m, D), torch.einsum("sja,ij->sia", f_m, D)
        grad = _solve_directional(e_ray, e_u, e_v, df_ray, df_u, df_v).reshape(num, q, 3)
        # Packed layout of the per-pixel samples: ray-major (stable sort keeps each ray's distances ascending).
        pix = torch.arange(q, device=origins.device)
        ray_flat = (patch_idx[:, None] * q + pix[None, :]).reshape(-1)
        order = torch.sort(ray_flat, stable=True).indices
        sample_of = order // q
        ray_idx = ray_flat[order]
        grad = grad.reshape(-1, 3)[order]
        sdf = f_m.reshape(-1)[order][:, None]
        t_mid = (0.5 * (t_starts + t_ends))[sample_of]
        dists = (t_ends - t_starts)[sample_of]
        dirs = directions[ray_idx]
        outputs = self._composite(sdf, grad, dirs, t_mid, dists, ray_idx, n, empty, directions_norm)
        nodes = torch.bincount(node_patch, minlength=num_patches).repeat_interleave(q)
        outputs["num_sdf_points"] = nodes[:, None].to(t_mid.dtype) * (0.0 if empty else 1.0)
        outputs["samples"]["t_mid"] = t_mid
        if self.training and torch.is_grad_enabled() and self.config.eikonal_random_points > 0:
            pts_rand = self._random_points_in_sphere(self.config.eikonal_random_points, origins.device)
            # Forward-only like the rest of the patch path.
            _, grad_rand = self.field.sdf_and_gradient(pts_rand, method="finite_difference")
            outputs["samples"]["random_gradients"] = grad_rand
        return outputs

    def _surface_gradients(
        self, origins: Tensor, directions: Tensor, sdf: Tensor, t_mid: Tensor, ray_idx: Tensor, n: int
    ) -> Dict[str, Tensor]:
        """SDF gradients (with graph) at the rays' first zero crossings, and which rays they belong to. The crossing
        point itself is held fixed: the loss turns the level set there, it does not move it."""
        with torch.no_grad():
            t_hit, hit = first_zero_crossing(sdf, t_mid, ray_idx, n)
            rays = torch.nonzero(hit).squeeze(-1)
            pts = origins[rays].detach() + directions[rays].detach() * t_hit[rays, None]
        _, grad = self.field.sdf_and_gradient(pts, create_graph=True)
        return {"surface_gradients": grad, "surface_rays": rays}

    @torch.no_grad()
    def _surface_normals(
        self, origins: Tensor, directions: Tensor, sdf: Tensor, t_mid: Tensor, ray_idx: Tensor, n: int, empty: bool
    ) -> Dict[str, Tensor]:
        """Unit SDF gradient at each ray's first zero crossing (what a mesh of the level set shows), and whether the
        ray has one: the composited normal averages over the opacity band and can hide a wrong level set."""
        t_hit, hit = first_zero_crossing(sdf, t_mid, ray_idx, n)
        if empty:
            hit = torch.zeros_like(hit)
        normal = origins.new_zeros(n, 3)
        if bool(hit.any()):
            pts = origins[hit] + directions[hit] * t_hit[hit, None]
            _, grad = self.field.sdf_and_gradient(pts, create_graph=False)
            normal[hit] = grad / grad.norm(dim=-1, keepdim=True).clamp(min=1e-8)
        return {"surface_normal": normal, "surface_hit": hit[:, None].to(origins.dtype)}

    @torch.no_grad()
    def _visible_samples(self, points: Tensor, t_mid: Tensor, dists: Tensor, ray_idx: Tensor, n: int) -> Tensor:
        """Samples whose estimated transmittance is above ``prune_transmittance`` (bool [S])."""
        sdf = self.field.sdf(points)[:, 0]
        # Secant slope to the next sample of the same ray stands in for <d, grad sdf>.
        slope = torch.zeros_like(sdf)
        if sdf.numel() > 1:
            same = ray_idx[1:] == ray_idx[:-1]
            sec = (sdf[1:] - sdf[:-1]) / (t_mid[1:] - t_mid[:-1]).clamp(min=1e-8)
            slope[:-1] = torch.where(same, sec, torch.zeros_like(sec))
        alpha = neus_alpha_from_cos(sdf, slope.clamp(-1.0, 1.0), dists, self.inv_s(), self.cos_anneal_ratio())
        _, trans = render_weights(alpha, ray_idx, n, backend=self.config.compositing_backend)
        return (trans > self.config.prune_transmittance) & (alpha >= self.config.prune_alpha)

    def _random_points_in_sphere(self, count: int, device: torch.device) -> Tensor:
        r = self.config.sampler.sphere_radius
        d = torch.randn(count, 3, device=device)
        d = d / d.norm(dim=-1, keepdim=True).clamp(min=1e-8)
        return d * (torch.rand(count, 1, device=device) ** (1.0 / 3.0)) * r

    # ------------------------------------------------------------------ losses / metrics
    def loss_weights(self, has_depth: bool, step: Optional[int] = None) -> Dict[str, float]:
        step = int(self.step.item()) if step is None else step
        return self.config.loss_schedule.weights_at(step, has_depth)

    def losses(
        self,
        outputs: Dict[str, Any],
        batch: Dict[str, Tensor],
        step: Optional[int] = None,
        weights: Optional[Dict[str, float]] = None,
    ) -> Dict[str, Tensor]:
        """Weighted per-ray loss terms (their sum is the objective without poses and consistency, which
        :mod:`pmni_method.models.step` adds); terms whose weight is 0 are left out.

        ``batch``: ``normal`` [N, 3], ``fg_mask`` [N, 1], optional ``depth`` [N, 1] (camera z, any per-view scale,
        0 where unknown) with ``indices`` [N, 3] or ``camera_indices`` [N(, 1)] to group pixels by view, and
        ``mask_boundary_px`` [N, 1] (each pixel's distance to its mask's boundary, for ``mask_boundary_px`` and
        ``normal_boundary_px``).
        The grazing confidence uses the rays as rendered (``outputs["train_rays"]``).
        ``weights``: the schedule's weights when the caller already has them (else those at ``step``).
        """
        has_depth = batch.get("depth") is not None
        if weights is None:
            weights = self.loss_weights(has_depth, step)
        fg = batch["fg_mask"].to(outputs["accumulation"])
        out: Dict[str, Tensor] = {}
        cfg = self.config
        if weights["normal"] > 0:
            target = batch["normal"].to(outputs["normal"])
            confidence = None
            rays = outputs.get("train_rays")
            if cfg.grazing_cos > 0 and rays is not None:
                confidence = L.grazing_weight(target, rays["directions"].detach().to(target), cfg.grazing_cos)
            inner = _outside_band(batch, cfg.normal_boundary_px, target)
            if inner is not None:
                confidence = inner if confidence is None else confidence * inner
            out["normal_loss"] = weights["normal"] * L.normal_loss(
                outputs["normal"], target, fg, cfg.normal_loss_type, confidence, cfg.normal_robust_scale
            )
            samples = outputs.get("samples", {})
            if cfg.surface_normal_weight > 0 and "surface_gradients" in samples:
                rays_hit = samples["surface_rays"]
                grad = samples["surface_gradients"]
                unit = grad / grad.norm(dim=-1, keepdim=True).clamp(min=1e-8)
                out["surface_normal_loss"] = weights["normal"] * cfg.surface_normal_weight * L.normal_loss(
                    unit, target[rays_hit], fg[rays_hit], cfg.normal_loss_type,
                    None if confidence is None else confidence[rays_hit], cfg.normal_robust_scale,
                )
        if weights["mask"] > 0:
            mask_weight = _outside_band(batch, cfg.mask_boundary_px, fg)
            out["mask_loss"] = weights["mask"] * L.mask_loss(outputs["accumulation"], fg, cfg.mask_eps, mask_weight)
        if weights["eikonal"] > 0:
            grads = outputs["samples"]["gradients"]
            if "random_gradients" in outputs["samples"]:
                grads = torch.cat([grads, outputs["samples"]["random_gradients"]], dim=0)
            out["eikonal_loss"] = weights["eikonal"] * L.eikonal_loss(grads)
        if has_depth and weights["depth"] > 0:
            view = batch["indices"][:, 0] if "indices" in batch else batch["camera_indices"].reshape(-1)
            loss, _ = L.depth_loss(
                outputs["depth_z"], batch["depth"], fg, view.to(outputs["depth_z"].device), self.config.depth_min_pixels
            )
            out["depth_loss"] = weights["depth"] * loss
        return out

    @torch.no_grad()
    def metrics(self, outputs: Dict[str, Any], batch: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """Cheap per-batch diagnostics."""
        fg = batch["fg_mask"].reshape(-1) > 0.5
        device = outputs["normal"].device
        out = {
            "inv_s": self.inv_s().detach(),
            "samples_per_ray": outputs["num_samples"].mean(),
            "occupancy": torch.tensor(self.grid.occupancy_fraction(), device=device),
            "active_levels": torch.tensor(float(self.field.num_active_levels), device=device),
        }
        if bool(fg.any()):
            out["normal_mae_deg"] = normal_angular_error_deg(outputs["normal"][fg], batch["normal"][fg].to(device)).mean()
        return out

    def param_groups(self) -> Dict[str, List[nn.Parameter]]:
        """Parameter groups: ``hash_grid`` (table), ``sdf_mlp`` (MLP), ``variance`` (sharpness scalar)."""
        return {
            "hash_grid": list(self.field.encoding.parameters()),
            "sdf_mlp": list(self.field.layers.parameters()),
            "variance": [self.variance],
        }


def _outside_band(batch: Dict[str, Tensor], band_px: float, like: Tensor) -> Optional[Tensor]:
    """Per-ray weight [N, 1]: 1 farther than ``band_px`` from the ray's mask boundary, 0 within it (dtype and
    device of ``like``); None when the band is off or the batch has no ``mask_boundary_px``."""
    distance = batch.get("mask_boundary_px")
    if band_px <= 0 or distance is None:
        return None
    return (distance.to(like) > band_px).to(like)


def _difference_stencil(k: int, like: Tensor) -> Tensor:
    """[k, k] weights (row i: pixel i) of a first difference along one patch axis: central inside, and at the
    patch border the second-order one-sided (-3, 4, -1) when k >= 3 (a plain one-sided difference is only first
    order, about 1 degree off on a sphere at our pixel spacing), (-1, 1) when k = 2. Applied to the points and to
    their SDF alike, so only the stencil's shape matters, not its scale."""
    D = torch.zeros(k, k, dtype=like.dtype, device=like.device)
    if k == 2:
        D[:, 0], D[:, 1] = -1.0, 1.0
        return D
    for i in range(1, k - 1):
        D[i, i - 1], D[i, i + 1] = -1.0, 1.0
    D[0, :3] = torch.tensor([-3.0, 4.0, -1.0])
    D[k - 1, k - 3 :] = torch.tensor([1.0, -4.0, 3.0])
    return D


def _solve_directional(
    e0: Tensor, e1: Tensor, e2: Tensor, b0: Tensor, b1: Tensor, b2: Tensor
) -> Tensor:
    """The g [..., 3] with ``<e_i, g> = b_i`` for three displacements e_i [..., 3] and SDF differences b_i [...]
    (Cramer's rule: the inverse of the matrix with rows e_i has columns e1 x e2, e2 x e0, e0 x e1 over its
    determinant). The directions are far from orthogonal in general (a ray and its neighbours' offsets)."""
    c12, c20, c01 = torch.cross(e1, e2, dim=-1), torch.cross(e2, e0, dim=-1), torch.cross(e0, e1, dim=-1)
    det = (e0 * c12).sum(-1, keepdim=True)
    # A section along a ray and the offsets to two neighbouring pixels are never coplanar; the floor only keeps a
    # degenerate input (zero-length section) from dividing by zero.
    det = torch.where(det.abs() < 1e-20, torch.full_like(det, 1e-20), det)
    return (b0[..., None] * c12 + b1[..., None] * c20 + b2[..., None] * c01) / det


def normal_angular_error_deg(pred: Tensor, target: Tensor) -> Tensor:
    """Angle in degrees between (not necessarily unit) normals [M, 3]; zero vectors count as 90 degrees off."""
    p = pred / pred.norm(dim=-1, keepdim=True).clamp(min=1e-8)
    t = target / target.norm(dim=-1, keepdim=True).clamp(min=1e-8)
    return torch.rad2deg(torch.acos((p * t).sum(-1).clamp(-1.0, 1.0)))


def surface_normal_errors(outputs: Dict[str, Any], target: Tensor, inside: Tensor) -> Tuple[Tensor, Tensor]:
    """Angular errors (degrees) of the SDF gradient at each ray's first zero crossing against ``target``, over the
    ``inside`` (boolean) rays that have a crossing, and the boolean mask of those rays."""
    hit = inside & (outputs["surface_hit"][..., 0] > 0.5)
    return normal_angular_error_deg(outputs["surface_normal"][hit], target[hit]), hit


def core_config_for(
    config: PMNICoreConfig, data: Any, device: Optional[torch.device | str], init_radius_from_masks: bool = True
) -> PMNICoreConfig:
    """``config`` as trained on ``data`` (a ``MultiViewNormalData`` or None) on ``device``: the initial sphere gets
    the visual hull's volume (``sdf_field.sphere_init_radius``), and tiny-cuda-nn is only chosen where it runs."""
    from pmni_method.models.visual_hull import visual_hull_radius  # pylint: disable=import-outside-toplevel

    field_config = config.sdf_field
    if data is not None and init_radius_from_masks:
        # The sharpness is tied to the marching step from the first iteration, so the mask loss only acts near the
        # current surface: an object much larger than the initial sphere would never be reached from inside.
        radius = visual_hull_radius(data.K, data.c2w, data.masks)
        field_config = dataclasses.replace(field_config, sphere_init_radius=float(min(max(radius, 0.2), 0.95)))
    if device is not None:
        # tcnn may be importable on a CUDA machine that trains on CPU: "auto" means tcnn only where it runs.
        from pmni_method.fields.hash_encoding import tcnn_available  # pylint: disable=import-outside-toplevel

        chosen = choose_backend(field_config.implementation, "tcnn", torch.device(device).type == "cuda", tcnn_available())
        field_config = dataclasses.replace(field_config, implementation=chosen)
    return dataclasses.replace(config, sdf_field=field_config)
