"""How well a predicted mask covers the true one."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

Mask = np.ndarray | torch.Tensor


def _as_bool(mask: Mask) -> np.ndarray:
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    return np.asarray(mask) > 0.5


def iou(pred: Mask, true: Mask) -> float:
    """Intersection over union of two binary masks of the same shape.

    Two empty masks agree perfectly (1.0): a segmenter that rightly finds nothing is not wrong.
    """
    p, t = _as_bool(pred), _as_bool(true)
    if p.shape != t.shape:
        raise ValueError(f"mask shapes differ: {p.shape} vs {t.shape}")
    union = np.logical_or(p, t).sum()
    if union == 0:
        return 1.0
    return float(np.logical_and(p, t).sum() / union)


def classical_scores(crops, segmenter=None) -> pd.DataFrame:
    """Per crop of a `CropDataset` with true masks: IoU of the classical segmenter's cell and nucleus."""
    from wbcvae.segmentation.classical import StainSegmenter

    segmenter = segmenter or StainSegmenter()
    rows = []
    for i in tqdm(range(len(crops)), desc="classical", unit="crop"):
        item = crops[i]
        found = segmenter(item["image"].permute(1, 2, 0).numpy())
        rows.append({
            "index": int(item["index"]),
            "iou_cell": iou(found.cell, item["mask"][0]),
            "iou_nucleus": iou(found.nucleus, item["nucleus"][0]),
        })
    return pd.DataFrame(rows)


def maskrcnn_scores(module, crops, batch_size: int = 8) -> pd.DataFrame:
    """Per crop of a `CropDataset` with true masks: IoU of the Mask R-CNN central cell mask (0 when
    nothing was detected) and whether anything was."""
    module.eval()
    rows = []
    loader = DataLoader(crops, batch_size=batch_size)
    with torch.inference_mode():
        for batch in tqdm(loader, desc="mask r-cnn", unit="batch"):
            images = list(batch["image"].to(module.device))
            predicted = module.central_masks(module(images), images)
            for index, mask, truth in zip(batch["index"], predicted, batch["mask"]):
                rows.append({"index": int(index), "iou_cell": iou(mask, truth[0]), "detected": bool(mask.any())})
    return pd.DataFrame(rows)
