"""`wbcvae segment …`: train Mask R-CNN on an image source, draw its masks next to the pseudo-masks."""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_CONFIG = Path("experiments/segmentation/cpu.yaml")


def register(subparsers: argparse._SubParsersAction) -> None:
    segment = subparsers.add_parser("segment", help="train Mask R-CNN (true masks or classical pseudo-masks)")
    sub = segment.add_subparsers(dest="segment_command", required=True, metavar="ACTION")

    train = sub.add_parser("train", help="fit Mask R-CNN as a YAML config says; writes OUT/maskrcnn.ckpt")
    train.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help=f"YAML config (default {DEFAULT_CONFIG})")
    train.add_argument("--source", type=Path, help="image source (overrides the config's `source`)")
    train.add_argument("--out", type=Path, help="run folder (overrides the config's `out`)")
    train.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
        help="override one config value, e.g. --set trainer.max_steps=50 (repeatable)",
    )
    train.set_defaults(run=_train)

    pretrain = sub.add_parser(
        "pretrain", help="train a ResNet to name the crops' cell types; its weights start Mask R-CNN (model.weights)"
    )
    pretrain.add_argument("source", type=Path, help="labelled image source to train on (a 90 / 10 split of its own)")
    pretrain.add_argument("--out", type=Path, required=True, help="weights file to write (.pth; scores go beside it, .json)")
    pretrain.add_argument("--test", type=Path, help="a labelled source never trained on, to score the classifier on")
    pretrain.add_argument("--backbone", default="resnet18", help="torchvision ResNet (the detector's `model.backbone`)")
    pretrain.add_argument("--input-size", type=int, default=128, help="crop side in pixels (the detector's `model.input_size`)")
    pretrain.add_argument("--epochs", type=int, default=15)
    pretrain.add_argument("--batch-size", type=int, default=32)
    pretrain.add_argument("--lr", type=float, default=1e-3)
    pretrain.add_argument("--seed", type=int, default=0)
    pretrain.add_argument("--accelerator", default="auto")
    pretrain.set_defaults(run=_pretrain)

    show = sub.add_parser("show", help="PNG of crops of different classes with pseudo-masks and Mask R-CNN masks")
    show.add_argument("source", type=Path, help="any image source")
    show.add_argument("--checkpoint", type=Path, help="Mask R-CNN checkpoint (omit to draw pseudo-masks only)")
    show.add_argument("--out", type=Path, required=True, help="PNG to write")
    show.add_argument("--count", type=int, default=12, help="number of crops, spread over the classes")
    show.add_argument("--seed", type=int, default=0)
    show.set_defaults(run=_show)


def _train(args: argparse.Namespace) -> None:
    from wbcvae.segmentation.train import load_config, train_segmentation

    config = load_config(args.config, args.overrides)
    if args.source is not None:
        config["source"] = str(args.source)
    if args.out is not None:
        config["out"] = str(args.out)
    train_segmentation(config)


def _pretrain(args: argparse.Namespace) -> None:
    from wbcvae.segmentation.pretrain import pretrain_backbone

    scores = pretrain_backbone(
        args.source, args.out, backbone=args.backbone, input_size=args.input_size, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, seed=args.seed, test_source=args.test, accelerator=args.accelerator,
    )
    scored = [f"{name} accuracy {scores[f'{name}_accuracy']:.3f}" for name in ("val", "test") if f"{name}_accuracy" in scores]
    print(f"wrote {args.out} ({', '.join(scored) or 'no held-out crops'}) in {scores['train_seconds']:.0f} s")


def _show(args: argparse.Namespace) -> None:
    from wbcvae.segmentation.overlay import mask_figure

    mask_figure(args.source, args.out, checkpoint=args.checkpoint, count=args.count, seed=args.seed)
    print(f"wrote {args.out}")
