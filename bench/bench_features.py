"""Feature extraction speed: crops/s batched against one crop at a time, measured in this one run.

The same crops (held in memory, so image decoding is not timed) go through `FeatureExtractor` once in
batches of --batch-size and once one by one; the ratio is what batching buys.

    python bench/bench_features.py --checkpoint runs/segment/maskrcnn.ckpt [--source demo/world] [--crops 64]

Without --source a small synthetic world is written to a temporary folder.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from wbcvae.data.image_dataset import CropDataset
from wbcvae.data.images import read_manifest
from wbcvae.data.synthetic.world import write_world
from wbcvae.features.extract import FeatureExtractor, resolve_device
from wbcvae.segmentation.maskrcnn import load_maskrcnn


def crops_per_second(extractor: FeatureExtractor, images: torch.Tensor, batch_size: int) -> float:
    extractor(images[:batch_size])  # warm-up: first-call allocations and kernel choices
    if images.device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for start in range(0, len(images), batch_size):
        extractor(images[start : start + batch_size])
    if images.device.type == "cuda":
        torch.cuda.synchronize()
    return len(images) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="Mask R-CNN from `wbcvae segment train`")
    parser.add_argument("--source", type=Path, help="image source (default: a fresh small synthetic world)")
    parser.add_argument("--crops", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    module = load_maskrcnn(args.checkpoint)
    device = resolve_device(args.device)
    extractor = FeatureExtractor(module.model.to(device), min_score=module.hparams.min_score)
    with tempfile.TemporaryDirectory() as tmp:
        source = args.source or write_world(Path(tmp) / "world", cells_per_class=5, rna_cells=26, n_genes=50, crop_size=128, progress=False)
        frame = read_manifest(source).frame.head(args.crops)
        crops = CropDataset(frame, int(module.hparams.input_size))
        images = torch.stack([crops[i]["image"] for i in range(len(crops))]).to(device)

    batched = crops_per_second(extractor, images, args.batch_size)
    single = crops_per_second(extractor, images, 1)
    print(f"{len(images)} crops at {images.shape[-1]} px on {device} ({torch.get_num_threads()} threads), "
          f"{module.hparams.backbone}-FPN")
    print(f"batched (batch {args.batch_size}): {batched:.1f} crops/s")
    print(f"one at a time:      {single:.1f} crops/s")
    print(f"batched / one at a time: {batched / single:.2f}x")


if __name__ == "__main__":
    main()
