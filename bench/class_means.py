"""What a class mean looks like: the mean picture of each class' cells (each cell on grey, inside its
mask), per feature store, side by side, and how much of the pixels' variance the class explains.

A decoded path ends at class means. When the crops show a cell at every angle, the mean of a lobed or
band-shaped nucleus is a ring; a store made with `wbcvae features --pose canonical` should give means
that still look like a cell. Compare a store made as is with one made canonical from the same crops:

    python bench/class_means.py runs/pbc_pretrained/features/pbc_train runs/pbc_pretrained/features_pose/pbc_train \
        --figure runs/class_means.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from wbcvae.features.store import FeatureStore
from wbcvae.models.image_vae import cell_on_grey
from wbcvae.vocabulary import CLASSES


def class_pictures(store: FeatureStore, batch: int = 256) -> tuple[dict[str, np.ndarray], float]:
    """Class → mean picture (3×T×T in [0, 1]), and the share of the pictures' pixel variance (over all
    cells and pixels) that the class means explain."""
    labels = store.meta["label"].to_numpy()
    usable = np.flatnonzero(np.asarray(store.array("done")).astype(bool) & np.isin(labels, CLASSES))
    sums, squares, counts = {}, 0.0, {}
    for start in range(0, len(usable), batch):
        rows = usable[start : start + batch]
        target = torch.from_numpy(np.asarray(store.array("target")[rows], dtype=np.float32) / 255)
        mask = torch.from_numpy(np.asarray(store.array("mask")[rows], dtype=np.float32))
        pictures = cell_on_grey(target, mask).double().numpy()
        squares += float((pictures**2).sum())
        for label in np.unique(labels[rows]):
            chosen = pictures[labels[rows] == label]
            sums[label] = sums.get(label, 0.0) + chosen.sum(0)
            counts[label] = counts.get(label, 0) + len(chosen)
    total = sum(counts.values())
    grand = sum(sums.values()) / total
    means = {label: sums[label] / counts[label] for label in sums}
    total_ss = squares - total * float((grand**2).sum())
    within_ss = squares - sum(counts[label] * float((means[label] ** 2).sum()) for label in means)
    return {label: means[label].astype(np.float32) for label in CLASSES if label in means}, 1 - within_ss / total_ss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stores", nargs="+", type=Path, help="feature stores (`wbcvae features`), one figure row each")
    parser.add_argument("--figure", type=Path, help="PNG of every store's class means")
    args = parser.parse_args()
    rows = []
    for root in args.stores:
        store = FeatureStore(root)
        means, explained = class_pictures(store)
        print(f"{root} (pose {store.pose}): the class explains {explained:.3f} of the pixel variance, {len(means)} classes")
        rows.append((f"{root.parent.name}/{root.name}\npose {store.pose}", means))
    if args.figure:
        from matplotlib.figure import Figure

        classes = [c for c in CLASSES if any(c in means for _, means in rows)]
        figure = Figure(figsize=(1.5 * len(classes), 1.7 * len(rows) + 0.4))
        axes = figure.subplots(len(rows), len(classes), squeeze=False)
        for (name, means), line in zip(rows, axes):
            line[0].set_ylabel(name, fontsize=7)
            for ax, label in zip(line, classes):
                if label in means:
                    ax.imshow(means[label].transpose(1, 2, 0))
                ax.set_xticks([]), ax.set_yticks([])
                ax.set_title(label.replace("_", "\n", 1), fontsize=7)
        figure.suptitle("mean picture of each class' cells", fontsize=9)
        args.figure.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(args.figure, dpi=110, bbox_inches="tight")
        print(f"wrote {args.figure}")


if __name__ == "__main__":
    main()
