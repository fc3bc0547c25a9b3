"""How well the segmenters find the white cell: against true masks on the synthetic world, and by
reference-free checks on real PBC crops (which have no true masks here).

1. Synthetic world, held-out crops (the config's validation split, never trained on), at the model's
   input size, IoU against the world's true masks:
   - the classical stain segmenter, `v2` (colour unmixing, the default) and `v1` (the first version,
     its baseline), cell and nucleus, overall and per class;
   - Mask R-CNN (ResNet-18-FPN, random init) trained briefly on CPU with experiments/segmentation/cpu.yaml:
     the cell mask of the central detection (0 where it detects nothing), and how box-shaped its masks
     are (mask area over box area: a disc fills 0.79 of its box, a box-shaped mask 1.0);
   - the masks the image loss sees (`wbcvae features`' stored mask, classical where it finds a nucleus).
2. Real PBC crops (`--pbc`, `--per-class` of each class, 128 px): v1 against v2 on signs of a wrong mask
   that need no truth (wbcvae.segmentation.metrics.mask_checks): solidity (leaks into red cells and bites
   into pale cytoplasm lower it), red-cell pixels inside the cell (pixels coloured like a red cell by a
   fixed colour rule, independent of both segmenters), masks touching the crop border, cell area, time.

    python bench/segmentation_quality.py [--world runs/bench/world] [--checkpoint CKPT] [--out runs/bench/segment]
                                         [--pbc ../shared/data/pbc_sample] [--per-class 20]

Without --checkpoint it trains one (a few minutes on 2 cores); without an existing world it writes one
(16 crops per class, 128 px, seed 0). Tables are printed and written to <out>/segmentation_quality.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from wbcvae.data.image_dataset import CropDataset, split_manifest
from wbcvae.data.images import read_manifest
from wbcvae.data.synthetic.world import write_world
from wbcvae.segmentation.classical import METHODS, StainSegmenter, optical_density
from wbcvae.segmentation.maskrcnn import load_maskrcnn
from wbcvae.segmentation.metrics import box_fill, classical_scores, mask_checks, maskrcnn_scores
from wbcvae.segmentation.overlay import spread_over_classes
from wbcvae.segmentation.train import load_config, train_segmentation

REPO = Path(__file__).resolve().parents[1]


def red_cell_pixels(image: np.ndarray) -> np.ndarray:
    """Pixels coloured like a red cell in MGG by a fixed rule: stained (total optical density above 0.8)
    with a blue share of at least 0.37 (haemoglobin absorbs blue; nuclei and most white-cell cytoplasm,
    about 0.18 and 0.25-0.35, absorb green and red more). Independent of either segmenter, but the
    palest neutrophil cytoplasm (blue share up to ~0.37) trips it too: compare methods, not classes."""
    density = optical_density(image)
    total = density.sum(axis=-1)
    return (total > 0.8) & (density[..., 2] >= 0.37 * total)


def synthetic_scores(module, crops: CropDataset, segmenters: dict[str, StainSegmenter]) -> pd.DataFrame:
    """Per held-out crop: IoU of each classical method, of the Mask R-CNN central mask, and of the stored mask."""
    rows = {name: classical_scores(crops, segmenter).add_prefix(f"{name}_") for name, segmenter in segmenters.items()}
    frame = pd.concat(rows.values(), axis=1)
    learned = maskrcnn_scores(module, crops)
    frame["maskrcnn_iou_cell"] = learned["iou_cell"].to_numpy()
    frame["maskrcnn_box_fill"] = learned["box_fill"].to_numpy()
    frame["maskrcnn_detected"] = learned["detected"].to_numpy()
    found = frame["v2_iou_cell"].notna()  # the stored mask: classical v2 where it finds a nucleus, else the detection's
    frame["stored_iou_cell"] = np.where(found, frame["v2_iou_cell"], frame["maskrcnn_iou_cell"])
    frame["label"] = list(crops.frame["label"])
    return frame


def real_checks(source: Path, per_class: int, segmenters: dict[str, StainSegmenter], size: int = 128) -> pd.DataFrame:
    """Per crop and method: `mask_checks`, red-cell pixel share of the cell, cell area share, seconds."""
    frame = read_manifest(source).frame
    frame = spread_over_classes(frame, per_class * frame["label"].nunique(), seed=0)
    crops = CropDataset(frame, size)
    images = [crops[i]["image"].permute(1, 2, 0).numpy() for i in range(len(crops))]
    rows = []
    for name, segmenter in segmenters.items():
        for image, label in zip(images, frame["label"]):
            started = time.perf_counter()
            found = segmenter(image)
            seconds = time.perf_counter() - started
            red = red_cell_pixels(image) & found.cell & ~found.nucleus
            rows.append({
                "method": name, "label": label, **mask_checks(found.cell, found.nucleus),
                "red_cell_share": red.sum() / max(found.cell.sum(), 1), "area": found.cell.mean(), "ms": 1000 * seconds,
            })
    return pd.DataFrame(rows)


def markdown(frame: pd.DataFrame, digits: int = 3) -> str:
    header = "| " + " | ".join([frame.index.name or "", *map(str, frame.columns)]) + " |"
    lines = [header, "|" + "---|" * (len(frame.columns) + 1)]
    for index, row in frame.iterrows():
        lines.append("| " + " | ".join([str(index), *(f"{v:.{digits}f}" if isinstance(v, float) else str(v) for v in row)]) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=Path, default=Path("runs/bench/world"))
    parser.add_argument("--checkpoint", type=Path, help="a trained Mask R-CNN; trained here when omitted")
    parser.add_argument("--config", type=Path, default=REPO / "experiments/segmentation/cpu.yaml")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/segment"))
    parser.add_argument("--pbc", type=Path, default=REPO.parent / "shared/data/pbc_sample", help="real crops (skipped if absent)")
    parser.add_argument("--per-class", type=int, default=20, help="real crops per class")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared 2-core box)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    segmenters = {name: StainSegmenter(method=name) for name in METHODS}

    if not (args.world / "manifest.csv").is_file():
        write_world(args.world, cells_per_class=16, rna_cells=26, n_genes=50, crop_size=128, seed=0)
    config = load_config(args.config)
    config.update(source=str(args.world), out=str(args.out))
    checkpoint = args.checkpoint or train_segmentation(config)
    module = load_maskrcnn(checkpoint).eval()
    size = int(module.hparams.input_size)
    _, held_out, _ = split_manifest(read_manifest(args.world).frame, config["data"]["fractions"], config["seed"])
    scores = synthetic_scores(module, CropDataset(held_out, size), segmenters)
    quality = Path(checkpoint).parent / "quality.json"
    trained = json.loads(quality.read_text()) if quality.is_file() else {}

    columns = [f"{name}_iou_cell" for name in METHODS] + ["maskrcnn_iou_cell", "stored_iou_cell"]
    summary = pd.DataFrame({
        "cell IoU (mean)": scores[columns].mean().values,
        "cell IoU (median)": scores[columns].median().values,
        "share below 0.5": (scores[columns] < 0.5).mean().values,
    }, index=pd.Index(["classical v2", "classical v1", f"Mask R-CNN ({trained.get('steps')} steps)", "stored for the image loss"], name="segmenter"))
    summary["nucleus IoU (mean)"] = [scores[f"{name}_iou_nucleus"].mean() for name in METHODS] + [np.nan, np.nan]
    per_class = scores.groupby("label")[columns].mean()
    per_class.columns = ["v2", "v1", "Mask R-CNN", "stored"]
    print(f"\nsynthetic world {args.world}: {len(scores)} held-out crops at {size} px, IoU against true masks\n")
    print(markdown(summary))
    print(f"\nMask R-CNN detected {scores['maskrcnn_detected'].mean():.0%}; its masks fill "
          f"{scores['maskrcnn_box_fill'].mean():.2f} of their boxes (true masks: "
          f"{np.mean([box_fill(CropDataset(held_out, size)[i]['mask'][0].numpy() > 0.5) for i in range(len(held_out))]):.2f})\n")
    print(markdown(per_class.rename_axis("class (cell IoU)")))
    results = {"synthetic": {"crops": len(scores), "input_size": size, "summary": summary.reset_index().to_dict("records"),
                             "per_class": per_class.reset_index().to_dict("records"),
                             "maskrcnn": {"steps": trained.get("steps"), "train_seconds": trained.get("train_seconds"),
                                          "detected": scores["maskrcnn_detected"].mean(), "box_fill": scores["maskrcnn_box_fill"].mean()}}}

    if args.pbc.is_dir():
        checks = real_checks(args.pbc, args.per_class, segmenters)
        checks["solidity below 0.9"] = checks["solidity"] < 0.9
        checks["red cell share above 0.1"] = checks["red_cell_share"] > 0.1
        measures = ["solidity", "solidity below 0.9", "red_cell_share", "red cell share above 0.1", "touches_border", "area", "ms"]
        overall = checks.groupby("method")[measures].mean().astype(float)
        by_class = checks.pivot_table(index="label", columns="method", values=["red_cell_share", "red cell share above 0.1", "solidity below 0.9"], aggfunc="mean")
        by_class.columns = [f"{measure} ({method})" for measure, method in by_class.columns]
        print(f"\nreal crops {args.pbc}: {args.per_class} per class at 128 px, no true masks: reference-free checks\n")
        print(markdown(overall.rename_axis("method")))
        print()
        print(markdown(by_class.astype(float).rename_axis("class (share of crops)"), digits=2))
        results["real"] = {"source": str(args.pbc), "per_class": args.per_class, "overall": overall.reset_index().to_dict("records"),
                           "by_class": by_class.reset_index().to_dict("records")}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "segmentation_quality.json").write_text(json.dumps(results, indent=2, default=float))


if __name__ == "__main__":
    main()
