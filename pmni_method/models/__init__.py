"""pmni's reconstruction model: a nerfstudio-free core (``core``) and its nerfstudio wrapper (``pmni_model``).

Nothing here imports nerfstudio; import :mod:`pmni_method.models.pmni_model` explicitly for the wrapper.
"""

from pmni_method.models.core import PMNICore, PMNICoreConfig

__all__ = ["PMNICore", "PMNICoreConfig"]
