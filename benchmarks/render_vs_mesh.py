"""Issue 14 section 3's ratio: a train_core run's exported mesh against what the model renders, on held-out views.

Loads ``RUN/checkpoint.pt`` with the preset it was trained with (plus the same ``--core-set`` overrides), renders
the held-out views and prints the mean angular error of the composited normals and of the SDF gradient at each
ray's first zero crossing, against the loaded normal maps, beside the mesh's held-out MAE from ``RUN/metrics.json``
(pmni-eval's, against the true maps where the dataset has them). On realistic-error data (true maps beside the
stored ones) the same two are also scored against the truth, through the true cameras, as the mesh is:
``*_vs_truth`` and ``mesh_over_rendered_vs_truth``, the like-for-like ratio.

Usage::

    python benchmarks/render_vs_mesh.py --data /tmp/bunny20 --run /tmp/runs/floor2 --downscale-factor 4 \\
        --heldout 2 7 12 17 [--core-set inv_s_floor_factor_end=0]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Dict, Optional, Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pmni_method.train_core import set_fields  # noqa: E402
from pmni_method.data.diligent_mv import load_diligent_mv, split_indices  # noqa: E402
from pmni_method.data.raystore import RayStore  # noqa: E402
from pmni_method.evaluation import true_inputs  # noqa: E402
from pmni_method.models.core import PMNICore, core_config_for, normal_angular_error_deg, surface_normal_errors  # noqa: E402
from pmni_method.models.presets import core_preset  # noqa: E402


def heldout_normal_errors(core: PMNICore, held: RayStore, chunk: int = 4096) -> Dict[str, torch.Tensor]:
    """Per-pixel angular errors (degrees) of every view in ``held``: ``composited`` normals inside the masks,
    ``zero_crossing`` SDF gradients where a ray hits the surface inside them; ``num_samples`` per pixel, and the
    ``inside``/``hit`` pixel counts."""
    composited, surface, samples, inside_count, hit_count = [], [], [], 0, 0
    for view in range(held.num_views):
        for part in held.image_indices(view).split(chunk):
            batch = held.rays_for(part)
            with torch.no_grad():
                out = core.render(batch["origins"], batch["directions"], batch["directions_norm"])
            inside = batch["fg_mask"][:, 0] > 0.5
            composited.append(normal_angular_error_deg(out["normal"][inside], batch["normal"][inside]))
            surface_err, hit = surface_normal_errors(out, batch["normal"], inside)
            surface.append(surface_err)
            samples.append(out["num_samples"][:, 0])
            inside_count, hit_count = inside_count + int(inside.sum()), hit_count + int(hit.sum())
    return {
        "composited": torch.cat(composited), "zero_crossing": torch.cat(surface), "num_samples": torch.cat(samples),
        "inside": torch.tensor(inside_count), "hit": torch.tensor(hit_count),
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--run", type=Path, required=True, help="a train_core output folder")
    parser.add_argument("--preset", default="pmni-fast", choices=["pmni", "pmni-fast"])
    parser.add_argument("--downscale-factor", type=int, default=1)
    parser.add_argument("--heldout", type=int, nargs="+", required=True)
    parser.add_argument("--core-set", action="append", default=[], metavar="FIELD=VALUE")
    parser.add_argument("--chunk", type=int, default=4096)
    args = parser.parse_args(argv)

    data = load_diligent_mv(args.data, downscale_factor=args.downscale_factor)
    train = data.subset(split_indices(data.view_ids, args.heldout, "train"))
    held = RayStore(data.subset(split_indices(data.view_ids, args.heldout, "test")), seed=0)
    # The initial sphere's radius comes from the training views' visual hull, as in train_core.
    config = core_config_for(set_fields(core_preset(args.preset).core, args.core_set, "--core-set"), train, "cpu")
    state = torch.load(args.run / "checkpoint.pt", map_location="cpu", weights_only=False)
    core = PMNICore(config)
    core.load_state_dict(state["core"])
    core.set_step(int(state["step"]))
    core.eval()
    errors = heldout_normal_errors(core, held, args.chunk)
    rendered, zero_crossing = float(errors["composited"].mean()), float(errors["zero_crossing"].mean())
    mesh = json.loads((args.run / "metrics.json").read_text())["evaluation"]["normals"]["heldout"]["mae_deg"]
    report = {
        "run": str(args.run), "step": int(state["step"]), "heldout": args.heldout,
        "rendered_mae_deg": rendered, "zero_crossing_mae_deg": zero_crossing, "mesh_mae_deg": mesh,
        "mesh_over_rendered": mesh / rendered,
    }
    truth = true_inputs(args.data, data, args.downscale_factor)
    if truth is not None:
        true, _ = truth
        if data.gt_c2w is not None:
            true = dataclasses.replace(true, c2w=data.gt_c2w)
        true_held = RayStore(true.subset(split_indices(true.view_ids, args.heldout, "test")), seed=0)
        true_errors = heldout_normal_errors(core, true_held, args.chunk)
        report["rendered_vs_truth_mae_deg"] = float(true_errors["composited"].mean())
        report["zero_crossing_vs_truth_mae_deg"] = float(true_errors["zero_crossing"].mean())
        report["mesh_over_rendered_vs_truth"] = mesh / report["rendered_vs_truth_mae_deg"]
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
