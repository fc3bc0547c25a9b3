"""How good is a trained β-VAE on held-out cells: reconstruction error and latent kNN (k = 5) class accuracy.

For each checkpoint the DataModule it was trained on is rebuilt (same class, arguments and seeded split;
an RNA run reuses its saved preprocessing), and on the *test* split, never seen in training (the
validation split when the patient-grouped split left the test split empty):
- reconstruction MSE of every reconstruction term (RNA: expression; image: RoI features and the masked
  crop), beside two yardsticks fitted on the training cells: always predicting their mean (a model must
  beat it) and projecting onto their top-50 principal axes (the best linear 50-d code);
- kNN accuracy: each test cell's class voted by its 5 nearest *training* cells in μ-space, beside
  chance (the most frequent test class);
- for image checkpoints, a figure of held-out cells, one per class: input, masked target, reconstruction.

    python bench/vae_quality.py runs/rna_vae/version_0/checkpoints/last.ckpt [more.ckpt …] \
        [--out runs/quality] [--figure docs/figures/reconstructions.png]
    python bench/vae_quality.py --pipeline demo   # every β-VAE a `wbcvae pipeline` run trained
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from wbcvae.training.callbacks import new_figure
from wbcvae.training.embed import load_plan, rebuild_datamodule
from wbcvae.training.metrics import knn_accuracy
from wbcvae.training.plan import VAEPlan
from wbcvae.vocabulary import CLASSES

# term → (batch key of the truth, output key of the reconstruction, batch key of the mask or None)
RECONSTRUCTIONS = {
    "rna": {"expression_mse": ("x", "x_hat", None)},
    "image": {"features_mse": ("features", "h_hat", None), "image_mse": ("target", "image_hat", "mask")},
}


class Split:
    """One split's μ, labels, and per term the masked truth and masked reconstruction, flattened per cell."""

    def __init__(self, terms: dict[str, tuple[str, str, str | None]]) -> None:
        self.terms = terms
        self.parts: dict[str, list[np.ndarray]] = defaultdict(list)
        self.examples: dict[int, tuple[torch.Tensor, ...]] = {}  # class → images for `reconstruction_figure`

    def add(self, batch: dict[str, torch.Tensor], outputs: dict[str, torch.Tensor]) -> None:
        self.parts["mu"].append(outputs["mu"].float().cpu().numpy())
        self.parts["label"].append(batch["label"].cpu().numpy())
        for term, (truth_key, output_key, mask_key) in self.terms.items():
            mask = batch[mask_key] if mask_key else 1.0
            for name, value in (("truth", batch[truth_key]), ("recon", outputs[output_key])):
                self.parts[f"{term}/{name}"].append((mask * value.float()).flatten(1).cpu().numpy())
        if "image_hat" in outputs:
            for i, label in enumerate(batch["label"].tolist()):
                if label not in self.examples:
                    target, mask, image_hat = batch["target"][i].cpu(), batch["mask"][i].cpu(), outputs["image_hat"][i].cpu()
                    self.examples[label] = (target, mask * target, image_hat, mask * image_hat)

    def __getitem__(self, name: str) -> np.ndarray:
        return np.concatenate(self.parts[name])


@torch.no_grad()
def collect(plan: VAEPlan, loader, terms: dict, device: str, max_cells: int) -> Split:
    """The first `max_cells` cells of `loader` through the VAE in eval mode (z = μ: deterministic)."""
    split, cells = Split(terms), 0
    for batch in loader:
        batch = {key: value.to(device) for key, value in batch.items()}
        _, _, outputs = plan.losses(batch)
        split.add(batch, outputs)
        cells += len(batch["label"])
        if cells >= max_cells:
            break
    return split


def mse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean((a.astype(np.float64) - b) ** 2))


def pca_baseline(train: np.ndarray, test: np.ndarray, k: int) -> float:
    """MSE on `test` of its projection onto the top-k principal axes of `train`: the best any linear
    k-dimensional code does, a yardstick for a k-dimensional latent."""
    mean = train.mean(0)
    _, _, axes = np.linalg.svd(train - mean, full_matrices=False)
    axes = axes[:k]
    return mse((test - mean) @ axes.T @ axes + mean, test)


def reconstruction_figure(examples: dict[int, tuple[torch.Tensor, ...]], title: str, path: Path) -> None:
    """Columns: one held-out cell per class; rows: input crop, masked target, reconstruction, and the
    reconstruction under the same mask (what the loss compares with the masked target)."""
    classes = sorted(examples)
    rows = ("input", "masked target", "reconstruction", "masked\nreconstruction")
    fig = new_figure(1.6 * len(classes), 1.75 * len(rows))
    axes = fig.subplots(len(rows), len(classes), squeeze=False)
    for column, label in enumerate(classes):
        for row, (image, name) in enumerate(zip(examples[label], rows)):
            ax = axes[row, column]
            ax.imshow(image.permute(1, 2, 0).clamp(0, 1).numpy())
            ax.set_xticks([]), ax.set_yticks([])
            if row == 0:
                ax.set_title(CLASSES[label].replace("_", "\n"), fontsize=8)
            if column == 0:
                ax.set_ylabel(name, fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def evaluate(ckpt: Path, device: str, figure: Path | None, max_cells: int) -> dict:
    plan, record = load_plan(ckpt, map_location=device)
    plan.eval()
    terms = RECONSTRUCTIONS[record["kind"]]
    datamodule = rebuild_datamodule(record)
    datamodule.setup("fit")
    train = collect(plan, datamodule.train_dataloader(), terms, device, max_cells)
    # Splits are grouped by patient: with few patients (the synthetic world has 4) the test split can
    # be empty; the validation split is then the held-out set (it only chose the best checkpoint).
    held_out = "test" if len(datamodule.test_dataloader()) else "val"
    loader = datamodule.test_dataloader() if held_out == "test" else datamodule.val_dataloader()
    test = collect(plan, loader, terms, device, max_cells)
    labelled = test["label"][test["label"] >= 0]
    result = {
        "checkpoint": str(ckpt),
        "kind": record["kind"],
        "data": record["data"].get("source") or record["data"]["hparams"].get("store_dir"),
        "held_out_split": held_out,
        "train_cells": len(train["label"]),
        "held_out_cells": len(test["label"]),
        "classes_in_test": len(np.unique(labelled)),
        "knn5_accuracy": knn_accuracy(train["mu"], train["label"], test["mu"], test["label"], k=5),
        "chance_accuracy": float(np.bincount(labelled).max() / len(labelled)) if len(labelled) else float("nan"),
    }
    for term in terms:
        truth, train_truth = test[f"{term}/truth"], train[f"{term}/truth"]
        result[term] = mse(test[f"{term}/recon"], truth)
        result[f"{term}_mean_baseline"] = mse(np.broadcast_to(train_truth.mean(0), truth.shape), truth)
        result[f"{term}_pca_baseline"] = pca_baseline(train_truth, truth, plan.hparams.latent_dim)
    if figure is not None and test.examples:
        reconstruction_figure(test.examples, f"held-out cells, {result['data']}", figure)
        result["figure"] = str(figure)
    return result


PIPELINE_VAE_STAGES = ("image_vae", "rna_vae", "real_rna")


def pipeline_checkpoints(folder: Path) -> list[Path]:
    """The best checkpoint of each β-VAE stage a pipeline run finished (`<stage>/stage.json`)."""
    found = []
    for stage in PIPELINE_VAE_STAGES:
        marker = folder / stage / "stage.json"
        recorded = json.loads(marker.read_text()).get("checkpoint") if marker.is_file() else None
        if recorded:
            found.append(Path(recorded))
    if not found:
        raise SystemExit(f"error: {folder}: no finished β-VAE stage ({', '.join(PIPELINE_VAE_STAGES)}) of a `wbcvae pipeline` run")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", type=Path, nargs="*")
    parser.add_argument("--pipeline", type=Path, default=None, help="a `wbcvae pipeline` output folder: add the β-VAEs it trained")
    parser.add_argument("--out", type=Path, default=Path("runs/quality"), help="folder for the JSON results")
    parser.add_argument("--figure", type=Path, default=None, help="reconstruction figure path (image checkpoints; one per checkpoint: -N suffix)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--max-cells", type=int, default=5000, help="cells per split at most (memory: the PCA yardstick)")
    args = parser.parse_args()
    if args.pipeline is not None:
        args.checkpoints += pipeline_checkpoints(args.pipeline)
    if not args.checkpoints:
        parser.error("no checkpoint given (name some, or --pipeline FOLDER)")
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for n, ckpt in enumerate(args.checkpoints):
        figure = None
        if args.figure is not None:
            figure = args.figure if len(args.checkpoints) == 1 else args.figure.with_stem(f"{args.figure.stem}-{n}")
        results.append(evaluate(ckpt, args.device, figure, args.max_cells))
    (args.out / "vae_quality.json").write_text(json.dumps(results, indent=2))

    print("| data | model | held-out cells | classes | reconstruction MSE (training mean; PCA-50) | kNN k=5 accuracy (chance) |")
    print("|---|---|---|---|---|---|")
    for r in results:
        recon = "; ".join(
            f"{t} {r[t]:.4f} ({r[t + '_mean_baseline']:.4f}; {r[t + '_pca_baseline']:.4f})" for t in RECONSTRUCTIONS[r["kind"]]
        )
        print(f"| {r['data']} | {r['kind']} | {r['held_out_cells']} ({r['held_out_split']}) | {r['classes_in_test']} | {recon} "
              f"| {r['knn5_accuracy']:.3f} ({r['chance_accuracy']:.3f}) |")  # fmt: skip
    print(f"\nwritten to {args.out / 'vae_quality.json'}")


if __name__ == "__main__":
    main()
