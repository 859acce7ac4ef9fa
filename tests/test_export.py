"""Tests of pmni_method.export (SDF -> mesh) and the pmni-export CLI, on analytic SDFs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import trimesh

import pmni_method.scripts.export as export_cli
from pmni_method.cameras import Normalisation
from pmni_method.export import (
    MeshExtractionError,
    evaluate_sdf_grid,
    evaluate_sdf_near_surface,
    extract_mesh,
    volume_to_mesh,
    write_mesh_atomic,
)

REPO = Path(__file__).resolve().parents[1]

RADIUS = 0.6
RES = 48
VOXEL = 2.0 / (RES - 1)


def sphere_sdf(x: torch.Tensor, centre=(0.0, 0.0, 0.0), radius: float = RADIUS) -> torch.Tensor:
    return (x - torch.tensor(centre, dtype=x.dtype, device=x.device)).norm(dim=-1) - radius


def two_blobs_sdf(x: torch.Tensor) -> torch.Tensor:
    # A big sphere and a small far-away floater, as an SDF network often leaves behind.
    return torch.minimum(sphere_sdf(x), sphere_sdf(x, centre=(0.75, 0.75, 0.75), radius=0.15))


SCALE_MAT = np.array(
    [[250.0, 0.0, 0.0, 10.0], [0.0, 250.0, 0.0, -40.0], [0.0, 0.0, 250.0, 700.0], [0.0, 0.0, 0.0, 1.0]]
)


class SphereField(torch.nn.Module):
    """Stand-in for the model's field: ``forward_geonetwork`` returns (M, 1 + features) with the SDF first."""

    def __init__(self, sdf=sphere_sdf):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.sdf = sdf
        self.calls = 0

    def forward_geonetwork(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        assert not torch.is_grad_enabled()
        sdf = self.sdf(x) + 0.0 * self.dummy
        return torch.cat([sdf[:, None], torch.zeros(len(x), 4, device=x.device)], dim=-1)


def test_sphere_radius_and_outward_normals_in_normalised_units():
    mesh = extract_mesh(sphere_sdf, resolution=RES)
    r = np.linalg.norm(mesh.vertices, axis=1)
    assert np.abs(r - RADIUS).max() < VOXEL
    assert mesh.is_watertight and mesh.volume > 0
    outward = np.einsum("ij,ij->i", mesh.face_normals, mesh.triangles_center)
    assert (outward > 0).all()


def test_world_units_through_scale_mat():
    mesh = extract_mesh(sphere_sdf, resolution=RES, normalisation=Normalisation(SCALE_MAT))
    norm = Normalisation(SCALE_MAT)
    centre = norm.offset
    r = np.linalg.norm(mesh.vertices - centre, axis=1)
    assert np.abs(r - RADIUS * norm.scale).max() < VOXEL * norm.scale
    outward = np.einsum("ij,ij->i", mesh.face_normals, mesh.triangles_center - centre)
    assert (outward > 0).all() and mesh.volume > 0


def test_largest_component_drops_floater():
    kept = extract_mesh(two_blobs_sdf, resolution=RES)
    assert len(kept.split(only_watertight=False)) == 1
    assert np.abs(np.linalg.norm(kept.vertices, axis=1) - RADIUS).max() < VOXEL
    both = extract_mesh(two_blobs_sdf, resolution=RES, keep_largest=False)
    assert len(both.split(only_watertight=False)) == 2


def test_chunking_and_progress():
    field = SphereField()
    calls = []
    whole = evaluate_sdf_grid(lambda x: field.forward_geonetwork(x)[:, 0], resolution=16, chunk=16**3)
    chunked = evaluate_sdf_grid(
        lambda x: field.forward_geonetwork(x)[:, 0], resolution=16, chunk=1000, progress=lambda d, t: calls.append((d, t))
    )
    np.testing.assert_array_equal(whole, chunked)
    assert calls[-1] == (5, 5) and len(calls) == 5
    # volume[i, j, k] is the SDF at (x_i, y_j, z_k).
    axis = np.linspace(-1, 1, 16)
    assert whole[3, 7, 12] == pytest.approx(np.linalg.norm([axis[3], axis[7], axis[12]]) - RADIUS, abs=1e-6)


def bumpy_blobs_sdf(x: torch.Tensor, steepness: float = 1.0) -> torch.Tensor:
    # Detail at a few voxels' scale, a small floater far from the main surface, and a spike thinner than a cell of
    # the coarsest grid, which no coarse corner lies inside (a sign-change test alone misses parts of it).
    wrinkles = 0.04 * torch.sin(14 * x[:, 0]) * torch.sin(11 * x[:, 1]) * torch.cos(9 * x[:, 2])
    spike = torch.maximum(torch.hypot(x[:, 0] - 0.013, x[:, 1] + 0.011) - 0.012, x[:, 2].abs() - 0.9)
    return steepness * torch.minimum(two_blobs_sdf(x) + wrinkles, spike)


@pytest.mark.parametrize("resolution, steepness", [(129, 1.0), (200, 1.0), (160, 3.0)])
def test_sparse_grid_gives_the_dense_mesh_from_a_fraction_of_the_queries(resolution: int, steepness: float):
    queried = [0]

    def sdf(x: torch.Tensor) -> torch.Tensor:
        queried[0] += len(x)
        return bumpy_blobs_sdf(x, steepness)

    calls = []
    dense = evaluate_sdf_grid(sdf, resolution=resolution)
    queried[0] = 0
    sparse = evaluate_sdf_near_surface(
        sdf, resolution=resolution, coarsest=32, chunk=50_000, progress=lambda d, t: calls.append((d, t))
    )
    assert queried[0] < 0.45 * resolution**3
    assert calls[-1][0] == calls[-1][1] and [d for d, _ in calls] == list(range(1, len(calls) + 1))
    a, b = volume_to_mesh(dense, keep_largest=False), volume_to_mesh(sparse, keep_largest=False)
    assert len(a.split(only_watertight=False)) == 2  # the floater is found too
    np.testing.assert_array_equal(a.vertices, b.vertices)
    np.testing.assert_array_equal(a.faces, b.faces)
    # Away from the surface the grid keeps the SDF's sign.
    far = np.abs(dense) > 0.2 * steepness
    assert (np.sign(dense[far]) == np.sign(sparse[far])).all()


def test_sparse_grid_of_a_wrinkled_hash_grid_field_matches_the_dense_one():
    torch.manual_seed(0)
    from pmni_method.fields.sdf_field import SDFField, SDFFieldConfig

    field = SDFField(SDFFieldConfig(num_levels=6, features_per_level=2, log2_hashmap_size=12, base_resolution=8,
                                    per_level_scale=1.5, hash_init_scale=0.05, sphere_init_radius=0.5))
    sdf = lambda x: field.sdf(x)[:, 0]  # noqa: E731
    dense = volume_to_mesh(evaluate_sdf_grid(sdf, resolution=97))
    sparse = volume_to_mesh(evaluate_sdf_near_surface(sdf, resolution=97, coarsest=24))
    assert len(dense.faces) == len(sparse.faces) > 1000
    # Different batch sizes may round the MLP's sums differently: equal to float32 precision, not bitwise.
    np.testing.assert_allclose(dense.vertices, sparse.vertices, atol=1e-5)


def test_no_surface_raises():
    with pytest.raises(MeshExtractionError, match="no zero crossing"):
        extract_mesh(lambda x: x.norm(dim=-1) + 1.0, resolution=8)
    with pytest.raises(MeshExtractionError, match="NaN"):
        extract_mesh(lambda x: torch.full((len(x),), float("nan")), resolution=8)


def test_write_is_atomic(tmp_path, monkeypatch):
    mesh = trimesh.creation.icosphere(subdivisions=1)
    out = write_mesh_atomic(mesh, tmp_path / "mesh.ply")
    assert len(trimesh.load(out).faces) == len(mesh.faces)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(trimesh.Trimesh, "export", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_mesh_atomic(mesh, tmp_path / "other.ply")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mesh.ply"]


# --------------------------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------------------------


def _fake_pipeline(field: SphereField, scale_mat) -> SimpleNamespace:
    # The names pmni-export relies on: model.field.forward_geonetwork, normalisation(),
    # datamanager.train_dataparser_outputs.metadata.
    return SimpleNamespace(
        model=SimpleNamespace(field=field),
        normalisation=lambda: Normalisation(np.asarray(scale_mat, dtype=np.float64)),
        datamanager=SimpleNamespace(train_dataparser_outputs=SimpleNamespace(metadata={})),
        device=torch.device("cpu"),
    )


def _fake_source(path: Path, step: int = 99, total: int = 100, finished: bool = True) -> export_cli.RunSource:
    return export_cli.RunSource(str(path), str(path.parent / f"step-{step:09d}.ckpt"), step, total, finished)


def _fake_loader(field: SphereField, scale_mat, **source):
    """Stand-in for ``load_pipeline``: the fake pipeline and the source of a (finished, by default) run."""
    return lambda path: (_fake_pipeline(field, scale_mat), _fake_source(path, **source))


def test_cli_exports_world_mesh(tmp_path, monkeypatch, capsys):
    field = SphereField(two_blobs_sdf)
    monkeypatch.setattr(export_cli, "load_pipeline", _fake_loader(field, torch.tensor(SCALE_MAT)))
    out = tmp_path / "mesh.ply"
    code = export_cli.main(export_cli.ExportConfig(load_config=tmp_path / "config.yml", output=out, resolution=RES))
    assert code == 0 and field.calls > 0
    mesh = trimesh.load(out)
    norm = Normalisation(SCALE_MAT)
    r = np.linalg.norm(mesh.vertices - norm.offset, axis=1)
    assert np.abs(r - RADIUS * norm.scale).max() < VOXEL * norm.scale
    printed = capsys.readouterr().out
    assert str(out) in printed.replace("\n", "") and "bbox (world units)" in printed
    assert [p.name for p in tmp_path.iterdir()] == ["mesh.ply"]


def test_cli_bad_inputs(tmp_path, monkeypatch, capsys):
    code = export_cli.main(export_cli.ExportConfig(load_config=tmp_path / "missing.yml", output=tmp_path / "m.ply"))
    err = capsys.readouterr().err
    assert code == 2 and "missing.yml" in err and err.count("\n") == 1

    code = export_cli.main(export_cli.ExportConfig(load_config=tmp_path / "c.yml", output=tmp_path / "m.xyz"))
    err = capsys.readouterr().err
    assert code == 2 and "m.xyz" in err and err.count("\n") == 1

    # A field whose SDF never crosses zero (e.g. a diverged run): one line, nothing written.
    monkeypatch.setattr(export_cli, "load_pipeline", _fake_loader(SphereField(lambda x: x.norm(dim=-1) + 1), SCALE_MAT))
    code = export_cli.main(export_cli.ExportConfig(load_config=tmp_path / "c.yml", output=tmp_path / "m.ply", resolution=8))
    err = capsys.readouterr().err
    assert code == 2 and "zero crossing" in err and err.count("\n") == 1
    assert not list(tmp_path.iterdir())


def test_cli_garbage_config_subprocess(tmp_path):
    config = tmp_path / "config.yml"
    config.write_text("this: [is not\n a trainer config")
    out = tmp_path / "mesh.ply"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "pmni_method.scripts.export", "--load-config", str(config), "--output", str(out)],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "config.yml" in lines[0] and "Traceback" not in proc.stderr
    assert not out.exists()


def test_device_follows_the_module_of_a_bound_method():
    from pmni_method.export import _infer_device

    field = SphereField()
    assert _infer_device(field.forward_geonetwork) == field.dummy.device
    assert _infer_device(lambda x: x) == torch.device("cpu")


# --------------------------------------------------------------------------------------------------------------------
# Destinations checked first; mesh and poses published together; provenance
# --------------------------------------------------------------------------------------------------------------------


def _posed_pipeline(field: SphereField) -> SimpleNamespace:
    """A fake pipeline that also has training poses (two views), so that pmni-export writes a poses file."""
    pipeline = _fake_pipeline(field, SCALE_MAT)
    c2w = np.tile(np.eye(4), (2, 1, 1))
    c2w[:, 2, 3] = [-3.0, -4.0]
    pipeline.datamanager.train_dataparser_outputs.metadata.update(
        pmni_data=SimpleNamespace(c2w=c2w), view_ids=[0, 3]
    )
    return pipeline


def _never_loaded(path):
    raise AssertionError("the pipeline was loaded before the destinations were checked")


@pytest.mark.parametrize("which", ["mesh", "poses"])
def test_cli_checks_both_destinations_before_loading(tmp_path, monkeypatch, capsys, which):
    # A path below a regular file can never be created, even by root (chmod-based read-only folders do not stop root).
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    good = tmp_path / "out" / "mesh.ply"
    bad = blocker / "sub" / ("mesh.ply" if which == "mesh" else "mesh.poses.json")
    monkeypatch.setattr(export_cli, "load_pipeline", _never_loaded)
    config = export_cli.ExportConfig(
        load_config=tmp_path / "config.yml",
        output=bad if which == "mesh" else good,
        poses_output=None if which == "mesh" else bad,
    )
    code = export_cli.main(config)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"pmni-export: error: {bad}: cannot write {which} (") and str(blocker) in err
    # Nothing left behind: no probe file, and the folder created for the good destination is gone again.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not-a-folder"]


def test_cli_refuses_folder_destinations_before_loading(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(export_cli, "load_pipeline", _never_loaded)
    (tmp_path / "mesh.poses.json").mkdir()
    code = export_cli.main(export_cli.ExportConfig(load_config=tmp_path / "c.yml", output=tmp_path / "mesh.ply"))
    err = capsys.readouterr().err
    poses = tmp_path / "mesh.poses.json"
    assert code == 2 and err == f"pmni-export: error: {poses}: poses output is a folder, expected a file path\n"


def _fail_replace_onto(monkeypatch, name: str, error: BaseException) -> list:
    """Make ``os.replace`` fail when it would put a file at a path named ``name``; returns the calls made."""
    real = os.replace
    calls = []

    def replace(src, dst, *args, **kwargs):
        calls.append(Path(dst).name)
        if Path(dst).name == name:
            raise error
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    return calls


def test_cli_writes_both_files_or_neither(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(export_cli, "load_pipeline", lambda path: (_posed_pipeline(SphereField()), _fake_source(path)))
    config = export_cli.ExportConfig(load_config=tmp_path / "config.yml", output=tmp_path / "mesh.ply", resolution=16)
    calls = _fail_replace_onto(monkeypatch, "mesh.poses.json", PermissionError(13, "Permission denied"))
    code = export_cli.main(config)
    err = capsys.readouterr().err
    assert "mesh.ply" in calls  # the mesh was in place for a moment, and was rolled back
    assert code == 2 and err == (
        f"pmni-export: error: {tmp_path / 'mesh.poses.json'}: cannot write poses (Permission denied); "
        f"{tmp_path / 'mesh.ply'} left as it was\n"
    )
    assert list(tmp_path.iterdir()) == []  # no mesh, no temporary or backup files


@pytest.mark.parametrize("fault", [PermissionError(13, "Permission denied"), KeyboardInterrupt()])
def test_a_failed_re_export_keeps_the_earlier_export(tmp_path, monkeypatch, capsys, fault):
    monkeypatch.setattr(export_cli, "load_pipeline", lambda path: (_posed_pipeline(SphereField()), _fake_source(path)))
    config = export_cli.ExportConfig(load_config=tmp_path / "config.yml", output=tmp_path / "mesh.ply", resolution=16)
    assert export_cli.main(config) == 0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert sorted(before) == ["mesh.ply", "mesh.poses.json"]

    # The second export meshes a different surface; its poses file cannot be put in place.
    monkeypatch.setattr(
        export_cli, "load_pipeline",
        lambda path: (_posed_pipeline(SphereField(two_blobs_sdf)), _fake_source(path, step=49, finished=False)),
    )
    config.keep_largest = False
    _fail_replace_onto(monkeypatch, "mesh.poses.json", fault)
    if isinstance(fault, KeyboardInterrupt):
        with pytest.raises(KeyboardInterrupt):
            export_cli.main(config)
    else:
        assert export_cli.main(config) == 2
        assert capsys.readouterr().err.count("\n") == 1
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_file_group_publishes_together_and_restores_on_failure(tmp_path, monkeypatch):
    from pmni_method.atomic import FileGroup, PublishError

    a, b, c = tmp_path / "a.txt", tmp_path / "b.txt", tmp_path / "c.txt"
    a.write_text("old a")
    c.write_text("old c")
    _fail_replace_onto(monkeypatch, "c.txt", OSError(28, "No space left on device"))
    with pytest.raises(PublishError) as info, FileGroup() as group:
        for path in (a, b, c):
            group.stage(path, f"new {path.stem}".encode())
        group.publish()
    assert info.value.target == c and info.value.cause.errno == 28 and not info.value.unrestored
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "c.txt"]
    assert a.read_text() == "old a" and c.read_text() == "old c"

    monkeypatch.undo()
    with FileGroup() as group:
        for path in (a, b, c):
            group.stage(path, f"new {path.stem}".encode())
        group.publish()
    assert [p.read_text() for p in (a, b, c)] == ["new a", "new b", "new c"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt", "c.txt"]


@pytest.mark.parametrize("suffix", [".ply", ".obj"])
def test_cli_records_the_checkpoint_in_mesh_and_poses(tmp_path, monkeypatch, capsys, suffix):
    from pmni_method.export import read_mesh_source
    from pmni_method.poses.files import read_poses_file

    monkeypatch.setattr(
        export_cli, "load_pipeline",
        lambda path: (_posed_pipeline(SphereField()), _fake_source(path, step=449, total=900, finished=False)),
    )
    out = tmp_path / f"mesh{suffix}"
    code = export_cli.main(export_cli.ExportConfig(load_config=tmp_path / "config.yml", output=out, resolution=16))
    printed = capsys.readouterr().out
    assert code == 0
    assert "note: run did not finish: meshing checkpoint step 449 of 900\n" in printed
    expected = {
        "run": str(tmp_path / "config.yml"), "checkpoint": str(tmp_path / "step-000000449.ckpt"), "step": 449,
        "max_num_iterations": 900, "finished": False, "units": "world",
    }
    assert read_mesh_source(out) == expected
    # The record is a comment: trimesh reads the same mesh as without it.
    plain = tmp_path / f"plain{suffix}"
    monkeypatch.setattr(export_cli, "load_pipeline", lambda path: (_posed_pipeline(SphereField()), _fake_source(path)))
    assert export_cli.main(export_cli.ExportConfig(load_config=tmp_path / "c.yml", output=plain, resolution=16)) == 0
    assert "did not finish" not in capsys.readouterr().out
    np.testing.assert_array_equal(trimesh.load(out).vertices, trimesh.load(plain).vertices)
    assert read_mesh_source(plain)["finished"] is True

    entries = json.loads((tmp_path / "mesh.poses.json").read_text())
    assert [e["source"] for e in entries] == [expected, expected]
    ids, c2w = read_poses_file(tmp_path / "mesh.poses.json")  # the pose reader still takes the file
    assert ids == [0, 3] and c2w.shape == (2, 4, 4)


def test_formats_without_comments_say_where_the_source_went(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(export_cli, "load_pipeline", lambda path: (_posed_pipeline(SphereField()), _fake_source(path)))
    config = export_cli.ExportConfig(load_config=tmp_path / "c.yml", output=tmp_path / "m.stl", resolution=16)
    code = export_cli.main(config)
    assert code == 0 and "recorded only in the poses file" in capsys.readouterr().out
    assert json.loads((tmp_path / "m.poses.json").read_text())[0]["source"]["step"] == 99


def test_checkpoint_source_reads_the_run_state(tmp_path):
    cases = {
        "new-finished": ({"step": 4, "pmni_run": {"finished": True, "max_num_iterations": 5}}, 5, True, 5),
        # A run that stopped early (diverged, Ctrl-C) saves its last step with finished False.
        "new-interrupted": ({"step": 4, "pmni_run": {"finished": False, "max_num_iterations": 9}}, 5, False, 9),
        # Older checkpoints have only the step: finished when it is the last one of the config's run length.
        "old-last": ({"step": 4}, 5, True, 5),
        "old-early": ({"step": 2, "pipeline": {"w": torch.zeros(2)}}, 5, False, 5),
    }
    for name, (state, planned, finished, total) in cases.items():
        path = tmp_path / f"{name}.ckpt"
        torch.save(state, path)
        source = export_cli.checkpoint_source(path, tmp_path / "config.yml", planned)
        assert (source.finished, source.max_num_iterations, source.step) == (finished, total, state["step"]), name
        assert source.checkpoint == str(path) and source.run == str(tmp_path / "config.yml")


def test_mesh_source_of_foreign_files_is_none(tmp_path):
    from pmni_method.export import read_mesh_source

    mesh = trimesh.creation.icosphere(subdivisions=1)
    for name in ("a.ply", "a.obj", "a.off"):
        mesh.export(tmp_path / name)
        assert read_mesh_source(tmp_path / name) is None
    (tmp_path / "bad.ply").write_bytes(b"ply\nformat ascii 1.0\ncomment pmni-source {not json\nend_header\n")
    assert read_mesh_source(tmp_path / "bad.ply") is None
    assert read_mesh_source(tmp_path / "missing.ply") is None


@pytest.fixture(scope="module")
def trained_run(sphere_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A completed two-iteration pmni-fast run on the sphere (its config.yml)."""
    from pmni_method import runner

    from helpers import tiny_config

    return runner.train(tiny_config(sphere_dir, tmp_path_factory.mktemp("run"), iterations=2)).config_path


def test_export_of_a_real_run_records_its_checkpoint(trained_run: Path, tmp_path: Path, capsys):
    from pmni_method.export import read_mesh_source

    (checkpoint,) = (trained_run.parent / "nerfstudio_models").glob("step-*.ckpt")
    out = tmp_path / "mesh.ply"
    assert export_cli.main(export_cli.ExportConfig(load_config=trained_run, output=out, resolution=16)) == 0
    assert "did not finish" not in capsys.readouterr().out
    expected = {
        "run": str(trained_run), "checkpoint": str(checkpoint), "step": 1, "max_num_iterations": 2, "finished": True,
        "units": "world",
    }
    assert read_mesh_source(out) == expected
    assert all(e["source"] == expected for e in json.loads((tmp_path / "mesh.poses.json").read_text()))
    # A calibrated run's poses as nerfstudio transforms.json too: world units, full-resolution intrinsics.
    transforms = json.loads((tmp_path / "mesh.transforms.json").read_text())
    assert transforms["pmni"]["units"] == "world" and not transforms["pmni"]["refined"]
    assert len(transforms["frames"]) == 8 and transforms["frames"][0]["w"] == 64

    # The same run, had it been stopped at that step (the trainer marks such a checkpoint unfinished).
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state["pmni_run"] = {"finished": False, "max_num_iterations": 10}
    torch.save(state, checkpoint)
    assert export_cli.main(export_cli.ExportConfig(load_config=trained_run, output=out, resolution=16)) == 0
    assert "note: run did not finish: meshing checkpoint step 1 of 10\n" in capsys.readouterr().out
    assert read_mesh_source(out)["finished"] is False
