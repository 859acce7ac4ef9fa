"""Write-then-rename: an interrupted write (crash, Ctrl-C, full disk) never leaves a file a later run would trust.

One file (:func:`atomic_write`, :func:`write_json_atomic`) or several that appear together or not at all
(:class:`FileGroup`).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator, List, Optional, Sequence, Tuple


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


def write_json_atomic(obj: Any, output: Path | str, indent: Optional[int] = 2) -> Path:
    """Write ``obj`` as strict JSON (no NaN or Inf: raises ValueError before anything is written), atomically."""
    # Serialised first: a value JSON cannot hold must fail before the old file is touched.
    text = json.dumps(obj, indent=indent, allow_nan=False) + "\n"
    output = Path(output)
    with atomic_write(output, "w") as f:
        f.write(text)
    return output


class PublishError(Exception):
    """A staged file could not be put in place; every target was left as it was before :meth:`FileGroup.publish`."""

    def __init__(self, target: Path, cause: OSError, unrestored: Sequence[str] = ()) -> None:
        super().__init__(f"{target}: {cause}")
        self.target = target
        """The target whose rename (or backup) failed."""
        self.cause = cause
        """The underlying error."""
        self.unrestored = list(unrestored)
        """Targets the rollback could not restore, each with where its previous version was kept (normally none)."""


class FileGroup:
    """Files that appear together or not at all (e.g. a mesh and its poses file).

    :meth:`stage` writes each file's bytes to a temporary file beside its target (fsynced); :meth:`publish` renames
    them into place in staging order. If any rename fails, or the process is interrupted while publishing, the
    targets already replaced are rolled back: each gets its previous file back (kept as a hard link until the group
    is complete), or is removed if it did not exist. Leaving the ``with`` block removes whatever was not published.
    """

    def __init__(self) -> None:
        self._staged: List[Tuple[Path, Path]] = []

    def __enter__(self) -> "FileGroup":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.discard()

    def stage(self, target: Path | str, data: bytes) -> None:
        """Write ``data`` to a temporary file in ``target``'s folder (created if needed); raises OSError."""
        target = Path(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        # Recorded before writing, so that discard() removes the file whatever happens next.
        self._staged.append((target, Path(tmp)))
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp makes the file owner-only; give it the permissions a plain open() would have.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)

    def discard(self) -> None:
        """Remove the temporary files not yet published."""
        for _, tmp in self._staged:
            tmp.unlink(missing_ok=True)
        self._staged = []

    @staticmethod
    def _keep_previous(target: Path) -> Optional[Path]:
        """A second name for the file at ``target`` (None if there is none), so that it can be put back."""
        if not os.path.lexists(target):
            return None
        backup = target.with_name(f".{target.name}.{secrets.token_hex(4)}.previous")
        try:
            # A hard link leaves the target in place, so there is never a moment without a file there.
            os.link(target, backup, follow_symlinks=False)
        except OSError:
            shutil.copy2(target, backup, follow_symlinks=False)
        return backup

    def publish(self) -> None:
        """Rename every staged file onto its target: all of them, or (raising :class:`PublishError`) none."""
        replaced: List[Tuple[Path, Optional[Path]]] = []
        backups: List[Path] = []
        current: Optional[Path] = None
        try:
            for target, tmp in self._staged:
                current = target
                backup = self._keep_previous(target)
                if backup is not None:
                    backups.append(backup)
                os.replace(tmp, target)
                replaced.append((target, backup))
        except BaseException as err:
            # BaseException too: a Ctrl-C between two renames must not leave a mesh beside the wrong poses file.
            unrestored = []
            for target, backup in reversed(replaced):
                try:
                    if backup is None:
                        target.unlink(missing_ok=True)
                    else:
                        os.replace(backup, target)
                except OSError as undo:
                    kept = f" (its previous version is kept as {backup})" if backup is not None else ""
                    unrestored.append(f"{target}{kept}: {undo.strerror or undo}")
                    if backup is not None:
                        backups.remove(backup)
            for backup in backups:
                backup.unlink(missing_ok=True)
            self.discard()
            if isinstance(err, OSError) and current is not None:
                raise PublishError(current, err, unrestored) from err
            raise
        for backup in backups:
            backup.unlink(missing_ok=True)
        self._staged = []
        for folder in {target.parent for target, _ in replaced}:
            _fsync_folder(folder)


def _fsync_folder(folder: Path) -> None:
    # The renames are durable only once the folder itself is flushed; not every platform or filesystem allows it.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
