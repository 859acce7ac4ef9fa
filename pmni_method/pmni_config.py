"""The ``pmni`` and ``pmni-fast`` methods (entry point ``nerfstudio.method_configs``).

Both are real presets (values in :mod:`pmni_method.models.presets`): ``pmni`` is PMNI/SuperNormal's full
configuration, ``pmni-fast`` the CPU-friendly one. The device defaults to CPU when no GPU is present.

Mixed precision stays off by default. ``--mixed-precision True`` runs the forward pass under CUDA autocast with
nerfstudio's GradScaler (steps whose scaled gradients overflow are skipped by the scaler and the scale lowered;
the non-finite guard then only checks the loss terms). On CPU it is ignored: the trainer turns autocast and the
scaler off. It has not been validated on CUDA for the SDF's double backward in half precision.
"""

from __future__ import annotations

from typing import Any, Dict

from nerfstudio.configs.base_config import ViewerConfig
from nerfstudio.plugins.types import MethodSpecification

from pmni_method.compat import (
    allow_numpy_scalars_in_checkpoints,
    default_device_type,
    list_external_methods_without_stack_walks,
)
from pmni_method.data.datamanager import PMNIDataManagerConfig
from pmni_method.dataparsers.diligent_mv_dataparser import DiligentMVDataParserConfig
from pmni_method.models.presets import MAX_GRAD_NORMS
from pmni_method.nerfstudio_adapter import presets
from pmni_method.pipeline import PMNIPipelineConfig
from pmni_method.trainer import PMNITrainerConfig

# ns-viewer and ns-export load checkpoints after importing this module.
allow_numpy_scalars_in_checkpoints()
list_external_methods_without_stack_walks()

DESCRIPTIONS = {
    "pmni": "PMNI: SDF + NeuS normal integration from multi-view normal maps (full quality, GPU-sized).",
    "pmni-fast": "PMNI, CPU-friendly preset: fewer rays, iterations and hash levels.",
}


def optimizers_with_clipping(name: str) -> Dict[str, Dict[str, Any]]:
    """The preset's per-group optimisers, with :data:`MAX_GRAD_NORMS` as nerfstudio's ``max_norm``."""
    groups = presets.optimizers(name)
    for group, settings in groups.items():
        settings["optimizer"].max_norm = MAX_GRAD_NORMS.get(group)
    return groups


def trainer_config(name: str) -> PMNITrainerConfig:
    """The full nerfstudio training configuration of one preset."""
    settings = presets.run_settings(name)
    iterations = settings["max_num_iterations"]
    config = PMNITrainerConfig(
        method_name=name,
        max_num_iterations=iterations,
        steps_per_save=max(iterations // 10, 100),
        steps_per_eval_batch=max(iterations // 20, 50),
        steps_per_eval_image=max(iterations // 5, 200),
        steps_per_eval_all_images=10**9,
        save_only_latest_checkpoint=True,
        mixed_precision=False,
        pipeline=PMNIPipelineConfig(
            datamanager=PMNIDataManagerConfig(
                dataparser=DiligentMVDataParserConfig(),
                train_num_rays_per_batch=settings["train_num_rays_per_batch"],
                eval_num_rays_per_batch=settings["train_num_rays_per_batch"],
            ),
            model=presets.model_config(name),
        ),
        optimizers=optimizers_with_clipping(name),
        viewer=ViewerConfig(
            num_rays_per_chunk=settings["eval_num_rays_per_chunk"],
            websocket_host="127.0.0.1",
            # DiLiGenT-MV cameras stand ~15 object radii away (weak perspective): nerfstudio's default 0.1 draws them
            # as invisible specks. 5 viser units = half the unit sphere the object lives in.
            camera_frustum_scale=5.0,
            # The model's depth is 0 where a ray misses the object; composited, that background sits on the camera
            # plane and hides every training-camera frustum. Off until misses get a far depth.
            default_composite_depth=False,
        ),
        vis="viewer",
    )
    config.machine.device_type = default_device_type()
    return config


METHODS: Dict[str, MethodSpecification] = {
    name: MethodSpecification(config=trainer_config(name), description=DESCRIPTIONS[name]) for name in DESCRIPTIONS
}
pmni_method = METHODS["pmni"]
pmni_fast_method = METHODS["pmni-fast"]
