"""Shared pytest fixtures: tiny synthetic DiLiGenT-MV datasets rendered once per session with ``pmni-synth``.

Every dataset has exact ground truth (``mesh_Gt.ply``, true cameras, ``synth.json``); see
:mod:`pmni_method.synth` for the layout.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest
import torch
import trimesh

from pmni_method.synth import DILIGENT_FOCAL, SynthConfig, render_dataset

TINY_HEIGHT = 64
# DiLiGenT's focal scaled with the image height keeps DiLiGenT's field of view, and so its weak perspective.
TINY_FOCAL = DILIGENT_FOCAL * TINY_HEIGHT / 512


@pytest.fixture(autouse=True)
def _restore_deterministic_mode():
    """Training entry points switch torch to deterministic kernels on CPU for the whole process; each test gets
    the mode it started with back."""
    before = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(before)


def tiny_config(mesh: Path, output: Path, **overrides) -> SynthConfig:
    """An 8-view 80x64 dataset config (DiLiGenT field of view); ``overrides`` replace any field."""
    options = dict(mesh=mesh, output=output, num_views=8, width=80, height=TINY_HEIGHT, focal=TINY_FOCAL)
    options.update(overrides)
    return SynthConfig(**options)


@pytest.fixture(scope="session")
def make_tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Factory ``(mesh_path, **overrides) -> dataset folder``: a fresh 8-view 80x64 dataset per call."""

    def make(mesh: Path, **overrides) -> Path:
        output = tmp_path_factory.mktemp("synth") / Path(mesh).stem
        return render_dataset(tiny_config(Path(mesh), output, **overrides))

    return make


@pytest.fixture(scope="session")
def shared_meshes() -> Path:
    """Folder of the project's shared test meshes (``stanford-bunny.obj``, ``spot.obj``)."""
    folder = Path(__file__).resolve().parents[1].parent / "shared/data/meshes"
    if not folder.is_dir():
        pytest.skip(f"shared meshes not found at {folder} (the shared/ folder beside the repository is missing)")
    return folder


@pytest.fixture(scope="session")
def bunny_dir(shared_meshes: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Stanford bunny, 8 views, 80x64 px, world units = millimetres (world_scale 1000)."""
    output = tmp_path_factory.mktemp("synth") / "bunny"
    return render_dataset(tiny_config(shared_meshes / "stanford-bunny.obj", output, world_scale=1000.0))


@pytest.fixture(scope="session")
def spot_dir(shared_meshes: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Spot the cow, 8 views, 80x64 px, world_scale 100."""
    output = tmp_path_factory.mktemp("synth") / "spot"
    return render_dataset(tiny_config(shared_meshes / "spot.obj", output, world_scale=100.0))


@pytest.fixture(scope="session")
def sphere_mesh_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A .ply icosphere (subdivision 3) of radius 1 centred at the origin."""
    path = tmp_path_factory.mktemp("meshes") / "sphere.ply"
    trimesh.creation.icosphere(subdivisions=3, radius=1.0).export(path)
    return path


@pytest.fixture(scope="session")
def sphere_dir(sphere_mesh_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The icosphere (radius 1 world unit), 8 views, 64x64 px."""
    output = tmp_path_factory.mktemp("synth") / "sphere"
    return render_dataset(tiny_config(sphere_mesh_path, output, width=64, height=64))
