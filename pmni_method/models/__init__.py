"""pmni's reconstruction model, nerfstudio-free: the core (field, sampler, rendering, losses, schedule), the pose
model and the training step.

Nothing here imports nerfstudio; the nerfstudio wrappers live in :mod:`pmni_method.nerfstudio_adapter`
(``pmni_model`` and ``pose_refine`` here are lazy aliases for runs trained before they moved).
"""

from pmni_method.models.core import PMNICore, PMNICoreConfig

__all__ = ["PMNICore", "PMNICoreConfig"]
