"""LightningCLI for both β-VAEs: a YAML config (plus any `--section.field` override) fully describes a run.

Each run lands in `<trainer.default_root_dir>/<run_name>/version_N/` with `config.yaml` (the full
resolved config), `metrics.csv`, `figures/` (when W&B is off) and `checkpoints/` (`best-*.ckpt`,
`last.ckpt`). `fit --ckpt_path …/last.ckpt` continues a killed run exactly where its last epoch ended.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from wbcvae.checkpoints import read_checkpoint
from wbcvae.errors import InputError, WriteError, one_line
from wbcvae.training.callbacks import GeneSetReconstruction, LatentKnnAccuracy, LatentMap, ReconstructionGrid
from wbcvae.training.image_plan import ImageVAEPlan
from wbcvae.training.loggers import build_loggers
from wbcvae.training.plan import VAEPlan
from wbcvae.training.rna_plan import RnaVAEPlan
from wbcvae.utils.atomic import write_failure
from wbcvae.utils.config import resolve_config
from wbcvae.utils.quiet import silence_third_party_noise

PLANS: dict[str, type[VAEPlan]] = {"image": ImageVAEPlan, "rna": RnaVAEPlan}
SUBCOMMANDS = ("fit", "validate", "test", "predict")


class VAECLI(LightningCLI):
    """LightningCLI plus the project's run layout: loggers, best/last checkpoints and the dashboards."""

    def __init__(self, kind: str, args: Sequence[str], run: bool = True) -> None:
        self.kind = kind
        self.run_folder: Path | None = None  # <default_root_dir>/<run_name>, known once the trainer is built
        self.existing: set[Path] = set()  # what was in it before this run
        try:
            super().__init__(
                model_class=PLANS[kind],
                datamodule_class=L.LightningDataModule,
                subclass_mode_data=True,
                args=list(args),
                run=run,
                seed_everything_default=0,
                auto_configure_optimizers=False,  # the plan's own Adam(lr) is the knob: model.lr
                save_config_kwargs={"overwrite": True},
                parser_kwargs={"exit_on_error": False},  # run_cli turns a bad value into one line
            )
        except OSError as err:  # a failed write (a checkpoint, metrics.csv) often names no file: name the run
            self.remove_unused_run_folders()
            line = None if isinstance(err, WriteError) else write_failure(err, getattr(err, "filename", None) or self.run_folder)
            if line is None:
                raise
            raise WriteError(line) from err
        except BaseException:
            self.remove_unused_run_folders()
            raise

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
            self.run_folder = Path(config["trainer"]["default_root_dir"]) / config["run_name"]
            self.existing = _run_entries(self.run_folder)
            kwargs["logger"] = build_loggers(
                root=config["trainer"]["default_root_dir"],
                name=config["run_name"],
                wandb=config["wandb"],
                project=config["wandb_project"],
            )
        return super().instantiate_trainer(**kwargs)


    def remove_unused_run_folders(self) -> None:
        """After a failed run: remove what it created under the run folder (its `version_N`, its W&B run)
        if that holds nothing but the resolved config, so rejected input leaves no empty run behind."""
        if self.run_folder is None:
            return
        created = _run_entries(self.run_folder) - self.existing
        versions = [p for p in created if p.name.startswith("version_")]
        if any(f.is_file() and f.name not in ("config.yaml", "hparams.yaml") for v in versions for f in v.rglob("*")):
            return  # it trained for a while: its metrics and checkpoints are worth keeping
        wandb = sys.modules.get("wandb")
        if wandb is not None and wandb.run is not None:  # finish now: at exit it would write its run folder again
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                wandb.finish(exit_code=1)  # quietly: its "wandb sync <folder>" hint would name a removed folder
        for entry in sorted(created, reverse=True):  # files inside wandb/ before wandb/ itself
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        if self.run_folder.is_dir() and not any(self.run_folder.iterdir()):
            self.run_folder.rmdir()


def _run_entries(run_folder: Path) -> set[Path]:
    """What sits in a run folder and in its W&B folder (a run adds `version_N`, `wandb/offline-run-…`)."""
    return set(run_folder.glob("*")) | set(run_folder.glob("wandb/*"))


def run_cli(kind: str, args: Sequence[str]) -> VAECLI:
    """Run `fit` (or the subcommand given first in `args`) for the `kind` ("image" / "rna") β-VAE.

    Before anything is written, `--config` files are found (see `resolve_config`) and a `--ckpt_path`
    is checked to be a checkpoint of this kind; a bad config value becomes one `InputError` line.
    """
    silence_third_party_noise()
    args = list(args)
    if not args or args[0] not in SUBCOMMANDS:
        args = ["fit", *args]
    args = [str(resolve_config(value)) if _follows(args, i, "--config") else value for i, value in enumerate(args)]
    for i, value in enumerate(args):
        if _follows(args, i, "--ckpt_path") and value not in ("last", "best", "hpc", "registry", "null"):
            read_checkpoint(value, kind)
    try:
        return VAECLI(kind, args)
    except argparse.ArgumentError as err:
        raise InputError(_config_error(str(err), args)) from None


def _follows(args: list[str], i: int, option: str) -> bool:
    return i > 0 and args[i - 1] == option


def _config_error(text: str, args: list[str]) -> str:
    """jsonargparse's multi-line error as one line naming the key, the expected type and where it was set."""
    if text.startswith('Parser key "config"'):
        return f"--config: {one_line(text.split(':', 1)[1])}"
    if text.startswith("unrecognized arguments"):
        return f"{text} (`wbcvae train image|rna --help` lists every option)"
    key = ".".join(dict.fromkeys(re.findall(r'Parser key "([^"]+)"', text)))
    unknown = re.search(r"Option '([^']+)' is not accepted", text)
    if unknown:
        key = f"{key}.{unknown.group(1)}"
    configs = [value for i, value in enumerate(args) if _follows(args, i, "--config")]
    on_command_line = not configs or any(a == f"--{key}" or a.startswith(f"--{key}=") for a in args)
    where = f"--{key} on the command line" if on_command_line else f"{' + '.join(configs)}: key {key}"
    expected = [t.rsplit(".", 1)[-1] for t in re.findall(r"Expected a <class '([^']+)'>", text) if t != "NoneType"]
    got = re.findall(r"(?:Got value|Given value): (.*)", text)
    if unknown:
        return f"{where}: not a setting of this class (`wbcvae train image|rna --help` lists them)"
    if expected and got:
        return f"{where}: expected {' or '.join(dict.fromkeys(expected))}, got {got[0].strip()!r}"
    return f"{where}: {one_line(text)[:300]}"
