"""`wbcvae train image|rna …`: everything after the kind goes to the LightningCLI (see `wbcvae.training.cli`)."""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    train = subparsers.add_parser(
        "train",
        help="train the image or RNA β-VAE",
        description="Train a β-VAE with LightningCLI. Example: wbcvae train rna --config "
        "experiments/rna_vae/laptop.yaml --trainer.max_epochs 5. `wbcvae train image --help` lists every field.",
    )
    train.add_argument("kind", choices=("image", "rna"), help="which β-VAE")
    train.add_argument(
        "cli_args", nargs=argparse.REMAINDER, metavar="...",
        help="LightningCLI arguments: [fit|validate|test|predict] --config FILE --section.field VALUE --ckpt_path CKPT",
    )  # fmt: skip
    train.set_defaults(run=_train)


def _train(args: argparse.Namespace) -> int:
    from wbcvae.models.losses import NonFiniteLossError
    from wbcvae.training.cli import run_cli

    try:
        cli = run_cli(args.kind, args.cli_args)
    except NonFiniteLossError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish()  # now rather than at exit, so its sync hint comes before our closing line
    if cli.trainer.is_global_zero:
        print(written(cli))
    return 0


def written(cli) -> str:
    """One line: where the run's checkpoints and metrics went."""
    from wbcvae.checkpoints import KINDS

    trainer = cli.trainer
    # not `trainer.log_dir`: a collective under DDP, and only rank zero prints
    folder = getattr(trainer.logger, "log_dir", None) or trainer.default_root_dir
    checkpoint = trainer.checkpoint_callback
    if cli.subcommand == "fit" and checkpoint is not None and checkpoint.best_model_path:
        return f"wrote {KINDS[cli.kind][0]} checkpoint {checkpoint.best_model_path} (best val/loss; last: {checkpoint.last_model_path or 'none'}), metrics in {folder}"
    return f"wrote {cli.subcommand} metrics to {folder}"
