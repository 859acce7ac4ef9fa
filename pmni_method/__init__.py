"""pmni: pose-free multi-view normal integration (PMNI, CVPR 2025) as a nerfstudio plugin.

Kept import-free on purpose: the generator and evaluator must not pay for torch, and nerfstudio loads our entry
points (``pmni_config``, ``dataparsers.diligent_mv_spec``) for every ``ns-*`` command; those apply ``compat``.
"""

__version__ = "0.1.0"
