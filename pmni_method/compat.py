"""Work-arounds for nerfstudio 1.1.5 on current torch, applied once when the plugin is imported."""

from __future__ import annotations

import sys

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


def list_external_methods_without_stack_walks() -> None:
    """Make nerfstudio's listing of not-installed external methods cheap (about 7 s of every ``ns-*`` start).

    ``ExternalMethodDummyTrainerConfig.__post_init__`` asks ``inspect.stack()[2].function`` whether
    ``get_external_methods`` is its caller, for each of the 26 listed methods. ``inspect.stack`` reads the
    source of every frame and looks each frame's module up in ``sys.modules``, which holds thousands of
    modules once torch is imported. The caller's name is ``sys._getframe(2).f_code.co_name`` without any of
    that; any other caller (the user picked an uninstalled method) goes on to nerfstudio's own code.
    nerfstudio calls ``get_external_methods`` after importing the plugins, so this is in place in time.
    """
    try:
        from nerfstudio.configs.external_methods import ExternalMethodDummyTrainerConfig
    except ImportError:
        return
    original = ExternalMethodDummyTrainerConfig.__post_init__
    if getattr(original, "_pmni_without_stack_walk", False):
        return

    def __post_init__(self) -> None:
        # Frame 0 is this function, 1 the dataclass __init__, 2 whoever built the config: the same frame
        # nerfstudio's inspect.stack()[2] names.
        if sys._getframe(2).f_code.co_name == "get_external_methods":
            return
        original(self)

    __post_init__._pmni_without_stack_walk = True  # type: ignore[attr-defined]
    ExternalMethodDummyTrainerConfig.__post_init__ = __post_init__  # type: ignore[method-assign]
