"""From crops to the image VAE's inputs: per crop the white cell's RoIAlign features, its mask, the crop
resized to the VAE's target size, and the detection score, written into a resumable `FeatureStore`.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Sampler
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.transform import resize_boxes
from tqdm.auto import tqdm

import wbcvae
from wbcvae.data.image_dataset import CropDataset
from wbcvae.data.bad_files import BadFiles
from wbcvae.data.images import read_manifest, read_or_record
from wbcvae.errors import InputError
from wbcvae.features.pose import POSES, canonical_pose
from wbcvae.features.store import ORIGINS, TARGET_SIZE, UNREADABLE, FeatureStore, fingerprint_setting
from wbcvae.segmentation.classical import StainMasks, StainSegmenter
from wbcvae.segmentation.maskrcnn import central_detection, file_sha256, load_maskrcnn

DETECTION, PSEUDO_MASK, WHOLE_CROP = (ORIGINS.index(name) for name in ("detection", "pseudo_mask", "whole_crop"))
MASK_SOURCES = ("classical", "detection")


class FeatureExtractor:
    """Runs a Mask R-CNN over a batch of crops and keeps, per crop, the central cell's detection.

    A crop where nothing scores `min_score` is not dropped: its box comes from the classical
    pseudo-mask (origin `pseudo_mask`), or is the whole crop when that finds no nucleus either
    (`whole_crop`), with score 0, so every manifest row gets a row of features and a flag saying how.

    `masks` says whose cell mask is stored, i.e. which pixels the image loss sees: `classical` (the
    stain segmenter's, which beats a briefly trained Mask R-CNN's, see bench/segmentation_quality.py;
    the detection's where it finds no nucleus) or `detection` (the Mask R-CNN's own).

    `pose="canonical"` turns each crop to its canonical pose (`wbcvae.features.pose`) before anything
    reads it: the features, the mask and the target all show the turned cell.
    """

    def __init__(
        self,
        model: MaskRCNN,
        min_score: float = 0.5,
        target_size: int = TARGET_SIZE,
        segmenter: StainSegmenter | None = None,
        masks: str = "classical",
        pose: str = "as_is",
    ):
        if masks not in MASK_SOURCES:
            raise InputError(f"masks {masks!r} is not one of {MASK_SOURCES}")
        if pose not in POSES:
            raise InputError(f"pose {pose!r} is not one of {POSES}")
        self.pose = pose
        self.model = model.eval()
        self.masks = masks
        self.min_score = min_score
        self.target_size = target_size
        self.segmenter = segmenter or StainSegmenter()

    @torch.inference_mode()
    def __call__(self, images: Tensor) -> dict[str, Tensor]:
        """`images` B×3×S×S in [0, 1] on the model's device → `features` B×256×14×14, `mask` B×1×T×T
        (0/1), `target` B×3×T×T in [0, 1], `score` B, `box` B×4 (crop pixels), `origin` B (see ORIGINS)."""
        model = self.model
        if self.pose == "canonical":
            images = canonical_pose(images, self.segmenter)
        sizes = [tuple(image.shape[-2:]) for image in images]
        batch, _ = model.transform(list(images))
        pyramid = model.backbone(batch.tensors)
        proposals, _ = model.rpn(batch, pyramid)
        found, _ = model.roi_heads(pyramid, proposals, batch.image_sizes)
        model_boxes = [f["boxes"].clone() for f in found]  # postprocess rescales in place
        found = model.transform.postprocess(found, batch.image_sizes, sizes)

        device = images.device
        boxes, masks, scores, origins = [], [], [], []  # boxes in model pixels on `device`; masks on the CPU
        for i, (image, hit) in enumerate(zip(images, found)):
            pick = central_detection(hit["boxes"], hit["scores"], sizes[i], self.min_score)
            pseudo = self.segmenter(image.permute(1, 2, 0).cpu().numpy()) if self.masks == "classical" or pick is None else None
            if pick is not None:
                boxes.append(model_boxes[i][pick])
                masks.append(torch.from_numpy(pseudo.cell) if pseudo is not None and pseudo.found else hit["masks"][pick, 0].cpu() > 0.5)
                scores.append(float(hit["scores"][pick]))
                origins.append(DETECTION)
                continue
            box, mask, origin = self._fallback(image, pseudo)
            boxes.append(resize_boxes(box[None], sizes[i], batch.image_sizes[i])[0].to(device))
            masks.append(mask)
            scores.append(0.0)
            origins.append(origin)

        features = model.roi_heads.mask_roi_pool(pyramid, [b[None] for b in boxes], batch.image_sizes)
        crop_boxes = [resize_boxes(b[None], batch.image_sizes[i], sizes[i])[0].cpu() for i, b in enumerate(boxes)]
        size = (self.target_size, self.target_size)
        stacked = torch.stack(masks).to(device)[:, None].float()
        return {
            "features": features,
            "mask": (F.interpolate(stacked, size=size, mode="bilinear", antialias=True) > 0.5).to(torch.uint8),
            "target": F.interpolate(images, size=size, mode="bilinear", antialias=True).clamp(0, 1),
            "score": torch.tensor(scores),
            "box": torch.stack(crop_boxes),
            "origin": torch.tensor(origins, dtype=torch.uint8),
        }

    @staticmethod
    def _fallback(image: Tensor, pseudo: StainMasks) -> tuple[Tensor, Tensor, int]:
        box = pseudo.box()
        if box is None:
            height, width = image.shape[-2:]
            return torch.tensor([0.0, 0.0, width, height]), torch.ones((height, width), dtype=torch.bool), WHOLE_CROP
        return torch.tensor(box), torch.from_numpy(pseudo.cell), PSEUDO_MASK


class ChunkSampler(Sampler[list[int]]):
    """Batches of the given rows, grouped by `row // batch_size`: a restart recomputes its missing rows in
    exactly the batches an uninterrupted run used, so its numbers match bit for bit."""

    def __init__(self, rows: np.ndarray, batch_size: int):
        self.chunks = [list(map(int, c)) for c in np.split(rows, np.flatnonzero(np.diff(rows // batch_size)) + 1) if len(c)]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.chunks)

    def __len__(self) -> int:
        return len(self.chunks)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def extract_features(
    source: str | os.PathLike,
    checkpoint: str | os.PathLike,
    store_dir: str | os.PathLike,
    batch_size: int = 16,
    num_workers: int = 0,
    min_score: float = 0.5,
    device: str = "auto",
    overwrite: bool = False,
    unknown: str = "skip",
    progress: bool = True,
    bad_files: str = "skip",
    masks: str = "classical",
    pose: str = "as_is",
) -> FeatureStore:
    """Fill the store at `store_dir` with one row per crop of `source`; only rows not yet done are computed.

    An existing store made from another checkpoint, source or settings is refused (`overwrite`
    replaces it), so a resumed store never mixes two models' features. A crop whose image cannot be
    decoded gets origin `unreadable` and no data under `bad_files="skip"` (listed in the provenance's
    `unreadable`, path → reason), or stops the run naming it under `"fail"`.
    """
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    bad = BadFiles(bad_files)
    manifest = read_manifest(source, unknown=unknown)
    frame = manifest.frame.reset_index(drop=True)  # store row = manifest row = dataset position
    module = load_maskrcnn(checkpoint)
    input_size = int(module.hparams.input_size)
    fingerprint = {
        "checkpoint_sha256": file_sha256(checkpoint),
        "manifest_sha256": _manifest_hash(frame),
        "input_size": input_size,
        "min_score": min_score,
        "target_size": TARGET_SIZE,
        "masks": masks,  # a store's masks all come from one source
        "pose": pose,
    }
    store = _open_store(Path(store_dir), frame, fingerprint, overwrite, provenance={
        "fingerprint": fingerprint,
        "checkpoint": str(Path(checkpoint).resolve()),
        "model": dict(module.hparams),
        "init": module.init,
        "source": str(Path(source).resolve()),
        "batch_size": batch_size,
        "wbcvae_version": wbcvae.__version__,
    })
    for path, reason in store.provenance.get("unreadable", {}).items():  # found by an earlier, interrupted run
        bad.add(path, reason)
    missing = store.missing()
    if len(missing) == 0:
        print(f"{store.root}: complete ({len(store)} rows), nothing to do")
        bad.report("unreadable image")
        return store

    target = resolve_device(device)
    extractor = FeatureExtractor(module.model.to(target), min_score=min_score, target_size=store.target_size, masks=masks, pose=pose)
    crops = CropDataset(frame, input_size, mark_unreadable=True)
    loader = DataLoader(crops, batch_sampler=ChunkSampler(missing, batch_size), num_workers=num_workers)
    started = time.perf_counter()
    with tqdm(total=len(store), initial=len(store) - len(missing), desc="features", unit="crop", disable=not progress) as bar:
        for batch in loader:
            rows, unreadable = batch["index"].numpy(), ~batch["readable"].numpy()
            values = _to_storage(extractor(batch["image"].to(target)))
            if unreadable.any():
                for row in rows[unreadable]:
                    read_or_record(frame["path"].iat[row], bad)  # decoded again here for its reason; raises under "fail"
                store.update_provenance(unreadable=bad.files)  # before the rows are marked done
                _blank(values, unreadable)
            store.write(rows, values)
            bar.update(len(rows))
    seconds = time.perf_counter() - started
    origin = np.asarray(store.array("origin"))
    counts = ", ".join(f"{name} {int((origin == k).sum())}" for k, name in enumerate(ORIGINS))
    print(f"{store.root}: {len(missing)} rows in {seconds:.1f} s ({len(missing) / seconds:.1f} crops/s); boxes from {counts}")
    bad.report("unreadable image")
    return store


def _blank(values: dict[str, np.ndarray], unreadable: np.ndarray) -> None:
    """Zero the rows of unreadable crops in `values` and set their origin to `unreadable`."""
    for array in values.values():
        array[unreadable] = 0
    values["origin"][unreadable] = UNREADABLE


def _to_storage(out: dict[str, Tensor]) -> dict[str, np.ndarray]:
    return {
        "features": out["features"].cpu().to(torch.float16).numpy(),
        "mask": out["mask"].cpu().numpy(),
        "target": (out["target"] * 255).round().to(torch.uint8).cpu().numpy(),
        "score": out["score"].numpy().astype(np.float32),
        "box": out["box"].numpy().astype(np.float32),
        "origin": out["origin"].numpy(),
    }


def _manifest_hash(frame) -> str:
    text = "\n".join(f"{p}\t{lab}" for p, lab in zip(frame["path"], frame["label"]))
    return hashlib.sha256(text.encode()).hexdigest()


def _open_store(root: Path, frame, fingerprint: dict, overwrite: bool, provenance: dict) -> FeatureStore:
    if root.exists() and not overwrite:
        store = FeatureStore(root)
        theirs = store.provenance.get("fingerprint", {})
        differs = sorted(k for k in fingerprint if fingerprint_setting(theirs, k) != fingerprint[k])
        if differs:
            raise InputError(f"{root}: made with a different {', '.join(differs)}; choose another --store or pass --overwrite")
        return store
    return FeatureStore.create(root, frame, provenance, target_size=TARGET_SIZE)
