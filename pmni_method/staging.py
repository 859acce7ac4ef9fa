"""An output folder that appears whole or not at all: written into a hidden sibling, renamed into place at the end.

A failed, interrupted (Ctrl-C) or terminated (SIGTERM) writer leaves nothing behind; one killed outright (SIGKILL,
power loss) cannot clean up, so the next writer of the same output removes such folders once their process is gone.
pmni-synth writes its datasets this way.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import threading
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import psutil


class Terminated(BaseException):
    """SIGTERM arrived while rendering. Raised like KeyboardInterrupt (not an Exception) so that cleanup runs."""


STAGING_KINDS = ("partial", "old")
"""Hidden siblings of an output: ``.NAME.partial-PID`` (a dataset being written) and ``.NAME.old-PID`` (the dataset
it replaces, between the two renames of :func:`commit` and while it is deleted)."""

# A PID's process may have been started after the folder was last changed only if the PID was reused; the slack
# covers psutil's start times (boot time in whole seconds) and coarse file-system timestamps.
_START_TIME_SLACK_S = 2.0


def staging_folder(output: Path, kind: str, pid: int) -> Path:
    """The hidden sibling ``.NAME.KIND-PID`` of ``output`` (``kind`` one of :data:`STAGING_KINDS`)."""
    return output.with_name(f".{output.name}.{kind}-{pid}")


def process_may_own(pid: int, folder: Path) -> bool:
    """Whether process ``pid`` may still be writing ``folder`` (or a file): alive and started before it last changed.

    A dead process (or a zombie) cannot; neither can a live one started after the folder's last change, which only
    means the PID was reused. When in doubt (no permission to inspect the process), the folder is presumed in use.
    """
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        started = process.create_time()
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True
    try:
        changed = folder.lstat().st_mtime
    except OSError:
        return True
    return started <= changed + _START_TIME_SLACK_S


def remove_stale_staging(output: Path, note: Optional[Callable[[str], None]] = None) -> List[Path]:
    """Remove the staging folders that killed runs left beside ``output``; return what was removed.

    Only folders named like this module's (``.NAME.partial-PID``, ``.NAME.old-PID``) whose process is gone are
    touched; a live run's stay. A dead run's ``.old`` folder is the complete previous dataset: if ``output`` is
    missing (killed between the two renames of the commit), it is put back instead of removed.
    """
    pattern = re.compile(rf"^\.{re.escape(output.name)}\.({'|'.join(STAGING_KINDS)})-(\d+)$")
    try:
        entries = sorted(output.parent.iterdir())
    except OSError:  # no parent yet (nothing to clean), or not listable (then nothing can be written there either)
        return []
    removed: List[Path] = []
    for entry in entries:
        match = pattern.match(entry.name)
        if match is None or entry.is_symlink() or not entry.is_dir():
            continue
        pid = int(match.group(2))
        if pid == os.getpid() or process_may_own(pid, entry):
            continue
        if match.group(1) == "old" and not os.path.lexists(output):
            os.replace(entry, output)
            if note is not None:
                note(f"restored {output} from {entry.name}, left by a run (PID {pid}) killed while replacing it")
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
        if note is not None:
            note(f"removed {entry}, left by a killed run (PID {pid})")
    return removed


class Interrupts:
    """SIGINT and SIGTERM as exceptions (KeyboardInterrupt, :class:`Terminated`) while a dataset is written.

    SIGTERM's default action ends the process at once, without running ``except`` or ``finally`` blocks.
    Handlers are only installed from the main thread and only over the default ones (an application's own
    handlers are left alone). :meth:`deferred` holds signals back over a step that must not be cut in two.
    """

    def __init__(self) -> None:
        self._previous: Dict[int, Any] = {}
        self._defer = False
        self._pending: Optional[BaseException] = None

    def _handler(self, signum: int, frame: Any) -> None:
        error: BaseException = KeyboardInterrupt() if signum == signal.SIGINT else Terminated()
        if self._defer:
            self._pending = self._pending or error
            return
        raise error

    def __enter__(self) -> "Interrupts":
        if threading.current_thread() is threading.main_thread():
            for signum, default in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, signal.SIG_DFL)):
                if signal.getsignal(signum) is default:
                    self._previous[signum] = signal.signal(signum, self._handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    @contextlib.contextmanager
    def deferred(self, reraise: bool = True) -> Iterator[None]:
        """Hold signals back inside the block; afterwards raise the first one that came (unless ``reraise`` is off)."""
        self._defer = True
        try:
            yield
        finally:
            self._defer = False
        pending, self._pending = self._pending, None
        if pending is not None and reraise:
            raise pending


def commit(staging: Path, output: Path) -> None:
    """Move the finished dataset into place, replacing an old one only once the new one is complete."""
    if output.is_dir() and any(output.iterdir()):
        trash = staging_folder(output, "old", os.getpid())
        os.replace(output, trash)
        os.replace(staging, output)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        if output.is_dir():
            output.rmdir()
        os.replace(staging, output)
