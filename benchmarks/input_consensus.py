"""How far averaging the input normal maps across views could get, with no reconstruction at all.

For every pixel of every view inside the true mask, the true mesh gives the surface point seen there; every view
that sees that point (in front of its camera, inside its stored mask, not occluded by the true mesh) contributes
its stored normal at the point's pixel. The (optionally grazing-weighted) mean of those normals is compared with
the true normal. Errors that differ from view to view average out; errors shared by the views that see a point do
not, and no multi-view reconstruction removes them by fusion alone. Prints the input maps' own error beside it.

    python benchmarks/input_consensus.py --data DIR [--downscale-factor 4] [--grazing-cos 0.5]
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Tuple

import numpy as np
import tyro
from rich.console import Console

from pmni_method.cameras import pixel_rays, project_points
from pmni_method.data.diligent_mv import load_diligent_mv
from pmni_method.data.layout import GT_MESH_FILE
from pmni_method.evaluation import load_mesh, reference_maps
from pmni_method.raycast import cast_first_hits, make_intersector


@dataclass
class ConsensusConfig:
    """Multi-view average of the stored normal maps against the truth."""

    data: Path
    """Dataset folder with mesh_Gt.ply (and, for input errors, the true maps pmni-synth keeps)."""
    downscale_factor: int = 4
    """Image downscale factor, as in training."""
    grazing_cos: Tuple[float, ...] = (0.0, 0.5)
    """Grazing confidence thresholds to report (weight min(1, cos / g) per view; 0: plain mean)."""
    occlusion_tolerance: float = 0.005
    """A point counts as seen by a view when its distance from the camera is within this fraction of the true
    mesh's bounding-box diagonal of that view's first hit."""


def main(config: ConsensusConfig) -> None:
    console = Console()
    data = load_diligent_mv(config.data, downscale_factor=config.downscale_factor, load_depth=False, data_checks="off")
    ref = reference_maps(config.data, data, config.downscale_factor)
    norm = data.normalisation
    c2w = norm.c2w_to_world(data.gt_c2w if data.gt_c2w is not None else data.c2w)
    stored = norm.normals_to_world(np.asarray(data.normals, dtype=np.float64))
    stored_masks = np.asarray(data.masks, dtype=bool)
    mesh = load_mesh(config.data / GT_MESH_FILE)
    diag = float(np.linalg.norm(mesh.bounds[1] - mesh.bounds[0]))
    intersector = make_intersector(mesh)
    V, H, W = stored_masks.shape
    # Each view's first-hit distance per pixel: the occlusion test of every other view's points.
    first = np.full((V, H, W), np.nan)
    for v in range(V):
        o, d = pixel_rays(ref.K[v], c2w[v], H, W)
        first[v] = cast_first_hits(mesh, o, d, intersector=intersector).distances.reshape(H, W)
    errors = {g: [] for g in config.grazing_cos}
    for i in range(V):
        rows, cols = np.nonzero(ref.masks[i])
        o, d = pixel_rays(ref.K[i], c2w[i], H, W, np.stack([rows, cols], axis=-1))
        hits = cast_first_hits(mesh, o, d, intersector=intersector)
        pts, true_n = hits.points[hits.hit], ref.normals_world[i][rows[hits.hit], cols[hits.hit]]
        sums = {g: np.zeros_like(pts) for g in config.grazing_cos}
        for j in range(V):
            uv, z = project_points(ref.K[j], c2w[j], pts)
            col, row = np.round(uv[:, 0]).astype(np.int64), np.round(uv[:, 1]).astype(np.int64)
            ok = (z > 0) & (col >= 0) & (col < W) & (row >= 0) & (row < H)
            ok[ok] &= stored_masks[j][row[ok], col[ok]]
            dist = np.linalg.norm(pts - c2w[j][:3, 3], axis=-1)
            ok[ok] &= np.abs(dist[ok] - first[j][row[ok], col[ok]]) < config.occlusion_tolerance * diag
            n = stored[j][row[ok], col[ok]]
            view_dir = (pts[ok] - c2w[j][:3, 3]) / dist[ok, None]
            cos = np.clip(-(n * view_dir).sum(-1), 0.0, 1.0)
            for g in config.grazing_cos:
                w = np.ones_like(cos) if g <= 0 else np.clip(cos / g, 1e-3, 1.0)
                sums[g][ok] += w[:, None] * n
        for g in config.grazing_cos:
            mean = sums[g] / np.maximum(np.linalg.norm(sums[g], axis=-1, keepdims=True), 1e-12)
            seen = np.linalg.norm(sums[g], axis=-1) > 0
            cosang = np.clip((mean[seen] * true_n[seen]).sum(-1), -1.0, 1.0)
            errors[g].append(np.degrees(np.arccos(cosang)))
    inputs = ref.input_error or {}
    console.print(f"[bold]{config.data}[/] at 1/{config.downscale_factor}: {ref.label}")
    console.print(f"  input maps vs truth: mean {inputs.get('normal_mae_deg', float('nan')):.2f} deg")
    for g in config.grazing_cos:
        e = np.concatenate(errors[g])
        label = "plain mean" if g <= 0 else f"grazing-weighted (cos / {g:g})"
        console.print(f"  multi-view average of the inputs, {label}: mean {e.mean():.2f} deg, median {np.median(e):.2f}")


if __name__ == "__main__":
    main(tyro.cli(ConsensusConfig))
