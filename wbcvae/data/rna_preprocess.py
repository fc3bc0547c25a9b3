"""RNA counts → the RNA VAE's input, as the study: library-size normalisation, log1p, highly variable
genes, min-max scaling to [0, 1]; plus the atlas embedding `z_atlas` the latent space is tied to.

`RnaPreprocessor` is fitted once (on the training cells), saved as JSON and applied to any later data
identically: same genes in the same order, same per-gene minimum and maximum, same projection.

Gene choice is scanpy's `highly_variable_genes(flavor="seurat_v3")` on the raw counts, batch-aware
across `obs["sample"]` (each sample's genes ranked by their variance standardised against a loess fit
of variance on mean, ranks combined as Seurat v3's SelectIntegrationFeatures). In-memory data go
through scanpy itself; a lazy (on-disk) AnnData through `streamed_seurat_v3`, the same computation
from per-sample moments gathered over chunks of `chunk_size` cells (a test checks both choose the
same genes). Marker genes (a lineage's known markers) always take a place among the `n_top_genes`;
markers the data lack are recorded in `markers_absent` (saved), so a report can say so.

A second pass gathers the per-gene minimum/maximum of the log values. For a lazy AnnData it is streamed
(and, when PCA is needed, gathers their covariance for an exact eigendecomposition), so the atlas is never
loaded whole; in memory the kept genes' log values are held once, sparse, and their PCA is Lanczos
iteration on them (`principal_axes`: the same top `latent_dim` axes without forming or fully decomposing
the genes × genes covariance, which dominated start-up; a test checks them against the exact ones).

`z_atlas`, by `atlas`:
- "obsm": `obsm[atlas_key]` (Tabula Sapiens' scVI embedding). Used as is when it is `latent_dim`
  wide; a wider one is projected onto its first `latent_dim` principal components (fitted, saved);
  a narrower one is refused, as padding would invent dimensions;
- "pca": the first `latent_dim` principal components of the scaled expression (zero-padded when
  fewer genes than `latent_dim` are kept);
- "scvi": an scvi-tools SCVI model with `latent_dim` latents trained on the kept genes' counts, saved
  beside the JSON as `<name>.scvi/`;
- "auto" (default): "obsm" when the key is present, else "scvi" when scvi-tools is installed, else "pca".
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.linalg
import scipy.sparse as sp
import scipy.sparse.linalg
from tqdm.auto import tqdm

from wbcvae import LATENT_DIM
from wbcvae.data.rna import read_count_rows
from wbcvae.errors import InputError, one_line
from wbcvae.utils.atomic import atomic_path

DEFAULT_N_TOP_GENES = 2432  # as the study
ATLAS_METHODS = ("auto", "obsm", "pca", "scvi")
FORMAT = "wbcvae.RnaPreprocessor"
FORMAT_VERSION = 1
LOESS_SPANS = (0.3, 0.5, 0.7, 1.0)  # scanpy's default first; a wider one when loess is singular (small samples)


class RnaPreprocessor:
    """Fit on counts once, then turn any cells into `(x, z_atlas)`: float32 cells × genes in [0, 1] and
    float32 cells × `latent_dim`."""

    def __init__(
        self,
        n_top_genes: int = DEFAULT_N_TOP_GENES,
        markers: Sequence[str] = (),
        latent_dim: int = LATENT_DIM,
        atlas_key: str = "X_scvi",
        atlas: str = "auto",
        target_sum: float = 1e4,
        chunk_size: int = 4096,
        batch_key: str = "sample",
    ):
        if atlas not in ATLAS_METHODS:
            raise InputError(f"atlas must be one of {ATLAS_METHODS}, got {atlas!r}")
        if n_top_genes < 1 or latent_dim < 1 or chunk_size < 1:
            raise InputError("n_top_genes, latent_dim and chunk_size must be positive")
        self.n_top_genes, self.markers, self.latent_dim = int(n_top_genes), list(dict.fromkeys(markers)), int(latent_dim)
        self.atlas_key, self.atlas, self.target_sum, self.chunk_size = atlas_key, atlas, float(target_sum), int(chunk_size)
        self.batch_key = batch_key
        self._forget()

    def _forget(self) -> None:
        """Fitted state: the kept genes, their log-value range, and how z_atlas is made."""
        self.genes: list[str] = []
        self.markers_absent: list[str] = []  # markers asked for that the data do not have
        self.gene_min = self.gene_max = np.zeros(0)
        self.atlas_method = ""  # "obsm", "pca" or "scvi" once fitted
        self.embedding_dim = 0  # width of obsm[atlas_key] when atlas_method == "obsm"
        self.projection_mean: np.ndarray | None = None  # z = (v - mean) @ components.T
        self.projection_components: np.ndarray | None = None
        self._scvi_model = None
        self._scvi_dir: Path | None = None

    @property
    def settings(self) -> dict:
        return dict(
            n_top_genes=self.n_top_genes, markers=self.markers, latent_dim=self.latent_dim,
            atlas_key=self.atlas_key, atlas=self.atlas, target_sum=self.target_sum, chunk_size=self.chunk_size,
            batch_key=self.batch_key,
        )  # fmt: skip

    @property
    def is_fitted(self) -> bool:
        return bool(self.genes)

    @property
    def gene_span(self) -> np.ndarray:
        """Per-gene maximum − minimum of the fitted log expression (1 for a gene constant in training)."""
        span = self.gene_max - self.gene_min
        return np.where(span > 0, span, 1.0)

    # --- fitting ---------------------------------------------------------------------------------

    def fit(self, adata: ad.AnnData, rows: np.ndarray | None = None) -> RnaPreprocessor:
        """Choose genes, their scaling and the atlas embedding from the cells at `rows` (default: all)."""
        rows = np.arange(adata.n_obs) if rows is None else np.unique(np.asarray(rows, dtype=np.int64))
        if len(rows) < 2:
            raise InputError(f"{_where(adata)}: need at least 2 cells to fit the RNA preprocessing, got {len(rows)}")
        self._forget()
        self.markers_absent = [g for g in self.markers if g not in adata.var_names]
        self.atlas_method = self._atlas_method(adata)
        lazy = isinstance(adata.X, ad.abc.CSRDataset)
        counts = None if lazy else read_count_rows(adata, rows)  # in memory: read once, for both steps below
        self.genes = self._choose_genes(adata, rows, counts)
        columns = adata.var_names.get_indexer(self.genes)
        if lazy:
            self._fit_streamed(adata, rows, columns)
        else:
            self._fit_in_memory(counts, columns)
        if self.atlas_method == "obsm":
            self._fit_embedding_projection(adata, rows)
        elif self.atlas_method == "scvi":
            self._fit_scvi(adata, rows, columns)
        return self

    def _fit_streamed(self, adata: ad.AnnData, rows: np.ndarray, columns: np.ndarray) -> None:
        """Gene ranges (and the PCA atlas, from the covariance) in one pass over chunks of a lazy AnnData."""
        stats = _LogStats(len(self.genes), with_moments=self.atlas_method == "pca")
        for block in self._blocks(adata, rows, "RNA preprocessing: gene ranges"):
            stats.add(np.log1p(self._normalise(block, columns).toarray()))
        self.gene_min, self.gene_max = stats.low, stats.high
        if self.atlas_method == "pca":
            self._set_pca(*stats.mean_cov(), shift=self.gene_min, span=self.gene_span)

    def _fit_in_memory(self, counts: sp.csr_matrix, columns: np.ndarray) -> None:
        """Gene ranges (and the PCA atlas, by Lanczos iteration) from the kept genes' log values of the training
        cells' `counts` (all genes), held once, sparse."""
        log_expression = self._normalise(counts, columns)
        log_expression.data = np.log1p(log_expression.data, dtype=np.float64)
        self.gene_min = log_expression.min(axis=0).toarray().ravel().astype(np.float64)
        self.gene_max = log_expression.max(axis=0).toarray().ravel().astype(np.float64)
        if self.atlas_method == "pca":  # x = (log − min) / span; centring removes the shift, so it stays sparse
            mean, components = principal_axes(log_expression @ sp.diags(1.0 / self.gene_span), self.latent_dim)
            self._set_components(mean - self.gene_min / self.gene_span, components)

    def _atlas_method(self, adata: ad.AnnData) -> str:
        """The `atlas` setting resolved against this data; an unusable embedding is refused before any pass."""
        present = self.atlas_key in adata.obsm
        if self.atlas == "obsm" and not present:
            raise InputError(f"{_where(adata)}: no embedding obsm[{self.atlas_key!r}] (obsm has: {', '.join(adata.obsm) or 'nothing'})")
        if self.atlas != "auto":
            method = self.atlas
        elif present:
            method = "obsm"
        else:
            method = "scvi" if importlib.util.find_spec("scvi") is not None else "pca"
        width = adata.obsm[self.atlas_key].shape[1] if method == "obsm" else self.latent_dim
        if width < self.latent_dim:  # padding would invent dimensions
            raise InputError(f"{_where(adata)}: obsm[{self.atlas_key!r}] is {width}-d, narrower than the {self.latent_dim}-d latent space")
        return method

    def _choose_genes(self, adata: ad.AnnData, rows: np.ndarray, counts: sp.csr_matrix | None = None) -> list[str]:
        """The markers present, then the most variable genes (seurat_v3) until `n_top_genes`; in the data's gene order.

        `counts`: the cells at `rows`, already read (in-memory data); a lazy AnnData is streamed instead.
        """
        if adata.n_vars <= self.n_top_genes:
            return list(map(str, adata.var_names))
        batches = self._batches(adata, rows)
        if isinstance(adata.X, ad.abc.CSRDataset):
            blocks = lambda: self._blocks(adata, rows, "RNA preprocessing: highly variable genes")  # noqa: E731
            rank = lambda span: streamed_seurat_v3(blocks, batches, adata.n_vars, self.n_top_genes, span)  # noqa: E731
        else:
            counts = read_count_rows(adata, rows) if counts is None else counts
            rank = lambda span: scanpy_seurat_v3(counts, batches, self.n_top_genes, span)  # noqa: E731
        for span in LOESS_SPANS:
            try:
                order = seurat_v3_order(rank(span))
                break
            except ValueError as err:  # skmisc's loess: singular fit
                if span == LOESS_SPANS[-1]:
                    raise InputError(f"{_where(adata)}: highly variable genes: loess fit failed ({one_line(err)})") from err
        is_marker = adata.var_names.isin(self.markers)
        others = order[~is_marker[order]][: max(self.n_top_genes - is_marker.sum(), 0)]
        keep = np.sort(np.r_[np.flatnonzero(is_marker), others])
        return list(map(str, adata.var_names[keep]))

    def _batches(self, adata: ad.AnnData, rows: np.ndarray) -> np.ndarray:
        """The batch (sample) of each cell at `rows`; one batch when the data name none or only one."""
        if self.batch_key not in adata.obs:
            return np.zeros(len(rows), dtype=object)
        return adata.obs[self.batch_key].astype(str).to_numpy()[rows]

    def _fit_embedding_projection(self, adata: ad.AnnData, rows: np.ndarray) -> None:
        embedding = _embedding(adata, self.atlas_key, rows).astype(np.float64)
        self.embedding_dim = embedding.shape[1]
        if self.embedding_dim > self.latent_dim:
            self._set_pca(embedding.mean(axis=0), np.cov(embedding, rowvar=False))

    def _set_pca(self, mean: np.ndarray, cov: np.ndarray, shift: np.ndarray | None = None, span: np.ndarray | None = None) -> None:
        """Principal axes of data with `mean`/`cov`, or of (data − shift) / span when those are given.

        An exact eigendecomposition of the covariance, for streamed data and for wide atlas embeddings.
        """
        if span is not None:
            mean, cov = (mean - shift) / span, cov / np.outer(span, span)
        n = len(cov)
        _, vectors = scipy.linalg.eigh(cov, subset_by_index=[max(n - self.latent_dim, 0), n - 1])  # ascending
        self._set_components(mean, vectors[:, ::-1].T)

    def _set_components(self, mean: np.ndarray, components: np.ndarray) -> None:
        """The projection z = (v − mean) @ components.T, signs fixed (largest loading positive) so refits on
        the same data give the same `z_atlas`, zero-padded to `latent_dim` rows."""
        components = np.array(components, dtype=np.float64)
        largest = components[np.arange(len(components)), np.abs(components).argmax(axis=1)]
        components *= np.where(largest < 0, -1.0, 1.0)[:, None]
        padding = np.zeros((self.latent_dim - len(components), len(mean)))
        self.projection_mean, self.projection_components = mean, np.vstack([components, padding])

    def _fit_scvi(self, adata: ad.AnnData, rows: np.ndarray, columns: np.ndarray) -> None:
        """Train scVI on the kept genes' counts (it needs them in memory: cells × kept genes, sparse)."""
        import scvi

        train = self._count_anndata(adata, rows, columns)
        scvi.model.SCVI.setup_anndata(train)
        self._scvi_model = scvi.model.SCVI(train, n_latent=self.latent_dim)
        self._scvi_model.train()

    # --- applying --------------------------------------------------------------------------------

    def transform(self, adata: ad.AnnData, rows: np.ndarray | slice | None = None) -> tuple[np.ndarray, np.ndarray]:
        """`(x, z_atlas)` for the cells at `rows` (default: all), in that order; float32.

        Values beyond the fitted range are clipped to [0, 1], the range the decoder can produce.
        """
        x, z, _, _ = self.transform_with_counts(adata, rows)
        return x, z

    def transform_with_counts(self, adata: ad.AnnData, rows: np.ndarray | slice | None = None) -> tuple[np.ndarray, ...]:
        """`(x, z_atlas, counts, library)`: `transform`'s two, the kept genes' raw counts (cells × genes)
        and each cell's total count over all its genes (cells × 1), all float32: what a count likelihood needs."""
        if not self.is_fitted:
            raise InputError("the RNA preprocessor is not fitted: call fit() or load a saved one")
        rows = np.arange(adata.n_obs)[rows if rows is not None else slice(None)]
        columns = self.columns_in(adata)
        x = np.empty((len(rows), len(self.genes)), dtype=np.float32)
        z = np.empty((len(rows), self.latent_dim), dtype=np.float32)
        kept = np.empty((len(rows), len(self.genes)), dtype=np.float32)
        library = np.empty((len(rows), 1), dtype=np.float32)
        for start in range(0, len(rows), self.chunk_size):
            part = slice(start, start + self.chunk_size)
            counts = read_count_rows(adata, rows[part])
            library[part, 0] = np.asarray(counts.sum(axis=1)).ravel()
            kept[part] = counts[:, columns].toarray()
            x[part], z[part] = self.from_counts(adata, rows[part], kept[part], library[part])
        return x, z, kept, library

    def from_counts(self, adata: ad.AnnData, rows: np.ndarray, kept: np.ndarray, library: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`(x, z_atlas)` of the cells at `rows` from their kept genes' counts (dense, cells × genes) and
        libraries (cells × 1): for a caller that keeps those counts at hand instead of reading every gene."""
        x = self.scaled_expression(kept, library)
        return x, np.asarray(self._atlas_embedding(adata, rows, x, kept), dtype=np.float32)

    def scaled_expression(self, kept: np.ndarray, library: np.ndarray) -> np.ndarray:
        """The encoder's input x from the kept genes' counts and each cell's library: log-normalised as in
        fitting, then min-max scaled by the fitted ranges and clipped to [0, 1]; float32."""
        log_expression = np.log1p(kept * self._scale(library))
        return np.clip((log_expression - self.gene_min) / self.gene_span, 0.0, 1.0).astype(np.float32)

    def _atlas_embedding(self, adata: ad.AnnData, rows: np.ndarray, x: np.ndarray, kept: np.ndarray) -> np.ndarray:
        if self.atlas_method == "scvi":
            query = ad.AnnData(X=sp.csr_matrix(kept), var=pd.DataFrame(index=self.genes))
            return self._scvi(query).get_latent_representation(query)
        if self.atlas_method == "obsm":
            if self.atlas_key not in adata.obsm:
                raise InputError(f"{_where(adata)}: no embedding obsm[{self.atlas_key!r}], which this preprocessing was fitted with")
            values = _embedding(adata, self.atlas_key, rows)
            if values.shape[1] != self.embedding_dim:
                raise InputError(f"{_where(adata)}: obsm[{self.atlas_key!r}] is {values.shape[1]}-d, fitted on {self.embedding_dim}-d")
            if self.projection_components is None:
                return values
        else:
            values = x
        return (values - self.projection_mean) @ self.projection_components.T

    def columns_in(self, adata: ad.AnnData) -> np.ndarray:
        """Positions of the fitted genes among `adata`'s; refuses data that lack any of them."""
        columns = adata.var_names.get_indexer(self.genes)
        missing = [g for g, c in zip(self.genes, columns) if c < 0]
        if missing:
            shown = ", ".join(missing[:5]) + (", …" if len(missing) > 5 else "")
            raise InputError(f"{_where(adata)}: {len(missing)} of the {len(self.genes)} fitted genes are missing: {shown}")
        return columns

    # --- shared steps ----------------------------------------------------------------------------

    def _scale(self, library: np.ndarray) -> np.ndarray:
        """Per cell, the factor that brings its `library` (total count over all genes) to `target_sum` (0 for an empty cell)."""
        library = np.asarray(library, dtype=np.float64)
        return np.divide(self.target_sum, library, out=np.zeros_like(library), where=library > 0)

    def _normalise(self, counts: sp.csr_matrix, columns: np.ndarray) -> sp.csr_matrix:
        """The `columns` (kept genes) of `counts`, each cell scaled to `target_sum` counts over *all* its genes
        (empty cells stay zero); float64 CSR."""
        library = np.asarray(counts.sum(axis=1)).ravel()
        return sp.csr_matrix(sp.diags(self._scale(library)) @ counts[:, columns], dtype=np.float64)

    def _blocks(self, adata: ad.AnnData, rows: np.ndarray, what: str) -> Iterator[sp.csr_matrix]:
        starts = range(0, len(rows), self.chunk_size)
        for start in tqdm(starts, desc=what, unit="chunk", disable=len(starts) < 2, leave=False):
            yield read_count_rows(adata, rows[start : start + self.chunk_size])

    def _count_anndata(self, adata: ad.AnnData, rows: np.ndarray, columns: np.ndarray) -> ad.AnnData:
        blocks = [block[:, columns] for block in self._blocks(adata, rows, "RNA preprocessing: counts for scVI")]
        return ad.AnnData(X=sp.vstack(blocks, format="csr"), var=pd.DataFrame(index=self.genes))

    def _scvi(self, query: ad.AnnData):
        """The trained scVI model, loaded from beside the JSON on first use after `load`."""
        if self._scvi_model is None:
            try:
                import scvi
            except ImportError as err:
                raise InputError(f"{self._scvi_dir}: this preprocessing uses scVI; install scvi-tools to apply it") from err
            self._scvi_model = scvi.model.SCVI.load(str(self._scvi_dir), adata=query)
        return self._scvi_model

    # --- saving ----------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> Path:
        """Write the fitted state as JSON (an scVI model goes beside it as `<name>.scvi/`)."""
        if not self.is_fitted:
            raise InputError("the RNA preprocessor is not fitted: nothing to save")
        path = Path(path)
        state = dict(
            format=FORMAT, version=FORMAT_VERSION, settings=self.settings, genes=self.genes, markers_absent=self.markers_absent,
            gene_min=self.gene_min.tolist(), gene_max=self.gene_max.tolist(),
            atlas_method=self.atlas_method, embedding_dim=self.embedding_dim,
            projection_mean=None if self.projection_mean is None else self.projection_mean.tolist(),
            projection_components=None if self.projection_components is None else self.projection_components.tolist(),
        )  # fmt: skip
        if self.atlas_method == "scvi":
            with atomic_path(_scvi_dir(path)) as tmp:
                self._scvi_model.save(str(tmp))
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(state))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> RnaPreprocessor:
        path = Path(path)
        try:
            state = json.loads(path.read_text())
        except FileNotFoundError as err:
            raise InputError(f"{path}: no such file") from err
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise InputError(f"{path}: not a saved RNA preprocessor ({err})") from err
        if not isinstance(state, dict) or state.get("format") != FORMAT or state.get("version") != FORMAT_VERSION:
            raise InputError(f"{path}: not a saved RNA preprocessor (format {FORMAT} version {FORMAT_VERSION})")
        self = cls(**state["settings"])
        self.genes = state["genes"]
        self.markers_absent = state.get("markers_absent", [])  # absent from files saved before it was recorded
        self.gene_min, self.gene_max = np.asarray(state["gene_min"]), np.asarray(state["gene_max"])
        self.atlas_method, self.embedding_dim = state["atlas_method"], state["embedding_dim"]
        if state["projection_mean"] is not None:
            self.projection_mean = np.asarray(state["projection_mean"])
            self.projection_components = np.asarray(state["projection_components"])
        self._scvi_dir = _scvi_dir(path)
        return self


class _LogStats:
    """Running per-gene minimum and maximum of log expression, and optionally sum and cross-products."""

    def __init__(self, n_genes: int, with_moments: bool):
        self.low, self.high = np.full(n_genes, np.inf), np.full(n_genes, -np.inf)
        self.n, self.total = 0, np.zeros(n_genes)
        self.cross = np.zeros((n_genes, n_genes)) if with_moments else None

    def add(self, values: np.ndarray) -> None:
        self.low, self.high = np.minimum(self.low, values.min(axis=0)), np.maximum(self.high, values.max(axis=0))
        if self.cross is not None:
            self.n += len(values)
            self.total += values.sum(axis=0)
            self.cross += values.T @ values

    def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        mean = self.total / self.n
        return mean, (self.cross - self.n * np.outer(mean, mean)) / (self.n - 1)


def principal_axes(values: sp.spmatrix | np.ndarray, n_components: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Column means and the top `n_components` principal axes (rows, largest variance first) of `values`
    (cells × genes): the covariance's top eigenvectors by Lanczos iteration (ARPACK), applying the centred
    matrix to vectors without forming it, so a sparse matrix stays sparse and the genes × genes covariance
    is never built or fully decomposed. Converged to machine precision, so the axes are the exact ones
    (a randomized SVD is not: on van Galen's marrow its 50th axis is far off, the spectrum's tail being flat).
    Data too small for this to pay get a dense SVD. Seeded start vector: the same data give the same axes.
    """
    n_cells, n_genes = values.shape
    mean = np.asarray(values.mean(axis=0), dtype=np.float64).ravel()
    if min(n_cells, n_genes) <= 2 * n_components + 1:
        dense = values.toarray() if sp.issparse(values) else np.asarray(values, dtype=np.float64)
        return mean, np.linalg.svd(dense - mean, full_matrices=False)[2][:n_components]

    def covariance_times(vectors: np.ndarray) -> np.ndarray:  # (values − mean).T @ (values − mean) @ vectors
        vectors = np.asarray(vectors).reshape(n_genes, -1)
        centred = values @ vectors - mean @ vectors
        return values.T @ centred - np.outer(mean, centred.sum(axis=0))

    covariance = scipy.sparse.linalg.LinearOperator((n_genes, n_genes), matvec=covariance_times, matmat=covariance_times, dtype=np.float64)
    start = np.random.default_rng(seed).standard_normal(n_genes)
    _, vectors = scipy.sparse.linalg.eigsh(covariance, k=n_components, which="LA", v0=start)  # ascending
    return mean, vectors[:, ::-1].T


def scanpy_seurat_v3(counts: sp.csr_matrix, batches: np.ndarray, n_top_genes: int, span: float = LOESS_SPANS[0]) -> pd.DataFrame:
    """scanpy's seurat_v3 ranking of in-memory counts (cells × genes): columns `highly_variable_rank`
    (median rank over batches among the top `n_top_genes`, NaN beyond) and `highly_variable_nbatches`."""
    import scanpy as sc

    cells = ad.AnnData(X=counts, obs=pd.DataFrame({"batch": pd.Categorical(batches)}, index=np.arange(len(batches)).astype(str)))
    return sc.pp.highly_variable_genes(cells, flavor="seurat_v3", n_top_genes=n_top_genes, batch_key="batch", span=span, inplace=False)


def streamed_seurat_v3(
    blocks: Callable[[], Iterable[sp.csr_matrix]], batches: np.ndarray, n_genes: int, n_top_genes: int, span: float = LOESS_SPANS[0]
) -> pd.DataFrame:
    """`scanpy_seurat_v3` from the counts' row blocks, read twice (`blocks()` starts a fresh pass over
    them, in the order of `batches`), holding only per-batch moments.

    Per batch, as scanpy: a loess fit of log10 variance on log10 mean over genes that vary gives each
    gene an expected standard deviation σ̂; counts are clipped at mean + σ̂·√n, and the variance of the
    clipped counts around the mean, divided by σ̂², is the gene's standardised variance.
    """
    from skmisc.loess import loess

    names, codes = np.unique(batches, return_inverse=True)
    n = np.bincount(codes, minlength=len(names)).astype(np.float64)
    total, total_sq = _batch_sums(blocks, codes, len(names), n_genes, clip=None)
    mean = total / n[:, None]
    var = (total_sq - n[:, None] * mean**2) / (n[:, None] - 1)
    reg_std = np.ones_like(mean)
    for b in range(len(names)):
        varies = var[b] > 0
        model = loess(np.log10(mean[b, varies]), np.log10(var[b, varies]), span=span, degree=2)
        model.fit()
        reg_std[b, varies] = np.sqrt(10**model.outputs.fitted_values)
    clipped, clipped_sq = _batch_sums(blocks, codes, len(names), n_genes, clip=reg_std * np.sqrt(n)[:, None] + mean)
    norm_var = (n[:, None] * mean**2 + clipped_sq - 2 * clipped * mean) / ((n[:, None] - 1) * reg_std**2)
    ranks = np.argsort(np.argsort(-norm_var, axis=1), axis=1).astype(np.float32)
    nbatches = (ranks < n_top_genes).sum(axis=0)
    ranks[ranks >= n_top_genes] = np.nan
    median = np.ma.median(np.ma.masked_invalid(ranks), axis=0).filled(np.nan)
    return pd.DataFrame({"highly_variable_rank": median, "highly_variable_nbatches": nbatches, "variances_norm": norm_var.mean(axis=0)})


def seurat_v3_order(ranking: pd.DataFrame) -> np.ndarray:
    """Gene positions, most variable first, as scanpy's seurat_v3 sorts them (median rank, then batches)."""
    columns = ["highly_variable_rank", "highly_variable_nbatches"]
    frame = ranking[columns].reset_index(drop=True)
    return frame.sort_values(columns, ascending=[True, False], na_position="last").index.to_numpy()


def _batch_sums(blocks: Callable[[], Iterable[sp.csr_matrix]], codes: np.ndarray, n_batches: int, n_genes: int, clip: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Per batch and gene: the sum and the sum of squares of the counts (each clipped at `clip[batch, gene]`)."""
    total, total_sq = np.zeros((n_batches, n_genes)), np.zeros((n_batches, n_genes))
    start = 0
    for block in blocks():
        block_codes = codes[start : start + block.shape[0]]
        start += block.shape[0]
        cell_batch = np.repeat(block_codes, np.diff(block.indptr))
        values = block.data.astype(np.float64)
        if clip is not None:
            values = np.minimum(values, clip[cell_batch, block.indices])
        where = cell_batch * n_genes + block.indices
        total += np.bincount(where, weights=values, minlength=n_batches * n_genes).reshape(n_batches, n_genes)
        total_sq += np.bincount(where, weights=values**2, minlength=n_batches * n_genes).reshape(n_batches, n_genes)
    return total, total_sq


def _embedding(adata: ad.AnnData, key: str, rows: np.ndarray) -> np.ndarray:
    """`obsm[key]` at `rows` only (a whole atlas embedding is large), as float32."""
    values = adata.obsm[key]
    values = values.to_numpy() if isinstance(values, pd.DataFrame) else values
    return np.asarray(values[rows], dtype=np.float32)


def _where(adata: ad.AnnData) -> str:
    return adata.uns.get("wbcvae", {}).get("source", "AnnData")


def _scvi_dir(path: Path) -> Path:
    return path.with_name(path.stem + ".scvi")
