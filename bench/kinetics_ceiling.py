"""What the cells themselves allow: gene kinetics read from the synthetic world's RNA along its *true* pseudotime.

No model, no latent, no path: for each lineage, the log-normalised expression of the k cells nearest each of 100
steps of the true pseudotime (k = a tenth of the lineage's cells, as the data path's quantiles), averaged; a gene is
flat or changed against the standard error of those cells' mean, and named by its own curve, with the same rule as
`wbcvae.trajectory.kinetics`. Its ARI against the true kinetics is the ceiling a decoded path can reach with that
many cells (a model can go beyond it only by pooling cells of other lineages or times).

    python bench/kinetics_ceiling.py demo/world
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
from sklearn.metrics import adjusted_rand_score
from sklearn.neighbors import NearestNeighbors

from wbcvae.data.rna import read_rna
from wbcvae.trajectory.expression import CellExpression, cell_expression, local_standard_error
from wbcvae.trajectory.kinetics import SHAPES, cluster_kinetics

LINEAGES = ("granulocytic", "monocytic")


def ceiling(world: str, steps: int = 100, quantiles: int = 10) -> pd.DataFrame:
    adata = read_rna(world)
    genes = list(adata.var_names)
    expression = cell_expression(adata, None, genes)
    rows = []
    for lineage in LINEAGES:
        cells = np.flatnonzero(adata.obs["lineage"].astype(str).to_numpy() == lineage)
        t = adata.obs["pseudotime"].to_numpy(float)[cells, None]
        grid = np.linspace(0, 1, steps)[:, None]
        k = max(2, len(cells) // quantiles)
        _, nearest = NearestNeighbors(n_neighbors=k).fit(t).kneighbors(grid)
        values = expression.log_normalised(cells, genes)
        trend = np.stack([values[n].mean(0) for n in nearest])
        lineage_cells = CellExpression(expression.counts[cells], expression.totals[cells], expression.genes)
        se = local_standard_error(grid, t, lineage_cells, genes, k)
        kinetics = cluster_kinetics(trend, genes, grid[:, 0], se).table.set_index("gene").loc[genes]
        truth = adata.var[f"kinetic_{lineage}"].astype(str).to_numpy()
        called = kinetics["gene_shape"].to_numpy()
        rows.append(
            {
                "lineage": lineage,
                "cells": len(cells),
                "ari_curves": adjusted_rand_score(truth, called),
                "curve_shape_accuracy": float((truth == called).mean()),
                **{f"{kind}_recall": float((called[truth == kind] == kind).mean()) for kind in SHAPES},
            }
        )
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("world", help="a synthetic world folder (wbcvae data synth)")
    args = parser.parse_args()
    print(ceiling(args.world).round(3).to_string(index=False))


if __name__ == "__main__":
    main()
