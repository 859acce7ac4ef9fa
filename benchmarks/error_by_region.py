"""Where a mesh's normal error sits: by distance to the reference mask's boundary and by viewing angle.

Scores the mesh as pmni-eval does (true maps, masks, intrinsics and poses where the dataset keeps them) and splits
the per-pixel angular error into rings by distance to the mask boundary (pixels at the evaluation resolution) and
bands of the true normal's cosine to the camera, beside the training maps' own error on the same rings: a
multi-view fusion should beat its inputs everywhere, and a boundary ring that it does not beat points at the
masks, not at the normals.

Usage::

    python benchmarks/error_by_region.py --data /tmp/bunnyreal --mesh /tmp/runs/R/mesh.ply --downscale-factor 4
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pmni_method.data.diligent_mv import load_diligent_mv  # noqa: E402
from pmni_method.data.raystore import mask_boundary_distance  # noqa: E402
from pmni_method.evaluation import load_mesh, reference_maps  # noqa: E402
from pmni_method.metrics import _angles_deg  # noqa: E402
from pmni_method.raycast import render_normal_maps  # noqa: E402

RINGS = ((0.0, 1.5), (1.5, 2.5), (2.5, 4.5), (4.5, float("inf")))
COSINES = ((-1.0, 0.2), (0.2, 0.4), (0.4, 0.7), (0.7, 1.0))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--mesh", type=Path, required=True, help="a mesh in world units (train_core's mesh.ply)")
    parser.add_argument("--downscale-factor", type=int, default=1)
    args = parser.parse_args(argv)

    data = load_diligent_mv(args.data, downscale_factor=args.downscale_factor, load_depth=False, data_checks="off")
    ref = reference_maps(args.data, data, args.downscale_factor)
    c2w = data.normalisation.c2w_to_world(data.gt_c2w if data.gt_c2w is not None else data.c2w)
    normals, hit = render_normal_maps(load_mesh(args.mesh), ref.K, c2w, data.height, data.width)
    scored = ref.masks & hit
    mesh_err = np.zeros(scored.shape)
    mesh_err[scored] = _angles_deg(normals[scored], ref.normals_world[scored])
    stored = data.normalisation.normals_to_world(np.asarray(data.normals, dtype=np.float64))
    both = ref.masks & np.asarray(data.masks, dtype=bool)
    input_err = np.zeros(both.shape)
    input_err[both] = _angles_deg(stored[both], ref.normals_world[both])
    ring = mask_boundary_distance(ref.masks).numpy()
    # Cosine between the true normal and the camera's viewing axis (OpenCV z forward), not each pixel's own ray:
    # they differ by a few degrees at most at these fields of view.
    facing = -np.einsum("vhwc,vc->vhw", ref.normals_world, c2w[:, :3, 2])

    def rows(values: np.ndarray, bands: Sequence[tuple]) -> list:
        out = []
        for lo, hi in bands:
            sel, sel_in = scored & (values > lo) & (values <= hi), both & (values > lo) & (values <= hi)
            out.append({
                "band": [lo, hi], "pixel_share": float(sel.sum() / max(scored.sum(), 1)),
                "mesh_mae_deg": float(mesh_err[sel].mean()) if sel.any() else None,
                "error_share": float(mesh_err[sel].sum() / max(mesh_err[scored].sum(), 1e-12)),
                "input_mae_deg": float(input_err[sel_in].mean()) if sel_in.any() else None,
            })
        return out

    print(json.dumps({
        "mesh": str(args.mesh), "reference": ref.label, "pixels": int(scored.sum()),
        "mesh_mae_deg": float(mesh_err[scored].mean()), "input_mae_deg": float(input_err[both].mean()),
        "by_boundary_distance_px": rows(ring, RINGS), "by_facing_cosine": rows(facing, COSINES),
    }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
