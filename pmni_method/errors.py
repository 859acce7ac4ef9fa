"""What pmni tells a user whose input it cannot use: the error classes, the process exit codes and the one red line.

Every command (``ns-train`` through the dataparser and the trainer, ``pmni-synth``, ``pmni-export``, ``pmni-eval``,
``pmni-viewer``, ``pmni-demo``) reports a problem the user has to fix as one line naming the file and the problem,
never a traceback, and exits with one of the codes below. Nothing here imports nerfstudio, torch or image libraries.
"""

from __future__ import annotations

import signal
from typing import Dict, Iterable, NoReturn

EXIT_OK = 0
"""Done; also a ``--resume`` of a run that had already finished (nothing to do)."""
EXIT_BAD_INPUT = 2
"""Bad input, data that fails the plausibility checks, an output that cannot be written or a run folder in use."""
EXIT_DIVERGED = 3
"""Training stopped after too many non-finite steps in a row (a checkpoint of the last good state is written)."""
EXIT_SIGNAL: Dict[int, int] = {signal.SIGINT: 130, signal.SIGTERM: 143}
"""After an interrupt: 128 + the signal number, as a shell reports a process killed by it."""
EXIT_INTERRUPTED = EXIT_SIGNAL[signal.SIGINT]
"""Ctrl-C (SIGINT)."""
EXIT_TERMINATED = EXIT_SIGNAL[signal.SIGTERM]
"""SIGTERM (SLURM preemption, ``docker stop``)."""


class PMNIInputError(Exception):
    """A problem the user must fix (a file, a flag, a destination); the message is the one line to print."""


class PMNIDataError(PMNIInputError, ValueError):
    """Bad input data. The message is one line: the offending file or folder, then what is wrong with it."""


class EvaluationInputError(PMNIDataError):
    """An input to the evaluator that cannot be used. The message is one line naming the file and the problem."""


class PMNIDataWarning(UserWarning):
    """Borderline input data that loads but may train badly. The message is one line, like :class:`PMNIDataError`."""


def format_views(views: Iterable[int], limit: int = 10) -> str:
    """View ids for a one-line message: ``1, 2, 5``; past ``limit`` of them the first ``limit``, then ``... (N in all)``."""
    views = sorted(views)
    text = ", ".join(str(v) for v in views[:limit])
    return text + (f", ... ({len(views)} in all)" if len(views) > limit else "")


def print_error(message: str, prog: str = "pmni", stderr: bool = False) -> None:
    """Print ``<prog>: <message>`` as one bold red line (never wrapped, no markup) to stdout or stderr.

    Training prints beside nerfstudio's console output (stdout); the stand-alone commands print to stderr, with
    ``prog`` their name and ``message`` starting ``error: ``.
    """
    from rich.console import Console

    # A new console per call: it then writes to whatever sys.stdout / sys.stderr is now (pytest swaps them).
    console = Console(stderr=stderr)
    console.print(f"{prog}: {message}", style="bold red", markup=False, highlight=False, soft_wrap=True)


def exit_with_error(message: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    """Print one red line (``pmni: <message>``) and exit with ``code``: what the user must fix needs no traceback."""
    print_error(message)
    raise SystemExit(code)
