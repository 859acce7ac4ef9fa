"""Faults end to end: what ``ns-train`` / ``pmni-export`` print and leave on disk when input, disk or numbers go bad.

Loader-level bad input is covered by test_bad_input.py; here a few of those cases go through the real ``ns-train``
command (exit code 2, one line, no traceback), plus a read-only output folder, a full disk while checkpointing, an
interrupted export and a diverging run.
"""

from __future__ import annotations

import errno
import os
import shutil
import sys
import textwrap
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List

import numpy as np
import pytest
import torch
import trimesh

from helpers import error_lines, ns_train_args, run, tiny_config
from pmni_method import runner
from pmni_method.checkpoints import TMP_DIR_NAME, checkpoint_steps
from pmni_method.data import io


NORMALS = "normal_world_space_GT"
ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@contextmanager
def read_only_folder(path: Path) -> Iterator[Path]:
    """A folder nobody may write into, root included (chmod alone does not stop root: make it immutable then)."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o555)
    immutable = False
    if os.geteuid() == 0:
        immutable = shutil.which("chattr") is not None and run(["chattr", "+i", str(path)]).returncode == 0
    try:
        try:
            (path / "probe").touch()
        except OSError:
            pass
        else:
            (path / "probe").unlink()
            pytest.skip("cannot make a read-only folder here (root without chattr +i support)")
        yield path
    finally:
        if immutable:
            run(["chattr", "-i", str(path)])
        path.chmod(0o755)


# --------------------------------------------------------------------------------------------------------------------
# bad input through the real command line
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["nan_normals", "truncated_exr"])
def test_ns_train_bad_normal_map_is_one_line(sphere_dir: Path, tmp_path: Path, damage: str):
    data = Path(shutil.copytree(sphere_dir, tmp_path / "data"))
    path = data / NORMALS / "001.exr"
    if damage == "nan_normals":
        normals = io.read_exr(path)
        rows, cols = np.nonzero(io.read_mask(data / "mask" / "001.png"))
        normals[rows[::10], cols[::10]] = np.nan
        io.write_exr(path, normals)
    else:
        path.write_bytes(path.read_bytes()[:300])
    out = run(ns_train_args(data, tmp_path / "out"))
    text = out.stdout + out.stderr
    assert out.returncode == 2, text[-3000:]
    assert "Traceback" not in text
    lines = error_lines(out)
    assert len(lines) == 1 and lines[0].startswith(f"pmni: {path}: "), lines
    # ns-train writes config.yml before the data is read; a run that never started leaves no run folder behind.
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


# --------------------------------------------------------------------------------------------------------------------
# the disk
# --------------------------------------------------------------------------------------------------------------------


def test_ns_train_read_only_output_folder(sphere_dir: Path, tmp_path: Path):
    with read_only_folder(tmp_path / "ro") as folder:
        out = run(ns_train_args(sphere_dir, folder / "out"))
        text = out.stdout + out.stderr
        assert out.returncode == 2, text[-3000:]
        assert "Traceback" not in text
        lines = error_lines(out)
        assert len(lines) == 1 and lines[0].startswith(f"pmni: cannot write the run folder {folder / 'out'}"), lines
        assert list(folder.iterdir()) == []


def test_disk_full_when_the_run_starts_leaves_nothing(sphere_dir: Path, tmp_path: Path, monkeypatch, capsys):
    import pmni_method.atomic

    def fsync(fd: int) -> None:
        raise ENOSPC  # what a full disk reports once the written data has to be placed

    monkeypatch.setattr(pmni_method.atomic.os, "fsync", fsync)
    config = tiny_config(sphere_dir, tmp_path / "out", iterations=2)
    with pytest.raises(SystemExit) as exc:
        runner.train(config)
    assert exc.value.code == 2
    assert not (tmp_path / "out").exists()
    out = capsys.readouterr().out.replace("\n", "")
    assert f"pmni: cannot write the run folder {config.get_base_dir()}: No space left on device" in out


def full_disk_on(monkeypatch: pytest.MonkeyPatch, fail_on: set) -> List[int]:
    """Make the n-th checkpoint write (1-based, in ``fail_on``) die half-way with ENOSPC, as a full disk does."""
    calls: List[int] = []
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        calls.append(len(calls) + 1)
        if calls[-1] in fail_on:
            f.write(b"\x80partial checkpoint")
            raise ENOSPC
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    return calls


def test_disk_full_during_a_checkpoint_keeps_the_previous_one(sphere_dir: Path, tmp_path: Path, monkeypatch, capsys):
    full_disk_on(monkeypatch, fail_on={2})
    config = tiny_config(sphere_dir, tmp_path, iterations=8)
    config.steps_per_save = 2
    seen = {}

    def after_step(trainer, step: int, seconds: float) -> None:
        # Callbacks run before their step's save: at step 5 the save of step 4 has just failed.
        if step == 5:
            ckpt_dir = trainer.checkpoint_dir
            seen["ckpts"] = sorted(p.name for p in ckpt_dir.iterdir())
            seen["tmp"] = list((ckpt_dir.parent / TMP_DIR_NAME).iterdir())

    run_ = runner.train(config, every_seconds=0.0, hook=after_step)
    assert seen["ckpts"] == ["step-000000002.ckpt"] and seen["tmp"] == []
    out = capsys.readouterr().out.replace("\n", " ")
    assert "pmni: checkpoint not written: " in out and "step-000000004.ckpt: No space left on device" in out
    assert "the previous one is kept, training goes on" in out
    # Training went on and later checkpoints were written as usual.
    assert checkpoint_steps(run_.trainer.checkpoint_dir) == [7]


def test_disk_full_on_the_final_checkpoint_fails_the_run(sphere_dir: Path, tmp_path: Path, monkeypatch, capsys):
    full_disk_on(monkeypatch, fail_on={2})
    config = tiny_config(sphere_dir, tmp_path, iterations=4)
    config.steps_per_save = 2
    with pytest.raises(SystemExit) as exc:
        runner.train(config)
    assert exc.value.code == 2
    ckpt_dir = config.get_checkpoint_dir()
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["step-000000002.ckpt"]
    assert not list((ckpt_dir.parent / TMP_DIR_NAME).iterdir())
    torch.load(ckpt_dir / "step-000000002.ckpt", map_location="cpu")
    out = capsys.readouterr().out.replace("\n", " ")
    assert "pmni: final checkpoint not written: " in out and "No space left on device" in out


# --------------------------------------------------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_run(sphere_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return runner.train(tiny_config(sphere_dir, tmp_path_factory.mktemp("run"), iterations=2)).config_path


@pytest.mark.parametrize("fault", [KeyboardInterrupt, ENOSPC])
def test_interrupted_export_leaves_no_mesh(trained_run: Path, tmp_path: Path, monkeypatch, capsys, fault):
    from pmni_method.scripts import export as export_cli

    def export(self, file_obj=None, file_type=None, **kwargs):
        file_obj.write(b"ply\nformat binary_little_endian 1.0\n")  # half a file, then the fault
        raise fault

    monkeypatch.setattr(trimesh.Trimesh, "export", export)
    out_dir = tmp_path / "meshes"
    config = export_cli.ExportConfig(load_config=trained_run, output=out_dir / "mesh.ply", resolution=16)
    if fault is KeyboardInterrupt:
        with pytest.raises(KeyboardInterrupt):
            export_cli.main(config)
    else:
        assert export_cli.main(config) == 2
        err = capsys.readouterr().err
        assert err == f"pmni-export: error: {out_dir / 'mesh.ply'}: cannot write mesh (No space left on device)\n"
    assert list(out_dir.iterdir()) == []


# --------------------------------------------------------------------------------------------------------------------
# a run that diverges, through the real ns-train entry point
# --------------------------------------------------------------------------------------------------------------------


def test_ns_train_diverging_run_stops_cleanly(sphere_dir: Path, tmp_path: Path):
    args = ns_train_args(sphere_dir, tmp_path / "out", iterations=40)
    args[2:2] = ["--pipeline.max-consecutive-skipped-steps", "4"]
    # The model's mask loss turns NaN from the fourth training step (step 3) on; the rest is the installed ns-train.
    script = textwrap.dedent(
        f"""
        import sys
        from pmni_method.models.pmni_model import PMNIModel
        original = PMNIModel.get_loss_dict
        calls = [0]
        def get_loss_dict(self, outputs, batch, metrics_dict=None):
            loss = original(self, outputs, batch, metrics_dict)
            if self.training:
                calls[0] += 1
                if calls[0] > 3:
                    loss["mask_loss"] = loss["mask_loss"] * float("nan")
            return loss
        PMNIModel.get_loss_dict = get_loss_dict
        from nerfstudio.scripts.train import entrypoint
        sys.argv = {args!r}
        entrypoint()
        """
    )
    out = run([sys.executable, "-c", script])
    text = out.stdout + out.stderr
    assert out.returncode == 3, text[-3000:]
    assert "Traceback" not in text
    lines = error_lines(out)
    assert len(lines) == 1 and lines[0].startswith("pmni: training stopped at step 6: 4 steps in a row"), lines
    assert "non-finite loss mask_loss" in lines[0]
    ckpts = list((tmp_path / "out").rglob("step-*.ckpt"))
    assert [c.name for c in ckpts] == ["step-000000006.ckpt"]
    assert not any(p.suffix != ".ckpt" for p in ckpts[0].parent.iterdir())
