"""nerfstudio dataparser for DiLiGenT-MV style multi-view normal datasets (``diligent-mv-data``).

All geometry is handed to nerfstudio in the normalised frame (object inside the unit sphere). The normal maps,
masks and depths do not travel through nerfstudio's image loading: they ride in ``metadata["pmni_data"]`` as a
:class:`MultiViewNormalData` so that masks never use the batch key ``mask`` (which would restrict ray sampling
to the foreground).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, Tuple, Type

import numpy as np
import torch
from nerfstudio.cameras.cameras import Cameras, CameraType
from nerfstudio.data.dataparsers.base_dataparser import DataParser, DataParserConfig, DataparserOutputs
from nerfstudio.data.scene_box import SceneBox
from nerfstudio.utils.rich_utils import CONSOLE

from pmni_method import cameras
from pmni_method.data.diligent_mv import (
    AUTO_NORMAL_DIR,
    find_normal_maps,
    index_folder,
    load_diligent_mv,
    resolve_normal_dir,
    split_indices,
)
from pmni_method.data import io
from pmni_method.data.layout import MASK_DIR
from pmni_method.data.plausibility import DataChecks
from pmni_method.data.types import MultiViewNormalData
from pmni_method.errors import PMNIDataError, exit_with_error
from pmni_method.poses.starts import PoseInitConfig


# The pose flags (--pose-init, --pose-noise-*, --ring-*, --poses-file) are PoseInitConfig's fields, inherited so that
# they and their help texts exist once; tyro reads the help of inherited fields from PoseInitConfig's source.
@dataclass
class DiligentMVDataParserConfig(DataParserConfig, PoseInitConfig):
    """DiLiGenT-MV layout: cameras_sphere.npz, a normal-map folder, mask/, optional depth and GT mesh."""

    _target: Type = field(default_factory=lambda: DiligentMVDataParser)
    """Target class to instantiate."""
    data: Path = Path("data/DiLiGenT-MV/bearPNG")
    """Dataset folder of one object (holds cameras_sphere.npz)."""
    normal_dir: str = AUTO_NORMAL_DIR
    """Normal-map folder inside the dataset, e.g. normal_world_space_sdmunips; auto = normal_world_space_GT for
    --pose-init gt (else normal_camera_space_GT), normal_camera_space_GT for a pose-free start."""
    normal_space: Literal["auto", "world", "camera"] = "auto"
    """Frame of the normal maps; auto = camera if the folder name contains 'camera', else world."""
    downscale_factor: int = 1
    """Integer factor to block-average images by (intrinsics are adjusted to match)."""
    exclude_views: Tuple[int, ...] = ()
    """View indices held out of training for evaluation (val/test use all views when empty)."""
    load_depth: bool = True
    """Load integration/perspective/*.npy depth maps when the dataset has them."""
    data_checks: DataChecks = "error"
    """Load-time checks that normals face the cameras and the object fits the unit sphere: error = refuse, warn, off."""


class DiligentMVDataParser(DataParser):
    """Reads a DiLiGenT-MV style folder once and serves its train / val / test splits."""

    config: DiligentMVDataParserConfig

    def __init__(self, config: DiligentMVDataParserConfig):
        super().__init__(config=config)
        # nerfstudio asks for the train and eval splits separately; reading the images once is enough.
        self._data: Optional[MultiViewNormalData] = None

    def load(self) -> MultiViewNormalData:
        """All views of the dataset (cached). Raises :class:`PMNIDataError` on bad input."""
        if self._data is None:
            self._data = load_diligent_mv(
                self.config.data,
                normal_dir=self.config.normal_dir,
                normal_space=self.config.normal_space,
                downscale_factor=self.config.downscale_factor,
                load_depth=self.config.load_depth,
                pose_init=self.config.pose_init_config(),
                data_checks=self.config.data_checks,
                warn=_print_warning,
            )
        return self._data

    def _generate_dataparser_outputs(self, split: str = "train", **kwargs) -> DataparserOutputs:
        try:
            data = self.load()
            indices = split_indices(data.view_ids, self.config.exclude_views, split)
            normal_dir = resolve_normal_dir(self.config.data, self.config.normal_dir, self.config.pose_init)
            normal_files = find_normal_maps(self.config.data, normal_dir)
            mask_files = index_folder(Path(self.config.data) / MASK_DIR, io.MASK_SUFFIXES)
        except PMNIDataError as e:
            # A data error is the user's to fix, not ours to debug: one red line and no traceback under ns-train.
            exit_with_error(str(e))
        subset = data.subset(indices)
        transform, scale = data.normalisation.nerfstudio_transform()
        return DataparserOutputs(
            image_filenames=[normal_files[v] for v in subset.view_ids],
            cameras=to_nerfstudio_cameras(subset),
            scene_box=SceneBox(aabb=torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]], dtype=torch.float32)),
            mask_filenames=None,
            dataparser_transform=torch.from_numpy(transform).float(),
            dataparser_scale=scale,
            metadata={
                "pmni_data": subset,
                "gt_mesh": data.gt_mesh,
                "view_ids": list(subset.view_ids),
                # Where each view's mask came from, for exports that point other tools at the capture's files.
                "pmni_mask_files": [mask_files[v] for v in subset.view_ids],
            },
        )


def _print_warning(line: str) -> None:
    # Borderline data trains, but the user should see why its result may be off: one yellow line per finding.
    CONSOLE.print(f"pmni: warning: {line}", style="yellow", markup=False, highlight=False, soft_wrap=True)


def to_nerfstudio_cameras(data: MultiViewNormalData) -> Cameras:
    """nerfstudio perspective cameras (OpenGL axes, pixel centres at i + 0.5) for the views of ``data``."""
    c2w = cameras.opencv_to_nerfstudio_c2w(data.c2w)[:, :3, :4]
    cx, cy = cameras.opencv_to_nerfstudio_principal_point(data.K[:, 0, 2], data.K[:, 1, 2])
    n = data.num_views

    def column(values: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(values, dtype=np.float32).reshape(n, 1))

    return Cameras(
        camera_to_worlds=torch.as_tensor(c2w, dtype=torch.float32),
        fx=column(data.K[:, 0, 0]),
        fy=column(data.K[:, 1, 1]),
        cx=column(cx),
        cy=column(cy),
        width=torch.full((n, 1), data.width, dtype=torch.int64),
        height=torch.full((n, 1), data.height, dtype=torch.int64),
        camera_type=CameraType.PERSPECTIVE,
    )
