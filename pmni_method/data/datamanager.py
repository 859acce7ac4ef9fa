"""nerfstudio datamanager: random rays from all training views with their normal, mask and depth targets."""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Literal, Tuple, Type, Union

import torch
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.cameras.rays import RayBundle
from nerfstudio.configs.dataparser_configs import AnnotatedDataParserUnion, all_dataparsers
from nerfstudio.data.datamanagers.base_datamanager import DataManager, DataManagerConfig
from nerfstudio.data.dataparsers.base_dataparser import DataparserOutputs
from nerfstudio.data.datasets.base_dataset import InputDataset
from torch.nn import Parameter

from pmni_method.data.pyramid import ResolutionPyramid, ResolutionScheduleConfig
from pmni_method.data.raystore import RayStore
from pmni_method.data.types import MultiViewNormalData
from pmni_method.errors import PMNIDataError, exit_with_error


def shade_normals(normals: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Normals as an image in [0, 1] (the usual (n + 1) / 2 colouring), black outside the mask."""
    return ((normals + 1.0) * 0.5).clamp(0.0, 1.0) * mask


class PMNIDataset(InputDataset):
    """One split's views; images are the normal maps already in memory (EXR cannot go through PIL)."""

    exclude_batch_keys_from_device: List[str] = []

    def __init__(self, dataparser_outputs: DataparserOutputs, scale_factor: float = 1.0):
        if "pmni_data" not in dataparser_outputs.metadata:
            raise SystemExit("pmni needs the diligent-mv-data dataparser (ns-train pmni ... diligent-mv-data --data DIR)")
        # InputDataset deep-copies metadata; the pixel arrays are large and read-only, so share them instead.
        data = dataparser_outputs.metadata.pop("pmni_data")
        try:
            super().__init__(dataparser_outputs, scale_factor)
        finally:
            dataparser_outputs.metadata["pmni_data"] = data
        self.metadata["pmni_data"] = data
        self.data: MultiViewNormalData = data

    def get_data(self, image_idx: int, image_type: Literal["uint8", "float32"] = "float32") -> Dict:
        normal = torch.from_numpy(self.data.normals[image_idx]).float()
        fg_mask = torch.from_numpy(self.data.masks[image_idx]).float().unsqueeze(-1)
        image = shade_normals(normal, fg_mask)
        if image_type == "uint8":
            image = (image * 255).round().to(torch.uint8)
        data = {"image_idx": image_idx, "image": image, "normal": normal, "fg_mask": fg_mask}
        if self.data.depths is not None:
            data["depth"] = torch.from_numpy(self.data.depths[image_idx]).float().unsqueeze(-1)
        return data


class EvalImages:
    """(camera, batch) pairs of whole eval views, the shape nerfstudio's eval loops expect."""

    def __init__(self, dataset: PMNIDataset, device: Union[torch.device, str]):
        self.dataset = dataset
        self.device = device

    def __len__(self) -> int:
        return len(self.dataset)

    def get(self, idx: int) -> Tuple[Cameras, Dict]:
        camera = self.dataset.cameras[idx : idx + 1].to(self.device)
        batch = {k: (v.to(self.device) if isinstance(v, torch.Tensor) else v) for k, v in self.dataset[idx].items()}
        return camera, batch

    def __iter__(self) -> Iterator[Tuple[Cameras, Dict]]:
        for idx in range(len(self)):
            yield self.get(idx)


@dataclass
class PMNIDataManagerConfig(DataManagerConfig):
    """Rays from all training views, a fixed share of them inside the masks."""

    _target: Type = field(default_factory=lambda: PMNIDataManager)
    """Target class to instantiate."""
    # nerfstudio's dataparser union makes `diligent-mv-data` a subcommand of ns-train, as users expect.
    # Taken from nerfstudio's registry (entry point diligent-mv-data): data/ must not import dataparsers/.
    dataparser: AnnotatedDataParserUnion = field(default_factory=lambda: copy.deepcopy(all_dataparsers["diligent-mv-data"]))
    """Reads the DiLiGenT-MV layout."""
    train_num_rays_per_batch: int = 1024
    """Rays per training step."""
    eval_num_rays_per_batch: int = 1024
    """Rays per evaluation step."""
    fg_fraction: float = 0.5
    """Share of each batch drawn from inside the masks; the rest is uniform over all pixels (background too)."""
    seed: int = 0
    """Seed of the ray sampler."""
    patch_size: int = 1
    """Draw training rays as k x k pixel patches of one view (k >= 2; 1: single pixels); the model's core
    gradient-method patch needs the same patch-size here."""
    resolution_schedule: ResolutionScheduleConfig = field(default_factory=ResolutionScheduleConfig)
    """Coarse-to-fine training over downscaled copies of the loaded views (off by default); train-num-rays-per-batch
    is the count at the loaded resolution."""


class PMNIDataManager(DataManager):
    """Holds every training pixel in memory and hands out random rays; no image decoding during training."""

    config: PMNIDataManagerConfig
    train_dataset: PMNIDataset
    eval_dataset: PMNIDataset

    def __init__(
        self,
        config: PMNIDataManagerConfig,
        device: Union[torch.device, str] = "cpu",
        test_mode: Literal["test", "val", "inference"] = "val",
        world_size: int = 1,
        local_rank: int = 0,
        **kwargs,
    ):
        self.config = config
        self.device = device
        self.test_mode = test_mode
        if config.data is not None:
            config.dataparser.data = Path(config.data)
        else:
            config.data = config.dataparser.data
        self.dataparser = config.dataparser.setup()
        self.train_dataparser_outputs = self.dataparser.get_dataparser_outputs(split="train")
        self.train_dataset = PMNIDataset(self.train_dataparser_outputs)
        eval_split = "test" if test_mode in ("test", "inference") else "val"
        self.eval_dataset = PMNIDataset(self.dataparser.get_dataparser_outputs(split=eval_split))
        super().__init__()

    def setup_train(self) -> None:
        # getattr: config.yml files written before the schedule existed load without the field.
        schedule = getattr(self.config, "resolution_schedule", None) or ResolutionScheduleConfig()
        try:
            schedule.validate()
        except ValueError as err:
            exit_with_error(str(err))
        try:
            self.train_pyramid = ResolutionPyramid(
                self.train_dataset.data, schedule, self.device, self.config.fg_fraction, self.config.seed,
                self.config.patch_size,
            )
        except PMNIDataError as err:
            # A level too coarse for the data (masks that vanish when averaged): one line, as for bad data.
            exit_with_error(str(err))
        # The finest level; its generator is the pyramid's one stream, which checkpoints save as train_rays'.
        self.train_rays = self.train_pyramid.finest
        # The schedule's fractions are of the whole run; the datamanager cannot know its length, the pipeline sets it.
        self.run_length: int = 0
        self._train_rays_now = self.config.train_num_rays_per_batch
        # The model reaches the training views through its metadata (this dict): one copy of the normal maps.
        self.train_dataset.metadata["pmni_rays"] = self.train_rays

    def setup_eval(self) -> None:
        self.eval_rays = RayStore(self.eval_dataset.data, self.device, self.config.fg_fraction, self.config.seed + 1)
        self.fixed_indices_eval_dataloader = EvalImages(self.eval_dataset, self.device)
        self.eval_rng = random.Random(self.config.seed)

    @staticmethod
    def _to_ray_bundle(rays: Dict[str, torch.Tensor], K: torch.Tensor) -> Tuple[RayBundle, Dict]:
        cam = rays["camera_indices"]
        ray_bundle = RayBundle(
            origins=rays["origins"],
            directions=rays["directions"],
            pixel_area=(1.0 / (K[cam, 0, 0] * K[cam, 1, 1])).unsqueeze(-1),
            camera_indices=cam.unsqueeze(-1),
            metadata={"directions_norm": rays["directions_norm"]},
        )
        batch = {k: rays[k] for k in ("normal", "fg_mask", "depth", "indices", "mask_boundary_px") if k in rays}
        return ray_bundle, batch

    def next_train(self, step: int) -> Tuple[RayBundle, Dict]:
        self.train_count += 1
        pyramid, num_rays = self.train_pyramid, self.config.train_num_rays_per_batch
        if pyramid.enabled and self.run_length < 1:
            raise RuntimeError("the resolution schedule needs the run length: set the datamanager's run_length")
        store = pyramid.store_at(step, self.run_length)
        self._train_rays_now = pyramid.rays_at(num_rays, step, self.run_length)
        rays = pyramid.sample(num_rays, step, self.run_length)
        return self._to_ray_bundle(rays, store.K)

    def next_eval(self, step: int) -> Tuple[RayBundle, Dict]:
        self.eval_count += 1
        rays = self.eval_rays.sample(self.config.eval_num_rays_per_batch)
        return self._to_ray_bundle(rays, self.eval_rays.K)

    def next_eval_image(self, step: int) -> Tuple[Cameras, Dict]:
        return self.fixed_indices_eval_dataloader.get(self.eval_rng.randrange(len(self.eval_dataset)))

    def get_train_rays_per_batch(self) -> int:
        # nerfstudio's rays/s counts the last batch, which a resolution schedule makes smaller early on.
        return int(getattr(self, "_train_rays_now", self.config.train_num_rays_per_batch))

    def get_eval_rays_per_batch(self) -> int:
        return self.config.eval_num_rays_per_batch

    def get_datapath(self) -> Path:
        assert self.config.dataparser.data is not None
        return Path(self.config.dataparser.data)

    def get_param_groups(self) -> Dict[str, List[Parameter]]:
        return {}
