"""One preset, end to end: anchors → GP path → both decoders → gene kinetics → files and numbers.

Used by the Lightning callback at the end of training, by `wbcvae trajectory --ckpt …` and by the
pipeline; all three write the same files into `<out_dir>/<preset>/`:
`strip.png` (decoded images, their spread and, given the image cells' crops, the real cell nearest each
frame, listed in `strip_cells.csv`), `path.gif`, `genes.csv` (steps × genes),
`path.csv` (pseudotime, latent mean, mean variance), `kinetics.csv`, `clusters.csv`, `heatmap.png`,
`markers.png`, and `markers.csv` when the preset names known markers. A path through an RNA-only
latent has no image decoder, hence no strip and no GIF.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from wbcvae.errors import InputError
from wbcvae.report.html import Section, write_csv
from wbcvae.trajectory.decode import (
    CellCrops,
    Decoder,
    DecodedPath,
    decode_path,
    save_gene_curves,
    save_gif,
    save_image_strip,
)
from wbcvae.trajectory.expression import CellExpression, local_standard_error
from wbcvae.trajectory.gp import MAX_LENGTHSCALE, MIN_LENGTHSCALE, Anchors, LatentPathGP, Trajectory, class_anchors
from wbcvae.trajectory.kinetics import K_RANGE, GeneKinetics, cluster_kinetics, cluster_summary, save_heatmap, shape_of, znormalise
from wbcvae.trajectory.pseudotime import (
    START_WAYPOINTS,
    data_anchors,
    dpt_trends,
    path_cells,
    save_marker_trends,
    save_paths_plot,
    trend_correlation,
)
from wbcvae.trajectory.presets import TrajectoryPreset, get_preset
from wbcvae.trajectory.recovery import GroundTruth


PATHS = ("data", "chord")


@dataclass
class TrajectorySettings:
    """How a path is fitted, decoded and clustered.

    `path: data` runs the GP through the centroids of `quantiles` diffusion-pseudotime quantiles of
    the cells between the two end classes, the start class holding as many as the share of the DPT it
    spans (`start_waypoints: extent`; `count`: its share of the cells). With `compare_chord` it fits the
    study's chord beside it, its numbers prefixed `chord_`. `path: chord` is the study's: class anchors,
    the two end classes (or every stage with `waypoints`), at centroids or sampled cells (`anchor_mode`).
    """

    path: str = "data"
    quantiles: int = 10
    start_waypoints: str = START_WAYPOINTS[0]  # data path: the start class' quantiles by the DPT it spans, or by its count
    compare_chord: bool = True
    waypoints: bool = False  # chord: anchor every stage of the series, not just the two end points
    anchor_mode: str = "centroid"  # chord: or "cells", sampled cells per stage, learnt noise
    cells_per_stage: int = 32
    steps: int = 100
    samples: int = 16  # cells drawn along the path and decoded: their spread decides which genes are flat
    flat_level: float = 0.05  # changed: two steps apart beyond their spread, at this family-wise level over the pairs
    k_range: tuple[int, int] = K_RANGE  # k-Shape cluster counts tried; the best silhouette wins
    fit_iters: int = 100
    min_lengthscale: float = MIN_LENGTHSCALE  # the GP's shortest RBF lengthscale, in path pseudotime (0 … 1)
    seed: int = 0

    def __post_init__(self) -> None:
        self.k_range = tuple(self.k_range)
        if self.path not in PATHS:
            raise InputError(f"trajectory path must be one of {PATHS}, got {self.path!r}")
        if len(self.k_range) != 2 or not 2 <= self.k_range[0] <= self.k_range[1]:
            raise InputError(f"trajectory k_range must be [min, max] with 2 ≤ min ≤ max, got {list(self.k_range)}")
        if self.start_waypoints not in START_WAYPOINTS:
            raise InputError(f"trajectory start_waypoints must be one of {START_WAYPOINTS}, got {self.start_waypoints!r}")
        if self.samples < 2:
            raise InputError(f"trajectory samples must be at least 2 (their spread calls genes flat), got {self.samples}")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], where: str = "trajectory") -> TrajectorySettings:
        """Settings from a config section; an unknown key is an error that names it and `where` it was."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InputError(f"unknown {where} setting {unknown[0]!r}; known: {sorted(known)}")
        return cls(**values)


@dataclass
class TrajectoryResult:
    preset: TrajectoryPreset
    trajectory: Trajectory
    decoded: DecodedPath
    kinetics: GeneKinetics
    files: dict[str, Path]
    metrics: dict[str, float] = field(default_factory=dict)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)


@dataclass
class _Walk:
    """One fitted path, decoded and clustered (the data path, or the chord beside it)."""

    gp: LatentPathGP
    trajectory: Trajectory
    decoded: DecodedPath
    kinetics: GeneKinetics
    metrics: dict[str, float]
    confusion: pd.DataFrame | None


def run_trajectory(
    preset: TrajectoryPreset | str,
    latent: np.ndarray,
    classes: Sequence[str],
    image_decoder: Decoder | None,
    gene_decoder: Decoder,
    gene_names: Sequence[str],
    out_dir: str | Path,
    settings: TrajectorySettings | None = None,
    truth: GroundTruth | None = None,
    modality: Sequence[str] | None = None,
    expression: CellExpression | None = None,
    crops: CellCrops | None = None,
) -> TrajectoryResult:
    """Fit, decode and cluster one preset from labelled latents (any modality, pooled).

    `modality` (per cell): a data path is read from the RNA cells when they hold both end classes,
    else from every cell. `expression` (rows as `latent`; image cells without RNA): the real cells'
    counts, for the DPT-trend baseline and the yardstick of flat vs changed (the standard error of
    the cells' mean near each step, see `wbcvae.trajectory.expression`); without it only the
    decoded samples' spread calls genes flat. `crops`: image cells whose real crop the strip shows
    beside each decoded frame (the nearest to the path there).
    """
    preset = get_preset(preset) if isinstance(preset, str) else preset
    settings = settings or TrajectorySettings()
    cells = None
    if settings.path == "data":
        try:
            rows = data_path_rows(classes, modality, preset)
            cells = path_cells(latent, classes, preset.series, rows, settings.quantiles, start_waypoints=settings.start_waypoints)
        except InputError as err:  # e.g. end classes in two unconnected clouds: the chord still says something
            warnings.warn(f"trajectory {preset.name!r}: no data path ({err}); fitting the chord instead", stacklevel=2)
    anchors = data_anchors(latent, classes, cells) if cells is not None else _chord_anchors(latent, classes, preset, settings)
    near = None if expression is None else _CellsNearPath(latent, expression, quantile_size(classes, expression, preset, settings))
    main = _walk(preset, anchors, image_decoder, gene_decoder, gene_names, settings, truth, near)
    trajectory, decoded, kinetics = main.trajectory, main.decoded, main.kinetics
    folder = Path(out_dir) / preset.name
    folder.mkdir(parents=True, exist_ok=True)
    tables = {"kinetics": kinetics.table, "clusters": cluster_summary(kinetics)}
    trends = None
    kept = [g for g in preset.expected_markers if g in decoded.gene_names and g in expression.genes] if expression is not None else []
    if cells is not None and kept:
        try:
            trends = dpt_trends(cells, expression, kept, decoded.t)
        except InputError as err:  # e.g. a path read mostly from image cells
            warnings.warn(f"trajectory {preset.name!r}: no DPT trends ({err})", stacklevel=2)
    markers = marker_table(preset, kinetics, decoded, trends)
    if len(markers):
        tables["markers"] = markers
    files = {}
    if decoded.images is not None:
        nearest = crops.nearest(trajectory.mean[decoded.strip_steps].numpy()) if crops is not None and len(crops.latent) else None
        if nearest is not None:
            tables["strip_cells"] = pd.DataFrame({"pseudotime": decoded.t[decoded.strip_steps], "nearest_cell": nearest[1]})
        files |= {"strip": save_image_strip(decoded, folder / "strip.png", nearest), "gif": save_gif(decoded, folder / "path.gif")}
    files |= {
        "heatmap": save_heatmap(kinetics, folder / "heatmap.png", title=f"{preset.name}: gene kinetics"),
        "markers_plot": save_gene_curves(
            decoded, _genes_to_draw(markers, kinetics), folder / "markers.png", dashed=set(markers["gene"][~markers["agrees"].astype(bool)])
        ),
        "genes": write_csv(decoded.gene_frame(), folder / "genes.csv", index=True),
        "path": write_csv(_path_frame(trajectory), folder / "path.csv"),
    }
    metrics = dict(main.metrics)
    if len(markers):
        metrics |= {"markers_agree": markers_agreeing(markers), "markers_compared": len(markers)}
    if trends is not None and len(markers):
        shown = [g for g in markers["gene"] if g in trends.columns]
        if shown:
            files["markers_dpt"] = save_marker_trends(decoded, trends, shown, folder / "markers_dpt.png")
            files["dpt_trends"] = write_csv(trends, folder / "dpt_trends.csv", index=True)
            metrics["dpt_correlation_median"] = float(markers["dpt_correlation"].median())
            metrics["markers_as_dpt"] = markers_as_dpt(markers)  # of markers_compared
    if cells is not None and settings.compare_chord:
        chord = _walk(preset, _chord_anchors(latent, classes, preset, settings), None, gene_decoder, gene_names, settings, truth, near)
        metrics |= {f"chord_{key}": value for key, value in chord.metrics.items()}
        if len(markers):
            tables["chord_markers"] = marker_table(preset, chord.kinetics)
            metrics["chord_markers_agree"] = markers_agreeing(tables["chord_markers"])
        files["paths_plot"] = save_paths_plot(latent, cells, {"data path": trajectory, "chord": chord.trajectory}, folder / "paths.png", preset.name)
        if chord.confusion is not None:
            tables["chord_kinetics_confusion"] = chord.confusion
    if main.confusion is not None:
        tables["kinetics_confusion"] = main.confusion
    files |= {name: write_csv(table, folder / f"{name}.csv") for name, table in tables.items()}
    return TrajectoryResult(preset, trajectory, decoded, kinetics, files, metrics, tables)


def data_path_rows(classes: Sequence[str], modality: Sequence[str] | None, preset: TrajectoryPreset) -> np.ndarray:
    """Which cells a data path is read from: the RNA cells when they hold both end classes, else all."""
    everyone = np.ones(len(classes), dtype=bool)
    if modality is None:
        return everyone
    rna = np.asarray(modality) == "rna"
    held = set(np.asarray(classes, dtype=object)[rna].tolist())
    return rna if {preset.start, preset.end} <= held else everyone


def _chord_anchors(latent: np.ndarray, classes: Sequence[str], preset: TrajectoryPreset, settings: TrajectorySettings):
    return class_anchors(
        latent, classes, preset.stages(settings.waypoints), settings.anchor_mode, settings.cells_per_stage, settings.seed
    )


@dataclass
class _CellsNearPath:
    """The RNA cells a path's gene calls are held against: `neighbours` nearest each step."""

    latent: np.ndarray
    expression: CellExpression
    neighbours: int

    def standard_error(self, trajectory: Trajectory, genes: Sequence[str]) -> np.ndarray | None:
        return local_standard_error(trajectory.mean.numpy(), self.latent, self.expression, genes, self.neighbours)


def quantile_size(classes: Sequence[str], expression: CellExpression, preset: TrajectoryPreset, settings: TrajectorySettings) -> int:
    """Cells in one pseudotime quantile of the preset's RNA cells: the resolution a data path is read at."""
    on_path = np.isin(np.asarray(classes, dtype=object), list(preset.series)) & expression.has_rna
    return max(2, int(on_path.sum()) // settings.quantiles)


def _walk(
    preset: TrajectoryPreset,
    anchors: Anchors,
    image_decoder: Decoder | None,
    gene_decoder: Decoder,
    gene_names: Sequence[str],
    settings: TrajectorySettings,
    truth: GroundTruth | None,
    near: _CellsNearPath | None = None,
) -> _Walk:
    """GP through `anchors`, decoded, its genes called flat or changed (against the decoded samples'
    spread and, with `near`, the cells' standard error) and clustered, scored against `truth`."""
    gp = LatentPathGP(anchors, fit_iters=settings.fit_iters, lengthscale_bounds=(settings.min_lengthscale, MAX_LENGTHSCALE))
    trajectory = gp.trajectory(settings.steps, settings.samples, settings.seed, name=preset.name)
    decoded = decode_path(trajectory, image_decoder, gene_decoder, gene_names)
    spread = decoded.gene_std
    cells_se = None if near is None else near.standard_error(trajectory, decoded.gene_names)
    if cells_se is not None:
        spread = cells_se if spread is None else np.hypot(spread, cells_se)
    kinetics = cluster_kinetics(
        decoded.genes, decoded.gene_names, decoded.t, spread, settings.flat_level, settings.k_range, seed=settings.seed
    )
    metrics = {
        "lengthscale": gp.lengthscale,
        "anchors": len(anchors.t),
        "k_used": kinetics.k_used,
        "mean_path_sd": float(trajectory.variance.sqrt().mean()),
        **{f"genes_{shape}": int((kinetics.table["gene_shape"] == shape).sum()) for shape in ("up", "down", "transient", "flat")},
        **{f"silhouette_k{k}": float(value) for k, value in kinetics.silhouettes.items()},  # what chose k_used
    }
    confusion = None
    if truth is not None:
        recovered, confusion = truth.score(preset, trajectory, kinetics)
        metrics |= recovered
    return _Walk(gp, trajectory, decoded, kinetics, metrics, confusion)


def report_section(result: TrajectoryResult) -> Section:
    """The report's view of one trajectory: its figures, its tables, and what the numbers mean."""
    m, preset = result.metrics, result.preset
    anchors = result.trajectory.anchors
    how = (
        f"through the centroids of {len(anchors.t)} diffusion-pseudotime quantiles of the cells between the end classes"
        if anchors.mode == "quantiles"
        else f"through {len(anchors.t)} class anchor point(s) ({anchors.mode}), the study's chord"
    )
    lines = [
        f"{preset.description}. GP {how}, at stages {', '.join(dict.fromkeys(anchors.stages))}; RBF lengthscale "
        f"{m['lengthscale']:.3f} (pseudotime units). A gene is changed when two steps of its decoded curve differ by more "
        f"than the spread of {result.trajectory.samples.shape[0]} cells drawn along the path there, with the standard error "
        "of the real cells' mean near each step where the RNA is at hand (5 % family-wise over the pairs of steps), else flat; "
        "k-Shape on the changed genes with k = "
        f"{m['k_used']} (best silhouette). Genes by shape: {m['genes_up']} up, {m['genes_down']} down, "
        f"{m['genes_transient']} transient, {m['genes_flat']} flat.",
    ]
    if "strip" in result.files:
        lines.append(
            "The strip shows decoded images along the path (top) and their pixel spread over paths drawn from the "
            "GP posterior (below them); the heatmap the z-normalised decoded expression of each cluster's top genes."
        )
        strip_cells = result.tables.get("strip_cells")
        if strip_cells is not None:
            lines.append(
                "The strip's bottom row is the real image cell nearest the path at each frame, a crop, not decoded: "
                + " → ".join(name.replace("_", " ") for name, _ in itertools.groupby(strip_cells["nearest_cell"]))
                + "."
            )
    else:
        lines.append(
            "The heatmap shows the z-normalised decoded expression of each cluster's top genes; the curves "
            "their decoded expression, with the central 95 % of the cells drawn along the GP's posterior paths shaded."
        )
    if "markers_dpt" in result.files:
        lines.append(
            "Baseline: each marker's mean expression in the real cells binned along scanpy diffusion pseudotime, beside "
            f"the decoded curve (median Pearson r {m['dpt_correlation_median']:.2f}; per marker in the table)."
        )
    markers = result.tables.get("markers")
    if markers is not None:
        lines.append(marker_sentence(markers))
    if "pseudotime_spearman" in m:
        recovered = (
            "Ground truth: Spearman between position on the path and true pseudotime of the nearest cells "
            f"{m['pseudotime_spearman']:.3f}"
        )
        if "ari_curves" in m:
            recovered += (
                f"; kinetics called from each gene's own curve vs the true ones: ARI {m['ari_curves']:.3f}, right for "
                f"{m['curve_shape_accuracy']:.1%} of {m['genes_compared']} genes, {m['transient_recall']:.1%} of the truly "
                f"transient ones; k-Shape's clusters: ARI {m['ari_clusters']:.3f}, the cluster's name right for "
                f"{m['shape_accuracy']:.1%} (shift-invariant, k-Shape files some transient genes with the up or down ones)"
            )
        lines.append(recovered + ".")
    if "chord_genes_flat" in m:
        lines.append(chord_sentence(m, result.tables.get("chord_markers")))
    keys = ("strip", "gif", "paths_plot", "heatmap", "markers_plot", "markers_dpt")
    figures = [result.files[key] for key in keys if key in result.files]
    return Section(f"Trajectory: {preset.name}", "\n\n".join(lines), figures, result.tables)


def chord_sentence(m: dict[str, float], markers: pd.DataFrame | None = None) -> str:
    """The study's chord beside the data path, in the same numbers; with its `markers` table, the ones it misses."""
    text = (
        "The study's chord through class anchors (the end classes' centroids, or every stage's with `waypoints`), fitted "
        f"beside it: {m['chord_genes_up']} up, {m['chord_genes_down']} "
        f"down, {m['chord_genes_transient']} transient, {m['chord_genes_flat']} flat (k = {m['chord_k_used']})"
    )
    if "chord_ari_curves" in m:
        text += (
            f"; ARI {m['chord_ari_curves']:.3f} (data path: {m['ari_curves']:.3f}), kinetic right for "
            f"{m['chord_curve_shape_accuracy']:.1%}, transient genes found {m['chord_transient_recall']:.1%} "
            f"(data path: {m['transient_recall']:.1%})"
        )
    if "chord_markers_agree" in m:
        text += f"; known markers as expected: {m['chord_markers_agree']} of {m['markers_compared']} (data path: {m['markers_agree']})"
        missed = [] if markers is None else [f"{r.gene} {r.curve} (expected {r.expected})" for r in markers.itertuples() if not r.agrees]
        if missed:
            text += f", the chord's misses: {', '.join(missed)}"
    return text + "."


def marker_table(
    preset: TrajectoryPreset, kinetics: GeneKinetics, decoded: DecodedPath | None = None, trends: pd.DataFrame | None = None
) -> pd.DataFrame:
    """The preset's known markers (those the model keeps): expected shape, the shape of the gene's own
    decoded curve, the name of its k-Shape cluster (which, being shift-invariant, can file a
    transient gene's falling edge with the `down` genes) and, with the real cells' DPT `trends`, the
    Pearson correlation between the decoded curve and the trend (`dpt_correlation`) and the trend's own
    shape (`dpt_shape`, named as a changed curve is: up, down or transient), so a marker that misses its
    textbook shape shows whether the cells themselves move that way."""
    table = kinetics.table.set_index("gene")
    columns = [
        "gene", "expected", "curve", "agrees", "cluster_shape", "cluster", "change", "change_z", "net_change", "bump_share",
        "dpt_correlation", "dpt_shape",
    ]  # fmt: skip
    rows = [
        {
            "gene": gene,
            "expected": expected,
            "curve": table.at[gene, "gene_shape"],
            "agrees": table.at[gene, "gene_shape"] == expected,
            "cluster_shape": table.at[gene, "shape"],
            "cluster": int(table.at[gene, "cluster"]),
            "change": float(table.at[gene, "change"]),
            "change_z": float(table.at[gene, "change_z"]),
            "net_change": float(table.at[gene, "net_change"]),
            "bump_share": float(table.at[gene, "bump_share"]),
            "dpt_correlation": _trend_correlation(decoded, trends, gene),
            "dpt_shape": _trend_shape(trends, gene),
        }
        for gene, expected in preset.expected_markers.items()
        if gene in table.index
    ]
    return pd.DataFrame(rows, columns=columns)


def _trend_correlation(decoded: DecodedPath | None, trends: pd.DataFrame | None, gene: str) -> float:
    if decoded is None or trends is None or gene not in trends.columns:
        return float("nan")
    return trend_correlation(decoded.genes[:, decoded.gene_names.index(gene)], trends[gene].to_numpy())


def markers_agreeing(markers: pd.DataFrame) -> int:
    """How many markers' decoded curves have their expected shape."""
    return int(markers["agrees"].astype(bool).sum())


def markers_as_dpt(markers: pd.DataFrame) -> int:
    """How many markers' decoded curves have the shape of the real cells' DPT trend."""
    return int((markers["curve"] == markers["dpt_shape"]).sum())


def _trend_shape(trends: pd.DataFrame | None, gene: str) -> str:
    if trends is None or gene not in trends.columns:
        return ""
    trend = trends[gene].to_numpy()
    return shape_of(znormalise(trend[None])[0]) if np.ptp(trend) > 0 else "flat"


def marker_sentence(markers: pd.DataFrame) -> str:
    """'Known markers along the decoded path: CD34 down, LYZ up, …; 5 of 6 agree with the expected shape.'"""
    found = [f"{r.gene} {r.curve}{'' if r.agrees else f' (expected {r.expected})'}" for r in markers.itertuples()]
    agree = markers_agreeing(markers)
    sentence = f"Known markers along the decoded path: {', '.join(found)}; {agree} of {len(markers)} agree with the expected shape"
    if "dpt_shape" not in markers or not (markers["dpt_shape"] != "").all():
        return sentence + "."
    return sentence + f", {markers_as_dpt(markers)} of {len(markers)} with the shape of the real cells' DPT trend."


def _genes_to_draw(markers: pd.DataFrame, kinetics: GeneKinetics, per_cluster: int = 3) -> dict[str, list[str]]:
    """The known markers by their expected shape when the model keeps some, else each shape's clusters' top genes;
    in the order a lineage's programmes run (falling, peaking, rising)."""
    order = ("down", "transient", "up", "flat")
    if len(markers):
        return {f"expected {shape}": list(markers["gene"][markers["expected"] == shape]) for shape in order}
    top = kinetics.table[(kinetics.table["rank"] <= per_cluster) & (kinetics.table["cluster"] >= 0)]
    return {f"{shape} clusters' top genes": list(top["gene"][top["shape"] == shape]) for shape in order}


def _path_frame(trajectory: Trajectory) -> pd.DataFrame:
    mean = trajectory.mean.numpy()
    frame = pd.DataFrame(mean, columns=[f"z{i}" for i in range(mean.shape[1])])
    frame.insert(0, "pseudotime", trajectory.t.numpy())
    frame.insert(1, "mean_variance", trajectory.variance.mean(1).numpy())
    return frame

