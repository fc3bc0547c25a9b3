"""Why the training log's kNN accuracy and the bench's used to differ: the same checkpoint scored both ways.

- `val, leave-one-out` (what `val/knn5_acc` logged before): each validation cell voted by its 5 nearest
  *other validation* cells;
- `val, training reference` (what it logs now, `wbcvae.training.metrics`): voted by its 5 nearest
  training cells (at most `REFERENCE_CELLS`, a seeded draw);
- `test, training reference`: the same protocol on the test split, as `bench/vae_quality.py` reports it.

    python bench/knn_protocols.py runs/rna_vae/version_0/checkpoints/last.ckpt [more.ckpt …]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from sklearn.neighbors import NearestNeighbors

from wbcvae.checkpoints import load_plan
from wbcvae.training.embed import rebuild_datamodule
from wbcvae.training.metrics import K, _majority, knn_accuracy, latent_reference


def leave_one_out(mu: np.ndarray, labels: np.ndarray, k: int = K) -> float:
    """The old log's protocol: each cell voted by its k nearest other cells of the same set."""
    keep = labels >= 0
    mu, labels = mu[keep], labels[keep]
    _, neighbours = NearestNeighbors(n_neighbors=k + 1).fit(mu).kneighbors(mu)
    return float((_majority(labels[neighbours[:, 1:]]) == labels).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", type=Path, nargs="+")
    args = parser.parse_args()
    print("| checkpoint | val cells | val, leave-one-out (old log) | val, training reference (log now) | test, training reference (bench) |")
    print("|---|---|---|---|---|")
    for ckpt in args.checkpoints:
        plan, record = load_plan(ckpt)
        plan.eval()
        datamodule = rebuild_datamodule(record)
        datamodule.setup("fit")
        reference = latent_reference(plan, datamodule.train_dataloader())
        scores = {}
        for split, loader in (("val", datamodule.val_dataloader()), ("test", datamodule.test_dataloader())):
            held_out = latent_reference(plan, loader, max_cells=len(loader.dataset))
            scores[split] = held_out, knn_accuracy(*reference, *held_out) if len(held_out[0]) else float("nan")
        (val_mu, val_labels), val_score = scores["val"]
        print(f"| {ckpt} | {len(val_mu)} | {leave_one_out(val_mu, val_labels):.3f} | {val_score:.3f} | {scores['test'][1]:.3f} |")


if __name__ == "__main__":
    main()
