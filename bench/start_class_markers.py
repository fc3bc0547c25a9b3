"""The start class of the demo's van Galen HSC → Mono path, cut into fifths by DPT: is CD34's rise from the
path's start the cells' or the path's?

CD34 is called transient on that path, not down: decoded and in the real cells' DPT trend alike it rises from the
path's start (the tip of the HSC cloud, where DPT is rooted) towards the cloud's bulk, and falls after. For each
fifth of the path's HSCs by DPT (`--bins`), then each later class of the path: how many cells, from which samples,
their median library (molecules), and each falling marker's mean log-normalised expression, as measured and at one
depth: its expected value when every cell is thinned at random to `--depth` molecules (cells with fewer are left
out), so that deeper cells cannot make a rise. van Galen's BM5 donor was sorted twice: BM5-34p38n holds CD34+CD38−
cells (the most primitive) and BM5-34p CD34+ cells.

    python bench/start_class_markers.py --demo demo
"""

from __future__ import annotations

import argparse
from pathlib import Path

import anndata
import demo_paths
import numpy as np
import pandas as pd
from scipy.stats import binom

from wbcvae.models.rna_vae import TARGET_SUM
from wbcvae.trajectory.pseudotime import path_cells
from wbcvae.trajectory.run import data_path_rows


def thinned_log_expression(counts: np.ndarray, totals: np.ndarray, depth: int) -> np.ndarray:
    """The expected log1p(10⁴ · k / depth) when each cell's `counts` (cells × genes, totals ≥ depth) are thinned at
    random to `depth` molecules: k ~ Binomial(count, depth / total), summed over k exactly (no draw, no noise)."""
    k = np.arange(counts.max() + 1)
    weights = binom.pmf(k, counts[..., None], (depth / totals)[:, None, None])
    return (weights * np.log1p(TARGET_SUM * k / depth)).sum(-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, default=Path("demo"), help="a `make demo` output folder with real_rna/")
    parser.add_argument("--depth", type=int, default=1500, help="molecules every cell is thinned to")
    parser.add_argument("--bins", type=int, default=5, help="DPT bins of the start class")
    args = parser.parse_args()
    loaded = demo_paths.van_galen(args.demo)
    if loaded is None:
        raise SystemExit(f"{args.demo}: no real_rna/stage.json (the demo ran without van Galen's data)")
    cells, preset = loaded
    samples = anndata.read_h5ad(args.demo / "real_rna/rna_latent.h5ad").obs["sample"].astype(str).to_numpy()
    classes = np.asarray(cells.classes, dtype=object)
    path = path_cells(cells.latent, classes, preset.series, data_path_rows(cells.classes, None, preset))
    rows, dpt, totals = path.rows, path.dpt, cells.expression.totals[path.rows]
    # The start class in DPT bins, each later class whole: in the order the path meets them.
    start = classes[rows] == preset.start
    rank = pd.Series(dpt[start]).rank(method="first").to_numpy() - 1
    group = classes[rows].astype(str)
    group[start] = [f"{preset.start} {b + 1}/{args.bins}" for b in (rank / start.sum() * args.bins).astype(int)]
    order = [f"{preset.start} {b + 1}/{args.bins}" for b in range(args.bins)] + list(preset.series[1:])
    cells_of = pd.DataFrame({
        "DPT (median)": pd.Series(dpt).groupby(group).median().round(3),
        "cells": pd.Series(group).value_counts(),
        "median library": pd.Series(totals).groupby(group).median().round(0),
    }).join(pd.crosstab(group, samples[rows])).reindex(order)  # fmt: skip
    print(f"{preset.name}: the path's cells, its start class in {args.bins} bins by DPT, and their samples\n")
    print(cells_of.to_string(), end="\n\n")

    markers = [g for g, shape in preset.expected_markers.items() if shape == "down" and g in cells.expression.genes]
    columns = pd.Index(cells.expression.genes).get_indexer(markers)
    deep = totals >= args.depth
    counts = cells.expression.counts[rows[deep]][:, columns].toarray().astype(np.int64)
    as_measured = pd.DataFrame(cells.expression.log_normalised(rows, markers), columns=markers).groupby(group).mean()
    at_depth = pd.DataFrame(thinned_log_expression(counts, totals[deep], args.depth), columns=markers).groupby(group[deep]).mean()
    print(f"the falling markers' mean log1p counts per 10,000, as measured | every cell at {args.depth} molecules"
          f" ({int(deep.sum())} of {len(rows)} cells have as many)\n")  # fmt: skip
    print(as_measured.join(at_depth, lsuffix=" ", rsuffix=f" @{args.depth}").reindex(order).round(3).to_string())


if __name__ == "__main__":
    main()
