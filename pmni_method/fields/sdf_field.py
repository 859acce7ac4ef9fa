"""Signed distance field: multi-resolution hash grid + a small MLP, geometrically initialised to a sphere.

nerfstudio-free. Points live in the normalised frame (object inside the unit sphere, box [-1, 1]^3).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Optional, Tuple

import torch
from torch import Tensor, nn

from pmni_method.fields.hash_encoding import HashGridEncoding, Implementation

GradientMethod = Literal["analytic", "autodiff", "finite_difference"]


@dataclass
class SDFFieldConfig:
    """Hash-grid SDF network (SuperNormal's geometry network)."""

    num_levels: int = 14
    """Number of hash grid levels."""
    features_per_level: int = 2
    """Features stored per level."""
    log2_hashmap_size: int = 19
    """log2 of the entries in each hashed level's table."""
    base_resolution: int = 32
    """Grid resolution of the coarsest level (over the [-1, 1] box)."""
    per_level_scale: float = 1.32
    """Resolution growth factor from one level to the next."""
    hash_init_scale: float = 1e-4
    """Table entries start uniform in [-scale, scale]."""
    implementation: Implementation = "auto"
    """Hash grid backend: tcnn when importable on CUDA ("auto"), or "torch" (runs anywhere, double backward)."""
    hidden_dim: int = 64
    """Width of the MLP's hidden layers."""
    num_hidden_layers: int = 1
    """Number of hidden layers of the MLP."""
    softplus_beta: float = 100.0
    """Sharpness of the Softplus activation (close to ReLU, but smooth for the eikonal term)."""
    geo_feat_dim: int = 0
    """Extra output features after the SDF (no colour network needs them here)."""
    sphere_init_radius: float = 0.5
    """Radius of the sphere the SDF is initialised to."""
    inside_outside: bool = False
    """Initialise with negative SDF outside the sphere (scenes viewed from inside); objects use False."""
    gradient_method: GradientMethod = "analytic"
    """SDF gradient: "analytic" (exact, hash-grid Jacobian + MLP autodiff; fastest exact path on CPU), "autodiff"
    (plain double backward), or "finite_difference" (central differences, 6 extra SDF evaluations)."""
    fd_step: float = 0.0
    """Finite-difference step in normalised units; 0 ties it to the cell size of the finest active level."""
    fd_min_step: float = 1e-3
    """Lower bound of the automatic finite-difference step."""


def _fibonacci_sphere(count: int) -> Tensor:
    """``count`` unit vectors spread evenly over the sphere (golden-angle spiral)."""
    i = torch.arange(count, dtype=torch.float64) + 0.5
    z = 1.0 - 2.0 * i / count
    r = torch.sqrt((1.0 - z * z).clamp(min=0.0))
    phi = math.pi * (3.0 - math.sqrt(5.0)) * i
    return torch.stack([r * torch.cos(phi), r * torch.sin(phi), z], dim=-1).float()


class SDFField(nn.Module):
    """SDF network: ``[xyz, hash(xyz)] -> MLP -> [sdf, features]``, with coarse-to-fine level masking."""

    def __init__(self, config: SDFFieldConfig) -> None:
        super().__init__()
        self.config = config
        self.encoding = HashGridEncoding(
            num_levels=config.num_levels,
            features_per_level=config.features_per_level,
            log2_hashmap_size=config.log2_hashmap_size,
            base_resolution=config.base_resolution,
            per_level_scale=config.per_level_scale,
            init_scale=config.hash_init_scale,
            implementation=config.implementation,
        )
        in_dim = 3 + self.encoding.out_dim
        dims = [in_dim] + [config.hidden_dim] * config.num_hidden_layers + [1 + config.geo_feat_dim]
        self.layers = nn.ModuleList(nn.Linear(dims[i], dims[i + 1]) for i in range(len(dims) - 1))
        self.activation = nn.Softplus(beta=config.softplus_beta)
        self.register_buffer("level_mask", torch.ones(config.num_levels), persistent=False)
        self._geometric_init()

    # ------------------------------------------------------------------ init / masking
    def _geometric_init(self) -> None:
        """IDR/NeuS geometric initialisation: the MLP starts as ``|x| - r``; hash features start switched off."""
        cfg = self.config
        n_layers = len(self.layers)
        for i, layer in enumerate(self.layers):
            out_dim = layer.weight.shape[0]
            if i == n_layers - 1:
                in_dim = layer.weight.shape[1]
                sign = -1.0 if cfg.inside_outside else 1.0
                nn.init.normal_(layer.weight, mean=sign * math.sqrt(math.pi) / math.sqrt(in_dim), std=1e-4)
                nn.init.constant_(layer.bias, -sign * cfg.sphere_init_radius)
                if n_layers == 2:
                    # One hidden layer: sum_i relu(w_i . x) with w_i spread evenly over the sphere averages
                    # relu(cos) (mean 1/4) over directions, so this weight makes the output |x| - r almost exactly.
                    width = self.layers[0].weight[:, :3].norm(dim=-1).mean().item()
                    nn.init.constant_(layer.weight[:1], sign * 4.0 / (in_dim * width))
            elif i == 0:
                nn.init.constant_(layer.bias, 0.0)
                if n_layers == 2:
                    # Evenly spread (Fibonacci) directions instead of Gaussian ones: a random 64-unit layer makes
                    # a lumpy "sphere" (radius off by up to ~40 % in some directions), this one a round one.
                    nn.init.zeros_(layer.weight)
                    with torch.no_grad():
                        layer.weight[:, :3] = _fibonacci_sphere(out_dim) * math.sqrt(2.0) / math.sqrt(out_dim)
                else:
                    nn.init.normal_(layer.weight[:, :3], 0.0, math.sqrt(2.0) / math.sqrt(out_dim))
                # Zero weights on the encoding (NeuS2 / Neuralangelo): the initial SDF is the sphere; the weights
                # still get gradients (the features are small but non-zero) and open up in the first steps.
                nn.init.constant_(layer.weight[:, 3:], 0.0)
            else:
                nn.init.constant_(layer.bias, 0.0)
                nn.init.normal_(layer.weight, 0.0, math.sqrt(2.0) / math.sqrt(out_dim))

    def set_active_levels(self, num_active: int) -> None:
        """Coarse-to-fine: keep the first ``num_active`` hash levels, zero the finer ones."""
        num_active = max(0, min(int(num_active), self.config.num_levels))
        mask = torch.zeros_like(self.level_mask)
        mask[:num_active] = 1.0
        self.level_mask.copy_(mask)

    @property
    def num_active_levels(self) -> int:
        return int(self.level_mask.sum().item())

    def _feature_mask(self) -> Tensor:
        return self.level_mask.repeat_interleave(self.config.features_per_level)

    # ------------------------------------------------------------------ evaluation
    def _mlp(self, h: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            h = layer(h)
            if i < len(self.layers) - 1:
                h = self.activation(h)
        return h

    def _mlp_sdf_and_input_grad(self, inp: Tensor) -> Tuple[Tensor, Tensor]:
        """SDF [N, 1] and d sdf / d input [N, D] in closed form (backprop written out: Softplus' = sigmoid(beta z)).

        The result is an ordinary differentiable expression of the weights, so no double backward is needed.
        """
        pre = []
        h = inp
        for layer in self.layers[:-1]:
            z = layer(h)
            pre.append(z)
            h = self.activation(z)
        sdf = self.layers[-1](h)[:, :1]
        g = self.layers[-1].weight[:1]  # [1, H]
        beta = self.config.softplus_beta
        for layer, z in zip(reversed(self.layers[:-1]), reversed(pre)):
            g = (g * torch.sigmoid(beta * z)) @ layer.weight
        return sdf, g.expand(inp.shape[0], -1) if g.shape[0] == 1 else g

    def forward_geonetwork(self, x: Tensor) -> Tensor:
        """SDF and features ``[M, 1 + geo_feat_dim]`` (SDF in column 0) at points ``x`` [M, 3] in [-1, 1]^3."""
        enc = self.encoding((x + 1.0) * 0.5) * self._feature_mask()
        return self._mlp(torch.cat([x, enc], dim=-1))

    def sdf(self, x: Tensor) -> Tensor:
        """SDF [M, 1]."""
        return self.forward_geonetwork(x)[:, :1]

    def fd_step(self) -> float:
        """Central-difference step: fixed, or one cell of the finest active level (Neuralangelo-style)."""
        if self.config.fd_step > 0:
            return self.config.fd_step
        active = max(self.num_active_levels, 1)
        finest = self.encoding.resolutions[active - 1]
        return max(2.0 / finest, self.config.fd_min_step)

    def sdf_and_gradient(
        self, x: Tensor, create_graph: bool = True, method: Optional[GradientMethod] = None
    ) -> Tuple[Tensor, Tensor]:
        """SDF [M, 1] and its spatial gradient [M, 3]; ``create_graph`` keeps the gradient differentiable.

        Works under ``torch.no_grad()`` too: "analytic" and "finite_difference" need no autograd, "autodiff"
        takes its gradient inside ``enable_grad``.
        """
        method = method or self.config.gradient_method
        if method == "analytic" and self.encoding.implementation != "torch":
            method = "autodiff"
        if method == "finite_difference":
            return self._fd_gradient(x)
        if method == "analytic":
            # Closed form all the way: no autograd needed, so it also runs as is under no_grad (viewer, export).
            enc, jac = self.encoding.forward_with_jacobian((x + 1.0) * 0.5)
            fmask = self._feature_mask()
            enc = enc * fmask
            jac = jac * (0.5 * fmask)[None, :, None]  # d/dx of (x + 1) / 2
            sdf, d_inp = self._mlp_sdf_and_input_grad(torch.cat([x, enc], dim=-1))
            grad = d_inp[:, :3] + torch.einsum("nk,nka->na", d_inp[:, 3:], jac)
        else:
            with torch.enable_grad():
                xg = x if x.requires_grad else x.detach().requires_grad_(True)
                sdf = self.sdf(xg)
                (grad,) = torch.autograd.grad(sdf, xg, torch.ones_like(sdf), create_graph=create_graph)
        if not create_graph:
            sdf, grad = sdf.detach(), grad.detach()
        return sdf, grad

    def _fd_gradient(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        h = self.fd_step()
        offsets = torch.eye(3, dtype=x.dtype, device=x.device) * h
        pts = torch.cat([x[None], x[None] + offsets[:, None], x[None] - offsets[:, None]], dim=0)  # [7, M, 3]
        values = self.sdf(pts.reshape(-1, 3)).view(7, -1)
        grad = (values[1:4] - values[4:7]).T / (2.0 * h)
        return values[0][:, None], grad
