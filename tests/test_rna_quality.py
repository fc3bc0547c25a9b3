"""bench/rna_quality.py's molecular cross-validation: the split keeps every molecule, and the measure rewards
a reconstruction of the cell's expression, not of its sampling noise (the plain MSE rewards the latter)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))  # rna_quality imports vae_quality beside it
spec = importlib.util.spec_from_file_location("rna_quality", REPO / "bench" / "rna_quality.py")
quality = importlib.util.module_from_spec(spec)
spec.loader.exec_module(quality)


def toy_counts(cells: int, genes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Poisson counts of cells on a 2-d programme (their expression has rank 2 in the log), and libraries
    that hold 1,000 molecules of genes outside the table."""
    rng = np.random.default_rng(seed)
    loadings = rng.normal(size=(2, genes))
    states = rng.normal(size=(cells, 2))
    mean = np.exp(0.5 * states @ loadings + 1.0)
    counts = rng.poisson(mean).astype(np.float32)
    return counts, counts.sum(1, keepdims=True) + 1000


def test_the_split_keeps_every_molecule_and_halves_them():
    counts, library = toy_counts(300, 40, seed=0)
    half_a, half_b, library_a, library_b = quality.molecular_split(counts, library, np.random.default_rng(0))
    assert (half_a >= 0).all() and (half_b >= 0).all()
    np.testing.assert_array_equal(half_a + half_b, counts)
    np.testing.assert_allclose(library_a + library_b, library)
    np.testing.assert_allclose(library_a - half_a.sum(1, keepdims=True), 500)  # the other genes' half
    assert abs(half_a.sum() / counts.sum() - 0.5) < 0.01


def test_held_out_molecules_score_expression_where_the_plain_mse_scores_noise():
    """PCA with the programme's 2 axes against PCA with 30, which also keeps 28 axes of each cell's noise."""
    train, train_library = toy_counts(600, 60, seed=1)
    test, test_library = toy_counts(300, 60, seed=2)
    rng = np.random.default_rng(0)
    train_a, _, train_library_a, _ = quality.molecular_split(train, train_library, rng)
    half_a, half_b, library_a, library_b = quality.molecular_split(test, test_library, rng)
    plain, held_out = {}, {}
    for k in (2, 30):
        pca = quality.fit_pca(quality.log_normalised(train, train_library), k)
        truth = quality.log_normalised(test, test_library)
        plain[k] = quality.mse(pca.inverse_transform(pca.transform(truth)), truth)
        pca = quality.fit_pca(quality.log_normalised(train_a, train_library_a), k)
        recon = pca.inverse_transform(pca.transform(quality.log_normalised(half_a, library_a)))
        held_out[k] = quality.mse(recon, quality.log_normalised(half_b, library_b))
    assert plain[30] < 0.7 * plain[2]  # copying the noise pays on the plain MSE…
    assert held_out[2] < held_out[30]  # …and costs on held-out molecules
