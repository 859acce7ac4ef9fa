"""Pose polish: a few Levenberg-Marquardt steps per camera against the current, frozen surface.

Why: a camera misplaced *along its orbit* (turned about the object rather than about its own centre) changes its
residuals only slowly. On a converged calibrated pmni-fast bunny (one view, quarter resolution), the normal loss
rises by about 17 % when the camera turns 0.5 degrees about the object, and by 4500 % when it turns 0.5 degrees about
its own centre (issue 4's notes). The curvature ratio is a few hundred. With ~50 rays per camera in a batch, Adam's
noisy per-step gradients leave the orbit error at degrees after a short run.

A Gauss-Newton step sees the curvature. For one camera, with the surface held fixed, it renders a fixed set of that
camera's pixels at the current pose and at twelve central-difference offsets of its left se(3) correction, then
solves the damped 6x6 normal equations (Levenberg-Marquardt). The residuals are those of the training losses:
rendered minus target normals on foreground pixels (the target turns with the pose, as in training), and
``mask_weight`` times accumulation minus mask. Rendering is deterministic (eval mode), so sampling noise does not
swamp the finite differences. The offsets are large (0.6 degrees). Silhouettes and creases are sharp at pixel
scale, so the derivative at a point is a sum of steps; only a secant over a few tenths of a pixel follows the
smooth trend. On the rounded box of the tests, an offset of 1e-3 sends Gauss-Newton from 3 degrees to 10, while
1e-2 brings it to 0.24.

Limits, as measured: the polish fixes cameras that disagree with the surface, but not the surface's own error. On
a pose-free bunny trained from 5 degrees of noise, the surface had absorbed much of the pose error. One polish
(19 cameras, 1024 pixels each, 4 iterations) took 255 s on 2 cores and moved the mean error from 1.71 to 1.54
degrees; the worst camera went from 2.88 to 1.10. Off by default (``at`` empty). A frozen camera never moves,
since it fixes the gauge; under the mean gauge the common part of the solved steps is dropped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Tuple, Type

import torch
from torch import Tensor

from pmni_method.cameras_torch import transform_rays
from pmni_method.data.raystore import RayStore
from pmni_method.models.pose_model import PoseModel, se3_matrices
from pmni_method.poses.maths import rotation_errors_deg

# (origins [N, 3], directions [N, 3], directions_norm [N, 1]) -> (normal [N, 3], accumulation [N, 1]), no grad.
RenderFn = Callable[[Tensor, Tensor, Tensor], Tuple[Tensor, Tensor]]


@dataclass
class PosePolishConfig:
    """Levenberg-Marquardt polish of every free camera's pose against the current surface, at a few run fractions."""

    _target: Type = field(default_factory=lambda: PosePolisher)
    """Target class to instantiate."""
    at: Tuple[float, ...] = ()
    """Fractions of the run after which every free camera is polished, e.g. 0.95 (empty: never, the default)."""
    pixels_per_view: int = 2048
    """Pixels of each view in its residual (fixed per polish)."""
    foreground_fraction: float = 0.75
    """Fraction of those pixels drawn inside the mask; the rest anywhere in the image (silhouette evidence)."""
    iterations: int = 6
    """Levenberg-Marquardt iterations per camera and polish (fewer when a step no longer lowers the residual)."""
    mask_weight: float = 0.3
    """Weight of the silhouette residual (accumulation - mask) against the normal residual (per component)."""
    fd_step: float = 1e-2
    """Central-difference step in the refiner's se(3) coordinates (radians; translation in units of its
    translation_unit)."""
    initial_damping: float = 1e-3
    """Levenberg-Marquardt damping at the first iteration (relative to the diagonal of J^T J)."""
    max_step_deg: float = 3.0
    """A step whose rotation exceeds this is damped further (the linearisation only holds near the pose)."""
    chunk: int = 8192
    """Rays per render call."""

    def setup(self, **kwargs) -> "PosePolisher":
        return self._target(self, **kwargs)


class PosePolisher:
    """Polishes a :class:`PoseModel`'s corrections in place, on pixels of the training ray store."""

    def __init__(self, config: PosePolishConfig, total_steps: int) -> None:
        self.config = config
        # A step ends the fraction ``f`` of the run when step + 1 == round(f * total); the polish follows it.
        self.steps = sorted({max(int(round(f * total_steps)) - 1, 0) for f in config.at if 0.0 < f <= 1.0})
        self.history: List[Dict[str, float]] = []
        """Statistics of every polish so far (this process)."""

    def due(self, step: int) -> bool:
        """Whether a polish follows training step ``step``."""
        return step in self.steps

    def _pixels(self, store: RayStore, view: int, generator: torch.Generator) -> Tensor:
        cfg = self.config
        hw = store.height * store.width
        mask = store.fg_mask[view * hw : (view + 1) * hw]
        fg = torch.nonzero(mask).squeeze(-1)
        num_fg = min(int(round(cfg.pixels_per_view * cfg.foreground_fraction)), len(fg)) if len(fg) else 0
        picked_fg = fg[torch.randint(len(fg), (num_fg,), generator=generator)] if num_fg else fg[:0]
        rest = torch.randint(hw, (cfg.pixels_per_view - num_fg,), generator=generator)
        return view * hw + torch.cat([picked_fg, rest])

    def _residuals(self, rays: Dict[str, Tensor], L: Tensor, render: RenderFn) -> Tensor:
        Ls = L.expand(rays["origins"].shape[0], 4, 4)
        origins, directions = transform_rays(Ls, rays["origins"], rays["directions"])
        target = PoseModel.rotate_targets(Ls[:, :3, :3], rays["normal"])
        normals, accs = [], []
        for s in range(0, origins.shape[0], self.config.chunk):
            e = s + self.config.chunk
            n, a = render(origins[s:e], directions[s:e], rays["directions_norm"][s:e])
            normals.append(n)
            accs.append(a)
        normal, acc = torch.cat(normals), torch.cat(accs)
        fg = rays["fg_mask"]
        return torch.cat([((normal - target) * fg).reshape(-1), self.config.mask_weight * (acc - fg).reshape(-1)])

    @torch.no_grad()
    def polish(self, refiner: PoseModel, render: RenderFn, store: RayStore, seed: int = 0) -> Dict[str, float]:
        """Polish every free camera of ``refiner`` in place, on pixels of ``store`` (the training views, in the
        refiner's camera order); returns summary statistics.

        ``render`` must be deterministic (the model in eval mode). The pixel draw is seeded with ``seed`` so that a
        resumed run repeats it exactly.
        """
        cfg = self.config
        device = refiner.xi.device
        generator = torch.Generator().manual_seed(int(seed))
        before, after, moved = 0.0, 0.0, []
        # Every camera is solved against the poses the polish started from, then all are set at once: under the mean
        # gauge, setting one camera moves the rig's mean and with it every other camera.
        solved: List[Tuple[int, Tensor]] = []
        for view in range(refiner.num_cameras):
            if float(refiner.free[view]) == 0.0:
                continue
            rays = {k: v.to(device) for k, v in store.rays_for(self._pixels(store, view, generator)).items()}
            L0 = refiner.left_transforms(torch.tensor([view], device=device))[0].float()
            L_start = L0.clone()
            r0 = self._residuals(rays, L0, render)
            f0 = float((r0**2).sum())
            before += f0
            damping = cfg.initial_damping
            for _ in range(cfg.iterations):
                h = cfg.fd_step * torch.eye(6, device=device)
                J = torch.stack(
                    [
                        (
                            self._residuals(rays, _left_step(refiner, h[k], L0), render)
                            - self._residuals(rays, _left_step(refiner, -h[k], L0), render)
                        )
                        / (2.0 * cfg.fd_step)
                        for k in range(6)
                    ],
                    dim=1,
                ).double()
                JtJ, g = J.T @ J, J.T @ r0.double()
                diag = torch.diag(JtJ).clamp(min=1e-12)
                accepted, converged = False, False
                while damping < 1e6:
                    delta = -torch.linalg.solve(JtJ + damping * torch.diag(diag), g)
                    if math.degrees(float(delta[3:].norm())) > cfg.max_step_deg:
                        damping *= 4.0
                        continue
                    L1 = _left_step(refiner, delta.float().to(device), L0)
                    r1 = self._residuals(rays, L1, render)
                    f1 = float((r1**2).sum())
                    if f1 < f0:
                        converged = f1 > (1.0 - 1e-3) * f0
                        L0, r0, f0 = L1, r1, f1
                        damping = max(damping / 3.0, 1e-7)
                        accepted = True
                        break
                    damping *= 4.0
                if not accepted or converged:
                    break
            solved.append((view, L0))
            after += f0
            turned = rotation_errors_deg(L0[:3, :3].double().cpu().numpy(), L_start[:3, :3].double().cpu().numpy())
            moved.append(float(turned))
        refiner.set_left_transforms([v for v, _ in solved], [L for _, L in solved])
        stats = {
            "cameras": float(len(moved)),
            "residual_before": before,
            "residual_after": after,
            "rotation_change_deg_mean": float(sum(moved) / max(len(moved), 1)),
            "rotation_change_deg_max": float(max(moved, default=0.0)),
        }
        self.history.append(stats)
        return stats


def _left_step(refiner: PoseModel, dx: Tensor, L: Tensor) -> Tensor:
    """``Exp(S dx) @ L``: a step ``dx`` in the refiner's scaled se(3) coordinates, applied on the left like its
    corrections."""
    return se3_matrices(dx * refiner.xi_scale.to(dx.device)) @ L
