"""Cells as tensors: an RNA `Dataset` that preprocesses a whole batch in one read, and the
`LightningDataModule` that reads a source, splits it stratified by class and fits the preprocessing
on the training cells only.

A batch is a dict: `x` float32 B×G in [0, 1], `z_atlas` float32 B×50, `counts` float32 B×G (raw
counts of the kept genes) and `library` float32 B×1 (each cell's total count over all genes) for a
count likelihood, `label` int64 (−1 when the cell type names no class), `index` int64 (row in the AnnData). Loaders hand the dataset a whole
list of rows at a time (`__getitems__`), so a lazy .h5ad is read one batch per disk access and peak
memory is set by the batch size, not the number of cells.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from torch.utils.data import DataLoader, Dataset

from wbcvae.data.datamodule import SplitDataModule
from wbcvae.data.image_dataset import SPLITS, split_manifest
from wbcvae.data.rna import read_rna
from wbcvae.data.rna_preprocess import DEFAULT_N_TOP_GENES, RnaPreprocessor
from wbcvae.vocabulary import CLASS_INDEX


def label_codes(adata: ad.AnnData) -> np.ndarray:
    """Integer class per cell (index into CLASSES), −1 where `obs["label"]` is missing."""
    return adata.obs["label"].astype(object).map(CLASS_INDEX).fillna(-1).to_numpy(dtype=np.int64)


class RnaDataset(Dataset):
    """The cells at `rows` of `adata`, preprocessed on the fly by a fitted `RnaPreprocessor`.

    `dataset[i]` gives one cell; `dataset[[i, j, …]]` gives a batch read and transformed in one go.
    """

    def __init__(self, adata: ad.AnnData, preprocessor: RnaPreprocessor, rows: np.ndarray | None = None, kept: KeptCounts | None = None):
        self.adata, self.preprocessor = adata, preprocessor
        self.rows = np.arange(adata.n_obs) if rows is None else np.asarray(rows, dtype=np.int64)
        self.labels = label_codes(adata)
        self.kept = kept

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, item: int | Sequence[int]) -> dict[str, torch.Tensor]:
        rows = self.rows[np.atleast_1d(np.asarray(item, dtype=np.int64))]
        if self.kept is None:
            x, z_atlas, counts, library = self.preprocessor.transform_with_counts(self.adata, rows)
        else:
            counts, library = self.kept.matrix[rows].toarray(), self.kept.library[rows]
            x, z_atlas = self.preprocessor.from_counts(self.adata, rows, counts, library)
        batch = {
            "x": torch.from_numpy(x),
            "z_atlas": torch.from_numpy(z_atlas),
            "counts": torch.from_numpy(counts),
            "library": torch.from_numpy(library),
            "label": torch.from_numpy(self.labels[rows]),
            "index": torch.from_numpy(rows),
        }
        return {k: v[0] for k, v in batch.items()} if np.ndim(item) == 0 else batch

    __getitems__ = __getitem__  # DataLoaders hand a whole batch of positions to this when it exists


class KeptCounts:
    """The kept genes' counts of every cell (CSR float32) and each cell's library over all genes (cells × 1),
    held once for in-memory data: a batch then slices these instead of every gene of its cells."""

    def __init__(self, adata: ad.AnnData, preprocessor: RnaPreprocessor):
        counts = sp.csr_matrix(adata.X, dtype=np.float32)
        self.library = np.asarray(counts.sum(axis=1), dtype=np.float32)
        self.matrix = counts[:, preprocessor.columns_in(adata)]


def whole_batch(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Collate for `RnaDataset.__getitems__`, which already returns the batch stacked."""
    return batch


def stratified_rows(adata: ad.AnnData, fractions: Sequence[float], seed: int) -> dict[str, np.ndarray]:
    """Train/val/test rows, stratified by class (unlabelled cells are a stratum of their own).

    Cells are not grouped by patient: RNA sources hold few donors (van Galen's healthy marrow: 4),
    too few to fill three splits, and the RNA VAE is not judged per patient.
    """
    classes = adata.obs["label"].astype(object).fillna("(none)").to_numpy()
    parts = split_manifest(pd.DataFrame({"label": classes}), fractions, seed)
    return {name: part.index.to_numpy(dtype=np.int64) for name, part in zip(SPLITS, parts)}


class RnaDataModule(SplitDataModule):
    """Reads `source` once (`read_rna`), splits it (`stratified_rows`), fits an `RnaPreprocessor` on the
    training cells (or loads a saved one from `preprocessor`) and serves `RnaDataset` batches per split.

    `adata`, `splits` (name → rows) and `preprocessor` are kept after `setup`, so a run can save the
    fitted preprocessing beside its checkpoint and record exactly which cells it saw.
    Memory for a lazy source: fitting holds `chunk_size` cells at a time, serving one batch.
    Keep `num_workers=0` for lazy .h5ad sources: an open HDF5 file does not survive a fork.
    """

    collate_fn = staticmethod(whole_batch)

    def __init__(
        self,
        source: str | os.PathLike | ad.AnnData,
        batch_size: int = 128,
        num_workers: int = 0,
        fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
        seed: int = 0,
        n_top_genes: int = DEFAULT_N_TOP_GENES,
        markers: Sequence[str] = (),
        atlas_key: str = "X_scvi",
        atlas: str = "auto",
        preprocessor: str | os.PathLike | None = None,
        cell_type_key: str | None = None,
        samples: Sequence[str] | None = None,
        healthy_only: bool = False,
        unknown: str = "skip",
        lazy: bool | None = None,
        chunk_size: int = 4096,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["source"] if isinstance(source, ad.AnnData) else None)  # paths are provenance
        self.source = source
        self.adata: ad.AnnData | None = None
        self.preprocessor: RnaPreprocessor | None = None
        self.splits: dict[str, np.ndarray] = {}
        self.datasets: dict[str, RnaDataset] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.adata is not None:
            return
        hp = self.hparams
        self.adata = read_rna(
            self.source, cell_type_key=hp.cell_type_key, samples=hp.samples, healthy_only=hp.healthy_only,
            unknown=hp.unknown, lazy=hp.lazy,
        )  # fmt: skip
        self.splits = stratified_rows(self.adata, hp.fractions, hp.seed)
        if hp.preprocessor is not None:
            self.preprocessor = RnaPreprocessor.load(hp.preprocessor)
        else:
            settings = dict(n_top_genes=hp.n_top_genes, markers=hp.markers, atlas_key=hp.atlas_key, atlas=hp.atlas, chunk_size=hp.chunk_size)
            self.preprocessor = RnaPreprocessor(**settings).fit(self.adata, self.splits["train"])
        lazy = isinstance(self.adata.X, ad.abc.CSRDataset)
        kept = None if lazy else KeptCounts(self.adata, self.preprocessor)
        self.datasets = {name: RnaDataset(self.adata, self.preprocessor, rows, kept) for name, rows in self.splits.items()}
        self.datasets["predict"] = RnaDataset(self.adata, self.preprocessor, kept=kept)

    @property
    def n_genes(self) -> int:
        return len(self.preprocessor.genes)

    def predict_dataloader(self) -> DataLoader:
        """Every cell in AnnData order, e.g. to write embeddings back into `obsm`."""
        return self._loader("predict")
