"""Which implementation runs each accelerated part: the one place that decides torch, nerfacc or tiny-cuda-nn.

Three parts have a CUDA library behind them: the ray marcher and the per-ray compositing (nerfacc) and the hash
grid (tiny-cuda-nn). Each config field takes a :data:`Backend`; ``auto`` picks the library on CUDA when it is
there, else pure torch, and an explicit choice is kept (and checked against the part).
"""

from __future__ import annotations

from typing import Literal

Backend = Literal["auto", "torch", "nerfacc", "tcnn"]
"""``auto``: the part's CUDA library on CUDA, else torch; ``torch``: always pure torch; ``nerfacc`` (marcher,
compositing) or ``tcnn`` (hash grid): that library."""

Resolved = Literal["torch", "nerfacc", "tcnn"]


def choose_backend(requested: Backend, accelerated: Literal["nerfacc", "tcnn"], cuda: bool, available: bool = True) -> Resolved:
    """The implementation of a part whose CUDA library is ``accelerated``, for tensors on CUDA or not (``cuda``),
    with the library importable or not (``available``)."""
    if requested not in ("auto", "torch", accelerated):
        raise ValueError(f"backend must be 'auto', 'torch' or {accelerated!r} here, not {requested!r}")
    if requested == "auto":
        return accelerated if cuda and available else "torch"
    return requested


def reproducible_on_cpu(device: str) -> None:
    """On a CPU device, make torch use its deterministic kernels for the rest of the process.

    Why: some of torch's multi-threaded CPU kernels accumulate in thread order. Two identical pose-free
    train_core runs on 2 threads gave different losses from step 75 on, and the pose errors two such runs end at
    differ by more than most changes one would want to measure. With deterministic kernels they match bit for bit,
    at no measurable cost. On CUDA nothing changes (nerfacc's kernels and speed come first there).
    """
    import torch  # pylint: disable=import-outside-toplevel

    if str(device).split(":")[0] == "cpu":
        torch.use_deterministic_algorithms(True)
