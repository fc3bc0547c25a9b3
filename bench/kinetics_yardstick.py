"""Which yardstick calls a gene flat or changed: the shipped one against the last release's and a looser one.

The data path of each preset is fitted and decoded once (as `wbcvae trajectory` does), then its genes are
called flat or changed three ways, every changed gene named by its own curve as shipped:

- `shipped`: some two steps differ by more than z sds of their difference, the per-step sd combining
  the spread of cells drawn along the path (a posterior path plus the cells' scatter around it) with the
  standard error of the real cells' mean near that step; z for 5 % over the pairs of steps.
- `range vs its ends (last release)`: the same sd, but only the curve's highest and lowest steps
  compared; z for 5 % over the steps.
- `mean only`: as shipped, without the cells' scatter: the uncertainty of the mean curve alone (posterior
  paths and the cells' standard error).

Synthetic presets are scored against the world's true kinetics; the van Galen path (HSC → Mono, the
demo's `real_rna` stage) against its 17 known markers.

    python bench/kinetics_yardstick.py --demo demo
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
from scipy.stats import norm
from sklearn.metrics import adjusted_rand_score

from wbcvae.alignment.module import LabelledLatents, load_alignment
from wbcvae.checkpoints import kept_genes, load_plan
from wbcvae.data.rna import read_rna
from wbcvae.trajectory.decode import as_decoder, decode_path
from wbcvae.trajectory.expression import cell_expression, local_standard_error
from wbcvae.trajectory.gp import MAX_LENGTHSCALE, LatentPathGP, Trajectory
from wbcvae.trajectory.kinetics import FLAT, changed_genes, gene_shapes, znormalise
from wbcvae.trajectory.presets import MARROW_MONOCYTE_MARKERS, real_rna_preset
from wbcvae.trajectory.recovery import GroundTruth
from wbcvae.trajectory.run import TrajectorySettings, quantile_size, run_trajectory
from wbcvae.training.embed import EMBEDDING_KEY

SYNTHETIC = ("granulopoiesis", "monocytopoiesis")


def calls(result, latent, classes, expression, gene_decoder, gene_names, settings: TrajectorySettings) -> dict[str, pd.Series]:
    """Per yardstick, each gene's kinetic (up / down / transient / flat) along the result's decoded path."""
    trajectory, decoded = result.trajectory, result.decoded
    neighbours = quantile_size(classes, expression, result.preset, settings)
    cells_se = local_standard_error(trajectory.mean.numpy(), latent, expression, decoded.gene_names, neighbours)
    shipped = np.hypot(decoded.gene_std, cells_se)
    gp = LatentPathGP(trajectory.anchors, fit_iters=settings.fit_iters, lengthscale_bounds=(settings.min_lengthscale, MAX_LENGTHSCALE))
    paths = gp.sample(trajectory.t.double(), settings.samples, settings.seed)
    posterior = Trajectory(trajectory.name, trajectory.t, trajectory.mean, trajectory.variance, paths, trajectory.anchors)
    mean_only = np.hypot(decode_path(posterior, None, gene_decoder, gene_names).gene_std, cells_se)
    steps, curves, level = len(trajectory.t), decoded.genes, settings.flat_level
    genes = np.arange(curves.shape[1])
    range_sd = np.hypot(shipped[curves.argmax(0), genes], shipped[curves.argmin(0), genes])
    changed = {
        "shipped": changed_genes(curves, shipped, level)[2],
        "range vs its ends (last release)": np.ptp(curves, 0) > norm.ppf(1 - level / (2 * steps)) * range_sd,
        "mean only": changed_genes(curves, mean_only, level)[2],
    }
    z = znormalise(curves.T)
    return {label: pd.Series(gene_shapes(z, moving), index=decoded.gene_names) for label, moving in changed.items()}

def synthetic(demo: Path, settings: TrajectorySettings, out: Path) -> list[dict]:
    module = load_alignment(demo / "alignment/alignment/version_0/checkpoints/last.ckpt")
    world = read_rna(demo / "world")
    truth = GroundTruth.from_anndata(module.rna_latent.numpy(), world.obs, world.var)
    cells = LabelledLatents.concat([module.rna_latents(), module.image_latents])
    expression = cell_expression(world, None, module.gene_names).padded(len(cells.latent))
    gene_decoder = as_decoder(module.rna_plan.vae)
    rows = []
    for name in SYNTHETIC:
        result = run_trajectory(name, cells.latent, cells.classes, None, gene_decoder, module.gene_names, out, settings, truth,
                                cells.modality, expression)
        truth_column = truth.gene_kinetics[f"kinetic_{result.preset.lineage}"]
        for label, called in calls(result, cells.latent, cells.classes, expression, gene_decoder, module.gene_names, settings).items():
            true = truth_column.reindex(called.index).astype(str)
            rows.append({"path": name, "yardstick": label, "ARI": round(adjusted_rand_score(true, called), 3),
                         "kinetic right": f"{(called == true).mean():.1%}",
                         "transient found": f"{(called[true == 'transient'] == 'transient').mean():.1%}",
                         "flat genes called changed": f"{(called[true == 'flat'] != FLAT).mean():.1%}"})
    return rows


def van_galen(demo: Path, settings: TrajectorySettings, out: Path) -> list[dict]:
    stage = json.loads((demo / "real_rna/stage.json").read_text())
    cells = anndata.read_h5ad(demo / "real_rna/rna_latent.h5ad")  # latents (`wbcvae embed`), not counts
    plan, record = load_plan(stage["checkpoint"])
    genes = kept_genes(record)
    preset = real_rna_preset(stage["path"])
    classes = cells.obs["cell_type"].astype(object).fillna("").astype(str).tolist()
    expression = cell_expression(stage["source"], cells.obs_names, [*genes, *preset.expected_markers])
    gene_decoder = as_decoder(plan.vae)
    latent = cells.obsm[EMBEDDING_KEY]
    result = run_trajectory(preset, latent, classes, None, gene_decoder, genes, out, settings, expression=expression)
    rows = []
    for label, called in calls(result, latent, classes, expression, gene_decoder, genes, settings).items():
        misses = {g: called[g] for g, expected in MARROW_MONOCYTE_MARKERS.items() if g in called and called[g] != expected}
        rows.append({"path": preset.name, "yardstick": label, "markers right": f"{len(MARROW_MONOCYTE_MARKERS) - len(misses)} of {len(MARROW_MONOCYTE_MARKERS)}",
                     "misses": ", ".join(f"{g} {shape}" for g, shape in misses.items()), "genes changed": int((called != FLAT).sum())})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, default=Path("demo"), help="a `make demo` output folder")
    args = parser.parse_args()
    settings = TrajectorySettings(compare_chord=False)
    with tempfile.TemporaryDirectory() as out:
        print(pd.DataFrame(synthetic(args.demo, settings, Path(out))).to_string(index=False), end="\n\n", flush=True)
        if (args.demo / "real_rna/stage.json").exists():
            print(pd.DataFrame(van_galen(args.demo, settings, Path(out))).to_string(index=False))


if __name__ == "__main__":
    main()
