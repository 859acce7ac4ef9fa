"""Registration of the ``nerfstudio-normals-data`` dataparser (entry point ``nerfstudio.dataparser_configs``).

Import-light for the same reason as :mod:`pmni_method.dataparsers.diligent_mv_spec`: nerfstudio discovers
dataparsers while its datamanager module is still being imported.
"""

from __future__ import annotations

from nerfstudio.plugins.registry_dataparser import DataParserSpecification

from pmni_method.compat import allow_numpy_scalars_in_checkpoints
from pmni_method.dataparsers.nerfstudio_normals_dataparser import NerfstudioNormalsDataParserConfig

# Any ns-* command may load this module first (entry points load in no set order).
allow_numpy_scalars_in_checkpoints()

nerfstudio_normals_dataparser = DataParserSpecification(
    config=NerfstudioNormalsDataParserConfig(),
    description="nerfstudio transforms.json with a normal map and a mask per frame",
)
