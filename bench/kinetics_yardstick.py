"""Which yardstick calls a gene flat or changed, and which rule names a changed gene's shape: the shipped ones
against others.

The data path of each preset is fitted and decoded once (as `wbcvae trajectory` does), then its genes are
called flat or changed three ways, every changed gene named by its own curve as shipped:

- `shipped`: some two steps differ by more than z sds of their difference, the per-step sd combining
  the spread of cells drawn along the path (a posterior path plus the cells' scatter around it) with the
  standard error of the real cells' mean near that step; z for 5 % over the pairs of steps.
- `range vs its ends (two releases ago)`: the same sd, but only the curve's highest and lowest steps
  compared; z for 5 % over the steps.
- `mean only`: as shipped, without the cells' scatter: the uncertainty of the mean curve alone (posterior
  paths and the cells' standard error).

Then the genes the shipped yardstick calls changed are named up, down or transient five ways:

- `shipped`: transient when the curve rises above (or dips below) both ends by more than half its net
  change (`kinetics.shape_of`, `TRANSIENT_RATIO`);
- the same with a quarter, and with all, of the net change;
- `both legs beyond the shipped spread`: transient when the curve rises into some step and falls after it (or
  dips and recovers) by more than z sds of each difference, the shipped sd and z of the flat-or-changed call;
  else up or down as its most significant change. The ratio is a threshold; this rule asks the question of the
  flat-or-changed call of each leg instead;
- `both legs beyond the mean curve's uncertainty`: the same with the `mean only` sd: is the mean curve's bump
  real, however much the cells scatter around it.

Synthetic presets are scored against the world's true kinetics; the van Galen path (HSC → Mono, the
demo's `real_rna` stage) against its 17 known markers, each miss with its bump beyond both ends as a share of its
net change (transient beyond 0.5 as shipped).

    python bench/kinetics_yardstick.py --demo demo
    python bench/kinetics_yardstick.py --demo runs/kinetics_world   # after `make kinetics-world`
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import dataclass
from pathlib import Path

import demo_paths
import numpy as np
import pandas as pd
from scipy.stats import norm
from sklearn.metrics import adjusted_rand_score

from wbcvae.trajectory.decode import decode_path
from wbcvae.trajectory.expression import local_standard_error
from wbcvae.trajectory.gp import MAX_LENGTHSCALE, LatentPathGP, Trajectory
from wbcvae.trajectory.kinetics import (
    FLAT, TRANSIENT_RATIO, bump_share, change_threshold_z, changed_genes, gene_shapes, shape_of, standardised_differences, znormalise,
)  # fmt: skip
from wbcvae.trajectory.presets import MARROW_MONOCYTE_MARKERS
from wbcvae.trajectory.run import TrajectorySettings, quantile_size


@dataclass
class Spreads:
    """What the rules read of one decoded path: its per-step sds (steps × genes) and the genes the shipped ones call changed."""

    shipped: np.ndarray  # cells drawn along the path (posterior paths and the cells' scatter), and the cells' standard error
    mean_only: np.ndarray  # posterior paths alone, and the cells' standard error
    changed: np.ndarray  # per gene: changed by the shipped sd (the genes every shape rule names)


def spreads(result, cells: demo_paths.TrajectoryInputs, settings: TrajectorySettings) -> Spreads:
    trajectory, decoded = result.trajectory, result.decoded
    neighbours = quantile_size(cells.classes, cells.expression, result.preset, settings)
    cells_se = local_standard_error(trajectory.mean.numpy(), cells.latent, cells.expression, decoded.gene_names, neighbours)
    gp = LatentPathGP(trajectory.anchors, fit_iters=settings.fit_iters, lengthscale_bounds=(settings.min_lengthscale, MAX_LENGTHSCALE))
    paths = gp.sample(trajectory.t.double(), settings.samples, settings.seed)
    posterior = Trajectory(trajectory.name, trajectory.t, trajectory.mean, trajectory.variance, paths, trajectory.anchors)
    mean_only = decode_path(posterior, None, cells.gene_decoder, cells.gene_names).gene_std
    shipped = np.hypot(decoded.gene_std, cells_se)
    return Spreads(shipped, np.hypot(mean_only, cells_se), changed_genes(decoded.genes, shipped, settings.flat_level)[2])


def yardsticks(curves: np.ndarray, spread: Spreads, level: float) -> dict[str, list[str]]:
    """Per yardstick, each gene's kinetic (up / down / transient / flat) along a decoded path (steps × genes)."""
    steps, genes = curves.shape
    range_sd = np.hypot(spread.shipped[curves.argmax(0), np.arange(genes)], spread.shipped[curves.argmin(0), np.arange(genes)])
    changed = {
        "shipped": spread.changed,
        "range vs its ends (two releases ago)": np.ptp(curves, 0) > norm.ppf(1 - level / (2 * steps)) * range_sd,
        "mean only": changed_genes(curves, spread.mean_only, level)[2],
    }
    z = znormalise(curves.T)
    return {label: gene_shapes(z, moving) for label, moving in changed.items()}


def shape_rules(curves: np.ndarray, spread: Spreads, level: float) -> dict[str, list[str]]:
    """Per shape rule, each gene's kinetic, the genes called changed by the shipped yardstick."""
    moving, z = spread.changed, change_threshold_z(len(curves), level)
    shapes = znormalise(curves.T)
    rules = {f"transient beyond {ratio} of the net change{' (shipped)' if ratio == TRANSIENT_RATIO else ''}":
             [shape_of(row, transient_ratio=ratio) if m else FLAT for row, m in zip(shapes, moving)] for ratio in (0.25, TRANSIENT_RATIO, 1.0)}  # fmt: skip
    rules["both legs beyond the shipped spread"] = legs_beyond_spread(curves, spread.shipped, moving, z)
    rules["both legs beyond the mean curve's uncertainty"] = legs_beyond_spread(curves, spread.mean_only, moving, z)
    return rules


def legs_beyond_spread(curves: np.ndarray, spread: np.ndarray, moving: np.ndarray, z: float) -> list[str]:
    """Each gene of a steps × genes matrix named by its significant changes: transient when it rises into some step
    and falls after it (or falls and rises) by more than `z` sds of each difference; else up or down as its most
    significant change; flat unless `moving`."""
    steps = len(curves)
    later = np.triu(np.ones((steps, steps), bool), 1)[..., None]  # [i, j]: step j after step i
    shapes = []
    for _, rise in standardised_differences(curves, spread):  # rise[i, j]: from step i to step j
        up, down = np.where(later, rise, -np.inf), np.where(later, -rise, -np.inf)
        into, after = up.max(0), up.max(1)  # best rise into / after each step
        fall_into, fall_after = down.max(0), down.max(1)
        bump = np.maximum(np.minimum(into, fall_after).max(0), np.minimum(fall_into, after).max(0))
        pairs = np.where(later, rise, 0.0).reshape(steps * steps, -1)
        strongest = pairs[np.abs(pairs).argmax(0), np.arange(pairs.shape[1])]
        shapes += ["transient" if b > z else "up" if s > 0 else "down" for b, s in zip(bump, strongest)]
    return [shape if m else FLAT for shape, m in zip(shapes, moving)]


CALLS = {"flat or changed": yardsticks, "shape of a changed gene": shape_rules}


def calls(result, cells: demo_paths.TrajectoryInputs, settings: TrajectorySettings) -> list[tuple[str, str, pd.Series]]:
    """(call, rule, each gene's kinetic) for every rule of `CALLS` on the result's decoded path."""
    decoded, spread = result.decoded, spreads(result, cells, settings)
    return [(call, label, pd.Series(called, index=decoded.gene_names))
            for call, rules in CALLS.items() for label, called in rules(decoded.genes, spread, settings.flat_level).items()]  # fmt: skip


def synthetic_rows(demo: Path, settings: TrajectorySettings, out: Path) -> list[dict]:
    cells = demo_paths.synthetic(demo)
    rows = []
    for name in demo_paths.SYNTHETIC:
        result = cells.run(name, settings, out)
        truth_column = cells.truth.gene_kinetics[f"kinetic_{result.preset.lineage}"]
        for call, label, called in calls(result, cells, settings):
            true = truth_column.reindex(called.index).astype(str)
            rows.append({"call": call, "path": name, "rule": label, "ARI": round(adjusted_rand_score(true, called), 3),
                         "kinetic right": f"{(called == true).mean():.1%}",
                         "transient found": f"{(called[true == 'transient'] == 'transient').mean():.1%}",
                         "flat genes called changed": f"{(called[true == 'flat'] != FLAT).mean():.1%}"})  # fmt: skip
    return rows


def van_galen_rows(demo: Path, settings: TrajectorySettings, out: Path) -> list[dict]:
    cells, preset = demo_paths.van_galen(demo)
    result = cells.run(preset, settings, out)
    rows = []
    curves = pd.DataFrame(result.decoded.genes, columns=result.decoded.gene_names)
    for call, label, called in calls(result, cells, settings):
        misses = [g for g, expected in MARROW_MONOCYTE_MARKERS.items() if g in called and called[g] != expected]
        rows.append({"call": call, "path": preset.name, "rule": label,
                     "markers right": f"{len(MARROW_MONOCYTE_MARKERS) - len(misses)} of {len(MARROW_MONOCYTE_MARKERS)}",
                     "misses (bump / net change)": ", ".join(f"{g} {called[g]} ({bump_share(curves[g].to_numpy()):.2f})" for g in misses),
                     "genes changed": int((called != FLAT).sum()), "transient": int((called == "transient").sum())})  # fmt: skip
    return rows


def print_by_call(rows: list[dict]) -> None:
    for call, table in pd.DataFrame(rows).groupby("call", sort=False):
        print(f"{call}:", table.drop(columns="call").to_string(index=False), sep="\n", end="\n\n", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, default=Path("demo"), help="a `make demo` output folder")
    args = parser.parse_args()
    settings = TrajectorySettings(compare_chord=False)
    with tempfile.TemporaryDirectory() as out:
        print_by_call(synthetic_rows(args.demo, settings, Path(out)))
        if (args.demo / "real_rna/stage.json").exists():
            print_by_call(van_galen_rows(args.demo, settings, Path(out)))


if __name__ == "__main__":
    main()
