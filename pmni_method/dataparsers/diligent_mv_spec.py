"""Registration of the ``diligent-mv-data`` dataparser (entry point ``nerfstudio.dataparser_configs``).

Import-light on purpose: nerfstudio discovers dataparsers while its datamanager module is still being imported,
so nothing here may import VanillaDataManagerConfig, TrainerConfig or pipeline modules (circular import).
"""

from __future__ import annotations

from nerfstudio.plugins.registry_dataparser import DataParserSpecification

from pmni_method.compat import allow_numpy_scalars_in_checkpoints
from pmni_method.dataparsers.diligent_mv_dataparser import DiligentMVDataParserConfig

# Every ns-* command loads this module, so it is where checkpoints loading gets fixed for ns-viewer / ns-export.
allow_numpy_scalars_in_checkpoints()

diligent_mv_dataparser = DataParserSpecification(
    config=DiligentMVDataParserConfig(),
    description="DiLiGenT-MV style multi-view normal maps (cameras_sphere.npz, normal maps, masks)",
)
