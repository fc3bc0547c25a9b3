"""Training targets for Mask R-CNN: a box and a mask for the white cell in every crop, taken from the
source's true masks when it has them (the synthetic world) and from classical pseudo-masks otherwise.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from wbcvae.data.datamodule import SplitDataModule
from wbcvae.data.image_dataset import SPLITS, CropDataset, split_manifest
from wbcvae.data.bad_files import BadFiles
from wbcvae.data.images import check_images, read_manifest
from wbcvae.errors import InputError
from wbcvae.segmentation.classical import StainSegmenter

TARGET_KINDS = ("auto", "true", "pseudo")


def target_from_mask(cell: Tensor, label: int = 1) -> dict[str, Tensor]:
    """torchvision detection target for one cell mask (H×W or 1×H×W): `boxes` 1×4 (x1, y1, x2, y2,
    x2/y2 exclusive), `labels` [label], `masks` 1×H×W uint8. An empty mask gives zero objects."""
    mask = cell.reshape(cell.shape[-2:]) > 0.5
    ys, xs = torch.nonzero(mask, as_tuple=True)
    if len(xs) == 0:
        return {
            "boxes": torch.zeros((0, 4)),
            "labels": torch.zeros(0, dtype=torch.int64),
            "masks": torch.zeros((0, *mask.shape), dtype=torch.uint8),
        }
    box = torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()
    return {"boxes": box[None], "labels": torch.tensor([label], dtype=torch.int64), "masks": mask[None].to(torch.uint8)}


def pseudo_masks(crops: CropDataset, segmenter: StainSegmenter | None = None) -> np.ndarray:
    """Classical cell masks for every crop, bit-packed (N×S×ceil(S/8) uint8): computed once per run,
    small enough to keep in memory for tens of thousands of crops."""
    segmenter = segmenter or StainSegmenter()
    packed = []
    for i in tqdm(range(len(crops)), desc="pseudo-masks", unit="crop"):
        image = crops[i]["image"].permute(1, 2, 0).numpy()
        packed.append(np.packbits(segmenter(image).cell, axis=-1))
    return np.stack(packed) if packed else np.zeros((0, crops.crop_size, (crops.crop_size + 7) // 8), np.uint8)


class SegmentationDataset(Dataset):
    """(image, target) pairs for Mask R-CNN over a `CropDataset`.

    `packed_masks` (from `pseudo_masks`) replaces the source's masks when given; otherwise the crops
    must carry true masks. `augment` flips and rotates by multiples of 90°: a smear has no up or left.
    `cell_types`: the target's label is the crop's class + 1 (see `CELL_TYPE_NAMES`), else 1 ("a cell").
    """

    def __init__(
        self, crops: CropDataset, packed_masks: np.ndarray | None = None, augment: bool = False, cell_types: bool = False
    ):
        if packed_masks is None and not crops.has_masks:
            raise InputError("this source has no masks: train on pseudo-masks (targets: pseudo or auto)")
        self.crops = crops
        self.packed_masks = packed_masks
        self.augment = augment
        self.cell_types = cell_types

    def __len__(self) -> int:
        return len(self.crops)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.crops[i]
        image = item["image"]
        if self.packed_masks is None:
            cell = item["mask"][0]
        else:
            side = image.shape[-1]
            cell = torch.from_numpy(np.unpackbits(self.packed_masks[i], axis=-1, count=side).astype(np.float32))
        if self.augment:
            image, cell = flip_and_turn(image, cell)
        label = int(item["label"]) + 1 if self.cell_types else 1
        return {"image": image, "target": target_from_mask(cell, label), "index": item["index"]}


def flip_and_turn(*planes: Tensor) -> tuple[Tensor, ...]:
    """The same random turn by a multiple of 90°, and flip half the time, for every plane given (a crop and
    its mask): a smear has no up or left."""
    turns = int(torch.randint(4, ()))
    planes = tuple(torch.rot90(plane, turns, dims=(-2, -1)) for plane in planes)
    if torch.rand(()) < 0.5:
        planes = tuple(plane.flip(-1) for plane in planes)
    return tuple(plane.contiguous() for plane in planes)


def collate_detection(items: list[dict[str, Any]]) -> dict[str, Any]:
    """torchvision detection models take lists of images and targets, not stacked tensors."""
    return {
        "images": [item["image"] for item in items],
        "targets": [item["target"] for item in items],
        "index": torch.stack([item["index"] for item in items]),
    }


class SegmentationDataModule(SplitDataModule):
    """Crops of `source` at `input_size` with their Mask R-CNN targets, split by `split_manifest`.

    targets: `true` uses the source's masks, `pseudo` the classical segmenter's, `auto` the first that
    exists. Crops whose pseudo-mask is empty (no nucleus found) are left out of training and counted
    in `self.without_target`; unreadable images are left out (or stop the run) by `bad_files`.
    `cell_types` is the model's (`train_segmentation` passes `model.cell_types` on).
    """

    collate_fn = staticmethod(collate_detection)

    def __init__(
        self,
        source: str | os.PathLike,
        input_size: int = 288,
        targets: str = "auto",
        batch_size: int = 8,
        num_workers: int = 0,
        fractions: tuple[float, float, float] = (0.8, 0.2, 0.0),
        seed: int = 0,
        unknown: str = "skip",
        bad_files: str = "skip",
        cell_types: bool = False,
    ):
        super().__init__()
        if targets not in TARGET_KINDS:
            raise InputError(f"targets {targets!r} is not one of {TARGET_KINDS}")
        self.save_hyperparameters()
        self.bad_files = BadFiles(bad_files)
        self.datasets: dict[str, SegmentationDataset] = {}
        self.target_kind = ""
        self.without_target = 0

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        hp = self.hparams
        frame = check_images(read_manifest(hp.source, unknown=hp.unknown).frame, self.bad_files)
        self.bad_files.report("unreadable image")
        crops = CropDataset(frame, hp.input_size)
        if hp.targets == "true" and not crops.has_masks:
            raise InputError(f"{hp.source}: targets 'true' asked for, but this source has no masks")
        self.target_kind = "true" if crops.has_masks and hp.targets != "pseudo" else "pseudo"
        packed = None
        if self.target_kind == "pseudo":
            packed = pseudo_masks(crops)
            found = packed.reshape(len(packed), -1).any(axis=1)
            self.without_target = int((~found).sum())
            frame, packed = frame[found], packed[found]
        position = {index: i for i, index in enumerate(frame.index)}
        for name, part in zip(SPLITS, split_manifest(frame, hp.fractions, hp.seed)):
            if part.empty:
                continue
            rows = [position[index] for index in part.index]
            self.datasets[name] = SegmentationDataset(
                CropDataset(part, hp.input_size),
                None if packed is None else packed[rows],
                augment=name == "train",
                cell_types=hp.cell_types,
            )
