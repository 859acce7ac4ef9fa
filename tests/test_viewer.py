"""The viewer in a real browser: headless Debian Chromium driven by Playwright (its own browser downloads are never used).

* ``ns-viewer`` on a tiny trained run: the normals render into the 3D canvas (screenshot kept as
  ``test-output/viewer.png``) and the output menu offers the model's normal, depth and accumulation outputs.
* ``ns-train pmni-fast --vis viewer``: while training, the same outputs are offered and the training-camera
  frustums are drawn (hiding them changes the picture), with the method's own viewer settings.
* ``pmni-viewer`` (no browser needed): reopens a run with the viewer settings it was trained with (listening on
  127.0.0.1, frustum scale 5, composite depth off) where ``ns-viewer`` would use its own defaults (0.0.0.0, 0.1, on);
  every flag still overrides; a bad run path is one line and exit code 2.

Chromium is installed with apt-get when missing and running as root; otherwise the browser tests skip with the reason.
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
from typing import Dict, Iterator, List, Set, Tuple

import numpy as np
import psutil
import pytest
import yaml

from helpers import tiny_config
from pmni_method import runner
from pmni_method.errors import EXIT_BAD_INPUT


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


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 120.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"viewer process exited early with code {proc.returncode}")
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.25)
    pytest.fail(f"nothing listening on port {port} after {timeout:.0f} s")


@contextmanager
def started(args: List[str], port: int, log: Path, host: str = "127.0.0.1") -> Iterator[subprocess.Popen]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "COLUMNS": "200"}
    with open(log, "w") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            wait_for_port(port, proc, host=host)
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


@pytest.fixture(scope="module")
def viewer_run(sphere_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """config.yml of one tiny trained run (pmni-fast's viewer settings), shared by the tests that only reopen it."""
    return trained_config(sphere_dir, tmp_path_factory.mktemp("viewer-run"))


def test_ns_viewer_renders_the_normals(viewer_run: Path, tmp_path: Path):
    config_path = viewer_run
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


def listening_hosts(pid: int, port: int) -> Set[str]:
    """Addresses the process ``pid`` listens on at ``port`` (what the network can reach, unlike a connect test)."""
    connections = psutil.Process(pid).net_connections(kind="inet")
    return {c.laddr.ip for c in connections if c.status == psutil.CONN_LISTEN and c.laddr.port == port}


def viewer_scene(port: int, host: str = "127.0.0.1", timeout: float = 60.0) -> Tuple[List[float], Dict[str, bool]]:
    """Camera-frustum scales and checkbox values (by label) the viewer sends a newly connected client.

    Read off viser's websocket as a browser would receive it: batches of msgpack-encoded messages, each a dict with
    its class name under "type" (viser 0.2.7, pinned). The frustums arrive once the scene is initialised, which may be
    after the port opens, so the messages are read until both are there.
    """
    import msgspec
    from websockets.sync.client import connect

    scales: List[float] = []
    checkboxes: Dict[str, bool] = {}
    deadline = time.monotonic() + timeout
    with connect(f"ws://{host}:{port}", open_timeout=30, max_size=None) as ws:
        while not (scales and "Composite depth" in checkboxes):
            if time.monotonic() > deadline:
                pytest.fail(f"viewer sent no frustums or no composite-depth checkbox in {timeout:.0f} s")
            try:
                raw = ws.recv(timeout=max(deadline - time.monotonic(), 0.1))
            except TimeoutError:
                continue
            for message in msgspec.msgpack.decode(raw):
                if message["type"] == "CameraFrustumMessage":
                    scales.append(float(message["scale"]))
                elif message["type"] == "GuiAddCheckboxMessage":
                    checkboxes[message["label"]] = bool(message["value"])
    return scales, checkboxes


def pmni_viewer_exe() -> Path:
    exe = BIN / "pmni-viewer"
    # Ours, not an optional tool: a missing script is the failure under test, so fail rather than skip.
    assert exe.exists(), f"{exe} missing: pmni-viewer is not installed (pip install -e .)"
    return exe


def test_pmni_viewer_defaults_are_the_runs_viewer_settings(viewer_run: Path, tmp_path: Path):
    from nerfstudio.scripts.viewer.run_viewer import ViewerConfigWithoutNumRays

    from pmni_method.scripts import viewer

    # The premise: ns-viewer's own defaults, which replace a run's viewer settings there.
    nerfstudio_defaults = ViewerConfigWithoutNumRays()
    assert (nerfstudio_defaults.websocket_host, nerfstudio_defaults.camera_frustum_scale) == ("0.0.0.0", 0.1)
    assert nerfstudio_defaults.default_composite_depth is True

    args = viewer.parse_args(["--load-config", str(viewer_run)])
    assert args.load_config == viewer_run
    assert args.viewer.websocket_host == "127.0.0.1"
    assert args.viewer.camera_frustum_scale == 5.0
    assert args.viewer.default_composite_depth is False
    assert args.viewer.num_rays_per_chunk == -1  # RunViewer.main asserts it and takes the run's own

    overridden = viewer.parse_args([
        "--load-config", str(viewer_run), "--viewer.websocket-host", "0.0.0.0",
        "--viewer.camera-frustum-scale", "2", "--viewer.default-composite-depth", "True",
    ])
    assert overridden.viewer.websocket_host == "0.0.0.0"
    assert overridden.viewer.camera_frustum_scale == 2.0
    assert overridden.viewer.default_composite_depth is True

    # Every recorded setting is inherited (here a fixed port), except a share link, which is asked for each time.
    config = yaml.load(viewer_run.read_text(), Loader=yaml.Loader)
    config.viewer.websocket_port = 7345
    config.viewer.make_share_url = True
    copy = tmp_path / "config.yml"  # the checkpoints are found through output_dir, not beside the file
    copy.write_text(yaml.dump(config))
    args = viewer.parse_args(["--load-config", str(copy)])
    assert args.viewer.websocket_port == 7345
    assert args.viewer.make_share_url is False
    assert viewer.parse_args(["--load-config", str(copy), "--viewer.make-share-url", "True"]).viewer.make_share_url


def test_pmni_viewer_bad_run_is_one_line_and_exit_2(viewer_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    from pmni_method.scripts import viewer

    not_yaml = tmp_path / "not-yaml.yml"
    not_yaml.write_text("a: [\n")
    not_a_run = tmp_path / "dict.yml"
    not_a_run.write_text("a: 1\n")
    config = yaml.load(viewer_run.read_text(), Loader=yaml.Loader)
    config.output_dir = tmp_path / "nowhere"
    no_checkpoints = tmp_path / "no-checkpoints.yml"
    no_checkpoints.write_text(yaml.dump(config))
    cases = {
        tmp_path / "missing.yml": "config file not found",
        not_yaml: "not a readable YAML file",
        not_a_run: "not a nerfstudio TrainerConfig",
        no_checkpoints: "no checkpoints",
    }
    for path, reason in cases.items():
        assert viewer.main(["--load-config", str(path)]) == EXIT_BAD_INPUT, path
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("pmni-viewer: error: ") and reason in err[0], err

    # The console script itself: exit status 2, one line, no traceback.
    result = subprocess.run(
        [str(pmni_viewer_exe()), "--load-config", str(tmp_path / "missing.yml")],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2, result
    expected = f"pmni-viewer: error: {tmp_path / 'missing.yml'}: config file not found"
    assert result.stderr.strip().splitlines() == [expected], result.stderr


def test_pmni_viewer_serves_the_run_on_localhost_with_its_settings(viewer_run: Path, tmp_path: Path):
    port = free_port()
    args = [str(pmni_viewer_exe()), "--load-config", str(viewer_run), "--viewer.websocket-port", str(port)]
    with started(args, port, tmp_path / "pmni-viewer.log") as proc:
        hosts = listening_hosts(proc.pid, port)
        scales, checkboxes = viewer_scene(port)
    assert hosts == {"127.0.0.1"}, f"pmni-viewer listens on {hosts}, expected only 127.0.0.1"
    assert scales and set(scales) == {5.0}, scales
    assert checkboxes["Composite depth"] is False


def test_pmni_viewer_flags_override_the_runs_settings(viewer_run: Path, tmp_path: Path):
    port = free_port()
    # Another loopback address stands in for a deliberate --viewer.websocket-host 0.0.0.0: it proves the flag wins
    # without the test itself listening on the network.
    host = "127.0.0.2"
    args = [
        str(pmni_viewer_exe()), "--load-config", str(viewer_run), "--viewer.websocket-port", str(port),
        "--viewer.websocket-host", host, "--viewer.camera-frustum-scale", "2",
        "--viewer.default-composite-depth", "True",
    ]
    with started(args, port, tmp_path / "pmni-viewer.log", host=host) as proc:
        hosts = listening_hosts(proc.pid, port)
        scales, checkboxes = viewer_scene(port, host=host)
    assert hosts == {host}, hosts
    assert scales and set(scales) == {2.0}, scales
    assert checkboxes["Composite depth"] is True
