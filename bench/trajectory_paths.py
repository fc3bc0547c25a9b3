"""Gene kinetics against the synthetic world's truth: the data path (DPT quantiles) beside the study's chord.

Embeds the world's RNA cells with a trained RNA β-VAE, walks each preset through the RNA latent
(genes only, no images) with `path: data`, the chord fitted beside it in the same run, and prints
both paths' recovery numbers (ARI, transient recall, shape accuracy, Spearman) and the median
correlation of the markers' decoded curves with their DPT trends.

    python bench/trajectory_paths.py --world demo/world --rna-ckpt demo/rna_vae/.../last.ckpt --out /tmp/paths

Figures and tables land in OUT/<preset>/ (paths.png: both paths over the cells; markers_dpt.png).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from wbcvae.data.rna import read_rna
from wbcvae.trajectory.decode import as_decoder
from wbcvae.trajectory.presets import PRESETS
from wbcvae.trajectory.expression import cell_expression
from wbcvae.trajectory.recovery import GroundTruth
from wbcvae.trajectory.run import TrajectorySettings, run_trajectory
from wbcvae.checkpoints import kept_genes, load_plan
from wbcvae.training.embed import EMBEDDING_KEY, embed

NUMBERS = ("ari_curves", "ari_clusters", "transient_recall", "curve_shape_accuracy", "shape_accuracy", "pseudotime_spearman", "k_used", "genes_flat")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=Path, required=True, help="synthetic world folder (wbcvae data synth)")
    parser.add_argument("--rna-ckpt", type=Path, required=True, help="RNA β-VAE trained on that world")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--presets", nargs="+", default=["granulopoiesis", "monocytopoiesis"])
    args = parser.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    cells = embed(args.rna_ckpt, args.world, args.out / "rna_latent.h5ad")
    plan, record = load_plan(args.rna_ckpt)
    genes = kept_genes(record)
    latent = cells.obsm[EMBEDDING_KEY]
    truth = GroundTruth.from_anndata(latent, cells.obs, read_rna(args.world).var)
    markers = sorted({g for name in args.presets for g in PRESETS[name].expected_markers})
    expression = cell_expression(args.world, cells.obs_names, markers)
    rows = {}
    for name in args.presets:
        result = run_trajectory(
            name, latent, cells.obs["cell_type"].astype(str).tolist(), None, as_decoder(plan.vae), genes, args.out,
            TrajectorySettings(), truth, expression=expression,
        )
        m = result.metrics
        rows[(name, "chord")] = {key: m.get(f"chord_{key}") for key in NUMBERS}
        rows[(name, "data path")] = {key: m.get(key) for key in NUMBERS} | {"dpt_corr_median": m.get("dpt_correlation_median")}
    table = pd.DataFrame.from_dict(rows, orient="index")
    print(table.to_string(float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
