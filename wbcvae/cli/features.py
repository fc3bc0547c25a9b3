"""`wbcvae features SOURCE`: RoIAlign features, masks and VAE targets of every crop, into a resumable store."""

from __future__ import annotations

import argparse
from pathlib import Path

from wbcvae.cli.data import add_bad_files_argument


def register(subparsers: argparse._SubParsersAction) -> None:
    features = subparsers.add_parser(
        "features", help="extract Mask R-CNN features of every crop into a feature store (resumable)"
    )
    features.add_argument("source", type=Path, help="any image source")
    features.add_argument("--checkpoint", type=Path, required=True, help="Mask R-CNN checkpoint from `wbcvae segment train`")
    features.add_argument("--store", type=Path, required=True, help="store folder; an unfinished one is completed")
    features.add_argument("--batch-size", type=int, default=16)
    features.add_argument("--num-workers", type=int, default=0, help="DataLoader workers reading images")
    features.add_argument("--min-score", type=float, default=0.5, help="detections below this fall back to the pseudo-mask")
    features.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, …")
    features.add_argument("--overwrite", action="store_true", help="replace a store made with another checkpoint or source")
    features.add_argument("--unknown", choices=("skip", "fail"), default="skip", help="what to do with unmapped labels")
    features.add_argument("--pose", choices=("as_is", "canonical"), default="as_is",
                          help="canonical: turn each cell to one orientation first (wbcvae.features.pose)")
    add_bad_files_argument(features)
    features.set_defaults(run=_extract)


def _extract(args: argparse.Namespace) -> None:
    from wbcvae.features.extract import extract_features

    extract_features(
        args.source,
        args.checkpoint,
        args.store,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        min_score=args.min_score,
        device=args.device,
        overwrite=args.overwrite,
        unknown=args.unknown,
        bad_files=args.bad_files,
        pose=args.pose,
    )
