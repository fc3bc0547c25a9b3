"""How far the image encoder's colour input strays from its training statistics: per feature store, the largest
|standardised value| of any cell's colour profile under a checkpoint's colour mean and deviation, and how many
cells exceed 100 standard deviations. A histogram bin that (almost) no cell of the statistics' batches used has a
deviation near 0, and a cell that does use it is read thousands of deviations out (a KL spike in training, a latent
far off for a held-out cell). README, "An adversarial term that also judges the points between cells".

    python bench/colour_outliers.py runs/pbc_pretrained/image_vae/version_0/checkpoints/last.ckpt \
        runs/pbc_pretrained/features/pbc_train runs/pbc_pretrained/features/pbc_sample
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.data import DataLoader

from wbcvae.checkpoints import load_plan
from wbcvae.features.datamodule import FeatureDataset
from wbcvae.features.store import FeatureStore


def largest_deviations(plan, store: str, batch_size: int = 64) -> torch.Tensor:
    """Per readable row of `store`, in order, the largest |standardised colour profile entry| (the encoder's colour input)."""
    cells = FeatureStore(store)
    loader = DataLoader(FeatureDataset(cells, cells.readable_rows()), batch_size=batch_size)
    with torch.no_grad():
        return torch.cat([plan.vae.standardise_colour(plan.encoder_inputs(batch)["colour"]).abs().amax(1) for batch in loader])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="an image β-VAE checkpoint whose encoder reads the colour profile (colour_bins > 0)")
    parser.add_argument("stores", nargs="+", help="feature stores to read")
    args = parser.parse_args()
    plan, _ = load_plan(args.checkpoint, kind="image")
    if not plan.vae.colour_dim:
        raise SystemExit(f"error: {args.checkpoint}: this image β-VAE reads no colour profile (colour_bins 0)")
    print(f"smallest colour deviation in the checkpoint: {float(plan.vae.colour_std.min()):.2g}")
    for store in args.stores:
        worst = largest_deviations(plan, store)
        print(f"{store}: {len(worst)} cells, largest |z| {float(worst.max()):.1f}, over 100 sd: {int((worst > 100).sum())}")


if __name__ == "__main__":
    main()
