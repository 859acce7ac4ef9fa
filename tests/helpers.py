"""Reference implementations and glue that only the tests use (kept out of the production modules)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Sequence

import torch
from torch import Tensor

from pmni_method import cameras_torch
from pmni_method.models.rendering import segment_starts


def dense_reference_weights(alpha: Tensor, ray_indices: Tensor, n_rays: int) -> Tensor:
    """Straightforward padded ``cumprod`` version of ``rendering.render_weights``: weights [S] of alphas [S]."""
    starts, counts = segment_starts(ray_indices, n_rays)
    width = int(counts.max().item()) if counts.numel() else 0
    pos = torch.arange(alpha.shape[0], device=alpha.device) - starts[ray_indices]
    padded = alpha.new_zeros(n_rays, max(width, 1))
    padded[ray_indices, pos] = alpha
    trans = torch.cumprod(torch.cat([torch.ones_like(padded[:, :1]), 1.0 - padded[:, :-1]], dim=1), dim=1)
    return (padded * trans)[ray_indices, pos]


def nerfstudio_camera_to_worlds(c2w_cv: Tensor) -> Tensor:
    """OpenCV camera-to-worlds [N, 4, 4] -> nerfstudio's [N, 3, 4] OpenGL-axes form."""
    return cameras_torch.opencv_to_nerfstudio_c2w(c2w_cv)[:, :3, :4]


def evaluate_pipeline(
    pipeline: Any,
    data_dir: Path,
    mesh_path: Path,
    resolution: int = 256,
    threshold: float = 0.5,
    heldout_views: Sequence[int] = (),
) -> Dict[str, Any]:
    """Export a pipeline's current surface to ``mesh_path`` and score it with ``pmni-eval``'s metrics."""
    from pmni_method import runner
    from pmni_method.evaluation import evaluate
    from pmni_method.export import write_mesh_atomic

    write_mesh_atomic(runner.pipeline_mesh(pipeline, resolution), mesh_path)
    return evaluate(mesh_path, data_dir, threshold=threshold, heldout_views=heldout_views)
