"""The in-memory form of one multi-view normal dataset, shared by the dataparser, the ray store and the evaluator."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Literal, Optional

import numpy as np

from pmni_method.cameras import Normalisation


@dataclass
class MultiViewNormalData:
    """All views of one object, in the normalised frame (object inside the unit sphere)."""

    data_dir: Path
    """Folder the dataset was read from."""
    view_ids: List[int]
    """View index of each entry, parsed from the file names, ascending."""
    K: np.ndarray
    """(N, 3, 3) OpenCV intrinsics (centre of pixel i at i), after any downscaling."""
    c2w: np.ndarray
    """(N, 4, 4) OpenCV camera-to-world in the normalised frame: the poses training starts from."""
    normals: np.ndarray
    """(N, H, W, 3) float32 unit normals in the normalised frame (world axes); zero outside the mask."""
    masks: np.ndarray
    """(N, H, W) bool foreground masks."""
    normalisation: Normalisation
    """The map between the normalised frame and world units (DiLiGenT-MV: millimetres), from ``scale_mat``."""
    depths: Optional[np.ndarray] = None
    """(N, H, W) float32 camera-z depth, any per-view scale, 0 where unknown; None when the dataset has none."""
    gt_mesh: Optional[Path] = None
    """Ground-truth mesh in world units, if the dataset has one."""
    gt_c2w: Optional[np.ndarray] = None
    """(N, 4, 4) true OpenCV camera-to-world (normalised frame), when the stored poses are known to be perturbed."""
    pose_init: str = "gt"
    """The start ``c2w`` came from (:data:`pmni_method.poses.starts.POSE_INITS`); any but "gt" trains pose-free."""
    normal_space: Literal["world", "camera"] = "world"
    """Frame the maps were given in. Camera-space maps are rotated into the world with the initial poses ``c2w``,
    so they follow pose corrections; world-space maps are tied to the true world frame."""

    @property
    def num_views(self) -> int:
        return len(self.view_ids)

    @property
    def height(self) -> int:
        return int(self.normals.shape[1])

    @property
    def width(self) -> int:
        return int(self.normals.shape[2])

    def subset(self, indices: List[int]) -> "MultiViewNormalData":
        """The same dataset restricted to the given positions (not view ids)."""
        idx = np.asarray(indices, dtype=np.int64)
        return MultiViewNormalData(
            data_dir=self.data_dir,
            view_ids=[self.view_ids[i] for i in idx],
            K=self.K[idx],
            c2w=self.c2w[idx],
            normals=self.normals[idx],
            masks=self.masks[idx],
            normalisation=self.normalisation,
            depths=None if self.depths is None else self.depths[idx],
            gt_mesh=self.gt_mesh,
            gt_c2w=None if self.gt_c2w is None else self.gt_c2w[idx],
            pose_init=self.pose_init,
            normal_space=self.normal_space,
        )
