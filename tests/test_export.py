"""Tests of pmni_method.export (SDF -> mesh) and the pmni-export CLI, on analytic SDFs."""

from __future__ import annotations

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
    extract_mesh,
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
    mesh = extract_mesh(sphere_sdf, resolution=RES, scale_mat=SCALE_MAT)
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
    # The names pmni-export relies on: model.field.forward_geonetwork, datamanager.train_dataparser_outputs.metadata.
    return SimpleNamespace(
        model=SimpleNamespace(field=field),
        datamanager=SimpleNamespace(train_dataparser_outputs=SimpleNamespace(metadata={"scale_mat": scale_mat})),
        device=torch.device("cpu"),
    )


def test_cli_exports_world_mesh(tmp_path, monkeypatch, capsys):
    field = SphereField(two_blobs_sdf)
    monkeypatch.setattr(export_cli, "load_pipeline", lambda path: _fake_pipeline(field, torch.tensor(SCALE_MAT)))
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
    monkeypatch.setattr(
        export_cli, "load_pipeline", lambda path: _fake_pipeline(SphereField(lambda x: x.norm(dim=-1) + 1), SCALE_MAT)
    )
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
