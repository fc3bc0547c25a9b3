"""How many waypoints a data path's start class holds: by the share of DPT it spans (shipped) or of its cells.

For each path of a `make demo` folder (or `make kinetics-world`'s `runs/kinetics_world`): the start class'
share of the path's cells and of its DPT (the 90th percentile of its cells' DPT), how well DPT orders the
start class inside (Spearman against the true pseudotime of its cells on the path's lineage; synthetic world
only), the waypoints it holds under each rule, and the path's numbers under each: Spearman against true
pseudotime, the kinetics' ARI, kinetic right and transient genes found (synthetic), markers right (van Galen).

    python bench/start_waypoints.py --demo demo
    python bench/start_waypoints.py --demo runs/kinetics_world
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import demo_paths
import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from wbcvae.trajectory.presets import PRESETS, TrajectoryPreset
from wbcvae.trajectory.pseudotime import START_EXTENT, START_WAYPOINTS, data_anchors, path_cells
from wbcvae.trajectory.run import TrajectorySettings, data_path_rows

NUMBERS = {"pseudotime_spearman": "Spearman", "ari_curves": "ARI", "curve_shape_accuracy": "right", "transient_recall": "transient found"}


def rows_for(cells: demo_paths.TrajectoryInputs, preset: TrajectoryPreset, out: Path) -> list[dict]:
    among = data_path_rows(cells.classes, cells.modality, preset)
    classes = np.asarray(cells.classes, dtype=object)
    rows = []
    for rule in START_WAYPOINTS:
        path = path_cells(cells.latent, classes, preset.series, among, start_waypoints=rule)
        start = classes[path.rows] == preset.start
        row = {"path": preset.name, "start class": preset.start, "rule": rule,
               "its cells": f"{start.mean():.0%}", "its DPT": f"{np.quantile(path.dpt[start], START_EXTENT) / path.dpt.max():.0%}",
               "its waypoints": data_anchors(cells.latent, classes, path).stages.count(preset.start)}  # fmt: skip
        if cells.truth is not None:
            on_lineage = cells.truth.lineage == preset.lineage
            blasts = np.flatnonzero(start & (path.rows < len(on_lineage)))  # RNA cells come first (the truth's rows)
            blasts = blasts[on_lineage[path.rows[blasts]]]
            row["DPT vs truth inside"] = round(spearmanr(path.dpt[blasts], cells.truth.pseudotime[path.rows[blasts]]).statistic, 2)
        metrics = cells.run(preset, TrajectorySettings(compare_chord=False, start_waypoints=rule), out).metrics
        row |= {label: round(metrics[key], 3) for key, label in NUMBERS.items() if key in metrics}
        if "markers_agree" in metrics:
            row["markers right"] = f"{metrics['markers_agree']} of {metrics['markers_compared']}"
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, default=Path("demo"), help="a `make demo` or `make kinetics-world` output folder")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as out:
        synthetic = demo_paths.synthetic(args.demo)
        for name in PRESETS:
            rows += rows_for(synthetic, PRESETS[name], Path(out))
        real = demo_paths.van_galen(args.demo)
        if real is not None:
            rows += rows_for(*real, Path(out))
    print(pd.DataFrame(rows).fillna("").to_string(index=False))


if __name__ == "__main__":
    main()
