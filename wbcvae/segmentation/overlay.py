"""Masks drawn over crops as coloured outlines: for people to judge a segmentation at a glance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_only
from PIL import Image
from skimage.segmentation import find_boundaries

from wbcvae.utils.atomic import atomic_path

COLOURS = {  # outline colours by role; anything else falls back to white
    "target": (0, 200, 0),
    "true": (0, 200, 0),
    "pseudo": (0, 200, 0),
    "predicted": (255, 220, 0),
    "maskrcnn": (255, 220, 0),
    "nucleus": (0, 160, 255),
}


def _pixels(image: np.ndarray | torch.Tensor) -> np.ndarray:
    """H×W×3 uint8 from a 3×H×W float tensor in [0, 1] or an H×W×3 array."""
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().permute(1, 2, 0).numpy()
    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
    return image


def draw_outlines(image: np.ndarray | torch.Tensor, masks: dict[str, np.ndarray | torch.Tensor]) -> np.ndarray:
    """The crop with each named mask's outline drawn in its role's colour (later names on top)."""
    canvas = _pixels(image).copy()
    for name, mask in masks.items():
        mask = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
        edge = find_boundaries(mask.reshape(canvas.shape[:2]) > 0.5, mode="inner")
        edge |= np.roll(edge, 1, axis=0) | np.roll(edge, 1, axis=1)  # two pixels wide: visible when shrunk
        canvas[edge] = COLOURS.get(name, (255, 255, 255))
    return canvas


def overlay_grid(images: list, masks: dict[str, list], columns: int = 8) -> np.ndarray:
    """Tiles of `draw_outlines`, `columns` per row, padded with white."""
    tiles = [draw_outlines(img, {name: m[i] for name, m in masks.items()}) for i, img in enumerate(images)]
    height, width = tiles[0].shape[:2]
    rows = -(-len(tiles) // columns)
    grid = np.full((rows * height, min(columns, len(tiles)) * width, 3), 255, np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, columns)
        grid[r * height : (r + 1) * height, c * width : (c + 1) * width] = tile
    return grid


@rank_zero_only
def log_overlays(trainer, images: list, masks: dict[str, list], tag: str) -> None:
    """Send an overlay grid to the run's loggers: a W&B image to each W&B logger, and a PNG into the
    CSV logger's run folder (`<log_dir>/overlays/<tag>_stepNNNNNN.png`)."""
    from lightning.pytorch.loggers import CSVLogger, WandbLogger

    if not images:
        return
    grid = overlay_grid(images, masks)
    caption = " / ".join(f"{name}: {_colour_name(name)}" for name in masks)
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key=tag, images=[grid], caption=[caption], step=trainer.global_step)
        elif isinstance(logger, CSVLogger):
            name = f"{tag.replace('/', '_')}_step{trainer.global_step:06d}.png"
            with atomic_path(Path(logger.log_dir) / "overlays" / name) as tmp:
                Image.fromarray(grid).save(tmp, format="PNG")


def _colour_name(name: str) -> str:
    return {(0, 200, 0): "green", (255, 220, 0): "yellow", (0, 160, 255): "blue"}.get(COLOURS.get(name), "white")


def spread_over_classes(frame, count: int, seed: int = 0):
    """`count` rows of a manifest frame taking classes in turn (seeded), so every class shows up."""
    rng = np.random.default_rng(seed)
    pools = {label: list(rng.permutation(group.index)) for label, group in frame.groupby("label", sort=True)}
    chosen = []
    while len(chosen) < count and any(pools.values()):
        for pool in pools.values():
            if pool and len(chosen) < count:
                chosen.append(pool.pop())
    return frame.loc[chosen]


def mask_figure(source, out, checkpoint=None, count: int = 12, seed: int = 0, columns: int = 6) -> None:
    """PNG of `count` crops of different classes with the classical pseudo-mask (green), its nucleus
    (blue) and, given a checkpoint, the Mask R-CNN mask of the central cell (yellow) outlined on each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from wbcvae.data.image_dataset import CropDataset
    from wbcvae.data.bad_files import BadFiles
    from wbcvae.data.images import check_images, read_manifest
    from wbcvae.segmentation.classical import StainSegmenter
    from wbcvae.segmentation.maskrcnn import load_maskrcnn

    module = load_maskrcnn(checkpoint) if checkpoint is not None else None
    size = int(module.hparams.input_size) if module is not None else 288
    bad = BadFiles()  # an unreadable crop is left out of the figure, and named
    frame = check_images(spread_over_classes(read_manifest(source).frame, count, seed), bad, progress=False)
    bad.report("unreadable image")
    crops = CropDataset(frame, size)
    images = [crops[i]["image"] for i in range(len(crops))]
    segmenter = StainSegmenter()
    found = [segmenter(img.permute(1, 2, 0).numpy()) for img in images]
    masks: dict[str, list] = {"pseudo": [f.cell for f in found], "nucleus": [f.nucleus for f in found]}
    if module is not None:
        with torch.inference_mode():
            masks["maskrcnn"] = module.central_masks(module(images), images)
    rows = -(-len(images) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 2.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, label, i in zip(axes.flat, images, frame["label"], range(len(images))):
        ax.imshow(draw_outlines(image, {name: m[i] for name, m in masks.items()}))
        ax.set_title(label.replace("_", " "), fontsize=9)
    legend = "green: classical pseudo-mask, blue: its nucleus" + ("   yellow: Mask R-CNN" if module is not None else "")
    figure.suptitle(f"{Path(source).name}: {legend}", fontsize=10)
    figure.tight_layout()
    with atomic_path(out) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    plt.close(figure)
