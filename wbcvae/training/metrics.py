"""How good is a latent space: class accuracy of a k-nearest-neighbour vote (k = 5 as in the study).

One protocol everywhere a kNN accuracy is quoted (the training log's `val/knn5_acc`, the pipeline
report, `bench/vae_quality.py`):

- **query**: held-out cells, μ of the encoder in eval mode: the validation split while training, the
  test split (the validation split when the patient-grouped test split is empty) in the bench;
- **reference**: training cells, μ from the same model, at most `REFERENCE_CELLS` of them drawn with a
  fixed seed (`latent_reference`), so a large training set costs one bounded encoder pass per epoch;
- **vote**: Euclidean distance on raw μ (no standardisation), majority of the k = 5 nearest reference
  cells, a tie going to the nearer neighbour; cells without a class (label < 0) are left out on both sides.

Chance is the share of the most frequent class among the query cells. The training log and the bench
differ only in which held-out cells they query (validation vs test split).
(Before, the log voted among the validation cells themselves, leave-one-out: a reference several
times smaller than the training set, drawn from the held-out patients only; the bench voted with
training cells. Hence two numbers for one model.)
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.neighbors import NearestNeighbors
from torch.utils.data import DataLoader, Subset

K = 5
REFERENCE_CELLS = 5000


def _majority(neighbour_labels: np.ndarray) -> np.ndarray:
    """Most frequent label per row; ties go to the nearer neighbour (the first in the row)."""
    votes = []
    for row in neighbour_labels:
        values, counts = np.unique(row, return_counts=True)
        best = values[counts == counts.max()]
        votes.append(next(label for label in row if label in best))
    return np.asarray(votes)


def knn_accuracy(
    reference: np.ndarray, reference_labels: np.ndarray, query: np.ndarray, query_labels: np.ndarray, k: int = K
) -> float:
    """Fraction of query cells whose k nearest reference cells vote for their true class.

    Cells with label < 0 (no class) are left out on both sides.
    """
    keep_ref, keep_query = reference_labels >= 0, query_labels >= 0
    reference, reference_labels = reference[keep_ref], reference_labels[keep_ref]
    query, query_labels = query[keep_query], query_labels[keep_query]
    if len(query) == 0 or len(reference) == 0:
        return float("nan")
    k = min(k, len(reference))
    _, neighbours = NearestNeighbors(n_neighbors=k).fit(reference).kneighbors(query)
    return float((_majority(reference_labels[neighbours]) == query_labels).mean())


def held_out_dataloader(datamodule) -> tuple[DataLoader, str]:
    """The held-out cells of the protocol above and which split they are: the test split, or the validation split
    when the patient-grouped test split is empty."""
    loader = datamodule.test_dataloader()
    return (loader, "test") if len(loader) else (datamodule.val_dataloader(), "val")


def reference_loader(train_loader: DataLoader, max_cells: int = REFERENCE_CELLS, seed: int = 0) -> DataLoader:
    """The kNN reference cells in a loader of their own: every training cell, or a seeded draw of
    `max_cells` (the same every epoch and in `bench/vae_quality.py`), in order, without workers."""
    dataset = train_loader.dataset
    rows = np.arange(len(dataset))
    if len(rows) > max_cells:
        rows = np.sort(np.random.default_rng(seed).choice(len(rows), max_cells, replace=False))
    return DataLoader(Subset(dataset, rows.tolist()), batch_size=train_loader.batch_size or 64, collate_fn=train_loader.collate_fn)


@torch.no_grad()
def latent_reference(plan, train_loader: DataLoader, max_cells: int = REFERENCE_CELLS, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """μ and labels of up to `max_cells` training cells (a seeded draw, the same every epoch), encoded by
    `plan` (a β-VAE training plan) in eval mode: the kNN reference of the protocol above.

    Reads `train_loader`'s dataset in a loader of its own (same batch size and collation, no workers,
    no shuffling), so the training run's sampler and random state are untouched.
    """
    loader = reference_loader(train_loader, max_cells, seed)
    was_training = plan.training
    plan.eval()
    mu, labels = [], []
    for batch in loader:
        mu.append(plan.encode(batch).float().cpu())
        labels.append(batch["label"].cpu())
    plan.train(was_training)
    if not mu:
        return np.zeros((0, plan.hparams.latent_dim), np.float32), np.zeros(0, int)
    return torch.cat(mu).numpy(), torch.cat(labels).numpy().astype(int)
