"""The viewer in a real browser: headless Debian Chromium driven by Playwright (its own browser downloads are never used).

* ``ns-viewer`` on a tiny trained run: the normals render into the 3D canvas (screenshot kept as
  ``test-output/viewer.png``) and the output menu offers the model's normal, depth and accumulation outputs.
* ``ns-train pmni-fast --vis viewer``: while training, the same outputs are offered and the training-camera
  frustums are drawn (hiding them changes the picture), with the method's own viewer settings.

Chromium is installed with apt-get when missing and running as root; otherwise these tests skip with the reason.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List

import numpy as np
import pytest

from pmni_method import runner

sys.path.insert(0, str(Path(__file__).parent))
from test_stability import tiny_config  # noqa: E402

BIN = Path(sys.executable).parent
ARTEFACTS = Path(__file__).resolve().parents[1] / "test-output"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
VIEWPORT = {"width": 1200, "height": 800}
# Wheel steps (viser's default camera starts inside the unit sphere): close enough to fill part of the canvas with the
# object, and far enough to see the whole camera ring.
ZOOM_CLOSE, ZOOM_RING = 10, 30


def chromium() -> str:
    """Debian's chromium, installed on the fly when we are root; skip the test where that cannot be done."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, env=env, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], capture_output=True, env=env, timeout=600)
        found = shutil.which("chromium")
    if found is None:
        pytest.skip("Debian chromium is not installed and cannot be installed here (needs root and apt-get)")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"viewer process exited early with code {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.25)
    pytest.fail(f"nothing listening on port {port} after {timeout:.0f} s")


@contextmanager
def started(args: List[str], port: int, log: Path) -> Iterator[subprocess.Popen]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "COLUMNS": "200"}
    with open(log, "w") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            wait_for_port(port, proc)
            yield proc
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=20)


@contextmanager
def browser_page(port: int) -> Iterator:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip install -e .[dev])")
    executable = chromium()
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile, sync_api.sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            profile, executable_path=executable, headless=True, args=CHROMIUM_FLAGS, viewport=VIEWPORT
        )
        try:
            page = context.pages[0] if context.pages else context.new_page()
            page.goto(f"http://127.0.0.1:{port}", wait_until="load", timeout=60_000)
            page.locator("canvas").first.wait_for(timeout=60_000)
            page.get_by_text("Connected", exact=True).first.wait_for(timeout=60_000)
            yield page
        finally:
            context.close()


def scene_pixels(page, path: Path = None) -> np.ndarray:
    """The 3D canvas left of the control panel (which overlays the canvas on the right), as RGB."""
    from io import BytesIO

    from PIL import Image

    canvas = page.locator("canvas").first
    png = canvas.screenshot(path=str(path) if path else None)
    image = np.asarray(Image.open(BytesIO(png)).convert("RGB"))
    panel_left = page.get_by_text("Render Options").first.bounding_box()["x"] - canvas.bounding_box()["x"] - 20
    return image[:, : int(panel_left)]


def zoom(page, steps: int) -> None:
    box = page.locator("canvas").first.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.35, box["y"] + box["height"] / 2)
    for _ in range(steps):
        page.mouse.wheel(0, 400)
        time.sleep(0.05)


def wait_for_render(page, min_width: int = 200, timeout: float = 120.0, path: Path = None) -> np.ndarray:
    """The scene once the viewer reports a full-resolution render and the picture stops changing.

    The viewer first sends small renders while the camera moves, then refines; its panel shows the resolution.
    """
    deadline = time.monotonic() + timeout
    while True:
        match = re.search(r"Resolution: (\d+)\D(\d+)px", page.inner_text("body"))
        if match and int(match.group(1)) >= min_width:
            break
        if time.monotonic() > deadline:
            pytest.fail(f"no render of at least {min_width} px wide after {timeout:.0f} s ({match and match.group(0)})")
        time.sleep(1.0)
    pixels = settled(page)
    if path is not None:
        scene_pixels(page, path)
    return pixels


def changed_pixels(a: np.ndarray, b: np.ndarray) -> int:
    return int((np.abs(a.astype(int) - b.astype(int)).sum(axis=-1) > 40).sum())


def settled(page, timeout: float = 60.0) -> np.ndarray:
    """The scene once two screenshots two seconds apart agree (the viewer refines renders progressively)."""
    deadline = time.monotonic() + timeout
    previous = scene_pixels(page)
    while True:
        time.sleep(2.0)
        current = scene_pixels(page)
        if changed_pixels(previous, current) < 50:
            return current
        if time.monotonic() > deadline:
            pytest.fail("the viewer's picture never settled")
        previous = current


def lit_fraction(pixels: np.ndarray) -> float:
    return float((pixels.max(axis=-1) > 40).mean())


def output_options(page) -> List[str]:
    page.get_by_label("Output type").first.click()
    options = [o.inner_text().strip() for o in page.get_by_role("option").all()]
    page.keyboard.press("Escape")
    return options


def trained_config(data: Path, output: Path) -> Path:
    return runner.train(tiny_config(data, output, iterations=20)).config_path


def test_ns_viewer_renders_the_normals(sphere_dir: Path, tmp_path: Path):
    config_path = trained_config(sphere_dir, tmp_path)
    port = free_port()
    exe = BIN / "ns-viewer"
    if not exe.exists():
        pytest.skip("ns-viewer not installed in this environment (run `make install`)")
    args = [
        str(exe), "--load-config", str(config_path), "--viewer.websocket-port", str(port),
        "--viewer.websocket-host", "127.0.0.1",
    ]
    ARTEFACTS.mkdir(exist_ok=True)
    with started(args, port, tmp_path / "ns-viewer.log"), browser_page(port) as page:
        options = output_options(page)
        assert {"normal", "normal_vis", "depth", "accumulation", "rgb"} <= set(options), options
        zoom(page, ZOOM_CLOSE)
        pixels = wait_for_render(page, path=ARTEFACTS / "viewer.png")
    lit = pixels[pixels.max(axis=-1) > 40]
    # The sphere's normals cover every direction: a blank, uniform or grey canvas fails one of these.
    assert lit_fraction(pixels) >= 0.02, f"canvas is blank ({lit_fraction(pixels):.4f} lit); see {ARTEFACTS}"
    assert lit.std(axis=0).min() > 15, lit.std(axis=0)
    assert (np.abs(lit[:, 0].astype(int) - lit[:, 2]) > 60).mean() > 0.1  # colour, not grey shading


def test_ns_train_viewer_offers_outputs_and_frustums(sphere_dir: Path, tmp_path: Path):
    port = free_port()
    exe = BIN / "ns-train"
    if not exe.exists():
        pytest.skip("ns-train not installed in this environment (run `make install`)")
    args = [
        str(exe), "pmni-fast", "--data", str(sphere_dir), "--output-dir", str(tmp_path),
        "--max-num-iterations", "2000", "--vis", "viewer", "--viewer.websocket-port", str(port),
        "--viewer.quit-on-train-completion", "True", "--machine.device-type", "cpu",
        "--pipeline.datamanager.train-num-rays-per-batch", "64", "diligent-mv-data",
    ]
    ARTEFACTS.mkdir(exist_ok=True)
    with started(args, port, tmp_path / "ns-train.log"), browser_page(port) as page:
        zoom(page, ZOOM_RING)
        wait_for_render(page, path=ARTEFACTS / "viewer-train.png")  # rendered between training steps
        # The menu is filled from the first render's outputs.
        options = output_options(page)
        assert {"normal", "normal_vis", "depth", "accumulation", "rgb"} <= set(options), options
        page.get_by_role("button", name="Pause Training").click()  # a still scene: only the frustums may change
        with_cams = settled(page)
        page.get_by_role("button", name="Hide Train Cams").click()
        time.sleep(3.0)
        without_cams = scene_pixels(page)
    assert lit_fraction(with_cams) >= 0.001, "nothing rendered"
    assert changed_pixels(with_cams, without_cams) > 300, "hiding the training cameras changed nothing: no frustums"
