"""Which image decoder and loss draw a cell best: the study's, or upsample + conv with structural terms.

Trains the image β-VAE on one feature store once per variant (same seed, split, epochs and every other
setting: the model section of experiments/image_vae/laptop.yaml), then scores each on the *test* split,
cells of a patient never trained on:
- masked-image MSE: Σ m·(Î − I)² / (3 Σ m), per cell, averaged (pixels inside the cell only);
- masked SSIM of the luminance (`wbcvae.models.losses.masked_ssim`, 1 = identical);
- predicted-mask IoU against the store's mask (what `render` draws the cell in);
- latent kNN(5): each test cell's class voted by its 5 nearest training cells in μ-space;
- training seconds (this machine, this load).
Writes `ablation.md` (the table), `ablation.json` and `reconstructions.png` (rows: input, target cell in
its mask, then each variant's reconstruction in its predicted mask) to --out, rewritten after every variant.

    python bench/image_loss_ablation.py --store demo/features/store --epochs 15 --out runs/image_ablation
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
import yaml
from PIL import Image
from torchvision.utils import make_grid

from wbcvae.features.datamodule import FeatureDataModule
from wbcvae.models.image_vae import cell_on_grey
from wbcvae.models.losses import masked_ssim
from wbcvae.training.image_plan import ImageVAEPlan
from wbcvae.training.metrics import knn_accuracy
from wbcvae.utils.atomic import atomic_path

BASE_CONFIG = Path(__file__).resolve().parents[1] / "experiments/image_vae/laptop.yaml"
STUDY_LOSS = {"ssim_weight": 0.0, "gradient_weight": 0.0}
VARIANTS = {  # name → model settings over the base config
    "study decoder + study loss": {"image_decoder": "study", **STUDY_LOSS},
    "residual decoder + study loss": {"image_decoder": "residual", **STUDY_LOSS},
    "residual decoder + SSIM": {"image_decoder": "residual", "ssim_weight": 1.0, "gradient_weight": 0.0},
    "residual decoder + SSIM + gradient": {"image_decoder": "residual", "ssim_weight": 1.0, "gradient_weight": 10.0},
}


def train(store: Path, settings: dict, epochs: int, seed: int, batch_size: int) -> tuple[ImageVAEPlan, FeatureDataModule, float]:
    """One variant, from the same seed: fit on the train split (no validation passes, no checkpoints)."""
    L.seed_everything(seed, verbose=False)
    data = FeatureDataModule(store, batch_size=batch_size, seed=seed)
    plan = ImageVAEPlan(**settings)
    trainer = L.Trainer(
        max_epochs=epochs, accelerator="auto", devices=1, deterministic=True, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
    )
    start = time.perf_counter()
    trainer.fit(plan, datamodule=data)
    return plan, data, time.perf_counter() - start


@torch.no_grad()
def evaluate(plan: ImageVAEPlan, data: FeatureDataModule) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """Held-out scores of one trained variant, and its held-out batch tensors (for the figure)."""
    plan.eval()
    held_out = data.test_dataloader() if len(data.datasets["test"]) else data.val_dataloader()
    mu = {"train": [], "test": []}
    labels = {"train": [], "test": []}
    kept = {"target": [], "mask": [], "image_hat": [], "mask_logits": [], "label": []}
    for split, loader in (("train", data.train_dataloader()), ("test", held_out)):
        for batch in loader:
            batch = {name: value.to(plan.device) for name, value in batch.items()}
            outputs = plan.vae(batch["features"], **plan.encoder_inputs(batch))
            mu[split].append(outputs["mu"].cpu())
            labels[split].append(batch["label"].cpu())
            if split == "test":
                for name in kept:
                    kept[name].append((outputs if name in outputs else batch)[name].float().cpu())
    test = {name: torch.cat(parts) for name, parts in kept.items()}
    mask, target, image_hat = test["mask"], test["target"], test["image_hat"]
    inside = mask.flatten(1).sum(1).clamp_min(1)
    predicted = test["mask_logits"] > 0
    scores = {
        "masked_mse": float((mask * (image_hat - target).pow(2)).flatten(1).sum(1).div(3 * inside).mean()),
        "masked_ssim": float(masked_ssim(image_hat, target, mask).mean()),
        "mask_iou": float(((predicted & (mask > 0.5)).flatten(1).sum(1) / (predicted | (mask > 0.5)).flatten(1).sum(1).clamp_min(1)).mean()),
        "knn5": knn_accuracy(
            torch.cat(mu["train"]).numpy(), torch.cat(labels["train"]).numpy(),
            torch.cat(mu["test"]).numpy(), torch.cat(labels["test"]).numpy(), k=5,
        ),
        "test_cells": len(target),
    }
    return scores, test


def figure_columns(labels: torch.Tensor, n: int) -> list[int]:
    """Up to `n` held-out cells, one per class first."""
    first = {}
    for i, label in enumerate(labels.tolist()):
        first.setdefault(label, i)
    chosen = sorted(first.values())[:n]
    return chosen + [i for i in range(len(labels)) if i not in chosen][: n - len(chosen)]


def save_figure(rows: list[torch.Tensor], path: Path) -> None:
    grid = make_grid(torch.cat(rows).clamp(0, 1), nrow=len(rows[0]), padding=2, pad_value=1.0)
    with atomic_path(path) as tmp:
        Image.fromarray((grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(tmp, format="PNG")


def table(results: dict[str, dict[str, float]], epochs: int, store: Path) -> str:
    lines = [
        f"Held-out cells of `{store}` ({next(iter(results.values()))['test_cells']} test cells), {epochs} epochs, same seed:",
        "",
        "| variant | masked MSE ↓ | masked SSIM ↑ | mask IoU ↑ | latent kNN(5) ↑ | train s |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['masked_mse']:.5f} | {r['masked_ssim']:.3f} | {r['mask_iou']:.3f} | {r['knn5']:.3f} | {r['train_s']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", type=Path, required=True, help="a complete feature store (`wbcvae features`)")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--figure-cells", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("runs/image_ablation"))
    args = parser.parse_args(argv)

    base = yaml.safe_load(BASE_CONFIG.read_text())["model"]
    results, rows = {}, []
    for name in args.variants:
        plan, data, seconds = train(args.store, {**base, **VARIANTS[name]}, args.epochs, args.seed, args.batch_size)
        results[name], test = evaluate(plan, data)
        results[name]["train_s"] = seconds
        print(f"{name}: {results[name]}", flush=True)
        columns = figure_columns(test["label"], args.figure_cells)
        if not rows:
            rows = [test["target"][columns], cell_on_grey(test["target"][columns], test["mask"][columns])]
        rows.append(cell_on_grey(test["image_hat"][columns], test["mask_logits"][columns].sigmoid()))
        # Written after every variant, so a long run that is stopped still leaves the variants it finished.
        text = table(results, args.epochs, args.store)
        with atomic_path(args.out / "ablation.md") as tmp:
            tmp.write_text(text)
        with atomic_path(args.out / "ablation.json") as tmp:
            tmp.write_text(json.dumps({"epochs": args.epochs, "seed": args.seed, "store": str(args.store), "results": results}, indent=2))
        save_figure(rows, args.out / "reconstructions.png")
    print(text)


if __name__ == "__main__":
    main()
