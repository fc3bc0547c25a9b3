"""Ground-truth recovery on the synthetic world: did the decoded path find the hidden programme?

Two numbers per trajectory:
- Spearman ρ between the position along the path (step index) and the true pseudotime of the cells
  nearest to each step in the latent space (1 = the path walks the maturation in the right order);
- adjusted Rand index between the genes' called kinetics and their true kinetics on the path's
  lineage. A gene's kinetic is named by its own decoded curve (flat, up, down, transient):
  `ari_curves`, the fraction right (`curve_shape_accuracy`) and per true kinetic the share of its
  genes called so (`transient_recall`, …). k-Shape's clusters are scored beside: their ids
  (`ari_clusters`: k-Shape may split one kinetic into early and late clusters), the shape names
  given to clusters (`ari_shapes`) and the fraction of genes whose cluster's name is right
  (`shape_accuracy`). k-Shape compares shapes up to a shift, so it can file a transient gene's
  rising or falling edge with the up or down genes: its clusters group genes by shape and timing
  for the driver lists, the curves name each gene's kinetic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import spearmanr
from sklearn.metrics import adjusted_rand_score
from sklearn.neighbors import NearestNeighbors

from wbcvae.errors import InputError
from wbcvae.trajectory.gp import Trajectory
from wbcvae.trajectory.kinetics import SHAPES, GeneKinetics
from wbcvae.trajectory.presets import TrajectoryPreset
from wbcvae.vocabulary import LINEAGES


def pseudotime_spearman(path_latent: np.ndarray, cell_latent: np.ndarray, cell_pseudotime: np.ndarray, k: int = 10) -> float:
    """Spearman ρ between step index and the mean true pseudotime of each step's k nearest cells."""
    keep = np.isfinite(cell_pseudotime)
    if keep.sum() < 2:
        raise InputError("fewer than 2 cells with a known pseudotime: nothing to compare the path with")
    k = min(k, int(keep.sum()))
    _, nearest = NearestNeighbors(n_neighbors=k).fit(cell_latent[keep]).kneighbors(np.asarray(path_latent))
    nearest_time = cell_pseudotime[keep][nearest].mean(1)
    if np.ptp(nearest_time) == 0:
        return 0.0  # the whole path sits among the same cells: no order recovered
    return float(spearmanr(np.arange(len(nearest_time)), nearest_time).statistic)


def kinetics_agreement(kinetics: GeneKinetics, true_kinetic: pd.Series) -> tuple[dict[str, float], pd.DataFrame]:
    """ARIs and shape accuracy against `true_kinetic` (gene → up/down/transient/flat), and the
    confusion table (true kinetic × the kinetic called from the gene's own curve) over the genes both know."""
    table = kinetics.table.set_index("gene")
    genes = table.index.intersection(true_kinetic.index)
    if len(genes) == 0:
        raise InputError("no gene of the decoded path has a ground-truth kinetic (gene names differ?)")
    truth = true_kinetic.loc[genes].astype(str)
    shapes, clusters, curves = table.loc[genes, "shape"], table.loc[genes, "cluster"], table.loc[genes, "gene_shape"]
    metrics = {
        "ari_curves": float(adjusted_rand_score(truth, curves)),
        "curve_shape_accuracy": float((truth == curves).mean()),
        "ari_clusters": float(adjusted_rand_score(truth, clusters)),
        "ari_shapes": float(adjusted_rand_score(truth, shapes)),
        "shape_accuracy": float((truth == shapes).mean()),
        "genes_compared": int(len(genes)),
        # Of the genes with each true kinetic, the share whose own curve is called so.
        **{f"{kind}_recall": float((curves[truth == kind] == kind).mean()) for kind in SHAPES if (truth == kind).any()},
    }
    confusion = pd.crosstab(truth.rename("true_kinetic"), curves.rename("called_kinetic"))
    return metrics, confusion.reset_index()


@dataclass
class GroundTruth:
    """What the synthetic world knows: cells in the latent space with their lineage and true
    pseudotime, and each gene's kinetic per lineage (columns `kinetic_<lineage>`, genes as index)."""

    latent: np.ndarray
    lineage: np.ndarray
    pseudotime: np.ndarray
    gene_kinetics: pd.DataFrame

    @classmethod
    def from_anndata(cls, latent: np.ndarray, obs: pd.DataFrame, var: pd.DataFrame) -> GroundTruth | None:
        """From a synthetic world's RNA `obs` (lineage, pseudotime) and `var`; None for real data."""
        columns = [c for c in var.columns if c.startswith("kinetic_")]
        if not {"lineage", "pseudotime"} <= set(obs.columns) or not columns:
            return None
        return cls(np.asarray(latent), obs["lineage"].astype(str).to_numpy(), obs["pseudotime"].to_numpy(float), var[columns])

    def score(
        self, preset: TrajectoryPreset, trajectory: Trajectory, kinetics: GeneKinetics
    ) -> tuple[dict[str, float], pd.DataFrame | None]:
        """Pseudotime Spearman on the preset's lineage; kinetics agreement when the path walks the whole
        lineage (a stretch of it, e.g. band → segmented, sees only part of each true kinetic)."""
        on_lineage = self.lineage == preset.lineage
        metrics = {
            "pseudotime_spearman": pseudotime_spearman(
                trajectory.mean.numpy(), self.latent[on_lineage], self.pseudotime[on_lineage]
            )
        }
        column = f"kinetic_{preset.lineage}"
        if preset.series != LINEAGES[preset.lineage].stages or column not in self.gene_kinetics:
            return metrics, None
        agreement, confusion = kinetics_agreement(kinetics, self.gene_kinetics[column])
        return metrics | agreement, confusion
