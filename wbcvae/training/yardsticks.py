"""The baselines every reconstruction is set beside: PCA-50 of the training cells (the best linear code as wide
as the latent space) and, scored the same way, the training mean. Shared by the pipeline's RNA quality and the
benches, so one PCA stands behind every "PCA-50" quoted."""

from __future__ import annotations

import numpy as np
from sklearn.decomposition import PCA

PCA_DIM = 50


def mse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean((np.asarray(a, dtype=np.float64) - b) ** 2))


def fit_pca(train: np.ndarray, k: int = PCA_DIM) -> PCA:
    """PCA-k of the training cells (randomised SVD, seeded): the best linear k-dimensional code."""
    return PCA(n_components=min(k, *train.shape), svd_solver="randomized", random_state=0).fit(train)
