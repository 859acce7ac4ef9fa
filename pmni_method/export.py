"""Mesh extraction from a signed distance function: dense grid, marching cubes, largest component, world units.

Nothing here imports nerfstudio; ``pmni_method.scripts.export`` wires it to a trained pipeline. torch is imported
where the SDF is evaluated, so that the CLI can reject bad arguments without paying for the import.
"""

from __future__ import annotations

import io
import itertools
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Tuple

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


def _check_grid(resolution: int, bounds: Tuple[float, float], chunk: int) -> None:
    if resolution < 2:
        raise ValueError(f"resolution must be at least 2, got {resolution}")
    if chunk < 1:
        raise ValueError(f"chunk must be positive, got {chunk}")
    if not float(bounds[1]) > float(bounds[0]):
        raise ValueError(f"bounds must be (low, high) with low < high, got {bounds}")


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

    _check_grid(resolution, bounds, chunk)
    device = torch.device(device) if device is not None else _infer_device(sdf_fn)
    axis = _grid_axis(resolution, bounds, device)
    total = resolution**3
    out = np.empty(total, dtype=np.float32)
    num_chunks = (total + chunk - 1) // chunk
    with torch.no_grad():
        for c in range(num_chunks):
            start, stop = c * chunk, min((c + 1) * chunk, total)
            # Indices are generated per chunk so that a 512^3 grid never sits in memory as (R^3, 3) coordinates.
            out[start:stop] = _sdf_at_grid_points(sdf_fn, axis, torch.arange(start, stop, device=device))
            if progress is not None:
                progress(c + 1, num_chunks)
    return out.reshape(resolution, resolution, resolution)


class _ChunkCounter:
    """Chunks done and chunks known so far across the levels of :func:`evaluate_sdf_near_surface`."""

    def __init__(self, progress: Optional[Callable[[int, int], None]]) -> None:
        self.progress, self.done, self.total = progress, 0, 0

    def step(self) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, self.total)


def _grid_axis(resolution: int, bounds: Tuple[float, float], device: "torch.device") -> "torch.Tensor":
    import torch

    # One definition for both grids, so that values evaluated near the surface match the dense grid's.
    return torch.linspace(float(bounds[0]), float(bounds[1]), resolution, device=device, dtype=torch.float32)


def _sdf_at_grid_points(sdf_fn: SDFFn, axis: "torch.Tensor", index: "torch.Tensor") -> np.ndarray:
    """SDF (float32) at the grid points with flat indices ``index`` (row-major over (R, R, R), R = len(axis))."""
    import torch

    resolution = axis.shape[0]
    i = index // (resolution * resolution)
    j = (index // resolution) % resolution
    k = index % resolution
    sdf = sdf_fn(torch.stack([axis[i], axis[j], axis[k]], dim=-1)).reshape(-1)
    if sdf.shape[0] != len(index):
        raise ValueError(f"sdf_fn returned {sdf.shape[0]} values for {len(index)} points; expected one each")
    return sdf.detach().float().cpu().numpy()


def _evaluate_at(
    sdf_fn: SDFFn, flat: np.ndarray, axis: "torch.Tensor", chunk: int, counter: _ChunkCounter
) -> np.ndarray:
    """SDF at the grid points with flat indices ``flat`` (row-major over (R, R, R))."""
    import torch

    out = np.empty(len(flat), dtype=np.float32)
    starts = range(0, len(flat), chunk)
    counter.total += len(starts)
    with torch.no_grad():
        for start in starts:
            index = torch.from_numpy(flat[start : start + chunk]).to(axis.device)
            out[start : start + len(index)] = _sdf_at_grid_points(sdf_fn, axis, index)
            counter.step()
    return out


def evaluate_sdf_near_surface(
    sdf_fn: SDFFn,
    resolution: int = 256,
    bounds: Tuple[float, float] = (-1.0, 1.0),
    chunk: int = 2**18,
    device: Optional[torch.device | str] = None,
    progress: Optional[Callable[[int, int], None]] = None,
    coarsest: int = 64,
    band: float = 2.0,
) -> np.ndarray:
    """The grid of :func:`evaluate_sdf_grid`, with the SDF evaluated only where a coarser grid says the surface is.

    Each level halves the resolution down to ``coarsest`` (evaluated densely). A coarse cell is refined when a corner
    lies within ``band`` cell diagonals of the zero level set (a sign change among its corners always qualifies),
    and so is every cell next to one. Elsewhere the fine values are the coarse grid's trilinear interpolation,
    which keeps the corners' common sign. For an SDF that does not grow faster than distance (what the eikonal
    loss trains), every grid cell that marching cubes turns into triangles has exact values at all its corners, so
    the mesh is the dense grid's; at 256^3 about 15 % of the points are evaluated (the demo's bunny). A closed
    surface smaller than a coarse cell that no coarse corner comes near can be missed: ``evaluate_sdf_grid``
    evaluates everything.
    """
    import torch
    import torch.nn.functional as F
    from scipy import ndimage

    if band <= 0:
        raise ValueError(f"band must be positive, got {band}")
    device = torch.device(device) if device is not None else _infer_device(sdf_fn)
    counter = _ChunkCounter(progress)

    def level(res: int) -> np.ndarray:
        if res <= max(int(coarsest), 2):
            flat = np.arange(res**3, dtype=np.int64)
            return _evaluate_at(sdf_fn, flat, _grid_axis(res, bounds, device), chunk, counter).reshape((res,) * 3)
        coarse_res = (res + 1) // 2
        coarse = level(coarse_res)
        corners = [coarse[a : coarse_res - 1 + a, b : coarse_res - 1 + b, c : coarse_res - 1 + c]
                   for a in (0, 1) for b in (0, 1) for c in (0, 1)]
        low, high = np.minimum.reduce(corners), np.maximum.reduce(corners)
        reach = band * np.sqrt(3.0) * (float(bounds[1]) - float(bounds[0])) / (coarse_res - 1)
        near = (low < reach) & (high > -reach)
        near = ndimage.binary_dilation(near, structure=np.ones((3, 3, 3), dtype=bool))
        # The coarse cell of each fine grid index along one axis (the last index belongs to the last cell).
        cell = np.minimum(np.arange(res) * (coarse_res - 1) // (res - 1), coarse_res - 2)
        refine = near[np.ix_(cell, cell, cell)]
        with torch.no_grad():
            fine = F.interpolate(
                torch.from_numpy(np.ascontiguousarray(coarse))[None, None], size=(res,) * 3, mode="trilinear",
                align_corners=True,
            )[0, 0].numpy()
        flat = np.flatnonzero(refine)
        fine.reshape(-1)[flat] = _evaluate_at(sdf_fn, flat, _grid_axis(res, bounds, device), chunk, counter)
        return fine

    _check_grid(resolution, bounds, chunk)
    return level(int(resolution))


def largest_component(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """The connected component with the largest surface area (floaters from the SDF are dropped)."""
    parts = mesh.split(only_watertight=False)
    if len(parts) <= 1:
        return mesh
    return max(parts, key=lambda m: m.area)


def volume_to_mesh(
    volume: np.ndarray,
    bounds: Tuple[float, float] = (-1.0, 1.0),
    normalisation: Optional[Normalisation] = None,
    keep_largest: bool = True,
) -> trimesh.Trimesh:
    """Zero level set of an SDF grid (negative inside) as a mesh with outward normals, in world units when
    ``normalisation`` is given."""
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
    if normalisation is not None:
        verts = normalisation.to_world(verts)
        if np.linalg.det(normalisation.linear) < 0:
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
    normalisation: Optional[Normalisation] = None,
    keep_largest: bool = True,
    device: Optional[torch.device | str] = None,
    progress: Optional[Callable[[int, int], None]] = None,
    sparse: bool = True,
) -> trimesh.Trimesh:
    """Mesh the zero level set of ``sdf_fn`` ((M, 3) normalised points -> (M,) SDF, negative inside).

    The SDF is evaluated in chunks under ``torch.no_grad`` on ``device`` (default: the device of the callable's
    module), near the surface only when ``sparse`` (:func:`evaluate_sdf_near_surface`), else at every grid point.
    The result has outward normals and is in world units when ``normalisation`` is given.
    """
    evaluate = evaluate_sdf_near_surface if sparse else evaluate_sdf_grid
    volume = evaluate(sdf_fn, resolution, bounds, chunk, device=device, progress=progress)
    return volume_to_mesh(volume, bounds=bounds, normalisation=normalisation, keep_largest=keep_largest)


MESH_SOURCE_TAG = "pmni-source"
"""Keyword of the header comment (``comment pmni-source {json}`` in PLY, ``# pmni-source {json}`` in OBJ) that
records which checkpoint of which run a mesh came from (see :func:`mesh_bytes`, :func:`read_mesh_source`)."""

SOURCE_FORMATS = (".ply", ".obj")
"""Mesh formats with a comment syntax, where the source is recorded; STL and OFF have none that readers agree on."""


def mesh_bytes(mesh: trimesh.Trimesh, suffix: str, source: Optional[Dict[str, Any]] = None) -> bytes:
    """The file contents of ``mesh`` in the format of ``suffix``, with ``source`` as a header comment (PLY, OBJ).

    trimesh 5.2's PLY exporter has no option for comments and its loader skips them, so the line is inserted after
    the ``format`` line, where the PLY specification puts comments. The JSON is ASCII and on one line.
    """
    suffix = suffix.lower()
    if suffix not in EXPORT_FORMATS:
        raise ValueError(f"unsupported mesh format {suffix or '(none)'}; use one of {', '.join(EXPORT_FORMATS)}")
    buffer = io.BytesIO()
    mesh.export(buffer, file_type=suffix[1:])
    data = buffer.getvalue()
    if source is None or suffix not in SOURCE_FORMATS:
        return data
    text = json.dumps(source, sort_keys=True, allow_nan=False)
    if suffix == ".obj":
        return f"# {MESH_SOURCE_TAG} {text}\n".encode("ascii") + data
    # "ply\nformat ... 1.0\n": the comment goes right after the second line.
    end_of_format = data.index(b"\n", data.index(b"\n") + 1) + 1
    return data[:end_of_format] + f"comment {MESH_SOURCE_TAG} {text}\n".encode("ascii") + data[end_of_format:]


def read_mesh_source(path: Path | str) -> Optional[Dict[str, Any]]:
    """The source recorded by :func:`mesh_bytes` in a PLY header or the leading comments of an OBJ, else None.

    Only the header is read (a PLY's up to ``end_header``, an OBJ's leading ``#`` lines); a malformed record is
    treated as absent, since the mesh itself may still be fine.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SOURCE_FORMATS:
        return None
    prefix = ("comment " if suffix == ".ply" else "# ") + MESH_SOURCE_TAG + " "
    try:
        with open(path, "rb") as f:
            for number in range(256):
                raw = f.readline(1 << 16)
                if not raw:
                    break
                line = raw.decode("utf-8", errors="replace").strip()
                if suffix == ".ply" and (line == "end_header" or (number == 0 and line != "ply")):
                    break
                if suffix == ".obj" and line and not line.startswith("#"):
                    break
                if line.startswith(prefix):
                    record = json.loads(line[len(prefix):])
                    return record if isinstance(record, dict) else None
    except (OSError, ValueError):
        return None
    return None


def write_mesh_atomic(mesh: trimesh.Trimesh, output: Path | str, source: Optional[Dict[str, Any]] = None) -> Path:
    """Write ``mesh`` next to ``output`` under a temporary name, then rename: an interrupted write leaves no file.

    ``source`` (see :func:`mesh_bytes`) is recorded in the header of PLY and OBJ files.
    """
    output = Path(output)
    suffix = output.suffix.lower()
    if suffix not in EXPORT_FORMATS:
        raise ValueError(f"{output}: unsupported mesh format {suffix or '(none)'}; use one of {', '.join(EXPORT_FORMATS)}")
    with atomic_write(output) as f:
        f.write(mesh_bytes(mesh, suffix, source))
    return output
