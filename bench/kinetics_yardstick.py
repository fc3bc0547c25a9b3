"""Which yardstick calls a gene flat or changed: the shipped one against an earlier release's and a looser one.

The data path of each preset is fitted and decoded once (as `wbcvae trajectory` does), then its genes are
called flat or changed three ways, every changed gene named by its own curve as shipped:

- `shipped`: some two steps differ by more than z sds of their difference, the per-step sd combining
  the spread of cells drawn along the path (a posterior path plus the cells' scatter around it) with the
  standard error of the real cells' mean near that step; z for 5 % over the pairs of steps.
- `range vs its ends (two releases ago)`: the same sd, but only the curve's highest and lowest steps
  compared; z for 5 % over the steps.
- `mean only`: as shipped, without the cells' scatter: the uncertainty of the mean curve alone (posterior
  paths and the cells' standard error).

Synthetic presets are scored against the world's true kinetics; the van Galen path (HSC → Mono, the
demo's `real_rna` stage) against its 17 known markers.

    python bench/kinetics_yardstick.py --demo demo
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import demo_paths
import numpy as np
import pandas as pd
from scipy.stats import norm
from sklearn.metrics import adjusted_rand_score

from wbcvae.trajectory.decode import decode_path
from wbcvae.trajectory.expression import local_standard_error
from wbcvae.trajectory.gp import MAX_LENGTHSCALE, LatentPathGP, Trajectory
from wbcvae.trajectory.kinetics import FLAT, changed_genes, gene_shapes, znormalise
from wbcvae.trajectory.presets import MARROW_MONOCYTE_MARKERS
from wbcvae.trajectory.run import TrajectorySettings, quantile_size


def calls(result, cells: demo_paths.TrajectoryInputs, settings: TrajectorySettings) -> dict[str, pd.Series]:
    """Per yardstick, each gene's kinetic (up / down / transient / flat) along the result's decoded path."""
    trajectory, decoded = result.trajectory, result.decoded
    neighbours = quantile_size(cells.classes, cells.expression, result.preset, settings)
    cells_se = local_standard_error(trajectory.mean.numpy(), cells.latent, cells.expression, decoded.gene_names, neighbours)
    shipped = np.hypot(decoded.gene_std, cells_se)
    gp = LatentPathGP(trajectory.anchors, fit_iters=settings.fit_iters, lengthscale_bounds=(settings.min_lengthscale, MAX_LENGTHSCALE))
    paths = gp.sample(trajectory.t.double(), settings.samples, settings.seed)
    posterior = Trajectory(trajectory.name, trajectory.t, trajectory.mean, trajectory.variance, paths, trajectory.anchors)
    mean_only = np.hypot(decode_path(posterior, None, cells.gene_decoder, cells.gene_names).gene_std, cells_se)
    steps, curves, level = len(trajectory.t), decoded.genes, settings.flat_level
    genes = np.arange(curves.shape[1])
    range_sd = np.hypot(shipped[curves.argmax(0), genes], shipped[curves.argmin(0), genes])
    changed = {
        "shipped": changed_genes(curves, shipped, level)[2],
        "range vs its ends (two releases ago)": np.ptp(curves, 0) > norm.ppf(1 - level / (2 * steps)) * range_sd,
        "mean only": changed_genes(curves, mean_only, level)[2],
    }
    z = znormalise(curves.T)
    return {label: pd.Series(gene_shapes(z, moving), index=decoded.gene_names) for label, moving in changed.items()}

def synthetic_rows(demo: Path, settings: TrajectorySettings, out: Path) -> list[dict]:
    cells = demo_paths.synthetic(demo)
    rows = []
    for name in demo_paths.SYNTHETIC:
        result = cells.run(name, settings, out)
        truth_column = cells.truth.gene_kinetics[f"kinetic_{result.preset.lineage}"]
        for label, called in calls(result, cells, settings).items():
            true = truth_column.reindex(called.index).astype(str)
            rows.append({"path": name, "yardstick": label, "ARI": round(adjusted_rand_score(true, called), 3),
                         "kinetic right": f"{(called == true).mean():.1%}",
                         "transient found": f"{(called[true == 'transient'] == 'transient').mean():.1%}",
                         "flat genes called changed": f"{(called[true == 'flat'] != FLAT).mean():.1%}"})
    return rows


def van_galen_rows(demo: Path, settings: TrajectorySettings, out: Path) -> list[dict]:
    cells, preset = demo_paths.van_galen(demo)
    result = cells.run(preset, settings, out)
    rows = []
    for label, called in calls(result, cells, settings).items():
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
        print(pd.DataFrame(synthetic_rows(args.demo, settings, Path(out))).to_string(index=False), end="\n\n", flush=True)
        if (args.demo / "real_rna/stage.json").exists():
            print(pd.DataFrame(van_galen_rows(args.demo, settings, Path(out))).to_string(index=False))


if __name__ == "__main__":
    main()
