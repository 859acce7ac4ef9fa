"""Mesh extraction from a signed distance function: dense grid, marching cubes, largest component, world units.

Nothing here imports nerfstudio; ``pmni_method.scripts.export`` wires it to a trained pipeline. torch is imported
where the SDF is evaluated, so that the CLI can reject bad arguments without paying for the import.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Tuple

import mcubes
import numpy as np
import trimesh

from pmni_method.atomic import atomic_write
from pmni_method.cameras import Normalisation

if TYPE_CHECKING:
    import torch

SDFFn = Callable[["torch.Tensor"], "torch.Tensor"]

EXPORT_FORMATS = (".ply", ".obj", ".stl", ".off")


class MeshExtractionError(RuntimeError):
    """The SDF gave no usable surface (no zero crossing inside the grid, or non-finite values)."""


def _infer_device(sdf_fn: SDFFn) -> torch.device:
    import torch

    # A bound method (e.g. ``field.forward_geonetwork``) lives on its module's device; so does a module itself.
    owner = getattr(sdf_fn, "__self__", sdf_fn)
    if isinstance(owner, torch.nn.Module):
        for tensor in itertools.chain(owner.parameters(), owner.buffers()):
            return tensor.device
    return torch.device("cpu")


def evaluate_sdf_grid(
    sdf_fn: SDFFn,
    resolution: int = 256,
    bounds: Tuple[float, float] = (-1.0, 1.0),
    chunk: int = 2**18,
    device: Optional[torch.device | str] = None,
    progress: Optional[Callable[[int, int], None]] = None,
) -> np.ndarray:
    """SDF on a ``resolution``^3 grid of normalised points spanning ``bounds`` per axis, as a float32 (R, R, R) array.

    ``volume[i, j, k]`` is the SDF at ``(x_i, y_j, z_k)`` with ``x_i = lo + i (hi - lo) / (R - 1)``.
    ``progress(done_chunks, total_chunks)`` is called after every chunk. Runs under ``torch.no_grad``.
    """
    import torch

    if resolution < 2:
        raise ValueError(f"resolution must be at least 2, got {resolution}")
    if chunk < 1:
        raise ValueError(f"chunk must be positive, got {chunk}")
    lo, hi = float(bounds[0]), float(bounds[1])
    if not hi > lo:
        raise ValueError(f"bounds must be (low, high) with low < high, got {bounds}")
    device = torch.device(device) if device is not None else _infer_device(sdf_fn)
    axis = torch.linspace(lo, hi, resolution, device=device, dtype=torch.float32)
    total = resolution**3
    out = np.empty(total, dtype=np.float32)
    num_chunks = (total + chunk - 1) // chunk
    with torch.no_grad():
        for c in range(num_chunks):
            start, stop = c * chunk, min((c + 1) * chunk, total)
            # Points are generated per chunk so that a 512^3 grid never sits in memory as (R^3, 3) coordinates.
            flat = torch.arange(start, stop, device=device, dtype=torch.int64)
            i = flat // (resolution * resolution)
            j = (flat // resolution) % resolution
            k = flat % resolution
            sdf = sdf_fn(torch.stack([axis[i], axis[j], axis[k]], dim=-1)).reshape(-1)
            if sdf.shape[0] != stop - start:
                raise ValueError(f"sdf_fn returned {sdf.shape[0]} values for {stop - start} points; expected one each")
            out[start:stop] = sdf.detach().float().cpu().numpy()
            if progress is not None:
                progress(c + 1, num_chunks)
    return out.reshape(resolution, resolution, resolution)


def largest_component(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """The connected component with the largest surface area (floaters from the SDF are dropped)."""
    parts = mesh.split(only_watertight=False)
    if len(parts) <= 1:
        return mesh
    return max(parts, key=lambda m: m.area)


def volume_to_mesh(
    volume: np.ndarray,
    bounds: Tuple[float, float] = (-1.0, 1.0),
    scale_mat: Optional[np.ndarray] = None,
    keep_largest: bool = True,
) -> trimesh.Trimesh:
    """Zero level set of an SDF grid (negative inside) as a mesh with outward normals, in world units via ``scale_mat``."""
    volume = np.asarray(volume)
    if not np.all(np.isfinite(volume)):
        raise MeshExtractionError(f"the SDF has {int((~np.isfinite(volume)).sum())} NaN/Inf values on the grid")
    if not (volume.min() < 0.0 < volume.max()):
        raise MeshExtractionError(
            f"the SDF has no zero crossing on the grid (range {volume.min():.4g} .. {volume.max():.4g})"
        )
    verts, faces = mcubes.marching_cubes(volume, 0.0)
    # PyMCubes orients triangles towards *decreasing* values, i.e. into the SDF's negative interior; reversing the
    # winding gives outward normals.
    faces = np.ascontiguousarray(faces[:, ::-1])
    lo, hi = float(bounds[0]), float(bounds[1])
    resolution = volume.shape[0]
    verts = lo + verts * ((hi - lo) / (resolution - 1))
    if scale_mat is not None:
        norm = Normalisation(np.asarray(scale_mat, dtype=np.float64))
        verts = norm.to_world(verts)
        if np.linalg.det(norm.linear) < 0:
            # A mirroring scale_mat would turn outward normals inward.
            faces = np.ascontiguousarray(faces[:, ::-1])
    # process=True merges the duplicate vertices marching cubes emits on shared cell edges, so split() sees
    # real connectivity.
    mesh = trimesh.Trimesh(vertices=verts, faces=faces, process=True)
    if keep_largest:
        mesh = largest_component(mesh)
    return mesh


def extract_mesh(
    sdf_fn: SDFFn,
    resolution: int = 256,
    bounds: Tuple[float, float] = (-1.0, 1.0),
    chunk: int = 2**18,
    scale_mat: Optional[np.ndarray] = None,
    keep_largest: bool = True,
    device: Optional[torch.device | str] = None,
    progress: Optional[Callable[[int, int], None]] = None,
) -> trimesh.Trimesh:
    """Mesh the zero level set of ``sdf_fn`` ((M, 3) normalised points -> (M,) SDF, negative inside).

    The SDF is evaluated in chunks under ``torch.no_grad`` on ``device`` (default: the device of the callable's
    module). The result has outward normals and is in world units when ``scale_mat`` (normalised -> world) is given.
    """
    volume = evaluate_sdf_grid(sdf_fn, resolution, bounds, chunk, device=device, progress=progress)
    return volume_to_mesh(volume, bounds=bounds, scale_mat=scale_mat, keep_largest=keep_largest)


def write_mesh_atomic(mesh: trimesh.Trimesh, output: Path | str) -> Path:
    """Write ``mesh`` next to ``output`` under a temporary name, then rename: an interrupted write leaves no file."""
    output = Path(output)
    suffix = output.suffix.lower()
    if suffix not in EXPORT_FORMATS:
        raise ValueError(f"{output}: unsupported mesh format {suffix or '(none)'}; use one of {', '.join(EXPORT_FORMATS)}")
    with atomic_write(output) as f:
        mesh.export(f, file_type=suffix[1:])
    return output
