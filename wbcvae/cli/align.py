"""`wbcvae align`: fine-tune the image β-VAE onto the frozen RNA VAE's classes; metrics, trajectories, report."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    align = subparsers.add_parser(
        "align",
        help="joint latent space: fine-tune the image β-VAE with δ·L_align onto the frozen RNA VAE",
        description="Example: wbcvae align --config experiments/alignment/synthetic.yaml --max-epochs 5. "
        "Options given here override the YAML.",
    )
    align.add_argument("--config", type=Path, default=None, help="YAML with any AlignConfig field (experiments/alignment/)")
    align.add_argument("--image-ckpt", help="trained image β-VAE checkpoint (wbcvae train image)")
    align.add_argument("--rna-ckpt", help="trained RNA β-VAE checkpoint (wbcvae train rna)")
    align.add_argument("--features", help="feature store of the images (wbcvae features)")
    align.add_argument("--rna", help="RNA source the RNA VAE was trained on (.h5ad, synthetic world, van Galen folder)")
    align.add_argument("--delta", type=float, help="weight δ of the alignment loss")
    align.add_argument("--max-epochs", type=int)
    align.add_argument("--accelerator", help="cpu, gpu, auto")
    align.add_argument("--devices", type=_devices, help="number of devices or 'auto'")
    align.add_argument("--strategy", help="e.g. ddp")
    align.add_argument("--out", help="root folder of runs (default runs/)")
    align.add_argument("--run-name")
    align.add_argument("--no-wandb", action="store_true", help="CSV logging only")
    align.add_argument("--ckpt-path", type=Path, default=None, help="last.ckpt of a killed run to continue")
    align.set_defaults(run=_align)


def _devices(value: str) -> int | str:
    return int(value) if value.isdigit() else value


def _align(args: argparse.Namespace) -> None:
    from wbcvae.alignment.run import AlignConfig, fit_alignment

    config = AlignConfig.from_yaml(
        args.config,
        image_ckpt=args.image_ckpt,
        rna_ckpt=args.rna_ckpt,
        features=args.features,
        rna=args.rna,
        delta=args.delta,
        max_epochs=args.max_epochs,
        accelerator=args.accelerator,
        devices=args.devices,
        strategy=args.strategy,
        out=args.out,
        run_name=args.run_name,
        wandb=False if args.no_wandb else None,
    )
    run = fit_alignment(config, ckpt_path=args.ckpt_path)
    if run.metrics:  # rank zero only
        print(f"wrote joint alignment checkpoint {run.checkpoint}; report: {run.report}")
