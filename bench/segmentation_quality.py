"""How well the two segmenters find the white cell on the synthetic world, against its true masks.

1. Classical stain segmenter (pseudo-masks): IoU of the cell and of the nucleus.
2. Mask R-CNN (ResNet-18-FPN, random init) trained briefly on CPU with experiments/segmentation/cpu.yaml:
   IoU of the cell mask of the detection nearest the centre (0 where it detects nothing).

Both are scored on the same held-out crops (the config's validation split, never trained on), at the
model's input size.

    python bench/segmentation_quality.py [--world runs/bench/world] [--checkpoint CKPT] [--out runs/bench/segment]

Without --checkpoint it trains one (a few minutes on 2 cores); without an existing world it writes one
(16 crops per class, 128 px, seed 0). Results are printed as a table and written to <out>/quality.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from wbcvae.data.image_dataset import CropDataset, split_manifest
from wbcvae.data.images import read_manifest
from wbcvae.data.synthetic.world import write_world
from wbcvae.segmentation.maskrcnn import load_maskrcnn
from wbcvae.segmentation.metrics import classical_scores, maskrcnn_scores
from wbcvae.segmentation.train import load_config, train_segmentation

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=Path, default=Path("runs/bench/world"))
    parser.add_argument("--checkpoint", type=Path, help="a trained Mask R-CNN; trained here when omitted")
    parser.add_argument("--config", type=Path, default=REPO / "experiments/segmentation/cpu.yaml")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/segment"))
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared 2-core box)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if not (args.world / "manifest.csv").is_file():
        write_world(args.world, cells_per_class=16, rna_cells=26, n_genes=50, crop_size=128, seed=0)
    config = load_config(args.config)
    config.update(source=str(args.world), out=str(args.out))
    checkpoint = args.checkpoint or train_segmentation(config)
    module = load_maskrcnn(checkpoint)
    size = int(module.hparams.input_size)

    _, held_out, _ = split_manifest(read_manifest(args.world).frame, config["data"]["fractions"], config["seed"])
    crops = CropDataset(held_out, size)
    classical = classical_scores(crops)
    learned = maskrcnn_scores(module, crops)
    trained = json.loads((Path(checkpoint).parent / "quality.json").read_text()) if (Path(checkpoint).parent / "quality.json").is_file() else {}
    results = {
        "crops": len(crops),
        "input_size": size,
        "classical": {"iou_cell": classical["iou_cell"].mean(), "iou_nucleus": classical["iou_nucleus"].mean()},
        "maskrcnn": {
            "iou_cell": learned["iou_cell"].mean(),
            "detected": learned["detected"].mean(),
            "backbone": module.hparams.backbone,
            "steps": trained.get("steps"),
            "train_seconds": trained.get("train_seconds"),
        },
    }
    print(f"\nsynthetic world {args.world}: {len(crops)} held-out crops at {size} px, IoU against true masks (mean)\n")
    print("| segmenter | cell IoU | nucleus IoU |")
    print("|---|---|---|")
    print(f"| classical stain segmenter (pseudo-masks) | {results['classical']['iou_cell']:.3f} | {results['classical']['iou_nucleus']:.3f} |")
    m = results["maskrcnn"]
    print(f"| Mask R-CNN {m['backbone']}-FPN, random init, {m['steps']} steps / {m['train_seconds']} s on CPU "
          f"(detected {m['detected']:.0%}) | {m['iou_cell']:.3f} | — |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "segmentation_quality.json").write_text(json.dumps(results, indent=2, default=float))


if __name__ == "__main__":
    main()
