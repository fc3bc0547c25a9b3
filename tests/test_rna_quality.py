"""`wbcvae.training.rna_quality`'s molecular cross-validation: the split keeps every molecule, and the measure
rewards a reconstruction of the cell's expression, not of its sampling noise (the plain MSE rewards the latter);
the synthetic world's truth as a yardstick; bench/rna_quality.py's SCVI anchor."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from wbcvae.training import rna_quality as quality
from wbcvae.training.yardsticks import fit_pca, mse

REPO = Path(__file__).resolve().parents[1]


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
        pca = fit_pca(quality.log_normalised(train, train_library), k)
        truth = quality.log_normalised(test, test_library)
        plain[k] = mse(pca.inverse_transform(pca.transform(truth)), truth)
        pca = fit_pca(quality.log_normalised(train_a, train_library_a), k)
        recon = pca.inverse_transform(pca.transform(quality.log_normalised(half_a, library_a)))
        held_out[k] = mse(recon, quality.log_normalised(half_b, library_b))
    assert plain[30] < 0.7 * plain[2]  # copying the noise pays on the plain MSE…
    assert held_out[2] < held_out[30]  # …and costs on held-out molecules


def test_a_world_s_own_expression_wins_on_held_out_molecules_and_loses_to_a_wide_code_on_the_plain_mse(tmp_path):
    """The premise on the synthetic world itself: its true expression (`TruthYardstick`) is the best prediction of
    a cell's expression there is, yet PCA that keeps 100 of 150 axes scores below it on the plain MSE, by keeping
    the held-out cells' own noise along them. On held-out molecules the truth wins."""
    import anndata as ad

    from wbcvae.data.synthetic.world import write_world

    world = write_world(tmp_path / "world", cells_per_class=1, rna_cells=900, crop_size=64, n_genes=150, progress=False)
    adata = ad.read_h5ad(world / "rna.h5ad")
    counts = adata.X.toarray().astype(np.float32)
    library = counts.sum(1, keepdims=True)
    train, held_out = np.arange(600), np.arange(600, 900)
    test = {"counts": counts[held_out], "library": library[held_out], "index": held_out}
    test["truth"] = quality.log_normalised(test["counts"], test["library"])
    truth = quality.TruthYardstick(world, list(adata.var_names)).scores(test, split_seed=0)
    train_a, _, train_library_a, _ = quality.molecular_split(counts[train], library[train], np.random.default_rng([0, 0]))
    half_a, half_b, library_a, library_b = quality.held_out_halves(test, 0)
    plain, held_out_mse = {}, {}
    for k in (50, 100):
        pca = fit_pca(quality.log_normalised(counts[train], library[train]), k)
        plain[k] = mse(pca.inverse_transform(pca.transform(test["truth"])), test["truth"])
        pca = fit_pca(quality.log_normalised(train_a, train_library_a), k)
        recon = pca.inverse_transform(pca.transform(quality.log_normalised(half_a, library_a)))
        held_out_mse[k] = mse(recon, quality.log_normalised(half_b, library_b))
    assert plain[100] < 0.6 * truth["log_expression_mse"]  # copying noise beats the truth on the plain MSE…
    assert truth["held_out_molecules_mse"] < min(held_out_mse.values())  # …and not on held-out molecules
    assert np.isfinite(truth["nb_log_likelihood"]) and truth["nb_log_likelihood"] < 0
    # The truth is found from the world's folder or its rna.h5ad, not from other data; a world this version cannot
    # draw again gives none, with a warning, so the other measures still stand.
    assert quality.truth_of(str(world / "rna.h5ad"), ["SYN0001"]) is not None and quality.truth_of(str(tmp_path), []) is None
    adata.X = adata.X * 2
    adata.write_h5ad(world / "rna.h5ad")
    with pytest.warns(UserWarning, match="no truth beside the RNA reconstruction: .*write the world again"):
        assert quality.truth_of(str(world), list(adata.var_names)) is None


def test_scvi_is_scored_on_the_same_cells_and_halves_as_ours():
    """The `--scvi` anchor (skipped without scvi-tools: `pip install -e '.[bench]'`): trained on `collect`'s
    training cells, it scores finite measures on the held-out ones, the same for the same split seed."""
    pytest.importorskip("scvi")
    spec = importlib.util.spec_from_file_location("rna_quality_bench", REPO / "bench" / "rna_quality.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    counts, library = toy_counts(240, 30, seed=3)
    train = {"counts": counts[:160], "library": library[:160]}
    test = {"counts": counts[160:], "library": library[160:], "truth": quality.log_normalised(counts[160:], library[160:])}
    anchor = bench.ScviYardstick(train, epochs=2)
    scores = anchor.scores(test, split_seed=0)
    assert anchor.epochs == 2 and set(scores) == set(quality.MEASURES)
    assert all(np.isfinite(value) for value in scores.values()) and scores["nb_log_likelihood"] < 0
    assert anchor.scores(test, split_seed=0) == scores
