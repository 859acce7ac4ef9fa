"""pmni-viewer: reopen a trained run in nerfstudio's viewer with the viewer settings the run was trained with.

``ns-viewer --load-config`` replaces the run's viewer settings with the defaults of its own flags (nerfstudio's
``ViewerConfigWithoutNumRays``): a pmni run trained on 127.0.0.1 reopens on 0.0.0.0, where every host on the network
can see it, and with nerfstudio's 0.1-unit camera frustums and composited depth, which hide DiLiGenT-style cameras.

This command runs nerfstudio's own ``RunViewer`` unchanged. Only the defaults of its flags differ: they are read from
the run's ``config.yml``, so ``pmni-viewer --load-config RUN/config.yml`` shows the run as ``ns-train`` showed it, and
every flag still overrides (``--viewer.websocket-host 0.0.0.0`` shares it on purpose). The one setting not taken from
the run is ``make_share_url``: a public share link must be asked for each time.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from dataclasses import fields
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import tyro

from pmni_method.errors import EXIT_BAD_INPUT, PMNIInputError, print_error
from pmni_method.scripts.run_config import load_trainer_config

PROG = "pmni-viewer"
# Viewer settings whose default is never the run's: a public share link is a deliberate act, not a stored default.
NOT_INHERITED = {"make_share_url": False}
DESCRIPTION = (
    "Load a trained run and start nerfstudio's viewer. Every --viewer.* flag defaults to the value in the run's "
    "config.yml (as it was trained: e.g. pmni binds 127.0.0.1, frustum scale 5, composite depth off), not to "
    "ns-viewer's defaults; pass --load-config RUN/config.yml --help to see the run's values."
)



def requested_config(argv: Sequence[str]) -> Optional[Path]:
    """The ``--load-config`` value in ``argv`` (last one wins, as in tyro), or None if it is not given.

    The run's settings become the other flags' defaults, so this one flag is read before the real parse.
    """
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--load-config", "--load_config", type=Path, default=None)
    known, _ = parser.parse_known_args(list(argv))
    return known.load_config


def load_run_config(load_config: Path) -> Any:
    """The run's ``TrainerConfig`` (checked as pmni-export checks it), which must hold viewer settings."""
    from nerfstudio.configs.base_config import ViewerConfig

    config = load_trainer_config(load_config)
    if not isinstance(getattr(config, "viewer", None), ViewerConfig):
        raise PMNIInputError(f"{load_config}: the config has no viewer settings")
    return config


def run_viewer_defaults(load_config: Path, config: Any) -> Any:
    """nerfstudio's ``RunViewer`` for ``load_config``, its viewer settings those the run recorded.

    ``num_rays_per_chunk`` is not a flag of ns-viewer (``RunViewer.main`` takes it from the run and requires -1 here).
    """
    from nerfstudio.scripts.viewer.run_viewer import RunViewer, ViewerConfigWithoutNumRays

    settings: Dict[str, Any] = {}
    for f in fields(ViewerConfigWithoutNumRays):
        if f.name == "num_rays_per_chunk":
            settings[f.name] = -1
        elif f.name in NOT_INHERITED:
            settings[f.name] = NOT_INHERITED[f.name]
        elif hasattr(config.viewer, f.name):
            settings[f.name] = getattr(config.viewer, f.name)
    return RunViewer(load_config=load_config, viewer=ViewerConfigWithoutNumRays(**settings))


def parse_args(argv: Sequence[str]) -> Any:
    """Parse pmni-viewer's command line into nerfstudio's ``RunViewer``; raise :class:`PMNIInputError` for a bad run.

    Without ``--load-config`` there are no run settings to start from: tyro then prints the help or its usage error.
    """
    load_config = requested_config(argv)
    # The run is checked before nerfstudio's viewer is imported, so that a wrong path is answered at once.
    config = None if load_config is None else load_run_config(load_config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        from nerfstudio.scripts.viewer.run_viewer import RunViewer

    run_defaults: Dict[str, Any] = {} if config is None else {"default": run_viewer_defaults(load_config, config)}
    # FlagConversionOff as in ns-viewer: booleans take a value (--viewer.default-composite-depth False).
    return tyro.cli(
        tyro.conf.FlagConversionOff[RunViewer], args=list(argv), prog=PROG, description=DESCRIPTION, **run_defaults
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Start the viewer (it serves until interrupted); return 2 after one line for a missing or bad run."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        run_viewer = parse_args(argv)
    except PMNIInputError as e:
        print_error(f"error: {e}", prog=PROG, stderr=True)
        return EXIT_BAD_INPUT
    run_viewer.main()
    return 0


def entrypoint() -> None:
    """Console-script entry point (``pmni-viewer``)."""
    sys.exit(main())


if __name__ == "__main__":
    entrypoint()
