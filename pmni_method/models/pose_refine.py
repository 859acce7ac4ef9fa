"""Old home of the pose refiner (now :mod:`pmni_method.nerfstudio_adapter.pose_adapter` over
:mod:`pmni_method.models.pose_model`), kept so that the ``config.yml`` of earlier runs still loads; resolved lazily,
so importing this imports no nerfstudio."""

from pmni_method.models._alias import lazy_module_dir, lazy_module_getattr

__getattr__ = lazy_module_getattr(__name__, "pmni_method.nerfstudio_adapter.pose_adapter")
__dir__ = lazy_module_dir("pmni_method.nerfstudio_adapter.pose_adapter")
