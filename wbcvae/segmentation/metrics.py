"""How well a predicted mask covers the true one."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from wbcvae.segmentation.classical import mask_box

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


def mask_checks(cell: Mask, nucleus: Mask) -> dict[str, float]:
    """Signs of a wrong cell mask that need no true mask, for real crops: a white cell is one convex-ish
    blob (`solidity`, area over convex-hull area, falls when the mask leaks into a red cell or bites
    into pale cytoplasm), lies inside the crop (`touches_border`), is one piece (`pieces`), and holds
    its whole nucleus (`nucleus_inside`, the fraction of nucleus pixels within the cell)."""
    from skimage import measure

    cell, nucleus = _as_bool(cell), _as_bool(nucleus)
    if not cell.any():
        return {"found": False, "solidity": np.nan, "touches_border": np.nan, "pieces": 0, "nucleus_inside": np.nan}
    border = cell[0].any() or cell[-1].any() or cell[:, 0].any() or cell[:, -1].any()
    inside = (cell & nucleus).sum() / max(nucleus.sum(), 1)
    return {
        "found": True,
        "solidity": float(cell.sum() / measure.regionprops(cell.astype(np.uint8))[0].area_convex),
        "touches_border": bool(border),
        "pieces": int(measure.label(cell).max()),
        "nucleus_inside": float(inside),
    }


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


def box_fill(mask: np.ndarray) -> float:
    """The share of its bounding box a mask fills (a box-shaped mask: near 1; a round cell: about π/4);
    NaN for an empty mask."""
    box = mask_box(np.asarray(mask))
    return float("nan") if box is None else float(np.asarray(mask).sum()) / ((box[2] - box[0]) * (box[3] - box[1]))


def maskrcnn_scores(module, crops, batch_size: int = 8) -> pd.DataFrame:
    """Per crop of a `CropDataset` with true masks: IoU of the Mask R-CNN central cell mask (0 when
    nothing was detected), whether anything was, and how much of its box the mask fills."""
    module.eval()
    rows = []
    loader = DataLoader(crops, batch_size=batch_size)
    with torch.inference_mode():
        for batch in tqdm(loader, desc="mask r-cnn", unit="batch"):
            images = list(batch["image"].to(module.device))
            predicted = module.central_masks(module(images), images)
            for index, mask, truth in zip(batch["index"], predicted, batch["mask"]):
                rows.append({"index": int(index), "iou_cell": iou(mask, truth[0]), "detected": bool(mask.any()), "box_fill": box_fill(mask.cpu().numpy())})
    return pd.DataFrame(rows)
