"""Occupancy-grid ray marching inside the unit sphere (nerfstudio-free).

The grid (a boolean ``[R, R, R]`` over the box [-1, 1]^3, indexed ``[x, y, z]``) is maintained in torch on every
device from the SDF itself. Marching is nerfacc's ``OccGridEstimator.sampling`` on CUDA and a pure-torch
marcher elsewhere with the same rule: fixed steps of ``step_size`` from the near plane (one random offset per
ray when stratified), keeping the steps whose midpoint falls in an occupied cell.

The rebuild also marks *interior* cells (every point deeper inside than the opacity band). Behind such a cell a
ray's transmittance is below about ``alpha_eps``, so its later samples (the far side of the object, which would
otherwise double the samples of every ray that crosses it) are dropped. That cut is applied after either marcher,
so CPU and CUDA keep the same samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

import torch
from torch import Tensor, nn

from pmni_method.backends import Backend, choose_backend


@dataclass
class OccupancySamplerConfig:
    """Occupancy grid and ray marcher."""

    grid_resolution: int = 128
    """Cells per side of the occupancy grid over [-1, 1]^3."""
    update_every: int = 8
    """Rebuild the grid from the SDF every this many training steps."""
    coarse_factor: int = 4
    """The rebuild first evaluates a grid this many times coarser and refines only cells that may hold surface."""
    lipschitz_bound: float = 2.0
    """Assumed bound on |grad sdf| when deciding from a cell centre whether a cell may hold the surface band."""
    alpha_eps: float = 1e-2
    """A cell is occupied where a step of the current size could reach an opacity above this."""
    step_size_start: float = 2.0 / 128
    """Marching step (normalised units) at the start of training."""
    step_size_end: float = 2.0 / 512
    """Marching step at the end of the step-size decay."""
    step_decay_end: float = 0.5
    """Fraction of the run over which the step decays geometrically from start to end."""
    sphere_radius: float = 1.0
    """Rays are clipped to this sphere around the origin (the normalised frame's bounding sphere)."""
    backend: Backend = "auto"
    """Marcher: nerfacc on CUDA ("auto"), nerfacc, or the pure-torch marcher (torch)."""
    eval_chunk: int = 131072
    """Points per SDF evaluation chunk during a grid rebuild."""
    terminate_inside: bool = True
    """Drop a ray's samples behind the first interior cell it enters (its transmittance there is below about
    alpha_eps): roughly halves the samples of rays that cross the whole object."""


def sphere_near_far(
    origins: Tensor, directions: Tensor, radius: float = 1.0
) -> Tuple[Tensor, Tensor]:
    """Near/far distances [N] of unit-direction rays through a sphere at the origin; far <= near for a miss."""
    b = (origins * directions).sum(-1)
    c = (origins * origins).sum(-1) - radius * radius
    disc = b * b - c
    hit = disc > 0
    root = torch.sqrt(disc.clamp(min=0.0))
    near = (-b - root).clamp(min=0.0)
    far = -b + root
    far = torch.where(hit, far, torch.zeros_like(far))
    near = torch.where(hit, near, torch.zeros_like(near))
    return near, far


def alpha_band(step_size: float, inv_s: float, alpha_eps: float) -> float:
    """|SDF| beyond which a NeuS step of ``step_size`` at sharpness ``inv_s`` stays below ``alpha_eps``.

    In front of the surface a step's opacity is about ``step * s * exp(-s * sdf)``.
    """
    ratio = step_size * inv_s / alpha_eps
    return math.log(max(ratio, 1.0)) / inv_s


class OccupancyGrid(nn.Module):
    """Binary occupancy over [-1, 1]^3 built from an SDF, and the ray marcher that uses it."""

    def __init__(self, config: OccupancySamplerConfig) -> None:
        super().__init__()
        self.config = config
        res = config.grid_resolution
        # Until the first rebuild everything inside the sphere is occupied: nothing is skipped by mistake.
        centres = self.cell_centres(res)
        inside = centres.norm(dim=-1) <= config.sphere_radius + math.sqrt(3.0) / res
        self.register_buffer("binaries", inside.view(res, res, res))
        # Cells whose every point is deeper inside the surface than the opacity band (none until a rebuild).
        self.register_buffer("interior", torch.zeros(res, res, res, dtype=torch.bool))
        self._nerfacc_estimator: Optional[nn.Module] = None

    @staticmethod
    def cell_centres(res: int, device: Optional[torch.device] = None) -> Tensor:
        coords = (torch.arange(res, device=device, dtype=torch.float32) + 0.5) / res * 2.0 - 1.0
        grid = torch.stack(torch.meshgrid(coords, coords, coords, indexing="ij"), dim=-1)
        return grid.reshape(-1, 3)

    @property
    def resolution(self) -> int:
        return self.config.grid_resolution

    def occupancy_fraction(self) -> float:
        return float(self.binaries.float().mean().item())

    # ------------------------------------------------------------------ grid rebuild
    @torch.no_grad()
    def update(self, sdf_fn: Callable[[Tensor], Tensor], band: float) -> None:
        """Rebuild: a cell is occupied where ``|sdf(centre)| <= lipschitz * half_diagonal + band``.

        A coarse pass first discards coarse cells that cannot contain any fine occupied cell, so only a thin
        shell around the surface is evaluated at full resolution.
        """
        cfg = self.config
        res = cfg.grid_resolution
        device = self.binaries.device
        f = max(1, int(cfg.coarse_factor))
        while res % f:
            f -= 1
        lip = cfg.lipschitz_bound
        radius_limit = cfg.sphere_radius + math.sqrt(3.0) / res
        if f > 1:
            cres = res // f
            ccentres = self.cell_centres(cres, device)
            chalf = math.sqrt(3.0) / cres
            keep = ccentres.norm(dim=-1) <= cfg.sphere_radius + chalf
            sdf_c = self._eval(sdf_fn, ccentres[keep])
            cand = torch.zeros(cres**3, dtype=torch.bool, device=device)
            cand[torch.nonzero(keep).squeeze(-1)] = sdf_c.abs() <= lip * chalf + band
            deep_c = torch.zeros(cres**3, dtype=torch.bool, device=device)
            deep_c[torch.nonzero(keep).squeeze(-1)] = sdf_c < -(lip * chalf + band)
            cidx = torch.nonzero(cand).squeeze(-1)
            cx, cy, cz = cidx // (cres * cres), (cidx // cres) % cres, cidx % cres
            sub = torch.arange(f, device=device)
            ox, oy, oz = torch.meshgrid(sub, sub, sub, indexing="ij")
            fx = (cx[:, None] * f + ox.reshape(1, -1)).reshape(-1)
            fy = (cy[:, None] * f + oy.reshape(1, -1)).reshape(-1)
            fz = (cz[:, None] * f + oz.reshape(1, -1)).reshape(-1)
            flat = (fx * res + fy) * res + fz
        else:
            flat = torch.arange(res**3, device=device)
            deep_c = None
        centres = (torch.stack([flat // (res * res), (flat // res) % res, flat % res], -1).float() + 0.5) / res * 2 - 1
        inside = centres.norm(dim=-1) <= radius_limit
        flat, centres = flat[inside], centres[inside]
        sdf = self._eval(sdf_fn, centres)
        margin = lip * math.sqrt(3.0) / res + band
        occ = sdf.abs() <= margin
        binaries = torch.zeros(res**3, dtype=torch.bool, device=device)
        binaries[flat[occ]] = True
        self.binaries.copy_(binaries.view(res, res, res))
        interior = torch.zeros(res**3, dtype=torch.bool, device=device)
        if deep_c is not None:
            # A coarse cell deeper than its own margin holds only interior fine cells.
            interior = deep_c.view(cres, 1, cres, 1, cres, 1).expand(cres, f, cres, f, cres, f).reshape(-1).clone()
        interior[flat[sdf < -margin]] = True
        self.interior.copy_(interior.view(res, res, res))

    def _eval(self, sdf_fn: Callable[[Tensor], Tensor], points: Tensor) -> Tensor:
        chunk = self.config.eval_chunk
        out = [sdf_fn(points[i : i + chunk]).reshape(-1) for i in range(0, points.shape[0], chunk)]
        return torch.cat(out) if out else points.new_zeros(0)

    def occupied(self, points: Tensor) -> Tensor:
        """Whether each point [M, 3] lies in an occupied cell (points outside the box are not)."""
        return self._lookup(self.binaries, points)

    def in_interior(self, points: Tensor) -> Tensor:
        """Whether each point [M, 3] lies in an interior cell (points outside the box are not)."""
        return self._lookup(self.interior, points)

    def _lookup(self, cells: Tensor, points: Tensor) -> Tensor:
        res = self.resolution
        ijk = torch.floor((points + 1.0) * 0.5 * res).long()
        inside = ((ijk >= 0) & (ijk < res)).all(dim=-1)
        ijk = ijk.clamp(0, res - 1)
        flat = (ijk[:, 0] * res + ijk[:, 1]) * res + ijk[:, 2]
        return cells.view(-1)[flat] & inside

    @torch.no_grad()
    def first_interior(self, origins: Tensor, directions: Tensor, near: Tensor, far: Tensor) -> Tensor:
        """Distance [N] at which each ray first enters an interior cell (``inf`` where it never does).

        Probed every half cell: a ray that only clips the corner of an interior cell may pass unnoticed, which
        keeps samples rather than losing any.
        """
        n = origins.shape[0]
        t_hit = torch.full((n,), float("inf"), device=origins.device, dtype=origins.dtype)
        hit = far > near
        if n == 0 or not bool(hit.any()):
            return t_hit
        rays = torch.nonzero(hit).squeeze(-1)
        o, d, n0, f0 = origins[rays], directions[rays], near[rays], far[rays]
        probe = 1.0 / self.resolution  # half a cell (cells are 2 / res wide)
        steps = int(math.ceil(float((f0 - n0).max().item()) / probe)) + 1
        k = torch.arange(steps, device=origins.device, dtype=origins.dtype)
        t = n0[:, None] + k[None, :] * probe
        valid = t <= f0[:, None]
        pts = o[:, None, :] + t[..., None] * d[:, None, :]
        deep = self.in_interior(pts.reshape(-1, 3)).view(valid.shape) & valid
        first = torch.where(deep, t, torch.full_like(t, float("inf"))).min(dim=1).values
        t_hit[rays] = first
        return t_hit

    # ------------------------------------------------------------------ marching
    @torch.no_grad()
    def march(
        self,
        origins: Tensor,
        directions: Tensor,
        near: Tensor,
        far: Tensor,
        step_size: float,
        stratified: bool,
    ) -> Tuple[Tensor, Tensor, Tensor]:
        """Samples as ``(ray_indices, t_starts, t_ends)`` [S], sorted by ray then distance."""
        use_nerfacc = choose_backend(self.config.backend, "nerfacc", origins.is_cuda) == "nerfacc"
        if use_nerfacc and not origins.is_cuda:
            raise RuntimeError("the nerfacc marcher needs CUDA tensors")
        if use_nerfacc:
            samples = self._march_nerfacc(origins, directions, near, far, step_size, stratified)
        else:
            samples = self._march_torch(origins, directions, near, far, step_size, stratified)
        if self.config.terminate_inside:
            samples = self._cut_behind_interior(samples, origins, directions, near, far)
        return samples

    def _cut_behind_interior(
        self, samples: Tuple[Tensor, Tensor, Tensor], origins: Tensor, directions: Tensor, near: Tensor, far: Tensor
    ) -> Tuple[Tensor, Tensor, Tensor]:
        ray_idx, t_starts, t_ends = samples
        if ray_idx.numel() == 0 or not bool(self.interior.any()):
            return samples
        t_cut = self.first_interior(origins, directions, near, far)
        keep = t_starts < t_cut[ray_idx]
        return ray_idx[keep], t_starts[keep], t_ends[keep]

    def _march_torch(
        self, origins: Tensor, directions: Tensor, near: Tensor, far: Tensor, step_size: float, stratified: bool
    ) -> Tuple[Tensor, Tensor, Tensor]:
        device = origins.device
        hit = far > near
        if not bool(hit.any()):
            empty = torch.zeros(0, device=device)
            return torch.zeros(0, dtype=torch.long, device=device), empty, empty
        rays = torch.nonzero(hit).squeeze(-1)
        o, d, n0, f0 = origins[rays], directions[rays], near[rays], far[rays]
        if stratified:
            n0 = n0 + torch.rand_like(n0) * step_size
        max_steps = int(math.ceil(float((f0 - n0).max().item()) / step_size)) + 1
        # March in blocks of steps so that long rays do not materialise [rays, all steps] points at once.
        block = max(1, min(max_steps, 262144 // max(len(rays), 1) + 1))
        idx_parts, ts_parts, te_parts = [], [], []
        for k0 in range(0, max_steps, block):
            k = torch.arange(k0, min(k0 + block, max_steps), device=device, dtype=origins.dtype)
            ts = n0[:, None] + k[None, :] * step_size
            te = torch.minimum(ts + step_size, f0[:, None])
            valid = ts < f0[:, None]
            if not bool(valid.any()):
                break
            mid = 0.5 * (ts + te)
            pts = o[:, None, :] + mid[..., None] * d[:, None, :]
            valid &= self.occupied(pts.reshape(-1, 3)).view(valid.shape)
            r, c = torch.nonzero(valid, as_tuple=True)
            idx_parts.append(r)
            ts_parts.append(ts[r, c])
            te_parts.append(te[r, c])
        local, t_starts, t_ends = _ray_major(idx_parts, ts_parts, te_parts)
        return rays[local], t_starts, t_ends

    @torch.no_grad()
    def march_patches(
        self,
        origins: Tensor,
        directions: Tensor,
        near: Tensor,
        far: Tensor,
        step_size: float,
        stratified: bool,
    ) -> Tuple[Tensor, Tensor, Tensor]:
        """One shared set of distances per patch of rays: ``(patch_indices, t_starts, t_ends)`` [S], sorted by patch
        then distance, for rays given as ``origins`` / ``directions`` [P, Q, 3] and ``near`` / ``far`` [P, Q].

        A step is kept where the midpoint of *any* of the patch's rays (inside its own near/far) lies in an occupied
        cell, between the earliest near and the latest far of the patch, and the interior cut happens only once every
        ray of the patch has entered an interior cell. Marching the centre ray alone would leave the neighbours of a
        centre that just misses the object (the silhouette) without samples, so the mask loss there would see empty
        space where the object is. Pure torch on every device: nerfacc's marcher has no union-of-rays rule.

        The interior test reuses the marching points (step midpoints) instead of :meth:`first_interior`'s
        half-cell probes: on CPU those probes cost as much as the marching itself.
        """
        device = origins.device
        num_patches, q = origins.shape[:2]
        hit = far > near  # [P, Q]
        big = torch.finfo(near.dtype).max
        n0 = torch.where(hit, near, torch.full_like(near, big)).min(dim=1).values
        f0 = torch.where(hit, far, torch.full_like(far, -big)).max(dim=1).values
        live = hit.any(dim=1)
        if not bool(live.any()):
            empty = torch.zeros(0, device=device)
            return torch.zeros(0, dtype=torch.long, device=device), empty, empty
        patches = torch.nonzero(live).squeeze(-1)
        o, d = origins[patches], directions[patches]
        rn, rf = near[patches], far[patches]
        n0, f0 = n0[patches], f0[patches]
        if stratified:
            # One offset per patch: the patch's rays must keep sharing their distances.
            n0 = n0 + torch.rand_like(n0) * step_size
        max_steps = int(math.ceil(float((f0 - n0).max().item()) / step_size)) + 1
        block = max(1, min(max_steps, 262144 // max(len(patches) * q, 1) + 1))
        cut = self.config.terminate_inside and bool(self.interior.any())
        t_in = torch.full((len(patches), q), float("inf"), device=device, dtype=origins.dtype)
        idx_parts, ts_parts, te_parts = [], [], []
        for k0 in range(0, max_steps, block):
            k = torch.arange(k0, min(k0 + block, max_steps), device=device, dtype=origins.dtype)
            ts = n0[:, None] + k[None, :] * step_size  # [P', B]
            te = torch.minimum(ts + step_size, f0[:, None])
            valid = ts < f0[:, None]
            if not bool(valid.any()):
                break
            mid = 0.5 * (ts + te)
            pts = o[:, None, :, :] + mid[:, :, None, None] * d[:, None, :, :]  # [P', B, Q, 3]
            within = (mid[:, :, None] >= rn[:, None, :]) & (mid[:, :, None] <= rf[:, None, :])
            flat = pts.reshape(-1, 3)
            occ = self.occupied(flat).view(within.shape) & within
            valid &= occ.any(dim=-1)
            if cut:
                deep = self.in_interior(flat).view(within.shape) & within
                t_deep = torch.where(deep, mid[:, :, None], torch.full_like(deep, float("inf"), dtype=mid.dtype))
                t_in = torch.minimum(t_in, t_deep.min(dim=1).values)
            r, c = torch.nonzero(valid, as_tuple=True)
            idx_parts.append(r)
            ts_parts.append(ts[r, c])
            te_parts.append(te[r, c])
        local, t_starts, t_ends = _ray_major(idx_parts, ts_parts, te_parts)
        if cut and local.numel():
            # A ray that misses the sphere never enters: it must not keep the patch open.
            t_in = torch.where(hit[patches], t_in, torch.full_like(t_in, -float("inf")))
            keep = t_starts < t_in.max(dim=1).values[local]
            local, t_starts, t_ends = local[keep], t_starts[keep], t_ends[keep]
        return patches[local], t_starts, t_ends

    def _march_nerfacc(
        self, origins: Tensor, directions: Tensor, near: Tensor, far: Tensor, step_size: float, stratified: bool
    ) -> Tuple[Tensor, Tensor, Tensor]:
        import nerfacc  # pylint: disable=import-outside-toplevel

        if self._nerfacc_estimator is None:
            res = self.resolution
            # Not registered as a submodule: its state is a copy of ``binaries`` and must not enter checkpoints.
            estimator = nerfacc.OccGridEstimator(roi_aabb=[-1.0, -1.0, -1.0, 1.0, 1.0, 1.0], resolution=res, levels=1)
            object.__setattr__(self, "_nerfacc_estimator", estimator.to(origins.device))
        estimator = self._nerfacc_estimator
        estimator.binaries.copy_(self.binaries[None])  # type: ignore[union-attr]
        far = torch.where(far > near, far, near)
        ray_indices, t_starts, t_ends = estimator.sampling(  # type: ignore[union-attr]
            origins.contiguous(),
            directions.contiguous(),
            t_min=near.contiguous(),
            t_max=far.contiguous(),
            render_step_size=step_size,
            stratified=stratified,
            near_plane=0.0,
            far_plane=1e10,
        )
        return ray_indices.long(), t_starts, t_ends


def _ray_major(
    idx_parts: List[Tensor], ts_parts: List[Tensor], te_parts: List[Tensor]
) -> Tuple[Tensor, Tensor, Tensor]:
    """Concatenate the samples of blocks of marching steps (ray index, start, end) into packed order."""
    local = torch.cat(idx_parts)
    t_starts, t_ends = torch.cat(ts_parts), torch.cat(te_parts)
    if len(idx_parts) > 1:
        # Blocks are step-major: restore the ray-major order (stable sort keeps distances ascending).
        order = torch.sort(local, stable=True).indices
        local, t_starts, t_ends = local[order], t_starts[order], t_ends[order]
    return local, t_starts, t_ends
