"""The nerfstudio side of pmni: the ``Model``, the ``CameraOptimizer`` adapter and the preset assembly.

Everything here wraps the nerfstudio-free core (:mod:`pmni_method.models`) and imports nerfstudio; nothing in the
core imports this package.
"""
