"""RNA sources → AnnData → preprocessing → batches, on the real van Galen tables and on small .h5ad files
built here in Tabula Sapiens style; and every kind of bad RNA input."""

from __future__ import annotations

import gzip
import importlib.machinery
import sys
import types
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from wbcvae.data import rna as rna_module
from wbcvae.data.rna import read_count_rows, read_rna, rna_summary
from wbcvae.data.rna_datamodule import RnaDataModule, label_codes
from wbcvae.data.rna_preprocess import RnaPreprocessor, principal_axes, scanpy_seurat_v3, seurat_v3_order, streamed_seurat_v3
from wbcvae.errors import InputError
from wbcvae.vocabulary import CLASS_INDEX

N_CELLS, N_GENES = 160, 300
TS_TYPES = ["hematopoietic stem cell", "neutrophil", "classical monocyte", "erythrocyte"]


def _anno(folder: Path, sample: str) -> pd.DataFrame:
    (path,) = folder.glob(f"GSM*_{sample}.anno.txt.gz")
    return pd.read_csv(path, sep="\t")


def _counts(seed: int = 0, n_cells: int = N_CELLS, n_genes: int = N_GENES) -> np.ndarray:
    """Negative-binomial-like counts with gene-specific means, so genes differ in dispersion."""
    rng = np.random.default_rng(seed)
    gene_mean = rng.gamma(0.6, 2.0, size=n_genes)
    cell_size = rng.lognormal(0.0, 0.4, size=(n_cells, 1))
    return rng.poisson(rng.gamma(1.5, gene_mean * cell_size / 1.5)).astype(np.int32)


def _atlas_anndata(counts: np.ndarray | None = None, embedding_dim: int = 50, seed: int = 0) -> ad.AnnData:
    """A Tabula-Sapiens-style AnnData: log-normalised X, counts in a layer, scVI embedding, ontology labels."""
    counts = _counts(seed) if counts is None else counts
    n_cells, n_genes = counts.shape
    library = counts.sum(axis=1, keepdims=True).clip(min=1)
    obs = pd.DataFrame(
        {
            "cell_ontology_class": pd.Categorical([TS_TYPES[i % len(TS_TYPES)] for i in range(n_cells)]),
            "donor": [f"TSP{1 + i % 3}" for i in range(n_cells)],
        },
        index=[f"cell{i}" for i in range(n_cells)],
    )
    adata = ad.AnnData(
        X=sp.csr_matrix(np.log1p(counts / library * 1e4).astype(np.float32)),
        obs=obs,
        var=pd.DataFrame(index=[f"G{j}" for j in range(n_genes)]),
    )
    adata.layers["counts"] = sp.csr_matrix(counts)
    adata.obsm["X_scvi"] = np.random.default_rng(seed + 1).normal(size=(n_cells, embedding_dim)).astype(np.float32)
    return adata


@pytest.fixture(scope="module")
def atlas_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("atlas") / "atlas.h5ad"
    _atlas_anndata().write_h5ad(path)
    return path


@pytest.fixture(scope="module")
def bm12(vangalen) -> ad.AnnData:
    return read_rna(vangalen, samples=["BM1", "BM2"])


@pytest.fixture(autouse=True)
def _own_table_cache(tmp_path_factory, monkeypatch):
    """Parsed van Galen tables go to a cache of this test session, not the user's ~/.cache."""
    monkeypatch.setattr(rna_module, "CACHE_DIR", str(tmp_path_factory.getbasetemp() / "table_cache"))


def _message(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


# --- van Galen 2019 (real data) -------------------------------------------------------------------


def test_vangalen_cell_types_per_sample_match_the_annotation_files(vangalen, bm12):
    for sample in ("BM1", "BM2"):
        expected = _anno(vangalen, sample)["CellType"].value_counts().sort_index()
        cells = bm12.obs[bm12.obs["sample"] == sample]
        assert cells["cell_type"].astype(str).value_counts().sort_index().to_dict() == expected.to_dict()
        assert set(cells["patient"]) == {sample} and cells["healthy"].all()
    assert bm12.n_obs == 108 + 188 and bm12.n_vars == 27899
    assert bm12.obs_names.is_unique and bm12.obs_names[0].startswith("BM1_")


def test_vangalen_counts_are_the_published_umis_per_cell(vangalen, bm12):
    """Row sums and detected genes equal the annotation's TranscriptomeUMIs / NumberOfGenes: the table
    was transposed and aligned to its cells correctly."""
    assert sp.isspmatrix_csr(bm12.X) and bm12.X.dtype == np.int32 and bm12.X.data.min() >= 0
    anno = pd.concat([_anno(vangalen, s) for s in ("BM1", "BM2")]).set_index("Cell").loc[bm12.obs_names]
    np.testing.assert_array_equal(np.asarray(bm12.X.sum(axis=1)).ravel(), anno["TranscriptomeUMIs"])
    np.testing.assert_array_equal(np.diff(bm12.X.indptr), anno["NumberOfGenes"])
    assert bm12.layers["counts"] is bm12.X


def test_vangalen_labels_and_summary(bm12):
    obs = bm12.obs.set_index("cell_type", drop=False)
    assert set(obs.loc["Mono", "label"]) == {"monocyte"} and set(obs.loc["HSC", "label"]) == {"myeloblast"}
    assert obs.loc["cDC", "label"].isna().all()
    skipped = bm12.uns["wbcvae"]["skipped"]
    assert skipped == {"cDC": 16, "pDC": 9}
    tables = list(rna_summary(bm12).values())
    per_type, per_sample, per_class = tables
    assert per_type.loc["Mono", "cells"] == 83 and per_type.loc["Mono", "BM1"] == 24 and per_type.loc["cDC", "class"] == ""
    assert per_sample.loc["BM2", "cells"] == 188 and per_sample.loc["BM2", "labelled"] == 188 - 13 - 5
    assert per_class["cells"].sum() == bm12.n_obs - sum(skipped.values())
    codes = label_codes(bm12)
    assert (codes == -1).sum() == 25 and codes[bm12.obs["cell_type"] == "Mono"].tolist() == [CLASS_INDEX["monocyte"]] * 83


@pytest.mark.slow
def test_vangalen_whole_folder(vangalen):
    adata = read_rna(vangalen)
    samples = sorted(p.name.split("_", 1)[1].removesuffix(".anno.txt.gz") for p in vangalen.glob("*.anno.txt.gz"))
    assert sorted(adata.obs["sample"].unique()) == samples
    for sample in samples:
        assert (adata.obs["sample"] == sample).sum() == len(_anno(vangalen, sample))
    patients = adata.obs.groupby("sample")["patient"].first()
    assert patients["AML328-D0"] == "AML328" and patients["BM5-34p38n"] == "BM5"
    # BM5-34p38n leaves half its cells without a cell type: they stay, unlabelled
    assert adata.uns["wbcvae"]["skipped"]["(none)"] == _anno(vangalen, "BM5-34p38n")["CellType"].isna().sum()


def test_vangalen_hvg_are_scanpys_seurat_v3_streamed_or_not(bm12):
    """In memory the gene choice is scanpy's batch-aware seurat_v3; the streamed computation a lazy
    atlas goes through chooses the same genes, in the same order."""
    import scanpy as sc

    counts, samples = read_count_rows(bm12, slice(None)), bm12.obs["sample"].astype(str).to_numpy()
    span = 0.5  # BM1's 108 cells make scanpy's default 0.3 singular: the preprocessing widens it so
    reference = sc.pp.highly_variable_genes(bm12.copy(), flavor="seurat_v3", n_top_genes=400, batch_key="sample", span=span, inplace=False)
    in_memory = scanpy_seurat_v3(counts, samples, 400, span)
    streamed = streamed_seurat_v3(lambda: (counts[i : i + 50] for i in range(0, bm12.n_obs, 50)), samples, bm12.n_vars, 400, span)
    expected = np.flatnonzero(reference["highly_variable"].to_numpy())
    for ranking in (in_memory, streamed):
        np.testing.assert_array_equal(np.sort(seurat_v3_order(ranking)[:400]), expected)
    np.testing.assert_array_equal(seurat_v3_order(streamed), seurat_v3_order(in_memory))
    fitted = RnaPreprocessor(n_top_genes=400, atlas="pca", chunk_size=100).fit(bm12)
    assert fitted.genes == bm12.var_names[expected].tolist()
    with_marker = RnaPreprocessor(n_top_genes=400, markers=["CD34", "ELANE", "NOT_A_GENE"], atlas="pca").fit(bm12)
    assert {"CD34", "ELANE"} <= set(with_marker.genes) and len(with_marker.genes) == 400
    assert with_marker.markers_absent == ["NOT_A_GENE"]


# --- .h5ad sources -------------------------------------------------------------------------------


def test_tabula_sapiens_style_h5ad(atlas_file):
    adata = read_rna(atlas_file)
    source = _atlas_anndata()
    np.testing.assert_array_equal(adata.X.toarray(), source.layers["counts"].toarray())
    assert adata.uns["wbcvae"]["counts"] == "layers/counts" and not adata.uns["wbcvae"]["lazy"]
    assert adata.obs["cell_type"].iloc[:4].tolist() == TS_TYPES
    assert adata.obs["label"].iloc[:4].tolist()[:3] == ["myeloblast", "neutrophil_segmented", "monocyte"]
    assert pd.isna(adata.obs["label"].iloc[3]) and adata.uns["wbcvae"]["skipped"] == {"erythrocyte": N_CELLS // 4}
    assert adata.obs["patient"].iloc[:3].tolist() == ["TSP1", "TSP2", "TSP3"]
    assert adata.obs["sample"].tolist() == adata.obs["patient"].tolist()  # no sample column: one per donor
    np.testing.assert_array_equal(adata.obsm["X_scvi"], source.obsm["X_scvi"])


def test_gene_major_files_are_refused_lazily(tmp_path):
    adata = _atlas_anndata()
    adata.layers["counts"] = sp.csc_matrix(adata.layers["counts"])
    adata.write_h5ad(tmp_path / "csc.h5ad")
    with pytest.raises(InputError, match=r"csc.h5ad: layers/counts is stored by gene \(CSC\)"):
        read_rna(tmp_path / "csc.h5ad", lazy=True)
    assert read_rna(tmp_path / "csc.h5ad", lazy=False).uns["wbcvae"]["counts"] == "layers/counts"


def test_counts_from_raw_when_x_is_a_normalised_gene_subset(tmp_path):
    full = _atlas_anndata()
    full.X = full.layers.pop("counts")
    full.raw = full
    subset = full[:, :100].copy()
    subset.X = sp.csr_matrix(np.log1p(subset.X.toarray()).astype(np.float32) + 0.5)
    path = tmp_path / "raw.h5ad"
    subset.write_h5ad(path)
    for lazy in (False, True):
        adata = read_rna(path, lazy=lazy)
        assert adata.uns["wbcvae"]["counts"] == "raw/X" and adata.n_vars == N_GENES
        np.testing.assert_array_equal(read_count_rows(adata, [5, 1]).toarray(), full.X[[5, 1]].toarray())


def test_lazy_h5ad_reads_only_the_rows_asked_and_fits_identically(atlas_file):
    memory, lazy = read_rna(atlas_file, lazy=False), read_rna(atlas_file, lazy=True)
    assert lazy.uns["wbcvae"]["lazy"] and not sp.issparse(lazy.X) and not isinstance(lazy.X, np.ndarray)
    rows = np.array([17, 3, 150, 3 + 1, 17])  # unsorted, a run of neighbours, a repeat
    np.testing.assert_array_equal(read_count_rows(lazy, rows).toarray(), memory.X[rows].toarray())
    np.testing.assert_array_equal(read_count_rows(lazy, slice(None)).toarray(), memory.X.toarray())
    settings = dict(n_top_genes=120, atlas="pca", chunk_size=37)  # several chunks: exercises the streaming
    a, b = RnaPreprocessor(**settings).fit(memory), RnaPreprocessor(**settings).fit(lazy)
    assert a.genes == b.genes
    for left, right in zip(a.transform(memory, rows), b.transform(lazy, rows)):
        np.testing.assert_allclose(left, right, rtol=1e-5, atol=1e-5)


def test_synthetic_world_folder_is_read_through_its_rna_h5ad(tmp_path):
    counts = _counts(3, n_cells=26)
    world = ad.AnnData(
        X=counts,
        obs=pd.DataFrame(
            {"cell_type": ["myeloblast", "monocyte"] * 13, "sample": "world", "patient": "p0"},
            index=[f"c{i}" for i in range(26)],
        ),
        var=pd.DataFrame(index=[f"G{j}" for j in range(N_GENES)]),
    )
    world.write_h5ad(tmp_path / "rna.h5ad")
    adata = read_rna(tmp_path)
    assert adata.obs["label"].tolist() == ["myeloblast", "monocyte"] * 13
    assert set(adata.obs["sample"]) == {"world"} and adata.uns["wbcvae"]["counts"] == "X"
    np.testing.assert_array_equal(adata.X.toarray(), counts)


# --- preprocessing --------------------------------------------------------------------------------


def test_preprocessing_range_genes_and_saved_round_trip(atlas_file, tmp_path):
    adata = read_rna(atlas_file)
    fitted = RnaPreprocessor(n_top_genes=80, markers=["G7"], atlas="pca").fit(adata, rows=np.arange(120))
    assert len(fitted.genes) == 80 and "G7" in fitted.genes
    x, z = fitted.transform(adata, np.arange(120))
    assert x.dtype == z.dtype == np.float32 and x.shape == (120, 80) and z.shape == (120, 50)
    np.testing.assert_allclose(x.min(axis=0), 0.0)
    np.testing.assert_allclose(x.max(axis=0)[fitted.gene_max > fitted.gene_min], 1.0)
    new_x, new_z = fitted.transform(adata, np.arange(120, N_CELLS))  # cells it never saw: clipped to [0, 1]
    assert new_x.min() >= 0.0 and new_x.max() <= 1.0
    loaded = RnaPreprocessor.load(fitted.save(tmp_path / "rna_preprocessing.json"))
    assert loaded.genes == fitted.genes and loaded.settings == fitted.settings
    for before, after in zip((new_x, new_z), loaded.transform(adata, np.arange(120, N_CELLS))):
        np.testing.assert_array_equal(before, after)


def test_all_genes_kept_when_fewer_than_asked(atlas_file):
    adata = read_rna(atlas_file)
    assert RnaPreprocessor(n_top_genes=5000, atlas="pca").fit(adata).genes == adata.var_names.tolist()


def test_pca_atlas_is_the_principal_components_of_x(bm12):
    from sklearn.decomposition import PCA

    fitted = RnaPreprocessor(n_top_genes=300, atlas="pca").fit(bm12)
    x, z = fitted.transform(bm12)
    reference = PCA(n_components=50, svd_solver="full").fit_transform(x.astype(np.float64))
    signs = np.sign((reference * z).sum(axis=0))
    np.testing.assert_allclose(z[:, :20], (reference * signs)[:, :20], atol=2e-3)


def test_lanczos_pca_finds_the_exact_top_50_axes():
    """In-memory fitting takes the atlas PCA by Lanczos iteration on the sparse log values, never centring
    or densifying them: on toy log counts with a slowly decaying spectrum its top 50 axes are the exact ones."""
    rng = np.random.default_rng(0)
    rates = np.exp(rng.normal(size=(600, 30)) @ rng.normal(scale=0.4, size=(30, 400)) - 1.0)
    values = sp.csr_matrix(np.log1p(rng.poisson(rates)).astype(np.float64))
    mean, axes = principal_axes(values, 50)
    centred = values.toarray() - values.toarray().mean(axis=0)
    exact = np.linalg.svd(centred, full_matrices=False)[2][:50]
    np.testing.assert_allclose(mean, values.toarray().mean(axis=0))
    assert np.linalg.svd(axes @ exact.T, compute_uv=False).min() > 1 - 1e-9  # cosines of the principal angles
    np.testing.assert_allclose(np.abs((axes * exact).sum(axis=1)), 1.0, atol=1e-6)  # and axis by axis, in order


def test_pca_pads_to_the_latent_size_when_few_genes(atlas_file):
    adata = read_rna(atlas_file)
    fitted = RnaPreprocessor(atlas="pca").fit(adata[:, :30].copy())
    _, z = fitted.transform(adata[:, :30].copy())
    assert z.shape == (N_CELLS, 50) and np.abs(z[:, 30:]).max() == 0 and np.abs(z[:, :30]).min(axis=0).max() > 0


def test_atlas_embedding_from_obsm(atlas_file, tmp_path):
    adata = read_rna(atlas_file)
    fitted = RnaPreprocessor(n_top_genes=50).fit(adata)
    assert fitted.atlas_method == "obsm"
    np.testing.assert_array_equal(fitted.transform(adata)[1], adata.obsm["X_scvi"])
    wide = _atlas_anndata(embedding_dim=64)
    projected = RnaPreprocessor(n_top_genes=50).fit(wide)
    _, z = projected.transform(wide)
    assert z.shape == (N_CELLS, 50) and np.allclose(z.mean(axis=0), 0, atol=1e-4)
    variance = z.var(axis=0)
    assert np.all(np.diff(variance) <= 1e-6)  # principal axes, largest first


def test_scvi_branch_trains_saves_and_reloads(atlas_file, tmp_path, monkeypatch):
    """scvi-tools is not installed here: a stand-in module records how the branch drives it."""
    calls = []

    class SCVI:
        def __init__(self, adata, n_latent):
            self.n_latent = n_latent
            calls.append(("init", adata.shape, n_latent))

        @classmethod
        def setup_anndata(cls, adata):
            calls.append(("setup", adata.shape))

        def train(self):
            calls.append(("train",))

        def get_latent_representation(self, adata):
            return np.asarray(adata.X[:, : self.n_latent].todense(), dtype=np.float32)

        def save(self, folder):
            Path(folder).mkdir()
            (Path(folder) / "model.pt").write_text(str(self.n_latent))

        @classmethod
        def load(cls, folder, adata):
            calls.append(("load", Path(folder).name))
            return cls(adata, int((Path(folder) / "model.pt").read_text()))

    scvi = types.ModuleType("scvi")
    scvi.__spec__ = importlib.machinery.ModuleSpec("scvi", None)
    scvi.model = types.SimpleNamespace(SCVI=SCVI)
    monkeypatch.setitem(sys.modules, "scvi", scvi)
    adata = read_rna(atlas_file)
    del adata.obsm["X_scvi"]
    fitted = RnaPreprocessor(n_top_genes=60).fit(adata, rows=np.arange(100))
    assert fitted.atlas_method == "scvi" and ("init", (100, 60), 50) in calls and ("train",) in calls
    _, z = fitted.transform(adata, [0, 1])
    np.testing.assert_array_equal(z, adata.X[[0, 1]][:, adata.var_names.get_indexer(fitted.genes[:50])].toarray())
    loaded = RnaPreprocessor.load(fitted.save(tmp_path / "pre.json"))
    np.testing.assert_array_equal(loaded.transform(adata, [0, 1])[1], z)
    assert ("load", "pre.scvi") in calls


# --- DataModule -----------------------------------------------------------------------------------


def test_datamodule_batches_and_stratified_splits(bm12):
    module = RnaDataModule(bm12, batch_size=32, n_top_genes=200, seed=1, atlas="pca")
    module.setup("fit")
    batch = next(iter(module.train_dataloader()))
    assert batch["x"].shape == (32, 200) and batch["z_atlas"].shape == (32, 50)
    assert batch["x"].dtype == batch["z_atlas"].dtype == torch.float32 and batch["label"].dtype == torch.int64
    assert 0.0 <= batch["x"].min() and batch["x"].max() <= 1.0
    kept = module.adata.var_names.get_indexer(module.preprocessor.genes)
    counts = read_count_rows(module.adata, batch["index"].numpy())
    np.testing.assert_array_equal(batch["counts"].numpy(), counts[:, kept].toarray())  # raw counts, for "nb"
    np.testing.assert_array_equal(batch["library"].numpy()[:, 0], np.asarray(counts.sum(axis=1)).ravel())  # over all genes
    for served, read in zip((batch["x"], batch["z_atlas"]), module.preprocessor.transform(module.adata, batch["index"].numpy())):
        np.testing.assert_allclose(served.numpy(), read, atol=1e-6)  # held kept-gene counts give what reading every gene gives
    codes = label_codes(module.adata)
    np.testing.assert_array_equal(batch["label"].numpy(), codes[batch["index"].numpy()])
    rows = np.concatenate(list(module.splits.values()))
    assert sorted(rows.tolist()) == list(range(module.adata.n_obs))
    cells_per_class = pd.Series(codes).value_counts()
    train_share = pd.Series(codes[module.splits["train"]]).value_counts() / cells_per_class
    assert train_share[cells_per_class >= 20].between(0.65, 0.75).all()  # fractions (0.7, 0.15, 0.15)
    assert module.preprocessor.genes == RnaPreprocessor(n_top_genes=200, atlas="pca").fit(module.adata, module.splits["train"]).genes
    seen = np.concatenate([b["index"].numpy() for b in module.val_dataloader()])
    assert sorted(seen.tolist()) == sorted(module.splits["val"].tolist())
    item = module.datasets["test"][0]
    assert item["x"].shape == (200,) and item["label"].ndim == 0


def test_datamodule_from_lazy_file_and_saved_preprocessor(atlas_file, tmp_path):
    first = RnaDataModule(atlas_file, batch_size=16, n_top_genes=40, lazy=True)
    first.setup()
    saved = first.preprocessor.save(tmp_path / "pre.json")
    second = RnaDataModule(atlas_file, batch_size=16, preprocessor=saved, lazy=True)
    second.setup()
    a, b = next(iter(first.predict_dataloader())), next(iter(second.predict_dataloader()))
    assert a["index"].tolist() == list(range(16))
    for key in ("x", "z_atlas", "label"):
        assert (a[key] == b[key]).all()


def _peak_bytes_of_a_lazy_epoch(path: Path) -> int:
    """numpy/Python bytes at peak while setting up (fitting) and serving one training epoch lazily."""
    import tracemalloc

    tracemalloc.start()
    try:
        module = RnaDataModule(path, batch_size=64, n_top_genes=300, atlas="pca", lazy=True, chunk_size=1000)
        module.setup()
        for _ in module.train_dataloader():
            pass
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.slow
def test_lazy_memory_is_set_by_batches_not_cells(tmp_path):
    """Four times the cells (24 MB more counts on disk) must not mean four times the memory."""
    sizes = {}
    for n_cells in (4000, 16000):
        counts = sp.random(n_cells, 2000, density=0.1, format="csr", random_state=n_cells, dtype=np.float32)
        counts.data = np.ceil(counts.data * 5)
        obs = pd.DataFrame({"cell_type": ["monocyte", "myeloblast"] * (n_cells // 2)}, index=[f"c{i}" for i in range(n_cells)])
        path = tmp_path / f"{n_cells}.h5ad"
        ad.AnnData(X=counts, obs=obs, var=pd.DataFrame(index=[f"G{j}" for j in range(2000)])).write_h5ad(path)
        sizes[n_cells] = (counts.data.nbytes + counts.indices.nbytes, _peak_bytes_of_a_lazy_epoch(path))
    extra_counts = sizes[16000][0] - sizes[4000][0]
    extra_peak = sizes[16000][1] - sizes[4000][1]
    assert extra_peak < 0.25 * extra_counts, sizes


# --- bad input ------------------------------------------------------------------------------------


def _write_vangalen(folder: Path, sample: str, counts: np.ndarray, cells: list[str], cell_types: list[str]) -> None:
    folder.mkdir(exist_ok=True)
    genes = [f"G{j}" for j in range(counts.shape[1])]
    table = pd.DataFrame(counts.T, index=pd.Index(genes, name="Gene"), columns=cells)
    with gzip.open(folder / f"GSM1_{sample}.dem.txt.gz", "wt") as f:
        table.to_csv(f, sep="\t")
    with gzip.open(folder / f"GSM2_{sample}.anno.txt.gz", "wt") as f:
        pd.DataFrame({"Cell": cells, "CellType": cell_types}).to_csv(f, sep="\t", index=False)


def test_vangalen_tables_are_parsed_once_then_read_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(rna_module, "CACHE_DIR", str(tmp_path / "cache"))
    _write_vangalen(tmp_path / "data", "BM4", _counts(5, n_cells=4, n_genes=6), ["e", "f", "g", "h"], ["HSC", "GMP", "Mono", "T"])
    first = read_rna(tmp_path / "data")
    assert len(list((tmp_path / "cache" / "vangalen").glob("GSM1_BM4.dem.txt.gz.*.npz"))) == 1
    monkeypatch.setattr(rna_module, "_parse_dem", None)  # a second read must not parse the table again
    second = read_rna(tmp_path / "data")
    np.testing.assert_array_equal(second.X.toarray(), first.X.toarray())
    assert second.X.dtype == np.int32 and second.var_names.equals(first.var_names) and second.obs.equals(first.obs)


@pytest.mark.filterwarnings("ignore:Observation names are not unique")
def test_small_vangalen_folder_and_its_faults(tmp_path):
    counts = _counts(5, n_cells=4, n_genes=6)
    _write_vangalen(tmp_path / "ok", "AML9-D0", counts, ["a", "b", "c", "d"], ["Mono-like", "GMP", "cDC", "HSC"])
    adata = read_rna(tmp_path / "ok")
    assert adata.obs["patient"].iloc[0] == "AML9" and not adata.obs["healthy"].any()
    assert adata.obs["label"].tolist()[:2] == ["monocyte", "promyelocyte"]
    with pytest.raises(InputError, match="'cDC'") as err:
        read_rna(tmp_path / "ok", unknown="fail")
    with pytest.raises(InputError, match="no sample 'BM1'"):
        read_rna(tmp_path / "ok", samples=["BM1"])
    with pytest.raises(InputError, match="healthy donor"):
        read_rna(tmp_path / "ok", healthy_only=True)
    _write_vangalen(tmp_path / "ok", "BM4", counts, ["e", "f", "g", "h"], ["T"] * 4)
    healthy = read_rna(tmp_path / "ok", healthy_only=True)
    assert healthy.obs_names.tolist() == ["e", "f", "g", "h"] and healthy.obs["healthy"].all()
    bad = counts.copy()
    bad[1, 2] = -3
    _write_vangalen(tmp_path / "negative", "BM1", bad, ["a", "b", "c", "d"], ["T"] * 4)
    with pytest.raises(InputError, match="negative count -3 .* cell 'b', gene 'G2'") as err:
        read_rna(tmp_path / "negative")
    _message(err)
    _write_vangalen(tmp_path / "dup", "BM1", counts, ["a", "b", "c", "d"], ["T"] * 4)
    _write_vangalen(tmp_path / "dup", "BM2", counts, ["a", "x", "y", "z"], ["T"] * 4)
    with pytest.raises(InputError, match="duplicate cell name 'a'"):
        read_rna(tmp_path / "dup")
    (tmp_path / "dup" / "GSM2_BM2.anno.txt.gz").unlink()
    with pytest.raises(InputError, match=r"without their .dem/.anno pair: GSM1_BM2\.dem\.txt\.gz"):
        read_rna(tmp_path / "dup", bad_files="fail")


def test_missing_empty_and_unrecognised_sources(tmp_path):
    with pytest.raises(InputError, match="nowhere.h5ad: no such file") as err:
        read_rna(tmp_path / "nowhere.h5ad")
    _message(err)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty: folder is empty"):
        read_rna(tmp_path / "empty")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match="other: no RNA source here"):
        read_rna(tmp_path / "other")
    (tmp_path / "broken.h5ad").write_bytes(b"not hdf5 at all")
    for lazy in (False, True):
        with pytest.raises(InputError, match="broken.h5ad: not a readable .h5ad") as err:
            read_rna(tmp_path / "broken.h5ad", lazy=lazy)
        _message(err)
    with pytest.raises(InputError, match="no such file"):
        RnaPreprocessor.load(tmp_path / "nothing.json")


def test_h5ad_without_requested_key_genes_or_embedding(atlas_file):
    with pytest.raises(InputError, match=r"atlas.h5ad: no obs column 'celltype'") as err:
        read_rna(atlas_file, cell_type_key="celltype")
    _message(err)
    adata = read_rna(atlas_file)
    fitted = RnaPreprocessor(n_top_genes=50).fit(adata)
    fewer = adata[:, [g for g in adata.var_names if g != fitted.genes[3]]].copy()
    with pytest.raises(InputError, match=rf"1 of the 50 fitted genes are missing: {fitted.genes[3]}$"):
        fitted.transform(fewer)
    no_embedding = adata[:, fitted.genes].copy()
    del no_embedding.obsm["X_scvi"]
    with pytest.raises(InputError, match=r"no embedding obsm\['X_scvi'\]"):
        fitted.transform(no_embedding)
    with pytest.raises(InputError, match=r"no embedding obsm\['X_pca'\]"):
        RnaPreprocessor(atlas="obsm", atlas_key="X_pca").fit(adata)
    with pytest.raises(InputError, match=r"obsm\['X_scvi'\] is 10-d, narrower than the 50-d"):
        RnaPreprocessor().fit(read_rna(_atlas_anndata(embedding_dim=10)))


def test_h5ad_without_cell_types_or_counts(tmp_path):
    adata = _atlas_anndata()
    unlabelled = adata.copy()
    del unlabelled.obs["cell_ontology_class"]
    with pytest.raises(InputError, match="no cell-type column"):
        read_rna(unlabelled)
    normalised_only = adata.copy()
    del normalised_only.layers["counts"]
    with pytest.raises(InputError, match=r"no raw counts found \(non-integer values, e.g. log-normalised, in: X\)"):
        read_rna(normalised_only)
    with pytest.raises(InputError, match=r"no layers/counts to read counts from \(present: X\)"):
        read_rna(normalised_only, counts="layers/counts")


@pytest.mark.parametrize("lazy", [False, True])
@pytest.mark.parametrize("value, kind", [(-2.0, "negative"), (np.nan, "non-finite"), (np.inf, "non-finite")])
def test_bad_counts_name_the_cell_and_gene(tmp_path, lazy, value, kind):
    adata = _atlas_anndata()
    counts = adata.layers["counts"].toarray().astype(np.float32)
    counts[7, 11] = value
    adata.layers["counts"] = sp.csr_matrix(counts)
    path = tmp_path / "bad.h5ad"
    adata.write_h5ad(path)
    pattern = rf"bad.h5ad: {kind} count .* in layers/counts for cell 'cell7', gene 'G11'"
    with pytest.raises(InputError, match=pattern) as err:
        read_count_rows(read_rna(path, lazy=lazy), np.arange(N_CELLS))  # lazy files are checked as rows are read
    _message(err)


@pytest.mark.filterwarnings("ignore:Observation names are not unique")
def test_duplicate_cell_names_in_h5ad(tmp_path):
    adata = _atlas_anndata()
    adata.obs_names = ["same"] * 2 + list(adata.obs_names[2:])
    with pytest.raises(InputError, match="duplicate cell name 'same'"):
        read_rna(adata)
