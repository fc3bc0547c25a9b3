"""How good is a trained β-VAE on held-out cells: reconstruction error and latent kNN (k = 5) class accuracy.

For each checkpoint the DataModule it was trained on is rebuilt (same class, arguments and seeded split;
an RNA run reuses its saved preprocessing), and on the *test* split, never seen in training:
- reconstruction MSE of every reconstruction term (RNA: expression; image: RoI features and the masked
  crop), beside the MSE of always predicting the training cells' mean (a model must beat it);
- kNN accuracy: each test cell's class voted by its 5 nearest *training* cells in μ-space, beside
  chance (the most frequent test class);
- for image checkpoints, a figure of test cells, one per class: input, masked target, reconstruction.

    python bench/vae_quality.py runs/rna_vae/version_0/checkpoints/last.ckpt [more.ckpt …] \
        [--out runs/quality] [--figure docs/figures/reconstructions.png]
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from wbcvae.training.embed import load_plan, rebuild_datamodule
from wbcvae.training.metrics import knn_accuracy
from wbcvae.training.plan import VAEPlan
from wbcvae.vocabulary import CLASSES

# term → (batch key of the truth, output key of the reconstruction, batch key of the mask or None)
RECONSTRUCTIONS = {
    "rna": {"expression_mse": ("x", "x_hat", None)},
    "image": {"features_mse": ("features", "h_hat", None), "image_mse": ("target", "image_hat", "mask")},
}


class SplitSummary:
    """Accumulates, over one split, μ, labels, squared errors per term, and the mean truth per term."""

    def __init__(self, terms: dict[str, tuple[str, str, str | None]]) -> None:
        self.terms = terms
        self.mu: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []
        self.squared = defaultdict(float)
        self.elements = defaultdict(int)
        self.truth_sum: dict[str, torch.Tensor] = {}
        self.cells = 0
        self.examples: dict[int, tuple[torch.Tensor, ...]] = {}  # class → (input, masked target, reconstruction)

    def add(self, batch: dict[str, torch.Tensor], outputs: dict[str, torch.Tensor]) -> None:
        self.mu.append(outputs["mu"].float().cpu().numpy())
        self.labels.append(batch["label"].cpu().numpy())
        self.cells += len(batch["label"])
        for term, (truth_key, output_key, mask_key) in self.terms.items():
            mask = batch[mask_key] if mask_key else 1.0
            truth, recon = batch[truth_key].float(), outputs[output_key].float()
            self.squared[term] += float(((mask * recon - mask * truth) ** 2).sum())
            self.elements[term] += truth.numel()
            total = truth.sum(0).cpu()
            self.truth_sum[term] = total if term not in self.truth_sum else self.truth_sum[term] + total
        if "image_hat" in outputs:
            for i, label in enumerate(batch["label"].tolist()):
                if label not in self.examples:
                    target, mask = batch["target"][i].cpu(), batch["mask"][i].cpu()
                    self.examples[label] = (target, mask * target, outputs["image_hat"][i].cpu())

    def mse(self, term: str) -> float:
        return self.squared[term] / self.elements[term]

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return np.concatenate(self.mu), np.concatenate(self.labels)


@torch.no_grad()
def summarise(plan: VAEPlan, loader, terms: dict, device: str) -> SplitSummary:
    summary = SplitSummary(terms)
    for batch in loader:
        batch = {key: value.to(device) for key, value in batch.items()}
        _, _, outputs = plan.losses(batch)  # eval mode: z = μ, so the reconstruction is deterministic
        summary.add(batch, outputs)
    return summary


@torch.no_grad()
def mean_baseline_mse(train: SplitSummary, plan: VAEPlan, loader, terms: dict, device: str) -> dict[str, float]:
    """MSE on the test split of predicting, for every cell, the mean training truth of each term."""
    means = {term: (train.truth_sum[term] / train.cells).to(device) for term in terms}
    squared, elements = defaultdict(float), defaultdict(int)
    for batch in loader:
        batch = {key: value.to(device) for key, value in batch.items()}
        for term, (truth_key, _, mask_key) in terms.items():
            mask = batch[mask_key] if mask_key else 1.0
            truth = batch[truth_key].float()
            squared[term] += float(((mask * means[term] - mask * truth) ** 2).sum())
            elements[term] += truth.numel()
    return {term: squared[term] / elements[term] for term in terms}


def reconstruction_figure(examples: dict[int, tuple[torch.Tensor, ...]], title: str, path: Path) -> None:
    """Columns: one held-out cell per class; rows: input crop, masked target, reconstruction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes = sorted(examples)
    fig, axes = plt.subplots(3, len(classes), figsize=(1.6 * len(classes), 5.2), squeeze=False)
    for column, label in enumerate(classes):
        for row, (image, name) in enumerate(zip(examples[label], ("input", "masked target", "reconstruction"))):
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
    plt.close(fig)


def evaluate(ckpt: Path, device: str, figure: Path | None) -> dict:
    plan, record = load_plan(ckpt, map_location=device)
    plan.eval()
    terms = RECONSTRUCTIONS[record["kind"]]
    datamodule = rebuild_datamodule(record)
    datamodule.setup("fit")
    train = summarise(plan, datamodule.train_dataloader(), terms, device)
    test = summarise(plan, datamodule.test_dataloader(), terms, device)
    baseline = mean_baseline_mse(train, plan, datamodule.test_dataloader(), terms, device)
    train_mu, train_labels = train.arrays()
    test_mu, test_labels = test.arrays()
    labelled = test_labels[test_labels >= 0]
    result = {
        "checkpoint": str(ckpt),
        "kind": record["kind"],
        "data": record["data"].get("source") or record["data"]["hparams"].get("store_dir"),
        "train_cells": int(len(train_labels)),
        "test_cells": int(len(test_labels)),
        "classes_in_test": int(len(np.unique(labelled))),
        "knn5_accuracy": knn_accuracy(train_mu, train_labels, test_mu, test_labels, k=5),
        "chance_accuracy": float(np.bincount(labelled).max() / len(labelled)) if len(labelled) else float("nan"),
        **{f"{term}": test.mse(term) for term in terms},
        **{f"{term}_mean_baseline": baseline[term] for term in terms},
    }
    if figure is not None and test.examples:
        reconstruction_figure(test.examples, f"held-out cells, {result['data']}", figure)
        result["figure"] = str(figure)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", type=Path, nargs="+")
    parser.add_argument("--out", type=Path, default=Path("runs/quality"), help="folder for the JSON results")
    parser.add_argument("--figure", type=Path, default=None, help="reconstruction figure path (image checkpoints; one per checkpoint: -N suffix)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for n, ckpt in enumerate(args.checkpoints):
        figure = None
        if args.figure is not None:
            figure = args.figure if len(args.checkpoints) == 1 else args.figure.with_stem(f"{args.figure.stem}-{n}")
        results.append(evaluate(ckpt, args.device, figure))
    (args.out / "vae_quality.json").write_text(json.dumps(results, indent=2))

    print("| data | model | test cells | classes | reconstruction MSE (mean-prediction baseline) | kNN k=5 accuracy (chance) |")
    print("|---|---|---|---|---|---|")
    for r in results:
        recon = "; ".join(f"{t} {r[t]:.4f} ({r[t + '_mean_baseline']:.4f})" for t in RECONSTRUCTIONS[r["kind"]])
        print(f"| {r['data']} | {r['kind']} | {r['test_cells']} | {r['classes_in_test']} | {recon} "
              f"| {r['knn5_accuracy']:.3f} ({r['chance_accuracy']:.3f}) |")  # fmt: skip
    print(f"\nwritten to {args.out / 'vae_quality.json'}")


if __name__ == "__main__":
    main()
