"""Work-arounds for nerfstudio 1.1.5 on current torch, applied once when the plugin is imported."""

from __future__ import annotations

import numpy as np
import torch


def allow_numpy_scalars_in_checkpoints() -> None:
    """Let ``torch.load(weights_only=True)`` read nerfstudio checkpoints.

    nerfstudio's schedulers leave ``numpy.float64`` values in the optimiser state; torch >= 2.6 refuses to
    unpickle them by default, which breaks resume, ``ns-viewer`` and ``ns-export`` (nerfstudio issue #3683).
    Allow-listing the numpy scalar reconstructor and dtypes is the narrow fix: no arbitrary code is admitted.
    """
    if not hasattr(torch.serialization, "add_safe_globals"):
        return
    from numpy.core.multiarray import scalar  # numpy 1.x location, the one nerfstudio's pin (numpy<2) uses

    dtype_classes = [type(np.dtype(name)) for name in ("float64", "float32", "int64", "int32", "bool")]
    torch.serialization.add_safe_globals([scalar, np.dtype, *dtype_classes])


def default_device_type() -> str:
    """nerfstudio defaults to "cuda"; choose "cpu" when no GPU is present so ``ns-train pmni`` just works."""
    return "cuda" if torch.cuda.is_available() else "cpu"
