"""How near k-Shape's clusters can come to the true kinetics, on a demo's decoded curves.

The report names each gene's kinetic by its own decoded curve (`ari_curves`); k-Shape's clusters are scored beside
(`ari_clusters`, the ARI the issue measured before). This bench refits k-Shape on the same changed genes' curves
(`genes.csv`; changed as in `kinetics.csv`) in ways that could bring its clusters nearer the truth, and prints each
one's ARI against the world's true kinetics (flat genes as one more cluster, as in `metrics.json`):
- k fixed at each value of 3…8 (the shipped fit picks k in 3…6 by silhouette);
- its shifts limited to ±`w` of the 100 steps (0: plain correlation; k by silhouette as shipped): k-Shape compares
  shapes up to a shift, which can file a transient gene's rising edge with the rising genes;
- its 3 centroids started from the genes' own calls (up, down, transient), then k-Shape's iterations;
beside the shipped clusters and the genes' own calls.

    python bench/kshape_ceiling.py --demo demo
    python bench/kshape_ceiling.py --demo runs/kinetics_world
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
from sklearn.metrics import adjusted_rand_score
from threadpoolctl import threadpool_limits

from wbcvae.trajectory import kinetics
from wbcvae.trajectory.presets import PRESETS

PATHS = ("granulopoiesis", "monocytopoiesis")
SHIFT_WINDOWS = (0, 5, 20)
TRAJECTORIES = Path("alignment/alignment/version_0/trajectories")  # a pipeline folder's synthetic paths


@contextmanager
def shifts_within(window: int) -> Iterator[None]:
    """k-Shape (fit, shape extraction and silhouette distance) with its cross-correlation read only at shifts of at
    most `window` steps."""
    full = kinetics._normalised_cc

    def limited(a, b, norms_a, norms_b):
        ncc = full(a, b, norms_a, norms_b)
        shifts = np.arange(-(a.shape[1] - 1), a.shape[1])
        ncc[..., np.abs(shifts) > window] = -np.inf
        return ncc

    kinetics._normalised_cc = limited
    try:
        yield
    finally:
        kinetics._normalised_cc = full


def started_from_calls(z: np.ndarray, calls: np.ndarray) -> np.ndarray:
    """k-Shape with 3 centroids started at the z-normalised mean curve of each own-curve call (up, down, transient)."""
    init = np.stack([kinetics.znormalise(z[calls == shape].mean(0, keepdims=True))[0] for shape in ("up", "down", "transient")])
    model = kinetics._VectorisedKShape(n_clusters=3, init=init[:, :, None], random_state=0)
    with threadpool_limits(1):
        model.fit(z[:, :, None])
    return model.labels_


def path_row(folder: Path, preset: str, truth: pd.Series) -> dict:
    trajectory = folder / TRAJECTORIES / preset
    curves = pd.read_csv(trajectory / "genes.csv").drop(columns="pseudotime")
    table = pd.read_csv(trajectory / "kinetics.csv").set_index("gene").loc[curves.columns]
    truth = truth.loc[curves.columns].astype(str)
    changed = (table["cluster"] >= 0).to_numpy()
    z = kinetics.znormalise(curves.to_numpy().T)[changed]

    def ari(labels: np.ndarray) -> float:
        full = np.full(len(truth), -1)
        full[changed] = labels
        return round(adjusted_rand_score(truth, full), 3)

    row = {"path": preset, "shipped clusters": round(adjusted_rand_score(truth, table["cluster"]), 3)}
    row |= {f"k = {k}": ari(kinetics._kshape(z, k, 3, 0)[0]) for k in range(3, 9)}
    for window in SHIFT_WINDOWS:
        with shifts_within(window):
            labels, k, _ = kinetics.choose_k(z, kinetics.K_RANGE, 3, 0)
        row[f"shifts within ±{window} steps, k by silhouette"] = f"{ari(labels)} (k {k})"
    row["started from the calls"] = ari(started_from_calls(z, table["gene_shape"].to_numpy()[changed]))
    row["the genes' own calls"] = round(adjusted_rand_score(truth, table["gene_shape"]), 3)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, default=Path("demo"), help="a `make demo` or `make kinetics-world` folder")
    args = parser.parse_args()
    world = args.demo / "world" / "rna.h5ad"
    if not world.is_file() or not (args.demo / TRAJECTORIES).is_dir():
        raise SystemExit(f"{args.demo}: no {world.relative_to(args.demo)} or {TRAJECTORIES} (run `make demo` or `make kinetics-world` first)")
    var = anndata.read_h5ad(world, backed="r").var
    rows = [path_row(args.demo, preset, var[f"kinetic_{PRESETS[preset].lineage}"]) for preset in PATHS]
    print(pd.DataFrame(rows).set_index("path").T.to_string())


if __name__ == "__main__":
    main()
