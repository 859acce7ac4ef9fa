"""Per-camera SE(3) pose corrections (pypose), left-applied in the normalised frame; nerfstudio-free.

Every training camera ``i`` has a correction ``xi_i`` in se(3) (a pypose ``LieTensor``, translation first) and its
current camera-to-world is::

    c2w_i = Exp(S xi_i) @ A_i @ c2w_init_i          (OpenCV axes, normalised frame)

with ``S = diag(u, u, u, 1, 1, 1)``: the stored translation is in units of ``u`` (``translation_unit``, by default
the cameras' mean distance from the object) so that every coordinate moves the image at a comparable rate. With
``coordinates camera`` the optimiser steps ``z_i`` and ``xi_i = B_i z_i`` (:func:`camera_motion_basis`: each camera's
orbit, roll, turns about its centre and distance, built once from its start).

``c2w_init_i`` are the poses the training rays were built from (``MultiViewNormalData.c2w``) and ``A_i`` a fixed
pre-alignment (identity unless ``recentre_on_masks``). ``L_i = Exp(S xi_i) @ A_i`` is applied on the left, i.e. in
world axes: a ray ``(o, d)`` of camera ``i`` becomes ``(R_L o + t_L, R_L d)`` and a world normal that was rotated
into the world with the initial pose becomes ``R_L n``. Left-applied corrections turn about the object (the origin
of the normalised frame), the natural motion of a turntable or orbit error.

The gauge (one global rigid motion of all cameras and the surface leaves every image unchanged) is fixed in one of
two ways. ``frozen-camera`` (PMNI) freezes one camera: its ``xi`` never enters the graph and its correction is
exactly ``A_i``. ``mean`` lets every camera move and uses ``xi_i - mean_j xi_j`` in place of ``xi_i``: a common
correction (to first order a rigid motion of the whole rig) changes nothing. With a frozen camera, the surface is
tied to that camera's initial error, and the other cameras can only follow it through the slowest, least observed
motion of the rig (all of them turning together about the object); that costs most when the frozen camera starts
far off, as from a ring (``presets.pose_free_gauge`` picks by start). A global scale remains unobservable from normals
and masks either way; only the unit-sphere bound of the scene and the initialisation hold it, which is why pose
metrics align by a similarity.

Everything that moves something by the current correction lives here: rays (:meth:`PoseModel.correct_rays`),
camera-space targets (:meth:`PoseModel.rotate_targets`), cameras (:meth:`PoseModel.current_c2w`). nerfstudio sees
this model through :class:`pmni_method.nerfstudio_adapter.pose_adapter.PoseRefiner`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Dict, Literal, Optional, Sequence, Tuple, Type

import numpy as np
import torch
from torch import Tensor, nn

from pmni_method import cameras_torch
from pmni_method.poses.from_masks import recentre_on_masks

with warnings.catch_warnings():
    # pypose's import uses torch.jit.script, which current torch flags as deprecated on every import.
    warnings.simplefilter("ignore", FutureWarning)
    import pypose as pp


@dataclass
class PoseModelConfig:
    """Left-applied per-camera SE(3) corrections (pypose); the gauge is fixed by a frozen camera or the mean."""

    _target: Type = field(default_factory=lambda: PoseModel)
    """Target class to instantiate."""
    mode: Literal["auto", "off", "SE3"] = "off"
    """off: poses stay as loaded; SE3: one left-applied se(3) correction per training camera (param group
    camera_opt); auto: SE3 for any start but --pose-init gt (decided by presets.pose_settings)."""
    trans_l2_penalty: float = 0.0
    """Weight of the mean norm of the corrections' translation parts (0: a pose-free run must be free to move far)."""
    rot_l2_penalty: float = 0.0
    """Weight of the mean norm of the corrections' rotation parts (radians)."""
    translation_unit: Optional[float] = None
    """Length (normalised units) of one unit of the corrections' translation part; None: the cameras' mean distance
    from the origin. A unit of translation then shifts the image about as much as a radian of rotation does, so
    Adam, which steps every coordinate at the same rate, moves a camera about its own centre (translation = distance
    x angle) as readily as about the object."""
    gauge: Literal["auto", "frozen-camera", "mean"] = "frozen-camera"
    """How the unobservable global motion is fixed. frozen-camera: one camera never moves (PMNI). mean: every camera
    moves and the corrections are taken relative to their mean, so no camera's initial error anchors the others.
    auto: by the start (presets.pose_free_gauge: mean from a ring, else frozen-camera)."""
    frozen_camera: int = 0
    """With gauge frozen-camera: the training camera whose correction stays exactly the identity; negative counts
    from the end."""
    recentre_on_masks: Optional[bool] = False
    """None: on for a pose-free start (any but gt) when refining. Before training, turn each camera about its own
    centre so that its mask centroid looks at the object centre (recentre_target). Pose-free starts can be off by
    more than the object's angular size, so that foreground rays miss the scene sphere and give no gradient; this
    brings every view onto the object."""
    coordinates: Literal["world", "camera"] = "world"
    """What the optimiser steps. world: the se(3) vector of each left correction. camera: six motions of each
    camera, built from its start (turns about the object about the camera's up and right axes, roll, turns about
    its own centre about the same two axes, motion along its axis), so that Adam's per-coordinate step sizes match
    how differently the images see them: a turn about the object changes the image a few hundred times less than a
    turn about the camera's own centre."""
    motion_scales: Tuple[float, float, float, float, float, float] = (3.0, 3.0, 1.0, 1.0, 1.0, 3.0)
    """With coordinates camera: step size of each motion (orbit about up, orbit about right, roll, turn about up,
    turn about right, distance) relative to the learning rate."""
    recentre_target: Literal["auto", "origin", "rays"] = "auto"
    """Where recentring turns each camera. origin: the normalised frame's centre (the object's, for a start in the
    dataset's scale_mat frame); rays: the point the mask-centroid rays meet, then the rig is shifted to put it at the
    origin (a ring's frame is made up); auto: rays from a ring start, origin otherwise (presets.pose_settings)."""


def se3_matrices(xi: Tensor) -> Tensor:
    """4x4 matrices (..., 4, 4) of se(3) vectors (..., 6) ``[tau, phi]`` (pypose order: translation first)."""
    return pp.se3(xi).Exp().matrix()


def camera_motion_basis(c2w: np.ndarray, unit: float, scales: Sequence[float]) -> np.ndarray:
    """[N, 6, 6] maps from each camera's six motions to the unscaled se(3) vector ``[tau / unit, phi]`` of a left
    correction (columns: orbit about the camera's up axis and about its right axis through the origin, roll about its
    axis, turns about its own centre about up and right, motion along its axis in units of ``unit``; one unit of
    each is ``scales[k]`` radians or units).

    A left rotation ``phi`` about an axis through the point ``p`` has ``tau = p x phi``: through the origin it is a
    pure rotation, through the camera centre ``C`` it also carries ``C x phi``.
    """
    c2w = np.asarray(c2w, dtype=np.float64)
    out = np.zeros((len(c2w), 6, 6))
    for i, pose in enumerate(c2w):
        R, C = pose[:3, :3], pose[:3, 3]
        right, down, axis = R[:, 0], R[:, 1], R[:, 2]
        zero = np.zeros(3)
        columns = [
            (zero, down), (zero, right), (np.cross(C, axis) / unit, axis),
            (np.cross(C, down) / unit, down), (np.cross(C, right) / unit, right), (axis, zero),
        ]
        out[i] = np.stack([np.concatenate(c) for c in columns], axis=1) * np.asarray(scales, dtype=np.float64)
    return out


class PoseModel(nn.Module):
    """Per-training-camera left SE(3) corrections ``L_i = Exp(S xi_i) @ A_i`` as pypose parameters."""

    def __init__(
        self,
        config: PoseModelConfig,
        c2w_init: Optional[np.ndarray | Tensor] = None,
        K: Optional[np.ndarray] = None,
        masks: Optional[np.ndarray] = None,
        num_cameras: Optional[int] = None,
        non_trainable_camera_indices: Optional[Tensor] = None,
    ) -> None:
        super().__init__()
        self.config = config
        if c2w_init is None and num_cameras is None:
            raise ValueError("the pose model needs the initial camera-to-worlds (c2w_init) or at least num_cameras")
        self.num_cameras = int(len(c2w_init) if c2w_init is not None else num_cameras)
        if config.mode not in ("off", "SE3"):
            # "auto" (and gauge / recentring left to the start) is decided by presets.pose_settings first.
            raise ValueError(f"camera_optimizer.mode must be 'off' or 'SE3' for pmni here, not {config.mode!r}")
        if not self.enabled:
            return
        if c2w_init is None:
            raise ValueError("pose refinement needs the initial camera-to-worlds of the training cameras (c2w_init)")
        n = self.num_cameras
        c2w = torch.as_tensor(np.asarray(c2w_init, dtype=np.float64), dtype=torch.float32)
        if c2w.shape != (n, 4, 4):
            raise ValueError(f"c2w_init has shape {tuple(c2w.shape)}, expected ({n}, 4, 4)")
        frozen = config.frozen_camera + n if config.frozen_camera < 0 else config.frozen_camera
        if not 0 <= frozen < n:
            raise ValueError(f"frozen_camera {config.frozen_camera} is not a training camera (0..{n - 1})")
        # Built from the data on every start (as the training rays are), so it is not saved with the checkpoint.
        self.register_buffer("c2w_init", c2w, persistent=False)
        start = np.tile(np.eye(4), (n, 1, 1))
        if config.recentre_on_masks:
            if K is None or masks is None:
                raise ValueError("recentre_on_masks needs the intrinsics and masks of the training views")
            start = recentre_on_masks(c2w.double().numpy(), K, masks, consensus=config.recentre_target == "rays")
        # Saved: a checkpoint alone then fixes the refined poses, whatever masks a later run would recentre on.
        self.register_buffer("start", torch.as_tensor(start, dtype=torch.float32))
        if self.gauge not in ("frozen-camera", "mean"):
            raise ValueError(f"camera_optimizer.gauge must be 'frozen-camera' or 'mean', not {config.gauge!r}")
        free = torch.ones(n, 1)
        if self.gauge == "frozen-camera":
            free[frozen] = 0.0
        if non_trainable_camera_indices is not None:
            free[non_trainable_camera_indices.long().cpu()] = 0.0
        self.register_buffer("free", free, persistent=False)
        unit = config.translation_unit
        if unit is None:
            unit = float(c2w[:, :3, 3].norm(dim=-1).mean())
        if not (np.isfinite(unit) and unit > 0):
            raise ValueError(f"translation_unit must be a positive length, got {unit}")
        # Saved with the corrections: their meaning depends on it.
        self.register_buffer("xi_scale", torch.tensor([unit] * 3 + [1.0] * 3))
        self.xi = pp.Parameter(pp.identity_se3(n))
        if self.coordinates == "camera":
            # Saved too, for the same reason; a checkpoint of the other coordinates then fails to load (key mismatch)
            # instead of being read as the wrong motions.
            basis = camera_motion_basis(start @ c2w.double().numpy(), unit, config.motion_scales)
            self.register_buffer("xi_basis", torch.as_tensor(basis, dtype=torch.float32))
        elif self.coordinates != "world":
            raise ValueError(f"camera_optimizer.coordinates must be 'world' or 'camera', not {config.coordinates!r}")

    # ------------------------------------------------------------------ state
    @property
    def enabled(self) -> bool:
        return self.config.mode != "off"

    @property
    def coordinates(self) -> str:
        # Configs saved before the option existed stepped the se(3) vectors.
        return getattr(self.config, "coordinates", "world")

    @property
    def gauge(self) -> str:
        # Configs saved before the gauge option existed froze a camera.
        return getattr(self.config, "gauge", "frozen-camera")

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        # A LieTensor in a checkpoint cannot be read back by torch.load(weights_only=True) (torch >= 2.6 default):
        # store the plain se(3) vector; loading copies it back into the pypose parameter.
        key = prefix + "xi"
        if key in destination:
            value = destination[key]
            destination[key] = value.as_subclass(torch.Tensor) if keep_vars else value.detach().as_subclass(torch.Tensor)

    def param_groups(self) -> Dict[str, list]:
        """``camera_opt``: the se(3) corrections (empty when off)."""
        return {"camera_opt": [self.xi]} if self.enabled else {}

    # ------------------------------------------------------------------ transforms
    def left_transforms(self, indices: Optional[Tensor] = None) -> Tensor:
        """Current left corrections ``L = Exp(S xi) @ A`` [n, 4, 4] of the given training cameras (all by default)."""
        if not self.enabled:
            n = self.num_cameras if indices is None else int(indices.reshape(-1).shape[0])
            return torch.eye(4).expand(n, 4, 4)
        xi = self._effective_xi()
        if indices is not None:
            indices = indices.reshape(-1).long().to(xi.device)
        xi = (xi if indices is None else xi[indices]) * self.xi_scale
        free = self.free if indices is None else self.free[indices]
        start = self.start if indices is None else self.start[indices]
        # Multiplying by 0 cuts the frozen camera out of the graph; where() keeps its transform bit-exact.
        L = se3_matrices(xi * free) @ start
        return torch.where(free[..., None] > 0, L, start)

    def _effective_xi(self) -> Tensor:
        """The corrections as applied (unscaled se(3) vectors) [N, 6]: relative to the free cameras' mean under the mean
        gauge."""
        xi = self.xi.as_subclass(torch.Tensor)
        if self.coordinates == "camera":
            xi = torch.einsum("nij,nj->ni", self.xi_basis.to(xi), xi)
        return self._centred(xi) if self.gauge == "mean" else xi

    def _centred(self, xi: Tensor) -> Tensor:
        """``xi`` [N, 6] less the mean of the free cameras' rows."""
        free = self.free.to(xi.dtype)
        return xi - (xi * free).sum(0, keepdim=True) / free.sum().clamp(min=1.0)

    @torch.no_grad()
    def set_left_transforms(self, indices: Sequence[int], transforms: Sequence[Tensor]) -> None:
        """Set the given cameras' corrections so that their left transforms become the rigid ``transforms`` (4x4
        each); cameras that do not move (frozen, non-trainable) are left alone. Used by solvers that move poses
        outside the optimiser (pose polish).

        Under the mean gauge only moves relative to the rig can be represented: the mean of the requested changes
        is removed (the surface, not the cameras, takes up a common motion), so every camera's transform may shift
        by that common part."""
        if not self.enabled:
            return
        effective = self._effective_xi().double().clone()
        for index, L in zip(indices, transforms):
            if float(self.free[index]) == 0.0:
                continue
            M = L.double().to(self.start.device) @ torch.linalg.inv(self.start[index].double())
            effective[index] = pp.mat2SE3(M, check=False).Log().as_subclass(torch.Tensor) / self.xi_scale.double()
        if self.gauge == "mean":
            effective = self._centred(effective)
        if self.coordinates == "camera":
            effective = torch.linalg.solve(self.xi_basis.double(), effective[..., None])[..., 0]
        # Frozen gauge: rows not asked for (and frozen rows) are written back unchanged.
        self.xi.data.copy_(effective.to(self.xi.dtype))

    def current_c2w(self, indices: Optional[Tensor] = None) -> Tensor:
        """Current OpenCV camera-to-worlds [n, 4, 4] (normalised frame) of the given training cameras, differentiable."""
        c2w = self.c2w_init if indices is None else self.c2w_init[indices.reshape(-1).long().to(self.c2w_init.device)]
        return self.left_transforms(indices) @ c2w

    @torch.no_grad()
    def refined_c2w(self) -> np.ndarray:
        """(N, 4, 4) float64 OpenCV camera-to-worlds of all training cameras as currently refined."""
        return self.current_c2w().double().cpu().numpy()

    def correct_rays(self, origins: Tensor, directions: Tensor, camera_indices: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """Move rays [N, 3] of training cameras [N] to the current poses; also return each ray's rotation [N, 3, 3]."""
        L = self.left_transforms(camera_indices).to(origins)
        origins, directions = cameras_torch.transform_rays(L, origins, directions)
        return origins, directions, L[:, :3, :3]

    @staticmethod
    def rotate_targets(rotations: Tensor, normals: Tensor) -> Tensor:
        """Normals [N, 3] rotated into the world with each view's initial pose, under the current one: ``R n``.

        The maps hold normals in each camera's initial frame: under the current pose that normal is
        ``R_current R_initial^T n = R_correction n``, so the rotation also learns from the normal loss."""
        return torch.einsum("nij,nj->ni", rotations, normals.to(rotations))

    def regulariser(self) -> Optional[Tensor]:
        """Weighted L2 penalty on the corrections (None when off or both weights are 0)."""
        if not self.enabled or (self.config.trans_l2_penalty <= 0 and self.config.rot_l2_penalty <= 0):
            return None
        xi = self._effective_xi()
        return (
            xi[:, :3].norm(dim=-1).mean() * self.config.trans_l2_penalty
            + xi[:, 3:].norm(dim=-1).mean() * self.config.rot_l2_penalty
        )

    @torch.no_grad()
    def motion_metrics(self) -> Dict[str, Tensor]:
        """How far the cameras have moved from where they started: rotation (degrees) and centre displacement."""
        if not self.enabled:
            return {}
        L = self.left_transforms()
        R = L[:, :3, :3]
        cos = ((R.diagonal(dim1=-2, dim2=-1).sum(-1) - 1.0) / 2.0).clamp(-1.0, 1.0)
        angle = torch.rad2deg(torch.acos(cos))
        centres = self.c2w_init[:, :3, 3]
        moved = (torch.einsum("nij,nj->ni", R, centres) + L[:, :3, 3] - centres).norm(dim=-1)
        return {
            "camera_opt_rotation_mean": angle.mean(),
            "camera_opt_rotation_max": angle.max(),
            "camera_opt_translation_mean": moved.mean(),
            "camera_opt_translation_max": moved.max(),
        }

