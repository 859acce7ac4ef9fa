"""Multi-resolution hash grid encoding (Instant-NGP) with a pure-torch path that supports double backward.

tiny-cuda-nn is used when it is importable and the module lives on CUDA; otherwise a compact torch
implementation runs anywhere (CPU included). Both take points in [0, 1]^3 and return ``[N, L * F]``.
"""

from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
from torch import Tensor, nn

from pmni_method.backends import Backend, choose_backend

# Instant-NGP's spatial hash primes (the first is 1 so that the x coordinate stays coherent in memory), as the
# int32 values with the same low 32 bits: hashing in int32 wraps exactly like Instant-NGP's uint32 arithmetic
# (the table index keeps only the low bits) and runs ~1.7x faster on CPU than int64.
_PRIMES = (1, 2654435761 - 2**32, 805459861)

Implementation = Backend


def level_resolutions(num_levels: int, base_resolution: int, per_level_scale: float) -> List[int]:
    """Grid resolution of each level: ``floor(base * scale^l)`` as in Instant-NGP."""
    return [int(math.floor(base_resolution * per_level_scale**level)) for level in range(num_levels)]


def tcnn_available() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        import tinycudann  # noqa: F401  # pylint: disable=import-outside-toplevel,unused-import
    except ImportError:
        return False
    return True


class HashGridEncoding(nn.Module):
    """Multi-resolution hash grid: ``num_levels`` grids of ``features_per_level`` features, trilinearly interpolated.

    Coarse levels whose grid has at most ``2**log2_hashmap_size`` vertices are stored densely (one entry per
    vertex, no collisions); finer levels are hashed into a table of that size, as Instant-NGP does.
    """

    def __init__(
        self,
        num_levels: int = 14,
        features_per_level: int = 2,
        log2_hashmap_size: int = 19,
        base_resolution: int = 32,
        per_level_scale: float = 1.32,
        init_scale: float = 1e-4,
        implementation: Implementation = "auto",
    ) -> None:
        super().__init__()
        self.num_levels = num_levels
        self.features_per_level = features_per_level
        self.log2_hashmap_size = log2_hashmap_size
        self.base_resolution = base_resolution
        self.per_level_scale = per_level_scale
        self.resolutions = level_resolutions(num_levels, base_resolution, per_level_scale)
        use_tcnn = choose_backend(implementation, "tcnn", torch.cuda.is_available(), tcnn_available()) == "tcnn"
        self.implementation: str = "tcnn" if use_tcnn else "torch"
        self.tcnn_encoding: Optional[nn.Module] = None
        if use_tcnn:
            import tinycudann as tcnn  # pylint: disable=import-outside-toplevel

            self.tcnn_encoding = tcnn.Encoding(
                n_input_dims=3,
                encoding_config={
                    "otype": "HashGrid",
                    "n_levels": num_levels,
                    "n_features_per_level": features_per_level,
                    "log2_hashmap_size": log2_hashmap_size,
                    "base_resolution": base_resolution,
                    "per_level_scale": per_level_scale,
                },
            )
            return
        table_size = 2**log2_hashmap_size
        sizes, dense = [], []
        for res in self.resolutions:
            vertices = (res + 1) ** 3
            dense.append(vertices <= table_size)
            sizes.append(min(vertices, table_size))
        offsets = [0]
        for size in sizes:
            offsets.append(offsets[-1] + size)
        self.register_buffer("level_res", torch.tensor(self.resolutions, dtype=torch.float32), persistent=False)
        self.register_buffer("level_offset", torch.tensor(offsets[:-1], dtype=torch.int32), persistent=False)
        self.register_buffer("bits", torch.tensor([0, 1], dtype=torch.int32), persistent=False)
        # Levels are sorted by resolution, so the dense ones are a prefix.
        self.num_dense = int(sum(dense))
        self.hash_mask = table_size - 1
        self.register_buffer("primes", torch.tensor(_PRIMES, dtype=torch.int32), persistent=False)
        # Small uniform init, as Instant-NGP: the SDF starts as the MLP's geometric initialisation.
        self.table = nn.Parameter((torch.rand(offsets[-1], features_per_level) * 2 - 1) * init_scale)

    @property
    def out_dim(self) -> int:
        return self.num_levels * self.features_per_level

    def forward(self, x: Tensor) -> Tensor:
        """Encode points ``x`` [N, 3] in [0, 1]^3 (clamped) into features [N, L * F]."""
        if self.tcnn_encoding is not None:
            return self.tcnn_encoding(x.clamp(0.0, 1.0)).to(x.dtype)
        return self._torch_forward(x)

    def forward_with_jacobian(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """Features [N, L * F] and their analytic Jacobian with respect to ``x``, [N, L * F, 3].

        One custom autograd node computes both, with a hand-written backward (a single scatter into the table):
        losses on SDF gradients then need only first-order backpropagation, several times cheaper on CPU than
        differentiating the interpolation twice. Gradients with respect to ``x`` (pose refinement) include the
        Jacobian's own dependence on ``x`` (the mixed second derivatives of trilinear interpolation).
        """
        if self.tcnn_encoding is not None:
            raise RuntimeError("the analytic Jacobian needs the torch implementation; use autodiff with tcnn")
        out, jac = _HashGridWithJacobian.apply(x, self.table, self)
        return out, jac

    def corner_indices(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """Table rows of the 8 corners per level, [N, L, 8] (corner order x-bit, y-bit, z-bit), and the
        position inside the cell ``frac`` [N, L, 3] (differentiable in ``x``)."""
        pos = x.clamp(0.0, 1.0)[:, None, :] * self.level_res[None, :, None]  # [N, L, 3]
        # The last cell is closed on both sides so that x = 1 stays inside the grid.
        cell = torch.minimum(torch.floor(pos), self.level_res[None, :, None] - 1.0).detach()
        frac = pos - cell  # carries the gradient with respect to x (floor has none)
        # Work per axis on [N, L, 3, 2] (cell and cell + 1) and broadcast to the 8 corners only at the end:
        # materialising [N, L, 8, 3] integer corners costs several times more on CPU.
        coord = cell.int()[..., None] + self.bits  # [N, L, 3, 2]
        k = self.num_dense
        parts = []
        if k > 0:
            stride = self.level_res[:k].int() + 1
            c = coord[:, :k]
            sx = c[:, :, 0]
            sy = c[:, :, 1] * stride[None, :, None]
            sz = c[:, :, 2] * (stride * stride)[None, :, None]
            parts.append(sx[..., :, None, None] + sy[..., None, :, None] + sz[..., None, None, :])
        if k < self.num_levels:
            h = coord[:, k:] * self.primes[None, None, :, None]
            hashed = torch.bitwise_xor(
                torch.bitwise_xor(h[:, :, 0, :, None, None], h[:, :, 1, None, :, None]), h[:, :, 2, None, None, :]
            )
            parts.append(torch.bitwise_and(hashed, self.hash_mask))
        idx = (torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]) + self.level_offset[None, :, None, None, None]
        return idx.reshape(x.shape[0], self.num_levels, 8), frac

    def _torch_forward(self, x: Tensor) -> Tensor:
        n = x.shape[0]
        idx, frac = self.corner_indices(x)
        # int64 rows: index_select's backward (an index_add) is more than twice as slow with int32 on CPU.
        feats = self.table.index_select(0, idx.reshape(-1).long()).view(n, self.num_levels, 8, self.features_per_level)
        # Trilinear weights: per corner, the product over axes of frac (corner bit 1) or 1 - frac (bit 0).
        w = torch.stack([1.0 - frac, frac], dim=-1)  # [N, L, 3, 2]
        weights = w[:, :, 0, :, None, None] * w[:, :, 1, None, :, None] * w[:, :, 2, None, None, :]
        out = torch.einsum("nlcf,nlc->nlf", feats, weights.reshape(n, self.num_levels, 8))
        return out.reshape(n, self.num_levels * self.features_per_level)


_SIGN = (-1.0, 1.0)


def _trilinear_terms(frac: Tensor, res: Tensor, inside: Tensor, second: bool):
    """Weights [N, L, 8], their x-derivatives [N, L, 8, 3] and optionally mixed second derivatives [N, L, 8, 3, 3]."""
    n, levels = frac.shape[:2]
    w = torch.stack([1.0 - frac, frac], dim=-1)  # [N, L, 3, 2]
    sign = torch.tensor(_SIGN, dtype=w.dtype, device=w.device)
    wx, wy, wz = w[:, :, 0], w[:, :, 1], w[:, :, 2]
    ex = lambda t: t[:, :, :, None, None]  # noqa: E731  (bit along x)
    ey = lambda t: t[:, :, None, :, None]  # noqa: E731
    ez = lambda t: t[:, :, None, None, :]  # noqa: E731
    weights = (ex(wx) * ey(wy) * ez(wz)).reshape(n, levels, 8)
    sx, sy, sz = sign[None, None, :, None, None], sign[None, None, None, :, None], sign[None, None, None, None, :]
    # pos = x * res, so each derivative picks up res; clamping x makes it zero outside [0, 1].
    scale = res[None, :, None] * inside[:, None, :]  # [N, L, 3]
    gx = (sx * ey(wy) * ez(wz)).reshape(n, levels, 8) * scale[:, :, None, 0]
    gy = (ex(wx) * sy * ez(wz)).reshape(n, levels, 8) * scale[:, :, None, 1]
    gz = (ex(wx) * ey(wy) * sz).reshape(n, levels, 8) * scale[:, :, None, 2]
    dweights = torch.stack([gx, gy, gz], dim=-1)
    if not second:
        return weights, dweights, None
    hxy = (sx * sy * ez(wz)).expand(n, levels, 2, 2, 2).reshape(n, levels, 8) * scale[:, :, None, 0] * scale[:, :, None, 1]
    hxz = (sx * ey(wy) * sz).expand(n, levels, 2, 2, 2).reshape(n, levels, 8) * scale[:, :, None, 0] * scale[:, :, None, 2]
    hyz = (ex(wx) * sy * sz).expand(n, levels, 2, 2, 2).reshape(n, levels, 8) * scale[:, :, None, 1] * scale[:, :, None, 2]
    zero = torch.zeros_like(hxy)
    hess = torch.stack(
        [torch.stack([zero, hxy, hxz], -1), torch.stack([hxy, zero, hyz], -1), torch.stack([hxz, hyz, zero], -1)], -2
    )
    return weights, dweights, hess


class _HashGridWithJacobian(torch.autograd.Function):
    """Hash-grid features and their spatial Jacobian in one node, with a first-order hand-written backward."""

    @staticmethod
    def forward(ctx, x: Tensor, table: Tensor, enc: "HashGridEncoding"):  # type: ignore[override]
        n, levels, feat = x.shape[0], enc.num_levels, enc.features_per_level
        with torch.no_grad():
            idx, frac = enc.corner_indices(x)
            inside = ((x >= 0.0) & (x <= 1.0)).to(x.dtype)
            weights, dweights, _ = _trilinear_terms(frac, enc.level_res, inside, second=False)
            feats = table.index_select(0, idx.reshape(-1)).view(n, levels, 8, feat)
            out = torch.einsum("nlcf,nlc->nlf", feats, weights)
            jac = torch.einsum("nlcf,nlca->nlfa", feats, dweights)
        ctx.enc = enc
        ctx.table_shape = table.shape
        ctx.save_for_backward(x, idx, weights, dweights, feats if ctx.needs_input_grad[0] else None, jac)
        return out.reshape(n, levels * feat), jac.reshape(n, levels * feat, 3)

    @staticmethod
    def backward(ctx, g_out: Tensor, g_jac: Tensor):  # type: ignore[override]
        x, idx, weights, dweights, feats, jac = ctx.saved_tensors
        enc = ctx.enc
        n, levels, feat = x.shape[0], enc.num_levels, enc.features_per_level
        g_out = g_out.reshape(n, levels, feat)
        g_jac = g_jac.reshape(n, levels, feat, 3)
        grad_x = grad_table = None
        if ctx.needs_input_grad[1]:
            coef = torch.einsum("nlf,nlc->nlcf", g_out, weights) + torch.einsum("nlfa,nlca->nlcf", g_jac, dweights)
            grad_table = torch.zeros(ctx.table_shape, dtype=coef.dtype, device=coef.device)
            grad_table.index_add_(0, idx.reshape(-1).long(), coef.reshape(-1, feat))
        if ctx.needs_input_grad[0]:
            grad_x = torch.einsum("nlf,nlfa->na", g_out, jac)
            _, frac = enc.corner_indices(x)
            inside = ((x >= 0.0) & (x <= 1.0)).to(x.dtype)
            _, _, hess = _trilinear_terms(frac.detach(), enc.level_res, inside, second=True)
            hfeat = torch.einsum("nlcf,nlcab->nlfab", feats, hess)
            grad_x = grad_x + torch.einsum("nlfa,nlfab->nb", g_jac, hfeat)
        return grad_x, grad_table, None
