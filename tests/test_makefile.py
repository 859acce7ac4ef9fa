"""The Makefile looks jemalloc up when a recipe runs (after the install step), not when make reads the file."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")


def _fake_venv(tmp_path: Path) -> Path:
    """A venv folder make considers installed, whose pmni-demo only reports what it was started with."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    demo = venv / "bin" / "pmni-demo"
    demo.write_text('#!/bin/sh\necho "LD_PRELOAD=[$LD_PRELOAD]"\n')
    demo.chmod(0o755)
    (venv / ".pmni-installed").touch()
    os.utime(venv / ".pmni-installed", (4e9, 4e9))  # newer than pyproject.toml: no install step
    return venv


def _make(tmp_path: Path, *args: str) -> str:
    out = subprocess.run(
        ["make", "--no-print-directory", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=60,
        env=dict(os.environ, MAKEFLAGS=""),
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_jemalloc_installed_by_a_prerequisite_is_used(tmp_path: Path) -> None:
    """The library appears only while make runs (as on a fresh machine, where install puts it there)."""
    venv = _fake_venv(tmp_path)
    lib_dir = tmp_path / "lib" / "x86_64-linux-gnu"
    # An extra makefile gives demo one more prerequisite that creates the library after parsing.
    extra = tmp_path / "extra.mk"
    extra.write_text(f"demo: fake-jemalloc\nfake-jemalloc:\n\tmkdir -p {lib_dir}\n\tcp /dev/null {lib_dir}/libjemalloc.so.2\n")
    glob = str(tmp_path / "lib" / "*-linux-gnu" / "libjemalloc.so.2")
    # LD_PRELOAD of an empty file: the dynamic loader warns and carries on, which is all this test needs.
    out = _make(tmp_path, "-f", "Makefile", "-f", str(extra), "demo", f"VENV={venv}", f"JEMALLOC_GLOB={glob}")
    assert f"LD_PRELOAD=[{lib_dir}/libjemalloc.so.2]" in out, out
    assert "using jemalloc" in out, out


def test_without_jemalloc_says_so(tmp_path: Path) -> None:
    venv = _fake_venv(tmp_path)
    out = _make(tmp_path, "demo", f"VENV={venv}", f"JEMALLOC_GLOB={tmp_path}/none/libjemalloc.so.2")
    assert "LD_PRELOAD=[]" in out and "jemalloc not found" in out, out


def test_dry_run_leaves_the_lookup_to_the_shell(tmp_path: Path) -> None:
    venv = _fake_venv(tmp_path)
    out = _make(tmp_path, "-n", "demo", "bench", "test", f"VENV={venv}")
    lines = [line for line in out.splitlines() if "LD_PRELOAD" in line]
    assert len(lines) == 4, out  # demo + the two bench runs + the test suite
    assert all("$(ls /usr/lib/*-linux-gnu/libjemalloc.so.2" in line for line in lines), out


def test_install_shows_progress() -> None:
    text = (ROOT / "Makefile").read_text()
    assert "--quiet" not in text and "-q " not in text
    assert text.count("==> [") == 4
