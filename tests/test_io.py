"""PNG reading and writing in data/io.py (pypng): 16-bit normal maps bit-exact, masks of any bit depth, one-line
errors, and no OpenCV in the core's import graph."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import png
import pytest

from pmni_method.data import io
from pmni_method.errors import PMNIDataError


def _normals(h: int = 37, w: int = 41) -> np.ndarray:
    rng = np.random.default_rng(0)
    n = rng.normal(size=(h, w, 3)).astype(np.float32)
    n /= np.linalg.norm(n, axis=-1, keepdims=True)
    n[:5] = 0.0  # background rows
    return n


def test_16bit_normal_map_round_trips_bit_exactly(tmp_path: Path) -> None:
    n = _normals()
    path = tmp_path / "n.png"
    io.write_normal_map(path, n)
    raw = io.read_image(path)
    assert raw.dtype == np.uint16 and raw.shape == n.shape
    expected = np.round((np.clip(n, -1, 1) + 1) * (65535 / 2)).astype(np.uint16)
    np.testing.assert_array_equal(raw, expected)
    # Reading, encoding again and writing gives the same file values: nothing is lost past the first quantisation.
    again = tmp_path / "again.png"
    io.write_normal_map(again, io.read_normal_map(path))
    np.testing.assert_array_equal(io.read_image(again), expected)
    np.testing.assert_allclose(io.read_normal_map(path), n, atol=1.0 / 65535 + 1e-7)


def test_reads_png_written_by_another_encoder(tmp_path: Path) -> None:
    # pypng's own from_array (no io.py code) with full 16-bit range values in R, G, B order.
    rng = np.random.default_rng(1)
    v = rng.integers(0, 65536, size=(9, 11, 3), dtype=np.uint16)
    png.from_array(v.reshape(9, -1), "RGB;16").save(tmp_path / "rgb16.png")
    np.testing.assert_array_equal(io.read_image(tmp_path / "rgb16.png"), v)


@pytest.mark.parametrize("dtype, high", [(np.uint8, 255), (np.uint16, 65535), (np.uint8, 1)])
def test_masks_8_and_16_bit(tmp_path: Path, dtype: type, high: int) -> None:
    mask = np.zeros((13, 17), bool)
    mask[2:9, 3:12] = True
    path = tmp_path / "m.png"
    io.write_png(path, mask.astype(dtype) * high)
    raw = io.read_image(path)
    assert raw.dtype == dtype and raw.shape == mask.shape
    np.testing.assert_array_equal(io.read_mask(path), mask)


def test_write_mask_is_8bit_0_255(tmp_path: Path) -> None:
    mask = np.eye(6, dtype=bool)
    io.write_mask(tmp_path / "m.png", mask)
    raw = io.read_image(tmp_path / "m.png")
    assert raw.dtype == np.uint8
    assert set(np.unique(raw)) == {0, 255}
    np.testing.assert_array_equal(io.read_mask(tmp_path / "m.png"), mask)


@pytest.mark.parametrize("keep", [0, 40, 200, -12])
def test_damaged_png_is_one_line_naming_the_file(tmp_path: Path, keep: int) -> None:
    path = tmp_path / "n.png"
    io.write_normal_map(path, _normals(64, 64))
    content = path.read_bytes()
    path.write_bytes(content[:keep] if keep else b"\x00garbage" * 64)
    with pytest.raises(PMNIDataError) as exc:
        io.read_normal_map(path)
    message = str(exc.value)
    assert "\n" not in message and message.startswith(f"{path}: "), message
    assert "corrupt or truncated" in message


def test_core_readers_do_not_import_opencv() -> None:
    code = "import sys, pmni_method.data.io, pmni_method.data.diligent_mv; print('cv2' in sys.modules)"
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root, env=env)
    assert out.stdout.strip() == "False", out.stdout + out.stderr
