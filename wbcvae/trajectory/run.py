"""One preset, end to end: anchors → GP path → both decoders → gene kinetics → files and numbers.

Used by the Lightning callback at the end of training, by `wbcvae trajectory --ckpt …` and by the
pipeline; all three write the same files into `<out_dir>/<preset>/`:
`strip.png` (decoded images and their spread), `path.gif`, `genes.csv` (steps × genes),
`path.csv` (pseudotime, latent mean, mean variance), `kinetics.csv`, `clusters.csv`, `heatmap.png`,
`markers.png`, and `markers.csv` when the preset names known markers. A path through an RNA-only
latent has no image decoder, hence no strip and no GIF.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from wbcvae.errors import InputError
from wbcvae.report.html import Section, write_csv
from wbcvae.trajectory.decode import Decoder, DecodedPath, decode_path, save_gene_curves, save_gif, save_image_strip
from wbcvae.trajectory.gp import LatentPathGP, Trajectory, class_anchors
from wbcvae.trajectory.kinetics import GeneKinetics, cluster_kinetics, cluster_summary, save_heatmap
from wbcvae.trajectory.presets import TrajectoryPreset, get_preset
from wbcvae.trajectory.recovery import GroundTruth


@dataclass
class TrajectorySettings:
    """How a path is fitted, decoded and clustered (the defaults are the study's, plus spread)."""

    waypoints: bool = False  # anchor every stage of the series, not just the two end points
    anchor_mode: str = "centroid"  # or "cells": sampled cells per stage, learnt noise
    cells_per_stage: int = 32
    steps: int = 100
    samples: int = 16  # posterior paths decoded for the uncertainty
    k: int = 4  # k-Shape clusters
    flat_fraction: float = 0.25
    fit_iters: int = 100
    seed: int = 0

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
) -> TrajectoryResult:
    """Fit, decode and cluster one preset from labelled latents (any modality, pooled)."""
    preset = get_preset(preset) if isinstance(preset, str) else preset
    settings = settings or TrajectorySettings()
    anchors = class_anchors(
        latent, classes, preset.stages(settings.waypoints), settings.anchor_mode, settings.cells_per_stage, settings.seed
    )
    gp = LatentPathGP(anchors, fit_iters=settings.fit_iters)
    trajectory = gp.trajectory(settings.steps, settings.samples, settings.seed, name=preset.name)
    decoded = decode_path(trajectory, image_decoder, gene_decoder, gene_names)
    kinetics = cluster_kinetics(
        decoded.genes, decoded.gene_names, decoded.t, k=settings.k, flat_fraction=settings.flat_fraction, seed=settings.seed
    )
    folder = Path(out_dir) / preset.name
    folder.mkdir(parents=True, exist_ok=True)
    tables = {"kinetics": kinetics.table, "clusters": cluster_summary(kinetics)}
    markers = marker_table(preset, kinetics)
    if len(markers):
        tables["markers"] = markers
    files = {}
    if decoded.images is not None:
        files |= {"strip": save_image_strip(decoded, folder / "strip.png"), "gif": save_gif(decoded, folder / "path.gif")}
    files |= {
        "heatmap": save_heatmap(kinetics, folder / "heatmap.png", title=f"{preset.name}: gene kinetics"),
        "markers_plot": save_gene_curves(decoded, _genes_to_draw(markers, kinetics), folder / "markers.png"),
        "genes": write_csv(decoded.gene_frame(), folder / "genes.csv", index=True),
        "path": write_csv(_path_frame(trajectory), folder / "path.csv"),
    }
    files |= {name: write_csv(table, folder / f"{name}.csv") for name, table in tables.items()}
    metrics = {
        "lengthscale": gp.lengthscale,
        "k_used": kinetics.k_used,
        "mean_path_sd": float(trajectory.variance.sqrt().mean()),
        **{f"genes_{shape}": int((kinetics.table["shape"] == shape).sum()) for shape in ("up", "down", "transient", "flat")},
    }
    if truth is not None:
        recovered, confusion = truth.score(preset, trajectory, kinetics)
        metrics |= recovered
        if confusion is not None:
            tables["kinetics_confusion"] = confusion
            files["kinetics_confusion"] = write_csv(confusion, folder / "kinetics_confusion.csv")
    return TrajectoryResult(preset, trajectory, decoded, kinetics, files, metrics, tables)


def report_section(result: TrajectoryResult) -> Section:
    """The report's view of one trajectory: its figures, its tables, and what the numbers mean."""
    m, preset = result.metrics, result.preset
    anchors = result.trajectory.anchors
    lines = [
        f"{preset.description}. GP through {len(anchors.t)} anchor point(s) ({anchors.mode}) at stages "
        f"{', '.join(dict.fromkeys(anchors.stages))}; RBF lengthscale {m['lengthscale']:.3f} (pseudotime units). "
        f"Genes by shape: {m['genes_up']} up, {m['genes_down']} down, {m['genes_transient']} transient, "
        f"{m['genes_flat']} flat (k-Shape with k={m['k_used']}).",
    ]
    if "strip" in result.files:
        lines.append(
            "The strip shows decoded images along the path (top) and their pixel spread over paths drawn from the "
            "GP posterior (bottom); the heatmap the z-normalised decoded expression of each cluster's top genes."
        )
    else:
        lines.append(
            "The heatmap shows the z-normalised decoded expression of each cluster's top genes; the curves "
            "their decoded expression with ±2 sd over paths drawn from the GP posterior."
        )
    markers = result.tables.get("markers")
    if markers is not None:
        lines.append(marker_sentence(markers))
    if "pseudotime_spearman" in m:
        recovered = (
            "Ground truth: Spearman between position on the path and true pseudotime of the nearest cells "
            f"{m['pseudotime_spearman']:.3f}"
        )
        if "ari_shapes" in m:
            recovered += (
                f"; k-Shape vs true kinetics: ARI {m['ari_clusters']:.3f} (clusters), {m['ari_shapes']:.3f} (shape names), "
                f"shape right for {m['shape_accuracy']:.1%} of {m['genes_compared']} genes by their cluster's name, "
                f"{m['curve_shape_accuracy']:.1%} by their own curve"
            )
        lines.append(recovered + ".")
    figures = [result.files[key] for key in ("strip", "gif", "heatmap", "markers_plot") if key in result.files]
    return Section(f"Trajectory: {preset.name}", "\n\n".join(lines), figures, result.tables)


def marker_table(preset: TrajectoryPreset, kinetics: GeneKinetics) -> pd.DataFrame:
    """The preset's known markers (those the model keeps): expected shape, the shape of the gene's own
    decoded curve, and the name of its k-Shape cluster (which, being shift-invariant, can file a
    transient gene's falling edge with the `down` genes)."""
    table = kinetics.table.set_index("gene")
    columns = ["gene", "expected", "curve", "agrees", "cluster_shape", "cluster", "change", "net_change"]
    rows = [
        {
            "gene": gene,
            "expected": expected,
            "curve": table.at[gene, "gene_shape"],
            "agrees": table.at[gene, "gene_shape"] == expected,
            "cluster_shape": table.at[gene, "shape"],
            "cluster": int(table.at[gene, "cluster"]),
            "change": float(table.at[gene, "change"]),
            "net_change": float(table.at[gene, "net_change"]),
        }
        for gene, expected in preset.expected_markers.items()
        if gene in table.index
    ]
    return pd.DataFrame(rows, columns=columns)


def marker_sentence(markers: pd.DataFrame) -> str:
    """'Known markers along the decoded path: CD34 down, LYZ up, …; 5 of 6 agree with the expected shape.'"""
    found = [f"{r.gene} {r.curve}{'' if r.agrees else f' (expected {r.expected})'}" for r in markers.itertuples()]
    agree = int(markers["agrees"].astype(bool).sum())
    return f"Known markers along the decoded path: {', '.join(found)}; {agree} of {len(markers)} agree with the expected shape."


def _genes_to_draw(markers: pd.DataFrame, kinetics: GeneKinetics, n: int = 8) -> list[str]:
    """The known markers when the model keeps some, else the top-ranked gene of each cluster."""
    if len(markers):
        return list(markers["gene"][:n])
    top = kinetics.table[(kinetics.table["rank"] == 1) & (kinetics.table["cluster"] >= 0)]
    return list(top["gene"][:n])


def _path_frame(trajectory: Trajectory) -> pd.DataFrame:
    mean = trajectory.mean.numpy()
    frame = pd.DataFrame(mean, columns=[f"z{i}" for i in range(mean.shape[1])])
    frame.insert(0, "pseudotime", trajectory.t.numpy())
    frame.insert(1, "mean_variance", trajectory.variance.mean(1).numpy())
    return frame

