"""nerfstudio dataparser for ``transforms.json`` captures with a normal map and a mask per frame
(``nerfstudio-normals-data``).

Its outputs have the structure of ``diligent-mv-data``'s: geometry in the normalised frame (the bounding sphere of
the masks' visual hull, :mod:`pmni_method.data.hull_bound`), the maps in ``metadata["pmni_data"]``. Distorted
cameras reach nerfstudio as the pinhole cameras of the undistorted maps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, Tuple, Type

import torch
from nerfstudio.data.dataparsers.base_dataparser import DataParser, DataParserConfig, DataparserOutputs
from nerfstudio.data.scene_box import SceneBox

from pmni_method.data.diligent_mv import split_indices
from pmni_method.data.hull_bound import HULL_MARGIN
from pmni_method.data.plausibility import DataChecks
from pmni_method.data.transforms_loader import NORMAL_KEY, LoadedCapture, load_transforms_capture
from pmni_method.dataparsers.diligent_mv_dataparser import _print_warning, to_nerfstudio_cameras
from pmni_method.errors import PMNIDataError, exit_with_error
from pmni_method.poses.starts import PoseInitConfig


# The pose flags come from PoseInitConfig, as for diligent-mv-data: one definition, one help text.
@dataclass
class NerfstudioNormalsDataParserConfig(DataParserConfig, PoseInitConfig):
    """nerfstudio transforms.json with a normal map (normal_path or --normal-dir) and a mask (mask_path) per frame."""

    _target: Type = field(default_factory=lambda: NerfstudioNormalsDataParser)
    """Target class to instantiate."""
    data: Path = Path("data/capture")
    """transforms.json, or the folder holding it."""
    normal_dir: Optional[str] = None
    """Folder of normal maps named like the frames' images (<stem>.exr|png|npy), relative to transforms.json's
    folder; None = each frame's --normal-key entry."""
    normal_key: str = NORMAL_KEY
    """Frame key holding the normal map's path when --normal-dir is not given (file_path for pmni-export's files)."""
    mask_dir: Optional[str] = None
    """Folder of masks named like the frames' images; None = each frame's mask_path."""
    normal_space: Literal["auto", "world", "camera"] = "auto"
    """Frame of the normal maps: camera = x right, y up, z toward the camera; world = the capture's frame;
    auto = camera if the maps' folder name contains 'camera', else world."""
    downscale_factor: int = 1
    """Integer factor to block-average the maps by (intrinsics are adjusted to match)."""
    exclude_views: Tuple[int, ...] = ()
    """View ids held out of training for evaluation (val/test use all views when empty)."""
    sphere_margin: float = HULL_MARGIN
    """Radius of the unit sphere over that of the sphere around the masks' visual hull."""
    gt_mesh: Optional[Path] = None
    """Ground-truth mesh in the capture's frame; None = mesh_Gt.ply beside transforms.json, if there."""
    data_checks: DataChecks = "error"
    """Load-time checks that normals face the cameras and the masks agree with the sphere: error = refuse, warn, off."""


class NerfstudioNormalsDataParser(DataParser):
    """Reads a transforms.json capture once and serves its train / val / test splits."""

    config: NerfstudioNormalsDataParserConfig

    def __init__(self, config: NerfstudioNormalsDataParserConfig):
        super().__init__(config=config)
        self._loaded: Optional[LoadedCapture] = None

    def load(self) -> LoadedCapture:
        """All views and their files (cached). Raises :class:`PMNIDataError` on bad input."""
        if self._loaded is None:
            self._loaded = load_transforms_capture(
                self.config.data,
                normal_dir=self.config.normal_dir,
                normal_key=self.config.normal_key,
                mask_dir=self.config.mask_dir,
                normal_space=self.config.normal_space,
                downscale_factor=self.config.downscale_factor,
                pose_init=self.config.pose_init_config(),
                data_checks=self.config.data_checks,
                sphere_margin=self.config.sphere_margin,
                gt_mesh=self.config.gt_mesh,
                warn=_print_warning,
            )
        return self._loaded

    def _generate_dataparser_outputs(self, split: str = "train", **kwargs) -> DataparserOutputs:
        try:
            loaded = self.load()
            indices = split_indices(loaded.data.view_ids, self.config.exclude_views, split)
        except PMNIDataError as e:
            # A data error is the user's to fix: one red line and no traceback under ns-train.
            exit_with_error(str(e))
        data = loaded.data
        subset = data.subset(indices)
        transform, scale = data.normalisation.nerfstudio_transform()
        return DataparserOutputs(
            image_filenames=[loaded.normal_files[i] for i in indices],
            cameras=to_nerfstudio_cameras(subset),
            scene_box=SceneBox(aabb=torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]], dtype=torch.float32)),
            # Never nerfstudio's mask_filenames: its batch key "mask" would restrict ray sampling to the foreground.
            mask_filenames=None,
            dataparser_transform=torch.from_numpy(transform).float(),
            dataparser_scale=scale,
            metadata={
                "pmni_data": subset,
                "gt_mesh": data.gt_mesh,
                "view_ids": list(subset.view_ids),
                "pmni_mask_files": [loaded.mask_files[i] for i in indices],
                # The files above are the distorted originals: an export that points at them must say so.
                "pmni_distortion": None if loaded.distortion is None else loaded.distortion[indices],
            },
        )
