"""LightningCLI for both β-VAEs: a YAML config (plus any `--section.field` override) fully describes a run.

Each run lands in `<trainer.default_root_dir>/<run_name>/version_N/` with `config.yaml` (the full
resolved config), `metrics.csv`, `figures/` (when W&B is off) and `checkpoints/` (`best-*.ckpt`,
`last.ckpt`). `fit --ckpt_path …/last.ckpt` continues a killed run exactly where its last epoch ended.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from wbcvae.training.callbacks import GeneSetReconstruction, LatentKnnAccuracy, LatentMap, ReconstructionGrid
from wbcvae.training.image_plan import ImageVAEPlan
from wbcvae.training.loggers import build_loggers
from wbcvae.training.plan import VAEPlan
from wbcvae.training.rna_plan import RnaVAEPlan

PLANS: dict[str, type[VAEPlan]] = {"image": ImageVAEPlan, "rna": RnaVAEPlan}
SUBCOMMANDS = ("fit", "validate", "test", "predict")


class VAECLI(LightningCLI):
    """LightningCLI plus the project's run layout: loggers, best/last checkpoints and the dashboards."""

    def __init__(self, kind: str, args: Sequence[str], run: bool = True) -> None:
        self.kind = kind
        super().__init__(
            model_class=PLANS[kind],
            datamodule_class=L.LightningDataModule,
            subclass_mode_data=True,
            args=list(args),
            run=run,
            seed_everything_default=0,
            auto_configure_optimizers=False,  # the plan's own Adam(lr) is the knob: model.lr
            save_config_kwargs={"overwrite": True},
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--run_name", type=str, default=f"{self.kind}_vae", help="folder under default_root_dir")
        parser.add_argument("--wandb", type=bool, default=True, help="also log to W&B (offline without WANDB_API_KEY)")
        parser.add_argument("--wandb_project", type=str, default="wbcvae")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.add_lightning_class_args(LatentKnnAccuracy, "knn")
        parser.add_lightning_class_args(LatentMap, "latent_map")
        if self.kind == "image":
            parser.add_lightning_class_args(ReconstructionGrid, "recon_grid")
        else:
            parser.add_lightning_class_args(GeneSetReconstruction, "gene_sets")
        parser.set_defaults(
            {
                "trainer.default_root_dir": "runs",
                "checkpoint.monitor": "val/loss",
                "checkpoint.mode": "min",
                "checkpoint.save_top_k": 1,
                "checkpoint.save_last": True,
                "checkpoint.filename": "best-{epoch:03d}-{step}",
            }
        )

    def instantiate_trainer(self, **kwargs) -> L.Trainer:
        """Attach our loggers unless the config names its own (`trainer.logger`)."""
        config = self.config_init[self.subcommand] if self.subcommand else self.config_init
        if config["trainer"].get("logger") is None:
            kwargs["logger"] = build_loggers(
                root=config["trainer"]["default_root_dir"],
                name=config["run_name"],
                wandb=config["wandb"],
                project=config["wandb_project"],
            )
        return super().instantiate_trainer(**kwargs)


def run_cli(kind: str, args: Sequence[str]) -> VAECLI:
    """Run `fit` (or the subcommand given first in `args`) for the `kind` ("image" / "rna") β-VAE."""
    args = list(args)
    if not args or args[0] not in SUBCOMMANDS:
        args = ["fit", *args]
    # `wbcvae train …` hands us its own argv tail on purpose; Lightning would warn that sys.argv differs.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    return VAECLI(kind, args)

