"""pmni-demo end to end on a tiny setting: render, train, export, evaluate; a second demo keeps the first's results."""

from __future__ import annotations

from pathlib import Path

from pmni_method.scripts.demo import DemoConfig, run


def test_demo_twice_keeps_each_runs_mesh_and_metrics(shared_meshes: Path, tmp_path: Path):
    config = DemoConfig(
        mesh=shared_meshes / "spot.obj", output=tmp_path, num_views=6, heldout_views=(2,), downscale_factor=8,
        max_num_iterations=8, resolution=32,
    )
    first = run(config)
    first_run = Path(first["run_config"]).parent
    kept = {name: (first_run / name).read_bytes() for name in ("mesh.ply", "metrics.json")}
    assert first["geometry"]["chamfer"] is not None
    # No mid-run saves, but the final checkpoint that pmni-viewer --load-config reopens.
    assert [c.name for c in (first_run / "nerfstudio_models").glob("*.ckpt")] == ["step-000000007.ckpt"]
    (data_dir,) = (tmp_path / "data").iterdir()
    rendered = (data_dir / "synth.json").stat().st_mtime_ns

    second = run(config)
    second_run = Path(second["run_config"]).parent
    assert second_run != first_run
    assert {name: (first_run / name).read_bytes() for name in kept} == kept
    assert (second_run / "mesh.ply").is_file() and (second_run / "metrics.json").is_file()
    # Same options: the dataset both runs were trained on is reused, not rendered again over the first run's data.
    assert [p.name for p in (tmp_path / "data").iterdir()] == [data_dir.name]
    assert (data_dir / "synth.json").stat().st_mtime_ns == rendered
