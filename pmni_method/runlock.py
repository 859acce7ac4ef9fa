"""One process per run folder: an advisory ``flock`` on the folder itself, held for the run's lifetime.

The kernel drops the lock when its process dies, SIGKILL included, so a lock is never stale and nothing has to be
cleaned up after a crash. Locking the directory rather than a file in it writes nothing into the run folder: a
refused or no-op ``--resume`` leaves a finished run byte for byte as it was. The holder's PID, for the message, is
read from ``/proc/locks`` where there is one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Optional

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: runs are unlocked, as nerfstudio's are
    fcntl = None  # type: ignore[assignment]

_HELD: Dict[Path, int] = {}
"""Run folder (resolved) -> file descriptor of the lock this process holds on it."""


class RunInUse(RuntimeError):
    """Another live process holds the run folder."""

    def __init__(self, run_dir: Path, pid: Optional[int]) -> None:
        self.run_dir = run_dir
        self.pid = pid
        who = f"process {pid}" if pid is not None else "another process"
        super().__init__(f"{run_dir} is in use by {who}")


def acquire(run_dir: Path) -> None:
    """Lock ``run_dir`` (which must exist) for this process; raise :class:`RunInUse` when another process holds it.

    Locking a folder this process already holds is a no-op.
    """
    key = Path(run_dir).resolve()
    if key in _HELD or fcntl is None:
        return
    fd = os.open(key, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        inode = os.fstat(fd).st_ino
        os.close(fd)
        raise RunInUse(key, _holder_pid(inode)) from None
    except BaseException:
        os.close(fd)
        raise
    _HELD[key] = fd


def release(run_dir: Path) -> None:
    """Drop this process's lock on ``run_dir`` (if it holds one)."""
    fd = _HELD.pop(Path(run_dir).resolve(), None)
    if fd is not None:
        os.close(fd)  # closing the descriptor releases the flock


def holds(run_dir: Path) -> bool:
    """Whether this process holds the lock on ``run_dir``."""
    return Path(run_dir).resolve() in _HELD


def _holder_pid(inode: int) -> Optional[int]:
    """PID holding a FLOCK on the file with this inode, from Linux's /proc/locks; None where that is unknown."""
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        # "1: FLOCK  ADVISORY  WRITE 12345 fd:01:4325 0 EOF"; a blocked waiter's line starts "1: -> FLOCK ...".
        parts = line.split()
        if len(parts) >= 6 and parts[1] == "FLOCK" and parts[5].rsplit(":", 1)[-1] == str(inode):
            try:
                return int(parts[4])
            except ValueError:
                return None
    return None
