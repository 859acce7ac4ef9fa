"""Reading a training run's ``config.yml`` for pmni-export and pmni-viewer, with one line for every way it can fail."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from pmni_method.errors import PMNIInputError


def load_trainer_config(load_config: Path) -> Any:
    """The run's nerfstudio ``TrainerConfig``; raise :class:`PMNIInputError` for anything ``eval_setup`` would
    otherwise answer with an assert, a ``sys.exit(1)`` or a traceback (no file, not YAML, not a run's config, an
    unregistered method, no checkpoint).
    """
    import yaml

    if not load_config.is_file():
        raise PMNIInputError(f"{load_config}: config file not found")
    # nerfstudio takes seconds to import; checking the YAML's structure first (compose builds no objects) answers
    # a wrong file at once.
    try:
        root = yaml.compose(load_config.read_text())
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as e:
        raise PMNIInputError(f"{load_config}: not a readable YAML file ({type(e).__name__})")
    if root is None or not str(root.tag).startswith("tag:yaml.org,2002:python/object"):
        raise PMNIInputError(f"{load_config}: not a nerfstudio TrainerConfig (expected the config.yml of a training run)")

    with warnings.catch_warnings():
        # nerfstudio's dependencies emit deprecation warnings on import that would bury the CLI's own output.
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        from nerfstudio.configs.method_configs import all_methods
        from nerfstudio.engine.trainer import TrainerConfig

    try:
        config = yaml.load(load_config.read_text(), Loader=yaml.Loader)
    except Exception as e:  # yaml raises many error types, and unknown python tags fail on import
        raise PMNIInputError(f"{load_config}: cannot parse as a nerfstudio config ({type(e).__name__})")
    if not isinstance(config, TrainerConfig):
        raise PMNIInputError(f"{load_config}: not a nerfstudio TrainerConfig (expected the config.yml of a training run)")
    if config.method_name not in all_methods:
        raise PMNIInputError(
            f"{load_config}: method {config.method_name!r} is not registered with nerfstudio (is pmni installed?)"
        )
    ckpt_dir = config.get_checkpoint_dir()
    if not ckpt_dir.is_dir() or not any(ckpt_dir.glob("step-*.ckpt")):
        # output_dir is stored as given to ns-train, often relative to the folder training ran in.
        where = "" if ckpt_dir.is_absolute() else f" (relative to {Path.cwd()}; run from the folder training ran in)"
        raise PMNIInputError(f"{ckpt_dir}: no checkpoints (step-*.ckpt) found for this config{where}")
    return config
