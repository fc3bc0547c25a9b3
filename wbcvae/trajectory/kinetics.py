"""Gene kinetics along a decoded path: flat or changed, z-normalised curves, k-Shape clusters named by shape.

A gene is `changed` when its decoded curve moves by more than it is known to: somewhere along the
path, two steps must differ by more than z standard deviations of their difference. The per-step sd
(`spread`) is the caller's: the decoded samples' (cells drawn along the path: a posterior path plus the
cells' scatter) combined with the standard error of the real cells' mean near that step
(`wbcvae.trajectory.expression`), which also covers what the decoder draws into genes that do not
change; two steps' sds combine as if independent. The statistic is the largest standardised
difference over every pair of steps (`change_z`), so z is the two-sided normal quantile for a
family-wise `level` of 5 % over those pairs (Bonferroni: z ≈ 4.4 for 100 steps). Every pair counts,
not only the curve's highest and lowest steps: a peak where the cells scatter widely (a granule
protein among heterogeneous progenitors) is still held against the steps on its flanks, where they
do not. The rest are `flat` and kept out of k-Shape, which compares *shapes* after z-normalisation
and would otherwise blow a constant curve's noise up into a shape (or divide by zero). Nothing is
tuned to the data: the yardstick is the cells' own spread.

The number of clusters is chosen, not fixed: k-Shape is fitted for each k in `k_range` and the k with
the highest silhouette (on k-Shape's own shape-based distance, 1 − max normalised cross-correlation,
over the changed genes) is kept. The range starts at 3, the number of shapes a changed gene can have. Each cluster is
named by the commonest shape of its members' own curves (up / down / transient). Not by the k-Shape centroid, which
k-Shape may have shifted in time, nor by the members' mean curve: bumps at different times, filed with the falling
genes they overlap, average into a fall (a demo cluster of 242 genes, most of them transient, was named down).
k-Shape's other pitfalls are handled here too: an initialisation can leave a cluster empty (tslearn
then returns stale labels: we check and ask for one cluster fewer), and there can be fewer distinct
curves than k.

tslearn's k-Shape computes each cross-correlation in numba object mode, one pair at a time (minutes
for a few thousand genes, plus a numba compilation per process); `_VectorisedKShape` keeps tslearn's
algorithm, initialisation and bookkeeping and replaces only those two inner loops by batched FFTs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from scipy.stats import norm
from sklearn.metrics import silhouette_score
from threadpoolctl import threadpool_limits
from tslearn.clustering import KShape

from wbcvae.report.html import save_figure

SHAPES = ("up", "down", "transient", "flat")
FLAT = "flat"
TRANSIENT_RATIO = 0.5  # a changed curve is transient when its bump beyond both ends exceeds this share of its net change
K_RANGE = (3, 6)  # k-Shape cluster counts tried (at least one per shape); the silhouette picks one
SILHOUETTE_GENES = 600  # the silhouette is computed on at most this many changed genes (a fixed random subset)


@dataclass
class GeneKinetics:
    """k-Shape result for one path.

    `table`: one row per gene, sorted by cluster then rank: gene, cluster, shape (the cluster's),
    gene_shape (the gene's own curve named alone), change (range along the path), change_z (the largest
    difference between two steps in sds of that difference: the flat-or-changed statistic), net_change
    (end − start), bump_share (its bump beyond both ends as a share of its net change: transient beyond
    `TRANSIENT_RATIO`), peak_t, half_t (when the gene is first halfway through its change), rank (by change);
    `cluster` −1 is the flat group. `curves`: z-normalised curves indexed by gene (genes × steps; zeros
    for flat genes). `silhouettes`: k → silhouette of the k-Shape fit with k clusters (the chosen
    `k_used` has the highest).
    """

    table: pd.DataFrame
    curves: pd.DataFrame
    t: np.ndarray
    k_used: int
    silhouettes: dict[int, float]

    def shapes(self) -> pd.Series:
        """Shape of each gene's cluster, indexed by gene."""
        return self.table.set_index("gene")["shape"]


def znormalise(curves: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Each row to mean 0, sd 1; rows with sd ≤ eps become zeros (a flat curve has no shape)."""
    curves = np.asarray(curves, dtype=np.float64)
    sd = curves.std(axis=1, keepdims=True)
    centred = curves - curves.mean(axis=1, keepdims=True)
    return np.where(sd > eps, centred / np.where(sd > eps, sd, 1.0), 0.0)


def shape_of(curve: np.ndarray, transient_ratio: float = TRANSIENT_RATIO) -> str:
    """Name a z-normalised curve: `transient` when it rises above (or dips below) both ends by more
    than `transient_ratio` of its net change (and by half a standard deviation); else `up` or `down`."""
    bump, net = bump_and_net(curve)
    if bump > max(transient_ratio * abs(net), 0.5):
        return "transient"
    return "up" if net > 0 else "down"


def bump_and_net(curve: np.ndarray, end_fraction: float = 0.05) -> tuple[float, float]:
    """How far a curve rises above (or dips below) both its ends, and its net change; its start and end are
    the means of its first and last `end_fraction` of steps."""
    n_end = max(1, int(round(end_fraction * len(curve))))
    start, end = curve[:n_end].mean(), curve[-n_end:].mean()
    return float(max(curve.max() - max(start, end), min(start, end) - curve.min())), float(end - start)


def bump_share(curve: np.ndarray) -> float:
    """A curve's bump beyond both ends as a share of its net change (`shape_of` calls it transient beyond
    `TRANSIENT_RATIO`): how near a call is to the rule's threshold; infinite for a bump with no net change."""
    bump, net = bump_and_net(curve)
    return bump / abs(net) if net != 0 else (np.inf if bump > 0 else 0.0)


def change_statistic(expression: np.ndarray, spread: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Per gene of a steps × genes matrix: its range (max − min) and `change_z`, the largest difference
    between two of its steps in sds of that difference, from the per-step sd `spread` (without it, or
    where both sds are zero: infinite for a curve that moves, 0 for a constant one)."""
    curves = np.asarray(expression, dtype=np.float64)
    change = curves.max(0) - curves.min(0)
    if spread is None:
        return change, np.where(change > 1e-9, np.inf, 0.0)
    change_z = np.empty_like(change)
    for genes, z in standardised_differences(curves, spread):
        change_z[genes] = np.abs(z).max((0, 1))
    return change, change_z


def standardised_differences(curves: np.ndarray, spread: np.ndarray) -> Iterator[tuple[slice, np.ndarray]]:
    """Every pair of steps of a steps × genes matrix, a few genes at a time: (those genes, z) with
    z[i, j, g] = (curve[j, g] − curve[i, g]) in sds of that difference (per-step sds `spread`, combined as if
    independent; where both are zero: ±inf for a difference, 0 for none)."""
    curves = np.asarray(curves, dtype=np.float64)
    variance = np.square(np.asarray(spread, dtype=np.float64))
    chunk = max(1, 4_000_000 // len(curves) ** 2)  # steps × steps × genes, a few million values at a time
    for start in range(0, curves.shape[1], chunk):
        genes = slice(start, start + chunk)
        g, v = curves[:, genes], variance[:, genes]
        difference = g[None] - g[:, None]
        sd = np.sqrt(v[:, None] + v[None])
        z = np.divide(difference, sd, out=np.where(np.abs(difference) > 1e-9, np.copysign(np.inf, difference), 0.0), where=sd > 0)
        yield genes, z


def change_threshold_z(steps: int, level: float = 0.05) -> float:
    """Two-sided normal quantile for a family-wise `level` over every pair of `steps` (Bonferroni)."""
    return float(norm.ppf(1 - level / (steps * (steps - 1))))


def changed_genes(expression: np.ndarray, spread: np.ndarray | None, level: float = 0.05) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per gene of a steps × genes matrix: its range, `change_z`, and whether it is changed (`change_z`
    beyond z for a family-wise `level` over the pairs of steps, and the curve moves at all)."""
    expression = np.asarray(expression, dtype=np.float64)
    change, change_z = change_statistic(expression, spread)
    return change, change_z, (change_z > change_threshold_z(len(expression), level)) & (change > 1e-9)


def gene_shapes(z: np.ndarray, moving: np.ndarray) -> list[str]:
    """Each gene named by its own z-normalised curve (genes × steps): up, down or transient, flat unless `moving`."""
    return [shape_of(row) if m else FLAT for row, m in zip(z, moving)]


def cluster_kinetics(
    expression: np.ndarray,
    gene_names: Sequence[str],
    t: np.ndarray | None = None,
    spread: np.ndarray | None = None,
    level: float = 0.05,
    k_range: tuple[int, int] = K_RANGE,
    n_init: int = 3,
    seed: int = 0,
) -> GeneKinetics:
    """Call each gene of a steps × genes matrix flat or changed, cluster the changed genes' curves
    with k-Shape (k chosen by silhouette within `k_range`) and name each cluster by its shape.

    `spread` (steps × genes): the per-step sd of the decoded samples. A gene is changed when two of its
    steps differ by more than z sds of their difference, z for a family-wise `level` over the pairs of
    steps (see the module docstring); without `spread`, when it moves at all.
    """
    expression = np.asarray(expression, dtype=np.float64)
    steps, n_genes = expression.shape
    if n_genes != len(gene_names):
        raise ValueError(f"{n_genes} gene curves but {len(gene_names)} gene names")
    if spread is not None and np.shape(spread) != expression.shape:
        raise ValueError(f"spread has shape {np.shape(spread)}, the curves {expression.shape}")
    t = np.linspace(0, 1, steps) if t is None else np.asarray(t)
    curves = expression.T  # genes × steps
    change, change_z, moving = changed_genes(expression, spread, level)
    z = znormalise(curves)
    z[~moving] = 0.0

    labels = np.full(n_genes, -1)
    k_used, silhouettes = 0, {}
    if moving.any():
        labels[moving], k_used, silhouettes = choose_k(z[moving], k_range, n_init, seed)
    own_shapes = gene_shapes(z, moving)
    cluster_shape = {-1: FLAT}
    for c in range(k_used):
        cluster_shape[c] = Counter(shape for shape, label in zip(own_shapes, labels) if label == c).most_common(1)[0][0]

    table = pd.DataFrame(
        {
            "gene": list(gene_names),
            "cluster": labels,
            "shape": [cluster_shape[c] for c in labels],
            "gene_shape": own_shapes,
            "change": change,
            "change_z": change_z,
            "net_change": curves[:, -1] - curves[:, 0],
            "bump_share": [bump_share(curve) for curve in curves],
            "peak_t": t[curves.argmax(1)],
            "half_t": t[_half_change_step(curves)],
        }
    )
    table = _renumber_by_shape(table)
    table["rank"] = table.groupby("cluster")["change"].rank(ascending=False, method="first").astype(int)
    table = table.sort_values(["cluster", "rank"]).reset_index(drop=True)
    return GeneKinetics(table, pd.DataFrame(z, index=list(gene_names)), t, k_used, silhouettes)


def _half_change_step(curves: np.ndarray) -> np.ndarray:
    """Per curve, the first step at which it has moved half its largest distance from the start."""
    moved = np.abs(curves - curves[:, :1])
    return (moved >= 0.5 * moved.max(1, keepdims=True)).argmax(1)


def choose_k(z: np.ndarray, k_range: tuple[int, int], n_init: int, seed: int) -> tuple[np.ndarray, int, dict[int, float]]:
    """k-Shape for every k in `k_range` (inclusive); the labels and k of the best silhouette on the
    shape-based distance, and each k's silhouette. One curve, or one distinct shape: one cluster."""
    sample = np.random.default_rng(seed).permutation(len(z))[:SILHOUETTE_GENES]
    distances = shape_distances(z[sample])
    best: tuple[float, np.ndarray, int] | None = None
    silhouettes: dict[int, float] = {}
    for k in range(k_range[0], k_range[1] + 1):
        labels, k_fitted = _kshape(z, k, n_init, seed)
        if k_fitted in silhouettes or not 2 <= len(np.unique(labels[sample])) < len(sample):
            continue  # k lowered to one already scored, or a silhouette is undefined
        score = float(silhouette_score(distances, labels[sample], metric="precomputed"))
        silhouettes[k_fitted] = score
        if best is None or score > best[0]:
            best = (score, labels, k_fitted)
    if best is None:
        return np.zeros(len(z), dtype=int), 1, silhouettes
    return best[1], best[2], silhouettes


def shape_distances(z: np.ndarray, chunk: int = 64) -> np.ndarray:
    """k-Shape's shape-based distance between every pair of rows: 1 − max normalised cross-correlation."""
    norms = np.linalg.norm(z, axis=1)
    out = np.empty((len(z), len(z)))
    for i in range(0, len(z), chunk):
        out[i : i + chunk] = 1.0 - _normalised_cc(z[i : i + chunk], z, norms[i : i + chunk], norms).max(-1)
    np.fill_diagonal(out, 0.0)
    return out.clip(0.0, 2.0)


def _kshape(z: np.ndarray, k: int, n_init: int, seed: int) -> tuple[np.ndarray, int]:
    """Labels 0…k'−1 (every cluster non-empty) and k' ≤ k, lowering k until a fit succeeds."""
    distinct = len(np.unique(z.round(6), axis=0))
    k = max(1, min(k, len(z), distinct))
    while k > 1:
        model = _VectorisedKShape(n_clusters=k, n_init=n_init, random_state=seed)
        try:
            # Small eigen-problems: one BLAS thread is faster, and many threads on a busy machine crawl.
            with threadpool_limits(1):
                model.fit(z[:, :, None])
        except Exception as err:  # tslearn's EmptyClusterError also escapes from its final re-assignment
            if type(err).__name__ != "EmptyClusterError":
                raise
            k -= 1
            continue
        if model._X_fit is None:  # every initialisation left a cluster empty: labels would be stale
            k -= 1
            continue
        used, labels = np.unique(model.labels_, return_inverse=True)
        return labels.reshape(-1), len(used)
    return np.zeros(len(z), dtype=int), 1


class _VectorisedKShape(KShape):
    """tslearn's KShape for univariate series, its cross-correlations batched through numpy FFTs."""

    def _cross_dists(self, X: np.ndarray) -> np.ndarray:
        ncc = _normalised_cc(X[:, :, 0], self.cluster_centers_[:, :, 0], self.norms_, self.norms_centroids_)
        return 1.0 - ncc.max(-1)

    def _shape_extraction(self, X: np.ndarray, k: int) -> np.ndarray:
        members = X[self.labels_ == k, :, 0]
        reference = self.cluster_centers_[k, :, 0]
        ncc = _normalised_cc(reference[None], members, np.linalg.norm(reference)[None], self.norms_[self.labels_ == k])
        shifted = _shift(members, ncc[0].argmax(-1) + 1 - members.shape[1])
        sz = members.shape[1]
        q = np.eye(sz) - np.ones((sz, sz)) / sz
        _, vectors = np.linalg.eigh(q.T @ (shifted.T @ shifted) @ q)
        mu = vectors[:, -1]
        # The eigenvector's sign is arbitrary: keep the one closer to the members (as tslearn does).
        if np.linalg.norm(shifted + mu, axis=1).sum() < np.linalg.norm(shifted - mu, axis=1).sum():
            mu = -mu
        return mu[:, None]


def _normalised_cc(a: np.ndarray, b: np.ndarray, norms_a: np.ndarray, norms_b: np.ndarray) -> np.ndarray:
    """Normalised cross-correlation of every row of `a` (n×sz) with every row of `b` (m×sz), at every
    shift: n×m×(2·sz−1), shifts from −(sz−1) to sz−1, as tslearn's `normalized_cc`."""
    sz = a.shape[1]
    fft_size = 2 ** (1 + int(np.log2(2 * sz - 1)))
    cc = np.fft.irfft(np.fft.rfft(a, fft_size)[:, None] * np.conj(np.fft.rfft(b, fft_size))[None], fft_size)
    cc = np.concatenate([cc[..., -(sz - 1) :], cc[..., :sz]], axis=-1)
    denom = norms_a[:, None] * norms_b[None, :]
    return cc / np.where(denom < 1e-9, np.inf, denom)[..., None]


def _shift(series: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """Row i moved right by shifts[i] steps (left when negative), zero-filled."""
    sz = series.shape[1]
    source = np.arange(sz)[None, :] - shifts[:, None]
    inside = (source >= 0) & (source < sz)
    return np.where(inside, np.take_along_axis(series, source.clip(0, sz - 1), axis=1), 0.0)


def _renumber_by_shape(table: pd.DataFrame) -> pd.DataFrame:
    """Cluster ids in the order up, transient, down (then by when they change); flat stays −1."""
    order = {"up": 0, "transient": 1, "down": 2}
    moving = table[table.cluster >= 0]
    keys = moving.groupby("cluster").agg(shape=("shape", "first"), when=("half_t", "mean"))
    keys = keys.assign(o=keys["shape"].map(order)).sort_values(["o", "when"])
    mapping = {old: new for new, old in enumerate(keys.index)} | {-1: -1}
    return table.assign(cluster=table["cluster"].map(mapping))


def cluster_summary(kinetics: GeneKinetics) -> pd.DataFrame:
    """One row per cluster: shape, size, its members by their own curve's shape (the name is the commonest)
    and its top genes by change."""
    rows = []
    for cluster, members in kinetics.table.groupby("cluster"):
        own = members["gene_shape"].value_counts()
        rows.append(
            {
                "cluster": cluster,
                "shape": members["shape"].iloc[0],
                "genes": len(members),
                **{f"own_{shape}": int(own.get(shape, 0)) for shape in ("up", "down", "transient")},
                "top_genes": ", ".join(members.nsmallest(8, "rank")["gene"]),
            }
        )
    return pd.DataFrame(rows)


def save_heatmap(kinetics: GeneKinetics, path: Path, genes_per_cluster: int = 40, title: str = "") -> Path:
    """PNG heatmap of z-normalised curves, the top genes of each cluster, clusters separated by lines."""
    table = kinetics.table
    shown = table[(table["rank"] <= genes_per_cluster) & (table.cluster >= 0)].sort_values(["cluster", "half_t"])
    matrix = kinetics.curves.loc[shown["gene"]].to_numpy()
    fig = Figure(figsize=(6.5, 2 + 0.035 * len(shown)))
    ax = fig.subplots()
    if not len(shown):
        ax.text(0.5, 0.5, f"every one of {len(table)} genes is flat: no change beyond the spread", ha="center", va="center")
        ax.set_axis_off()
        ax.set_title(title or "gene kinetics", fontsize=9)
        return save_figure(fig, path)
    image = ax.imshow(matrix, aspect="auto", cmap="RdBu_r", vmin=-2.5, vmax=2.5, interpolation="nearest",
                      extent=(kinetics.t[0], kinetics.t[-1], len(shown), 0))
    bounds = np.flatnonzero(np.diff(shown["cluster"].to_numpy())) + 1
    for b in bounds:
        ax.axhline(b, color="black", lw=0.8)
    starts = np.concatenate([[0], bounds])
    ends = np.concatenate([bounds, [len(shown)]])
    ax.set_yticks((starts + ends) / 2)
    sizes = table.groupby("cluster").size()
    shapes = table.groupby("cluster")["shape"].first()
    clusters = shown["cluster"].to_numpy()[starts]
    ax.set_yticklabels([f"C{c}: {shapes[c]} ({sizes[c]} genes)" for c in clusters], fontsize=7)
    ax.set_xlabel("pseudotime")
    ax.set_title(title or "gene kinetics (z-normalised, top genes per cluster)", fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.04, label="z")
    fig.tight_layout()
    return save_figure(fig, path)
