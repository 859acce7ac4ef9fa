"""Write-then-rename: an interrupted write (crash, Ctrl-C, full disk) never leaves a file a later run would trust."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator


@contextlib.contextmanager
def atomic_write(output: Path | str, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside ``output``; it replaces ``output`` only if the ``with`` block completes."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        # mkstemp makes the file owner-only; give it the permissions a plain open() would have.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, output)
    except BaseException:
        # BaseException too: Ctrl-C during a large write must not leave the temporary file behind.
        Path(tmp).unlink(missing_ok=True)
        raise
