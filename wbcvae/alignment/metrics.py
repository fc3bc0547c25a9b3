"""How well image and RNA latents share one space, per class (the cells are unpaired).

Three views, each answering a question a user asks of an aligned space:
- nearest-centroid accuracy: is an image cell closest to the RNA centroid of its own class?
- centroid distance ratio: how far apart are the two modalities' centroids of a class, relative to the
  distance between that class and the others (< 1: modalities closer than classes);
- mixing: inside one class, are a cell's nearest neighbours from both modalities (normalised kNN
  entropy of the modality label, 1 = perfectly mixed) and is the modality silhouette near 0?
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure
from sklearn.metrics import silhouette_score
from sklearn.neighbors import NearestNeighbors

from wbcvae.report.html import save_figure
from wbcvae.vocabulary import CLASSES


def centroids(latent: np.ndarray, groups: np.ndarray, num_groups: int) -> np.ndarray:
    """Per-group mean (P×D); rows of groups without cells are NaN."""
    out = np.full((num_groups, latent.shape[1]), np.nan)
    for g in range(num_groups):
        if np.any(groups == g):
            out[g] = latent[groups == g].mean(0)
    return out


def nearest_centroid_accuracy(image_latent: np.ndarray, image_groups: np.ndarray, rna_centroids: np.ndarray) -> float:
    """Fraction of image cells (in some pair) whose nearest RNA centroid is their own pair's."""
    keep = image_groups >= 0
    if not keep.any():
        return float("nan")
    present = np.flatnonzero(~np.isnan(rna_centroids).any(1))
    dist = np.linalg.norm(image_latent[keep, None, :] - rna_centroids[None, present, :], axis=-1)
    return float(np.mean(present[dist.argmin(1)] == image_groups[keep]))


def centroid_distance_ratio(image_centroids: np.ndarray, rna_centroids: np.ndarray) -> np.ndarray:
    """Per pair: ‖image − RNA centroid‖ / mean distance of the RNA centroid to the other RNA centroids."""
    between = np.linalg.norm(rna_centroids[:, None] - rna_centroids[None], axis=-1)
    others = np.isfinite(between) & ~np.eye(len(between), dtype=bool)
    with np.errstate(invalid="ignore", divide="ignore"):
        reference = np.where(others, between, 0.0).sum(1) / others.sum(1)  # NaN when no other class
        return np.linalg.norm(image_centroids - rna_centroids, axis=1) / reference


def modality_mixing(
    image_latent: np.ndarray, rna_latent: np.ndarray, k: int = 15, seed: int = 0
) -> tuple[float, float]:
    """(kNN modality entropy in [0, 1], modality silhouette in [−1, 1]) for the cells of one class.

    The larger modality is subsampled to the smaller's size n so that chance mixing gives entropy ≈ 1,
    and k is at most n − 1: with more neighbours than a modality has other cells, every cell would
    have to count the other modality and even fully separated modalities would look mixed.
    Returns NaNs when a modality has fewer than 2 cells.
    """
    n = min(len(image_latent), len(rna_latent))
    if n < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    pooled = np.concatenate(
        [image_latent[rng.choice(len(image_latent), n, replace=False)], rna_latent[rng.choice(len(rna_latent), n, replace=False)]]
    )
    modality = np.repeat([0, 1], n)
    k = min(k, n - 1)
    _, neighbours = NearestNeighbors(n_neighbors=k + 1).fit(pooled).kneighbors(pooled)
    share = modality[neighbours[:, 1:]].mean(1)  # fraction of RNA among each cell's neighbours
    entropy = -(_xlogx(share) + _xlogx(1 - share)) / np.log(2)
    return float(entropy.mean()), float(silhouette_score(pooled, modality))


def alignment_metrics(
    image_latent: np.ndarray,
    image_groups: np.ndarray,
    rna_latent: np.ndarray,
    rna_groups: np.ndarray,
    pair_names: Sequence[str],
    k: int = 15,
    seed: int = 0,
) -> tuple[dict[str, float], pd.DataFrame]:
    """Summary numbers (for the dashboard and metrics.json) and a per-class table."""
    p = len(pair_names)
    img_c, rna_c = centroids(image_latent, image_groups, p), centroids(rna_latent, rna_groups, p)
    ratio = centroid_distance_ratio(img_c, rna_c)
    rows = []
    for g, name in enumerate(pair_names):
        img, rna = image_latent[image_groups == g], rna_latent[rna_groups == g]
        entropy, silhouette = modality_mixing(img, rna, k=k, seed=seed)
        acc = nearest_centroid_accuracy(img, np.full(len(img), g), rna_c) if len(img) else float("nan")
        rows.append(
            {
                "class": name,
                "image_cells": len(img),
                "rna_cells": len(rna),
                "nearest_centroid_accuracy": acc,
                "centroid_distance_ratio": ratio[g],
                "mixing_entropy": entropy,
                "modality_silhouette": silhouette,
            }
        )
    table = pd.DataFrame(rows)
    summary = {
        "nearest_centroid_accuracy": nearest_centroid_accuracy(image_latent, image_groups, rna_c),
        "centroid_distance_ratio": _nanmean(table["centroid_distance_ratio"]),
        "mixing_entropy": _nanmean(table["mixing_entropy"]),
        "modality_silhouette": _nanmean(table["modality_silhouette"]),
        "chance_accuracy": 1.0 / max(1, int((~np.isnan(rna_c).any(1)).sum())),
    }
    return summary, table


def _xlogx(x: np.ndarray) -> np.ndarray:
    return np.where(x > 0, x * np.log(np.where(x > 0, x, 1.0)), 0.0)


def _nanmean(values: pd.Series) -> float:
    values = values.to_numpy(dtype=float)
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")



def save_joint_latent_plot(
    latent: np.ndarray, classes: Sequence[str], modality: Sequence[str], path: Path, max_cells: int = 4000, seed: int = 0
) -> Path:
    """PNG: the joint latent on its first two principal axes, by class (left) and by modality (right)."""
    classes, modality = np.asarray(classes, dtype=object), np.asarray(modality, dtype=object)
    if len(latent) > max_cells:
        keep = np.random.default_rng(seed).choice(len(latent), max_cells, replace=False)
        latent, classes, modality = latent[keep], classes[keep], modality[keep]
    centred = latent - latent.mean(0)
    _, _, axes_ = np.linalg.svd(centred, full_matrices=False)
    xy = centred @ axes_[:2].T
    fig = Figure(figsize=(11, 4.8))
    by_class, by_modality = fig.subplots(1, 2)
    palette = colormaps["tab20"]
    for name in sorted(set(classes), key=lambda c: CLASSES.index(c) if c in CLASSES else len(CLASSES)):
        at = classes == name
        colour = palette(CLASSES.index(name) % 20) if name in CLASSES else "lightgrey"
        by_class.scatter(xy[at, 0], xy[at, 1], s=5, color=colour, label=name or "no class")
    for name, colour in (("rna", "#4c72b0"), ("image", "#dd8452")):
        at = modality == name
        by_modality.scatter(xy[at, 0], xy[at, 1], s=5, color=colour, alpha=0.6, label=f"{name} ({at.sum()})")
    for ax, title in ((by_class, "by class"), (by_modality, "by modality")):
        ax.set(title=f"joint latent, PCA: {title}", xticks=[], yticks=[])
        ax.legend(fontsize=7, markerscale=2, loc="best")
    fig.tight_layout()
    return save_figure(fig, path)
