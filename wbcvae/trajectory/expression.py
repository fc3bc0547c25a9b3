"""The real cells' expression beside a decoded path, and what it says about the decoded curves.

Two uses: the DPT-trend baseline (`pseudotime.dpt_trends`), and the yardstick that calls a gene flat
or changed. The decoded samples of a path only say how sure the *path* is; the decoder itself,
fitted on finitely many noisy cells, also draws wiggles into genes that do not change. How well the
cells pin a gene's mean near a point of the path is the standard error of their mean there: the sd of
the gene over the k RNA cells nearest that point, over √k, with k the cells of one pseudotime
quantile (the resolution the data path is read at). A change smaller than that is not one the cells
can show, whatever the decoder draws.

Values are log1p of counts per 10,000, the scale of the RNA decoder's curves and of a scanpy plot.
Counts stay sparse and are normalised only for the rows asked for: an atlas never becomes dense.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.neighbors import NearestNeighbors

from wbcvae.models.rna_vae import TARGET_SUM

if TYPE_CHECKING:
    import anndata as ad


@dataclass
class CellExpression:
    """Counts of `genes` for the rows of a caller's latent (CSR), with each row's total over all genes
    (NaN for a row without RNA, e.g. an image cell)."""

    counts: sp.csr_matrix
    totals: np.ndarray
    genes: list[str]

    def __len__(self) -> int:
        return len(self.totals)

    @property
    def has_rna(self) -> np.ndarray:
        return np.isfinite(self.totals)

    def padded(self, rows: int) -> CellExpression:
        """The same cells followed by rows without RNA, up to `rows` (the image cells pooled after them)."""
        extra = rows - len(self)
        if extra <= 0:
            return self
        counts = sp.vstack([self.counts, sp.csr_matrix((extra, len(self.genes)), dtype=self.counts.dtype)], format="csr")
        return CellExpression(counts, np.concatenate([self.totals, np.full(extra, np.nan)]), self.genes)

    def log_normalised(self, rows: np.ndarray, genes: Sequence[str] | None = None) -> np.ndarray:
        """log1p(10⁴ · count / total) of `rows` × `genes` (all by default); NaN rows without RNA."""
        rows = np.asarray(rows, dtype=np.int64)
        counts = self.counts[rows]
        if genes is not None:
            index = pd.Index(self.genes).get_indexer(list(genes))
            counts = counts[:, np.maximum(index, 0)]
        totals = self.totals[rows]
        scale = np.divide(TARGET_SUM, totals, out=np.zeros_like(totals), where=totals > 0)
        values = np.log1p(counts.multiply(scale[:, None]).toarray()).astype(np.float32)
        values[~np.isfinite(totals)] = np.nan
        if genes is not None:
            values[:, index < 0] = np.nan
        return values


def cell_expression(source: str | os.PathLike | ad.AnnData, cell_names: Sequence[str] | None, genes: Sequence[str]) -> CellExpression:
    """The counts of `genes` (those the source has) for the cells `cell_names` of an RNA source (or one
    already read), rows in that order (None: every cell, in the source's order); a name the source lacks
    becomes a row without RNA."""
    from wbcvae.data.rna import read_count_rows, read_rna

    adata = read_rna(source)
    cell_names = adata.obs_names if cell_names is None else cell_names
    kept = list(dict.fromkeys(g for g in genes if g in adata.var_names))
    rows = pd.Index(adata.obs_names).get_indexer(list(cell_names))
    found = rows >= 0
    counts = sp.csr_matrix((len(rows), len(kept)), dtype=np.float32)
    totals = np.full(len(rows), np.nan)
    if found.any():
        matrix = read_count_rows(adata, rows[found])  # every gene, for the totals; then only the kept ones
        totals[found] = np.asarray(matrix.sum(1)).ravel()
        chosen = matrix[:, adata.var_names.get_indexer(kept)]
        place = sp.csr_matrix((np.ones(found.sum(), np.float32), (np.flatnonzero(found), np.arange(found.sum()))), shape=(len(rows), found.sum()))
        counts = (place @ chosen).tocsr()
    return CellExpression(counts, totals, kept)


def local_standard_error(
    path: np.ndarray, latent: np.ndarray, expression: CellExpression, genes: Sequence[str], neighbours: int
) -> np.ndarray | None:
    """Per step of `path` (steps × latent) and gene: the standard error of the mean log-normalised
    expression of the `neighbours` RNA cells nearest that step. None without enough RNA cells."""
    with_rna = np.flatnonzero(expression.has_rna)
    neighbours = min(neighbours, len(with_rna))
    if neighbours < 2:
        return None
    _, nearest = NearestNeighbors(n_neighbors=neighbours).fit(np.asarray(latent)[with_rna]).kneighbors(np.asarray(path))
    used, inverse = np.unique(nearest, return_inverse=True)
    values = expression.log_normalised(with_rna[used], genes)
    inverse = inverse.reshape(nearest.shape)
    se = np.stack([values[inverse[step]].std(0, ddof=1) for step in range(len(path))]) / np.sqrt(neighbours)
    return np.nan_to_num(se, nan=0.0)  # a gene the source lacks: no yardstick from the cells
