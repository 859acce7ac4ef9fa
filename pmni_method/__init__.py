"""pmni: pose-free multi-view normal integration (PMNI, CVPR 2025) as a nerfstudio plugin.

Kept import-light on purpose: nerfstudio loads our entry points for every ``ns-*`` command.
"""

from pmni_method.compat import allow_numpy_scalars_in_checkpoints

allow_numpy_scalars_in_checkpoints()

__version__ = "0.1.0"
