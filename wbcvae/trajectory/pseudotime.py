"""Diffusion pseudotime of the cells between a path's end classes (scanpy), and what is read from it:
the waypoints a data path runs through, and the baseline a user would run instead of decoding a path.

The study draws its path as a chord between two class centroids, which cannot pass through the
intermediate states where transient genes peak (and, on a lineage labelled with two classes, covers
only the middle of each). Here the cells of the path's classes are ordered by scanpy's diffusion
pseudotime (Gaussian-kernel kNN graph on the latent, diffusion map, DPT rooted at the start class' tip), cut into
equal-count quantiles (the start class into as many as the share of the DPT it spans, see `START_WAYPOINTS`), and
the centroid of each quantile becomes a waypoint of the GP.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from wbcvae.errors import InputError
from wbcvae.report.html import save_figure
from wbcvae.trajectory.decode import DecodedPath, shade_band
from wbcvae.trajectory.expression import CellExpression
from wbcvae.trajectory.gp import Anchors, Trajectory

# How many waypoints the start class holds. DPT is rooted in it; at the root of a lineage it is a dense cloud whose
# order the latent barely resolves (the synthetic myeloblasts: Spearman 0.01 between DPT and true pseudotime) and which
# spans a tenth of the DPT or less (`bench/start_waypoints.py`), yet at equal counts it holds most of the waypoints
# (myeloblast → monocyte: 5 of 10, the myeloblasts of both lineages; van Galen's HSC → Mono: 7, HSCs being 73 % of the
# cells) and the path spends half its length crossing it. "extent": waypoints for the share of the DPT its cells span
# (their `START_EXTENT` quantile), at least two (its tip, where van Galen's stem-cell genes are highest, and its bulk):
# a start class that matures along the path (banded → segmented neutrophil) spans most of it and keeps them. "count":
# its share of the cells (the last version).
START_WAYPOINTS = ("extent", "count")
START_EXTENT = 0.9


@dataclass
class PathCells:
    """The cells a data path is read from: rows into the caller's latent, their DPT (0 at the root),
    their equal-count DPT quantile (`quantile`, 0 … q−1: the start class' first) and their pseudotime `t`: the
    path's (`arc_length` of the quantile `centroids`), interpolated in DPT between the quantiles' mean DPTs."""

    rows: np.ndarray
    dpt: np.ndarray
    quantile: np.ndarray
    t: np.ndarray
    centroids: np.ndarray  # q × latent: the data path's waypoints


def diffusion_pseudotime(latent: np.ndarray, classes: Sequence[str], start: str, end: str, n_neighbors: int = 15) -> np.ndarray:
    """scanpy DPT of every cell (NaN where the kNN graph does not reach), rooted at the start class'
    tip: the start cell furthest from the end class along the first diffusion component (its 2nd
    percentile, so one stray cell does not become the root; later components can be localised on a
    few outliers)."""
    import anndata as ad
    import scanpy as sc

    classes = np.asarray(classes, dtype=object)
    adata = ad.AnnData(obs=pd.DataFrame(index=[str(i) for i in range(len(latent))]))
    adata.obsm["X_path"] = np.asarray(latent, dtype=np.float32)
    # The Gaussian kernel of the DPT paper (Haghverdi et al. 2016); scanpy's default UMAP kernel would
    # also cost a numba compilation of tens of seconds in every process.
    sc.pp.neighbors(adata, n_neighbors=min(n_neighbors, len(latent) - 1), use_rep="X_path", method="gauss", random_state=0)
    sc.tl.diffmap(adata, n_comps=min(10, len(latent) - 2))
    first = adata.obsm["X_diffmap"][:, 1]  # the leading non-trivial component: the main axis of the cloud
    starts = np.flatnonzero(classes == start)
    along = first[starts] * np.sign(first[classes == end].mean() - first[starts].mean())
    adata.uns["iroot"] = int(starts[np.argsort(along)[int(0.02 * (len(starts) - 1))]])
    sc.tl.dpt(adata, n_dcs=adata.obsm["X_diffmap"].shape[1])
    dpt = adata.obs["dpt_pseudotime"].to_numpy(dtype=np.float64)
    return np.where(np.isfinite(dpt), dpt, np.nan)


def path_cells(
    latent: np.ndarray,
    classes: Sequence[str],
    stages: Sequence[str],
    among: np.ndarray | None = None,
    quantiles: int = 10,
    min_cells: int = 20,
    start_waypoints: str = START_WAYPOINTS[0],
) -> PathCells:
    """The cells of `stages` (of those `among`, a boolean mask) ordered by DPT from `stages[0]` towards
    `stages[-1]` and cut into `quantiles` bins: with `start_waypoints` "extent", the start class' cells into
    as many equal-count bins as the share of the DPT they span (at least 2) and the later cells into the
    rest; with "count", all of them at once into equal-count bins."""
    if quantiles < 2:
        raise InputError(f"a data path needs at least 2 pseudotime quantiles, got {quantiles}")
    if start_waypoints not in START_WAYPOINTS:
        raise InputError(f"start_waypoints must be one of {START_WAYPOINTS}, got {start_waypoints!r}")
    classes = np.asarray(classes, dtype=object)
    among = np.ones(len(classes), dtype=bool) if among is None else np.asarray(among, dtype=bool)
    rows = np.flatnonzero(np.isin(classes, list(stages)) & among)
    present = set(classes[rows].tolist())
    for stage in (stages[0], stages[-1]):
        if stage not in present:
            raise InputError(f"no cells of class {stage!r} to root the data path; classes present: {sorted(set(classes.tolist()))}")
    min_cells = max(min_cells, quantiles)
    if len(rows) < min_cells:
        raise InputError(f"only {len(rows)} cells of classes {list(stages)}: a data path needs at least {min_cells}")
    dpt = diffusion_pseudotime(np.asarray(latent)[rows], classes[rows], stages[0], stages[-1])
    reached = np.isfinite(dpt)
    if reached.sum() < min_cells:
        raise InputError(f"the kNN graph of classes {list(stages)} reaches only {int(reached.sum())} cells from {stages[0]!r}")
    if stages[-1] not in set(classes[rows[reached]].tolist()):
        raise InputError(f"the kNN graph of classes {list(stages)} does not reach {stages[-1]!r} from {stages[0]!r}")
    rows, dpt = rows[reached], dpt[reached]
    if start_waypoints == "extent":
        start = classes[rows] == stages[0]
        extent = np.quantile(dpt[start], START_EXTENT) / dpt.max()
        in_start = min(int(np.clip(round(quantiles * extent), min(2, quantiles - 1), quantiles - 1)), int(start.sum()))
        quantile = np.empty(len(rows), dtype=int)
        quantile[start] = _equal_count_bins(dpt[start], in_start)
        quantile[~start] = in_start + _equal_count_bins(dpt[~start], min(quantiles - in_start, int((~start).sum())))
    else:
        quantile = _equal_count_bins(dpt, quantiles)
    bins = range(quantile.max() + 1)
    centroids = np.stack([np.asarray(latent, dtype=np.float64)[rows[quantile == q]].mean(0) for q in bins])
    mean_dpt = np.array([dpt[quantile == q].mean() for q in bins])
    order = np.argsort(mean_dpt, kind="stable")  # the start class' last bin can reach past the first later cells in DPT
    return PathCells(rows, dpt, quantile, np.interp(dpt, mean_dpt[order], arc_length(centroids)[order]), centroids)


def _equal_count_bins(values: np.ndarray, bins: int) -> np.ndarray:
    """Each value's bin (0 … bins−1) when the values, in order, are cut into `bins` equal-count bins."""
    rank = np.empty(len(values))
    rank[np.argsort(values, kind="stable")] = np.arange(len(values))
    return np.minimum((rank / len(values) * bins).astype(int), bins - 1)


def arc_length(points: np.ndarray) -> np.ndarray:
    """Distance travelled along a polyline from its first point, as a fraction of its length (0 … 1).

    The data path's pseudotime: the GP then moves through the latent at an even speed. Spacing the
    waypoints by DPT instead crowds those of a dense start class into a short stretch of pseudotime,
    and the GP rings (overshoots) where the path leaves it.
    """
    steps = np.linalg.norm(np.diff(points, axis=0), axis=1)
    travelled = np.concatenate([[0.0], np.cumsum(steps)])
    return travelled / max(travelled[-1], 1e-12)


def data_anchors(latent: np.ndarray, classes: Sequence[str], cells: PathCells) -> Anchors:
    """The centroid of each DPT quantile at its `arc_length` along the centroids (0 … 1), named by its
    commonest class, with the variance of its cells (the scatter posterior samples draw around the path)."""
    latent = np.asarray(latent, dtype=np.float64)
    classes = np.asarray(classes, dtype=object)
    groups = [np.flatnonzero(cells.quantile == q) for q in range(len(cells.centroids))]
    scatter = np.stack([latent[cells.rows[g]].var(0) for g in groups])
    names = [pd.Series(classes[cells.rows[g]]).mode().iloc[0] for g in groups]
    return Anchors(
        torch.as_tensor(arc_length(cells.centroids)), torch.as_tensor(cells.centroids), names, "quantiles", torch.as_tensor(scatter)
    )


def dpt_trends(cells: PathCells, expression: CellExpression, genes: Sequence[str], t: np.ndarray, bins: int = 20) -> pd.DataFrame:
    """The baseline a user would run: each gene's mean expression in `bins` equal-count bins of the
    cells' DPT, interpolated onto the decoded path's pseudotimes `t` (steps × genes).

    `expression` has one row per row of the caller's latent; only the path's cells that have RNA
    are binned.
    """
    genes = list(genes)
    has_rna = expression.has_rna[cells.rows]
    if has_rna.sum() < bins:
        raise InputError(f"only {int(has_rna.sum())} cells of the path have RNA: too few for a DPT trend in {bins} bins")
    values, cell_t = expression.log_normalised(cells.rows[has_rna], genes).astype(np.float64), cells.t[has_rna]
    ranks = pd.Series(cell_t).rank(method="first").to_numpy() - 1
    which = np.minimum((ranks / len(cell_t) * bins).astype(int), bins - 1)
    centres = np.array([cell_t[which == b].mean() for b in range(bins)])
    means = np.stack([values[which == b].mean(0) for b in range(bins)])
    trend = np.stack([np.interp(t, centres, means[:, j]) for j in range(means.shape[1])], axis=1)
    return pd.DataFrame(trend, index=pd.Index(np.round(t, 6), name="pseudotime"), columns=genes)


def save_marker_trends(decoded: DecodedPath, trends: pd.DataFrame, genes: Sequence[str], path: Path) -> Path:
    """PNG, one panel per marker: the decoded curve (left axis; the central 95 % of its posterior samples
    shaded) and the real cells' DPT trend (right axis: log1p counts per 10,000), their Pearson r in the title."""
    cols = min(3, len(genes))
    rows = -(-len(genes) // cols)
    fig = Figure(figsize=(3.2 * cols, 2.3 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, gene in zip(axes.flat, genes):
        j = decoded.gene_names.index(gene)
        curve = decoded.genes[:, j]
        ax.plot(decoded.t, curve, color="tab:blue", label="decoded")
        shade_band(ax, decoded, j, "tab:blue")
        twin = ax.twinx()
        twin.plot(decoded.t, trends[gene].to_numpy(), color="tab:orange", ls="--", label="DPT trend")
        twin.tick_params(labelsize=6, colors="tab:orange")
        ax.tick_params(labelsize=6)
        ax.set_title(f"{gene}  r = {trend_correlation(curve, trends[gene].to_numpy()):.2f}", fontsize=8)
    for ax in axes.flat[len(genes) :]:
        ax.set_visible(False)
    axes[0, 0].set_ylabel("decoded", fontsize=7, color="tab:blue")
    for ax in axes[-1]:
        ax.set_xlabel("pseudotime", fontsize=7)
    fig.suptitle(f"{decoded.name}: decoded (blue) vs real cells along diffusion pseudotime (orange)", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def trend_correlation(curve: np.ndarray, trend: np.ndarray) -> float:
    """Pearson r between a decoded curve and a DPT trend on the same steps (NaN when either is constant)."""
    if np.ptp(curve) == 0 or np.ptp(trend) == 0:
        return float("nan")
    return float(np.corrcoef(curve, trend)[0, 1])


def save_paths_plot(latent: np.ndarray, cells: PathCells, paths: dict[str, Trajectory], path: Path, title: str) -> Path:
    """PNG: the path's cells on their first two principal components, coloured by DPT, and each
    mean path drawn over them (where the chord cuts a corner the data path follows the cells)."""
    points = np.asarray(latent, dtype=np.float64)[cells.rows]
    centre = points.mean(0)
    _, _, axes_pc = np.linalg.svd(points - centre, full_matrices=False)
    project = lambda z: (np.asarray(z, dtype=np.float64) - centre) @ axes_pc[:2].T  # noqa: E731
    fig = Figure(figsize=(5, 4))
    ax = fig.subplots()
    shown = project(points)
    scatter = ax.scatter(shown[:, 0], shown[:, 1], c=cells.t, s=4, cmap="viridis", alpha=0.6)
    for (name, trajectory), colour in zip(paths.items(), ("crimson", "black")):
        line = project(trajectory.mean.numpy())
        ax.plot(line[:, 0], line[:, 1], color=colour, lw=2, label=name)
        anchors = project(trajectory.anchors.z.numpy())
        ax.scatter(anchors[:, 0], anchors[:, 1], color=colour, s=18, marker="D")
    fig.colorbar(scatter, ax=ax, label="pseudotime (rescaled DPT)")
    ax.set_xlabel("PC1 of the path's cells")
    ax.set_ylabel("PC2")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)
