"""One-off side-by-side check behind the samples-per-ray report (branch spr): two train_core checkpoints of 300-step
pmni-fast runs on /tmp/core-bench/bunny20 at /4 (views 0 4 8 12 16 held out). Prints held-out composited and
surface (zero-crossing SDF gradient) normal MAE against the quarter-resolution targets, eval samples per ray, and
interleaved train-step times on identical batches (before = grid 64, no pruning, constant floor factor).

Usage: python benchmarks/compare_sampling.py BEFORE/checkpoint.pt AFTER/checkpoint.pt [REPEATS]
"""
import dataclasses, sys, time
from pathlib import Path
import torch
from pmni_method.data.diligent_mv import load_diligent_mv, split_indices
from pmni_method.data.raystore import RayStore
from pmni_method.models.core import PMNICore, core_config_for
from pmni_method.models.presets import core_preset
from pmni_method.models.step import train_step
sys.path.insert(0, str(Path(__file__).resolve().parent))
from render_vs_mesh import heldout_normal_errors  # noqa: E402
torch.set_num_threads(2)
HELD = [0, 4, 8, 12, 16]
data = load_diligent_mv(Path("/tmp/core-bench/bunny20"), downscale_factor=4)
held = RayStore(data.subset(split_indices(data.view_ids, HELD, "test")), seed=0)
train = RayStore(data.subset(split_indices(data.view_ids, HELD, "train")), seed=1)
base = core_config_for(core_preset("pmni-fast").core, data, "cpu")
base = dataclasses.replace(base, loss_schedule=dataclasses.replace(base.loss_schedule, total_steps=300))
old = dict(sampler=dataclasses.replace(base.sampler, grid_resolution=64), prune_alpha=0.0, prune_transmittance=0.0, inv_s_floor_factor_end=0.0)
new = dict(sampler=dataclasses.replace(base.sampler, grid_resolution=128), prune_alpha=1e-3, prune_transmittance=1e-3, inv_s_floor_factor_end=2.0)
runs = {"before": (sys.argv[1], old), "after": (sys.argv[2], new),
        "after_noprune": (sys.argv[2], dict(new, prune_alpha=0.0, prune_transmittance=0.0))}
cores = {}
for name, (path, over) in runs.items():
    ck = torch.load(path, map_location="cpu", weights_only=False)
    c = PMNICore(dataclasses.replace(base, **over)); c.load_state_dict(ck["core"]); c.set_step(int(ck["step"]))
    cores[name] = c.eval()
for name, c in cores.items():
    if name == "after_noprune":
        continue
    t0 = time.perf_counter()
    e = heldout_normal_errors(c, held)
    print(f"{name}: held-out normal_mae_deg={float(e['composited'].mean()):.2f} surface_normal_mae_deg={float(e['zero_crossing'].mean()):.2f}"
          f" hit={int(e['hit'])/int(e['inside']):.3f} eval_spr(all pixels)={float(e['num_samples'].mean()):.2f} inv_s={float(c.inv_s()):.0f} render_s={time.perf_counter()-t0:.1f}", flush=True)
marched = {k: [] for k in cores}; times = {k: [] for k in cores}; sprs = {k: [] for k in cores}
for rep in range(int(sys.argv[3]) if len(sys.argv) > 3 else 8):
    batch = train.sample(1024)
    for name, c in cores.items():
        c.train()
        t0 = time.perf_counter()
        r = train_step(c, batch); sum(r.losses.values()).backward()
        times[name].append(time.perf_counter() - t0); sprs[name].append(float(r.outputs["num_samples"].mean()))
        from pmni_method.models.sampler import sphere_near_far
        nr, fr = sphere_near_far(batch["origins"], batch["directions"])
        marched[name].append(c.grid.march(batch["origins"], batch["directions"], nr, fr, c.step_size(), True)[0].numel() / 1024)
        c.zero_grad(set_to_none=True)
for name in cores:
    t = sorted(times[name][1:]); med = t[len(t) // 2]
    print(f"{name}: train step median {med:.3f}s ({1/med:.2f} it/s) spr={sum(sprs[name])/len(sprs[name]):.2f} marched={sum(marched[name])/len(marched[name]):.2f}", flush=True)
