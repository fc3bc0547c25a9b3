"""How good is a latent space: class accuracy of a k-nearest-neighbour vote (k = 5 as in the study)."""

from __future__ import annotations

import numpy as np
from sklearn.neighbors import NearestNeighbors


def _majority(neighbour_labels: np.ndarray) -> np.ndarray:
    """Most frequent label per row; ties go to the nearer neighbour (the first in the row)."""
    votes = []
    for row in neighbour_labels:
        values, counts = np.unique(row, return_counts=True)
        best = values[counts == counts.max()]
        votes.append(next(label for label in row if label in best))
    return np.asarray(votes)


def knn_accuracy(
    reference: np.ndarray, reference_labels: np.ndarray, query: np.ndarray, query_labels: np.ndarray, k: int = 5
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


def leave_one_out_knn_accuracy(latent: np.ndarray, labels: np.ndarray, k: int = 5) -> float:
    """kNN accuracy within one set, each cell voted on by its k nearest *other* cells."""
    keep = labels >= 0
    latent, labels = latent[keep], labels[keep]
    if len(latent) < 2:
        return float("nan")
    k = min(k, len(latent) - 1)
    _, neighbours = NearestNeighbors(n_neighbors=k + 1).fit(latent).kneighbors(latent)
    return float((_majority(labels[neighbours[:, 1:]]) == labels).mean())
