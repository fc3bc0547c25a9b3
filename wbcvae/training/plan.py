"""What both β-VAE training plans share: one step for train/val/test, logging, the NaN guard, exact resume."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

import wbcvae
from wbcvae.errors import InputError
from wbcvae.models.losses import check_finite, kl_weight

Batch = dict[str, torch.Tensor]
Outputs = dict[str, torch.Tensor]
LR_SCHEDULES = ("constant", "cosine")  # the study trains at a constant rate


def check_lr_schedule(name: str) -> None:
    if name not in LR_SCHEDULES:
        raise InputError(f"model.lr_schedule must be one of {LR_SCHEDULES}, got {name!r}")


class VAEPlan(L.LightningModule):
    """Subclasses build `self.vae` and say how a batch becomes named loss terms (`losses`).

    The total is Σ weight·term; every term is logged unweighted under `<stage>/<term>` and the total
    under `<stage>/loss`, so a dashboard shows which term moves.
    """

    vae: torch.nn.Module
    kind: str  # "image" or "rna": what `wbcvae embed` reads from the checkpoint
    input_key: str  # the batch entry the encoder reads

    def losses(self, batch: Batch) -> tuple[dict[str, torch.Tensor], dict[str, float], Outputs]:
        """(unweighted terms, their weights at this step, the VAE's outputs). No logging, no checks."""
        raise NotImplementedError

    def encoder_inputs(self, batch: Batch) -> dict[str, torch.Tensor]:
        """The keyword arguments of `self.vae.encode` (beside the batch's `input_key` entry), on this plan's device."""
        return {}

    @torch.no_grad()
    def encode(self, batch: Batch) -> torch.Tensor:
        """μ of a batch (any device): the one way embedding, kNN references and alignment read the encoder."""
        return self.vae.encode(batch[self.input_key].to(self.device), **self.encoder_inputs(batch))[0]

    def total_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor], Outputs]:
        """Σ weight·term, the terms, and the outputs: the whole objective, usable outside Lightning."""
        terms, weights, outputs = self.losses(batch)
        loss = sum(weights[name] * value for name, value in terms.items())
        return loss, terms, outputs

    def beta(self) -> float:
        """The KL weight now: while training, `beta` ramped over `kl_warmup_steps` optimiser steps;
        in evaluation the full `beta`, so `val/loss` is one objective across epochs (the best
        checkpoint is not simply the one from before the ramp)."""
        if not self.training:
            return self.hparams.beta
        return kl_weight(self.hparams.beta, self.global_step, self.hparams.kl_warmup_steps)

    def _common_step(self, batch: Batch, stage: str) -> dict[str, torch.Tensor]:
        loss, terms, outputs = self.total_loss(batch)
        check_finite({**terms, "loss": loss}, step=self.global_step, stage=stage)
        training = stage == "train"
        logged = {f"{stage}/{name}": value.detach() for name, value in terms.items()}
        logged[f"{stage}/loss"] = loss.detach()
        # Validation and test metrics are averaged over all DDP ranks (checkpointing monitors val/loss);
        # training metrics stay per-rank to avoid a collective on every step.
        self.log_dict(logged, on_step=training, on_epoch=True, sync_dist=not training, batch_size=len(batch["label"]))
        if training:
            self.log("train/beta", self.beta(), on_step=True, on_epoch=False)
        detached = {name: value.detach() for name, value in outputs.items()}
        return {"loss": loss, **detached, "label": batch["label"]}

    def training_step(self, batch: Batch, batch_idx: int) -> dict[str, torch.Tensor]:
        return self._common_step(batch, "train")

    def validation_step(self, batch: Batch, batch_idx: int) -> dict[str, torch.Tensor]:
        return self._common_step(batch, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> dict[str, torch.Tensor]:
        return self._common_step(batch, "test")

    def predict_step(self, batch: Batch, batch_idx: int) -> dict[str, torch.Tensor]:
        """μ of each cell, with its row in the source (`… predict` subcommand; `wbcvae embed` writes AnnData)."""
        return {"mu": self.encode(batch), "index": batch["index"]}

    def configure_optimizers(self) -> torch.optim.Optimizer | dict[str, Any]:
        """Adam at `lr`; with `lr_schedule: cosine` the rate falls to 0 over `trainer.max_epochs`, so the
        last epoch (the checkpoint everything downstream reads) is not taken at the full rate, where one
        noisy epoch can undo several (seen at pbc scale: validation loss 1.47 → 1.99 in the 20th).
        Stepped per epoch: counting steps would set the data up before the resume seeding (see below)."""
        optimiser = torch.optim.Adam(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        if self.hparams.lr_schedule == "constant":
            return optimiser
        epochs = self.trainer.max_epochs
        if epochs is None or epochs < 1:
            raise InputError(f"model.lr_schedule {self.hparams.lr_schedule!r} needs trainer.max_epochs, got {epochs}")
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=epochs)
        return {"optimizer": optimiser, "lr_scheduler": {"scheduler": schedule, "interval": "epoch"}}

    # --- exact resume ------------------------------------------------------------------------------
    # Every epoch's randomness (the sampler's shuffle, the reparameterisation noise) is seeded from
    # (run seed, epoch) just before that epoch's data iterator is made: at fit start for the first
    # epoch of a `fit` call, at the end of the previous epoch otherwise. A run resumed from an
    # epoch-end checkpoint therefore draws exactly what the uninterrupted run drew, bit for bit,
    # whatever the DataModule's sampler takes from the global RNG. (The sanity check runs RNG-isolated.)

    _resume_epoch = 0

    def _reseed(self, epoch: int) -> None:
        seed = run_seed(epoch)
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

    def on_fit_start(self) -> None:
        self._reseed(self._resume_epoch)

    def on_train_epoch_end(self) -> None:
        self._reseed(self.current_epoch + 1)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._resume_epoch = checkpoint.get("wbcvae", {}).get("resume_epoch", 0)
        if self._trainer is not None and self.trainer.training:  # strategies that restore after on_fit_start
            self._reseed(self._resume_epoch)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Record which plan this is and where its data came from, for `wbcvae embed` and provenance.

        Hyperparameters are reduced to plain values (a `Path` becomes a string), so the checkpoint
        loads with `torch.load(weights_only=True)`, PyTorch's safe default, e.g. in `load_from_checkpoint`.
        """
        for key in ("hyper_parameters", "datamodule_hyper_parameters"):
            if key in checkpoint:
                checkpoint[key] = _plain(checkpoint[key])
        checkpoint["wbcvae"] = {
            "plan": f"{type(self).__module__}.{type(self).__qualname__}",
            "kind": self.kind,
            "version": wbcvae.__version__,
            "resume_epoch": self.current_epoch + 1,  # our checkpoints are taken at epoch ends
            "data": data_provenance(self.trainer.datamodule if self._trainer else None),
        }


def run_seed(offset: int) -> int:
    """A seed from the run's seed (`seed_everything`) and an offset (an epoch, a step)."""
    return (int(os.environ.get("PL_GLOBAL_SEED", 0)) * 1_000_003 + offset) % 2**32


def data_provenance(datamodule: L.LightningDataModule | None) -> dict:
    """The DataModule's class, init arguments and source, plus a feature store's provenance (which
    Mask R-CNN checkpoint, which crops) when it reads one."""
    if datamodule is None:
        return {}
    record = {
        "datamodule": f"{type(datamodule).__module__}.{type(datamodule).__qualname__}",
        "hparams": _plain(dict(datamodule.hparams)),
    }
    source = getattr(datamodule, "source", None)
    if isinstance(source, (str, os.PathLike)):
        record["source"] = str(Path(source).resolve())
    store = getattr(datamodule, "store", None)  # a FeatureDataModule: the extraction's own provenance
    if isinstance(getattr(store, "provenance", None), dict):
        record["store"] = _plain(store.provenance)
    return record


def _plain(value: object) -> object:
    """Containers kept, scalars kept, anything else (a Path, an AnnData) as its string."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(item) for item in value)
    return value if isinstance(value, (bool, int, float, str, type(None))) else str(value)
