"""Mask R-CNN for one white cell per crop: the torchvision model, built without downloading anything,
and its training plan as a LightningModule.

The study feeds the image VAE with this model's RoIAlign features, so the detector is torchvision's
own `MaskRCNN` (a ResNet-FPN backbone; ResNet-50 as the study, ResNet-18 for CPU-size runs). Weights
start random, or come from a local `.pth` the user downloaded themselves; the checkpoint records which.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule
from torch import Tensor, nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.ops import boxes as box_ops
from torchvision.ops.misc import FrozenBatchNorm2d

from wbcvae.checkpoints import MASKRCNN_KEY, read_checkpoint, read_state_dict, rebuild, saved_hparams
from wbcvae.errors import InputError
from wbcvae.segmentation.metrics import iou
from wbcvae.vocabulary import CLASSES

BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101")
CLASS_NAMES = ("background", "white_cell")  # index 1 is the only object class
# With `cell_types`, the detector also names the cell: class k + 1 is the vocabulary's k-th class.
CELL_TYPE_NAMES = ("background", *CLASSES)
NORMS = {
    # Random init needs normalisation that learns; pretrained weights keep their statistics frozen.
    "batch": nn.BatchNorm2d,
    "frozen": FrozenBatchNorm2d,
    "group": partial(nn.GroupNorm, 32),
}
OPTIMIZERS = ("adamw", "sgd")
# The detector normalises each crop's pixels (in [0, 1]) by these before its backbone: torchvision's ImageNet
# defaults, named here so a backbone trained elsewhere (`segmentation.pretrain`) can be fitted to them.
PIXEL_MEAN = (0.485, 0.456, 0.406)
PIXEL_STD = (0.229, 0.224, 0.225)


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in blocks (checkpoints can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_backbone(name: str) -> None:
    if name not in BACKBONES:
        raise InputError(f"backbone {name!r} is not one of {BACKBONES}")


def build_maskrcnn(
    backbone: str = "resnet50",
    input_size: int = 288,
    norm: str = "batch",
    trainable_layers: int = 5,
    proposals: int = 256,
    roi_samples: int = 64,
    mask_head: tuple[int, ...] = (256, 256, 256, 256),
    detections_per_image: int = 10,
    cell_types: bool = False,
) -> MaskRCNN:
    """A randomly initialised two-class Mask R-CNN (background, white cell) for square crops of `input_size`;
    with `cell_types`, one class per cell type of the vocabulary instead of "white cell".

    The model's own resize is pinned to `input_size`, so boxes and masks come back in crop pixels, and
    the anchors (one size per FPN level, 1/16 to 1/1 of the crop) cover cells from small lymphocytes
    to the whole crop whatever the resolution. A crop holds one or a few cells, not COCO's dozens, so
    the RPN keeps `proposals` boxes (COCO: 2000) and the heads train on `roi_samples` per image
    (COCO: 512): a quarter of them positive, each costing a pass through the mask head, whose conv
    widths `mask_head` are the study's four 256-channel layers by default; CPU runs take fewer and
    narrower ones. The RoIAlign features (256×14×14, the FPN's width) are the same either way.
    """
    check_backbone(backbone)
    if norm not in NORMS:
        raise InputError(f"norm {norm!r} is not one of {tuple(NORMS)}")
    if input_size < 32:
        raise InputError(f"input_size must be at least 32 pixels, got {input_size}")
    body = resnet_fpn_backbone(
        backbone_name=backbone, weights=None, norm_layer=NORMS[norm], trainable_layers=trainable_layers
    )
    sizes = tuple((max(4, round(input_size / 2**k)),) for k in (4, 3, 2, 1, 0))
    anchors = AnchorGenerator(sizes=sizes, aspect_ratios=((0.5, 1.0, 2.0),) * len(sizes))
    classes = len(CELL_TYPE_NAMES if cell_types else CLASS_NAMES)
    model = MaskRCNN(
        body,
        num_classes=None,  # the predictors below fix it
        min_size=input_size,
        max_size=input_size,
        image_mean=list(PIXEL_MEAN),
        image_std=list(PIXEL_STD),
        rpn_anchor_generator=anchors,
        rpn_pre_nms_top_n_train=4 * proposals,
        rpn_pre_nms_top_n_test=2 * proposals,
        rpn_post_nms_top_n_train=proposals,
        rpn_post_nms_top_n_test=proposals // 2,
        box_batch_size_per_image=roi_samples,
        box_detections_per_img=detections_per_image,
        box_predictor=FastRCNNPredictor(1024, classes),  # 1024: torchvision's box-head width
        mask_head=MaskRCNNHeads(body.out_channels, list(mask_head), dilation=1),
        mask_predictor=MaskRCNNPredictor(mask_head[-1], mask_head[-1], classes),
    )
    if cell_types:
        model.roi_heads.__class__ = CellTypeRoIHeads  # the same heads; only their detections are read differently
    return model


class CellTypeRoIHeads(RoIHeads):
    """RoI heads whose detections are cells, each named by its most likely type.

    torchvision makes one detection per proposal and class, scored by that class's probability: with
    13 cell types an uncertain cell scores below any threshold in every class and is never found.
    Here each proposal gives one detection scored 1 − P(background) ("a cell is here"), with the box
    and label of its most likely type (the mask head draws that type's mask); NMS ignores the type.
    """

    def postprocess_detections(
        self, class_logits: Tensor, box_regression: Tensor, proposals: list[Tensor], image_shapes: list[tuple[int, int]]
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        probabilities = class_logits.softmax(-1)
        labels = probabilities[:, 1:].argmax(1) + 1
        rows = torch.arange(len(labels), device=labels.device)
        boxes = self.box_coder.decode(box_regression, proposals)[rows, labels]
        scores = 1 - probabilities[:, 0]
        per_image = [len(p) for p in proposals]
        kept_boxes, kept_scores, kept_labels = [], [], []
        for box, score, label, shape in zip(boxes.split(per_image), scores.split(per_image), labels.split(per_image), image_shapes):
            box = box_ops.clip_boxes_to_image(box, shape)
            keep = (score > self.score_thresh).nonzero().flatten()
            keep = keep[box_ops.remove_small_boxes(box[keep], min_size=1e-2)]
            keep = keep[box_ops.nms(box[keep], score[keep], self.nms_thresh)][: self.detections_per_img]
            kept_boxes.append(box[keep])
            kept_scores.append(score[keep])
            kept_labels.append(label[keep])
        return kept_boxes, kept_scores, kept_labels


def load_weights(model: MaskRCNN, path: str | os.PathLike) -> dict[str, Any]:
    """Copy matching tensors from a local `.pth` into `model`; return what was done, for the checkpoint.

    Accepts a detection state dict (e.g. torchvision's COCO Mask R-CNN: its 91-class predictors do not
    fit and are skipped) or a classification ResNet's (its layers go into the backbone body).
    """
    path = Path(path)
    state = read_state_dict(path)
    if not any(key.startswith("backbone.") for key in state):
        state = {f"backbone.body.{key}": value for key, value in state.items()}  # its `fc` fits nothing: skipped
    own = model.state_dict()
    fitting = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not fitting:
        raise InputError(f"{path}: none of its tensors fit this model (is it a ResNet / Mask R-CNN state dict?)")
    model.load_state_dict(fitting, strict=False)
    return {
        "init": "file",
        "weights_path": str(path.resolve()),
        "weights_sha256": file_sha256(path),
        "loaded_tensors": len(fitting),
        "skipped_tensors": sorted(set(state) - set(fitting)),
    }


def central_detection(boxes: Tensor, scores: Tensor, image_size: tuple[int, int], min_score: float) -> int | None:
    """Index of the crop's own cell among detections scoring at least `min_score`, or None.

    Crops are centred on their white cell, so it is the most confident detection whose box holds the
    crop centre; when no box does, the one whose box comes nearest the centre (the most confident of
    those equally near). Confidence first: a small sliver can sit closer to the centre than the cell.
    """
    keep = torch.nonzero(scores >= min_score).flatten()
    if len(keep) == 0:
        return None
    x = image_size[1] / 2
    y = image_size[0] / 2
    box = boxes[keep]
    gap_x = (box[:, 0] - x).clamp(min=0) + (x - box[:, 2]).clamp(min=0)
    gap_y = (box[:, 1] - y).clamp(min=0) + (y - box[:, 3]).clamp(min=0)
    distance = torch.hypot(gap_x, gap_y)  # 0 for every box that holds the centre
    nearest = torch.nonzero(distance <= distance.min() + 1e-6).flatten()
    return int(keep[nearest[torch.argmax(scores[keep][nearest])]])


class MaskRCNNModule(LightningModule):
    """Training plan for `build_maskrcnn`: the summed torchvision losses, warm-up then cosine decay,
    validation IoU of the central cell mask, and mask overlays sent to the run's logger.

    Gradient clipping is the Trainer's (`gradient_clip_val`); the configs in experiments/segmentation
    set it. `weights` is a local `.pth` path or None (random init); `self.init` says which was used.
    `cell_types`: the box head learns each training crop's cell type (its label) besides "a cell is
    here", so the FPN, whose RoIAlign features the image VAE encodes, is taught what tells types apart.
    """

    def __init__(
        self,
        backbone: str = "resnet50",
        input_size: int = 288,
        weights: str | None = None,
        norm: str = "batch",
        trainable_layers: int = 5,
        proposals: int = 256,
        roi_samples: int = 64,
        mask_head: tuple[int, ...] = (256, 256, 256, 256),
        optimizer: str = "adamw",
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        warmup_steps: int = 100,
        min_score: float = 0.5,
        overlays: int = 8,
        cell_types: bool = False,
    ):
        super().__init__()
        if optimizer not in OPTIMIZERS:
            raise InputError(f"optimizer {optimizer!r} is not one of {OPTIMIZERS}")
        self.save_hyperparameters()
        self.model = build_maskrcnn(
            backbone, input_size, norm, trainable_layers, proposals, roi_samples, tuple(mask_head), cell_types=cell_types
        )
        self.init: dict[str, Any] = {"init": "random"} if weights is None else load_weights(self.model, weights)

    def forward(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        return self.model(images)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        losses = self.model(batch["images"], batch["targets"])
        loss = sum(losses.values())
        size = len(batch["images"])
        self.log_dict({f"train/{name}": value for name, value in losses.items()}, batch_size=size)
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        images, targets = batch["images"], batch["targets"]
        predicted = self.central_masks(self.model(images), images)
        scores = [iou(p, t["masks"].amax(dim=0)) for p, t in zip(predicted, targets)]
        detected = [float(p.any()) for p in predicted]
        size = len(images)
        self.log("val/iou_cell", sum(scores) / size, prog_bar=True, batch_size=size, sync_dist=True)
        self.log("val/detected", sum(detected) / size, batch_size=size, sync_dist=True)
        if batch_idx == 0 and self.hparams.overlays > 0:
            from wbcvae.segmentation.overlay import log_overlays

            n = self.hparams.overlays
            truth = [t["masks"].amax(dim=0) for t in targets[:n]]
            log_overlays(self.trainer, images[:n], {"target": truth, "predicted": predicted[:n]}, tag="val/masks")

    def central_masks(self, detections: list[dict[str, Tensor]], images: list[Tensor]) -> list[Tensor]:
        """Binary H×W mask of the central detection per image (all zeros when none scores `min_score`)."""
        masks = []
        for found, image in zip(detections, images):
            size = tuple(image.shape[-2:])
            pick = central_detection(found["boxes"], found["scores"], size, self.hparams.min_score)
            masks.append(torch.zeros(size, dtype=torch.bool) if pick is None else found["masks"][pick, 0].cpu() > 0.5)
        return masks

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        params = [p for p in self.model.parameters() if p.requires_grad]
        if hp.optimizer == "sgd":
            optimizer = torch.optim.SGD(params, lr=hp.lr, momentum=0.9, weight_decay=hp.weight_decay)
        else:
            optimizer = torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay)
        total = self.trainer.estimated_stepping_batches if self.trainer is not None else math.inf
        time_spent = time_fraction(self.trainer)
        warmup = max(1, hp.warmup_steps)

        def schedule(step: int) -> float:  # a plain function: LambdaLR leaves it out of checkpoints
            return warmup_cosine(step, warmup, total, time_spent())

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record how the weights were initialised (plain values: `load_maskrcnn` reads with weights_only=True)."""
        checkpoint[MASKRCNN_KEY] = self.init


def warmup_cosine(step: int, warmup: int, total: float, time_spent: float = 0.0) -> float:
    """Learning-rate factor: linear warm-up (a random-init detector diverges on a full first step),
    then cosine decay to zero along the run's progress: steps done of `total`, or `time_spent` (the
    fraction of a time limit used), whichever is further. Constant when neither limit is known."""
    if step < warmup:
        return (step + 1) / warmup
    progress = time_spent
    if math.isfinite(total) and total > warmup:
        progress = max(progress, (step - warmup) / (total - warmup))
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def time_fraction(trainer: Any) -> Callable[[], float]:
    """A clock reading the fraction of the trainer's `max_time` spent training, for a run planned by time alone
    (`max_time` without `max_steps`), so that it has lowered its rate when its time is up. 0 for a run with a step
    plan, where `max_time` only stops a run that overruns: a clock in the rate makes two runs of one config differ
    (the demo's 40 steps, rerun on one machine, reached a validation IoU of 0.73 to 0.82)."""
    from lightning.pytorch.callbacks import Timer

    timer = next((c for c in getattr(trainer, "callbacks", []) if isinstance(c, Timer)), None)
    if timer is None or getattr(trainer, "max_steps", -1) != -1:
        return lambda: 0.0

    def spent() -> float:
        elapsed, remaining = timer.time_elapsed(), timer.time_remaining()
        if remaining is None or elapsed + remaining <= 0:
            return 0.0
        return elapsed / (elapsed + remaining)

    return spent


def load_maskrcnn(path: str | os.PathLike) -> MaskRCNNModule:
    """A trained `MaskRCNNModule` from a checkpoint written by training, on the CPU, in eval mode.

    The weights file named at training time is not needed again: the checkpoint holds every tensor.
    """
    checkpoint = read_checkpoint(path, "maskrcnn")
    build = partial(MaskRCNNModule, **{**saved_hparams(checkpoint), "weights": None})
    module = rebuild(path, build, checkpoint["state_dict"], "Mask R-CNN")
    module.init = checkpoint[MASKRCNN_KEY]
    return module.eval()
