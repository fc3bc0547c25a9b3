"""Pretrain Mask R-CNN's ResNet on the labelled crops themselves: a cell-type classifier whose weights
become the detector's starting point (`model.weights`), so the RoIAlign features h know what tells the
types apart before the detector learns where the cell is.

Nothing is downloaded: the network starts from random weights and sees only the source's own crops and
labels. It writes a torchvision ResNet state dict, fitted to the detector's pixel normalisation
(`fit_to_detector_pixels`; `load_weights` puts its layers into the backbone body, its `fc` fits nothing and
is skipped) and, beside it, a JSON of what it scored.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torchvision
from torch import Tensor, nn

from wbcvae.data.image_dataset import CropDataModule, CropDataset
from wbcvae.data.images import read_manifest
from wbcvae.errors import InputError
from wbcvae.segmentation.maskrcnn import PIXEL_MEAN, PIXEL_STD, check_backbone
from wbcvae.segmentation.targets import flip_and_turn
from wbcvae.utils.atomic import atomic_path
from wbcvae.vocabulary import CLASSES


def fit_to_detector_pixels(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A ResNet state dict trained on pixels in [0, 1], rewritten for the detector's normalised pixels
    x' = (x − PIXEL_MEAN) / PIXEL_STD, so the detector's backbone body computes what the classifier did.

    conv1 is linear and bias-free: conv1(x) = (W · std) * x' + W * mean, so its weights are scaled per input
    channel and the constant W * mean is taken off bn1's running mean. Exact except in conv1's zero padding
    at the crop's edge (a pad of 0 in x' is the mean colour, not black).
    """
    weight = state["conv1.weight"]
    mean = torch.tensor(PIXEL_MEAN, dtype=weight.dtype).view(1, -1, 1, 1)
    std = torch.tensor(PIXEL_STD, dtype=weight.dtype).view(1, -1, 1, 1)
    return {
        **state,
        "conv1.weight": weight * std,
        "bn1.running_mean": state["bn1.running_mean"] - (weight * mean).sum(dim=(1, 2, 3)),
    }


class CropClassifier(L.LightningModule):
    """A torchvision ResNet (random init, batch norm) naming each crop's cell type; AdamW with a cosine
    rate over the whole run."""

    def __init__(self, backbone: str = "resnet18", lr: float = 1e-3, weight_decay: float = 1e-4, augment: bool = True):
        super().__init__()
        check_backbone(backbone)
        self.save_hyperparameters()
        self.network: nn.Module = torchvision.models.get_model(backbone, weights=None, num_classes=len(CLASSES))

    def forward(self, images: Tensor) -> Tensor:
        return self.network(images)

    def _common_step(self, batch: dict[str, Tensor], stage: str) -> Tensor:
        images = batch["image"]
        if stage == "train" and self.hparams.augment:
            images = torch.stack([flip_and_turn(image)[0] for image in images])
        logits = self(images)
        loss = nn.functional.cross_entropy(logits, batch["label"])
        accuracy = (logits.argmax(1) == batch["label"]).float().mean()
        self.log_dict({f"{stage}/loss": loss, f"{stage}/accuracy": accuracy}, prog_bar=True, batch_size=len(images))
        return loss

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self._common_step(batch, "train")

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._common_step(batch, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._common_step(batch, "test")

    def configure_optimizers(self) -> dict[str, Any]:
        optimiser = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        steps = max(1, self.trainer.estimated_stepping_batches)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=steps)
        return {"optimizer": optimiser, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def pretrain_backbone(
    source: str | os.PathLike,
    out: str | os.PathLike,
    backbone: str = "resnet18",
    input_size: int = 128,
    epochs: int = 15,
    batch_size: int = 32,
    lr: float = 1e-3,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_source: str | os.PathLike | None = None,
    accelerator: str = "auto",
) -> dict[str, Any]:
    """Train the classifier on `source` (`val_fraction` of it held out for validation), score it on
    `test_source` if given, write the fitted ResNet state dict to `out` (.pth) and its scores beside it
    (.json); return the scores."""
    out = Path(out)
    if out.suffix != ".pth":
        raise InputError(f"{out}: the weights file must end in .pth (it is what `model.weights` reads)")
    L.seed_everything(seed, workers=True)
    data = CropDataModule(
        source, crop_size=input_size, batch_size=batch_size, fractions=(1 - val_fraction, val_fraction, 0.0), seed=seed
    )
    module = CropClassifier(backbone, lr=lr)
    trainer = L.Trainer(
        max_epochs=epochs, accelerator=accelerator, devices=1, logger=False, enable_checkpointing=False,
        default_root_dir=str(out.parent), enable_model_summary=False,
    )
    started = time.perf_counter()
    trainer.fit(module, datamodule=data)
    scores: dict[str, Any] = {
        "source": str(source),
        "backbone": backbone,
        "input_size": input_size,
        "epochs": epochs,
        "train_crops": len(data.datasets["train"]),
        "train_seconds": round(time.perf_counter() - started, 1),
    }
    if "val/accuracy" in trainer.callback_metrics:  # the last epoch's validation pass
        scores["val_accuracy"] = float(trainer.callback_metrics["val/accuracy"])
    if test_source is not None:
        test = CropDataset(read_manifest(test_source).frame, input_size)
        loader = torch.utils.data.DataLoader(test, batch_size=batch_size)
        scores["test_source"] = str(test_source)
        scores["test_accuracy"] = trainer.test(module, dataloaders=loader, verbose=False)[0]["test/accuracy"]
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        torch.save(fit_to_detector_pixels(module.network.state_dict()), tmp)
    with atomic_path(out.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(scores, indent=2))
    return scores
