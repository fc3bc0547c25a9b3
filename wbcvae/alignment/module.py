"""Joint alignment: fine-tune the image β-VAE so its classes land on the frozen RNA VAE's classes.

Loss per image batch = the image VAE's own study loss (α·MSE(ĥ,h) + γ·MSE(m·Î,m·I) + β·KL)
+ δ · alignment loss (see `wbcvae.alignment.loss`) between the batch's per-class latent means /
covariances and the RNA classes' ones. The RNA side never changes: its latents (μ of every RNA cell)
and class statistics are computed once, at construction, and kept as buffers (so they move to the
GPU with the module and are saved in its checkpoint).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

import wbcvae
from wbcvae.alignment.loss import (
    ClassMoments,
    ClassStatistics,
    Correspondence,
    alignment_loss,
    class_moments,
    statistics,
)
from wbcvae.alignment.metrics import alignment_metrics
from wbcvae.checkpoints import ALIGNMENT_KEY as CHECKPOINT_KEY
from wbcvae.checkpoints import read_checkpoint, rebuild
from wbcvae.errors import InputError
from wbcvae.models.losses import check_finite
from wbcvae.training.callbacks import gather_rows
from wbcvae.training.image_plan import ImageVAEPlan
from wbcvae.training.rna_plan import RnaVAEPlan
from wbcvae.vocabulary import CLASSES



@dataclass
class LabelledLatents:
    """Cells in the joint latent space: μ (N×D), canonical class ("" when none), modality and, for image cells
    from a feature store, their manifest `index` (−1 where there is none), by which a figure finds the crop."""

    latent: np.ndarray
    classes: np.ndarray
    modality: np.ndarray
    index: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.index is None:
            self.index = np.full(len(self.latent), -1, dtype=np.int64)

    @staticmethod
    def concat(parts: Sequence[LabelledLatents]) -> LabelledLatents:
        return LabelledLatents(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("latent", "classes", "modality", "index")))


@dataclass
class RnaCells:
    """The whole RNA set as the alignment sees it: frozen-encoder μ and the labels of each cell."""

    latent: Tensor  # N×D
    cell_types: list[str]  # the source's label, e.g. van Galen "HSC"
    classes: list[str]  # canonical class, "" when none


def class_names(labels: np.ndarray) -> np.ndarray:
    """Integer labels → canonical names ("" for −1 or out of range)."""
    names = np.array([*CLASSES, ""], dtype=object)
    labels = np.asarray(labels, dtype=np.int64)
    return names[np.where((labels >= 0) & (labels < len(CLASSES)), labels, len(CLASSES))]


class JointAlignmentModule(L.LightningModule):
    """Fine-tunes `image_plan.vae` with its study loss + δ·L_align; `rna_plan` is frozen.

    `correspondence` maps image classes to RNA labels (source cell types or canonical classes);
    None aligns every class to the RNA cells of the same canonical class. Covariance terms need
    `min_cells_for_cov` cells of a class in the (all-rank) batch; below that only means are pulled.
    The image VAE arrives trained, so its KL weight is β from the first step (no warm-up again).
    `image_store` is the provenance of the feature store it is fine-tuned on, kept so that a store
    given later (`wbcvae trajectory --features`) can be refused when another detector or pose read it.
    δ = 10 by default: L_align is a per-dimension MSE of means, about a tenth of the image VAE's own
    loss at the start of fine-tuning on the synthetic world (0.43 against 5.1).
    """

    def __init__(
        self,
        image_plan: ImageVAEPlan,
        rna_plan: RnaVAEPlan,
        rna_cells: RnaCells,
        correspondence: Mapping[str, str | Sequence[str]] | None = None,
        gene_names: Sequence[str] = (),
        delta: float = 10.0,
        cov_weight: float = 1.0,
        min_cells_for_cov: int = 2,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        mixing_k: int = 15,
        image_store: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["image_plan", "rna_plan", "rna_cells"])
        if correspondence is None:
            self.hparams.correspondence = {c: [c] for c in CLASSES}
        self.correspondence = Correspondence.from_mapping(self.hparams.correspondence)
        self.image_plan = image_plan
        image_plan.hparams.kl_warmup_steps = 0
        self.rna_plan = rna_plan.eval().requires_grad_(False)
        if gene_names and rna_plan.vae is not None and len(gene_names) != rna_plan.vae.n_genes:
            raise InputError(f"{len(gene_names)} gene names for an RNA VAE of {rna_plan.vae.n_genes} genes")
        # Plain `str` (not numpy strings): the checkpoint must load with torch.load(weights_only=True).
        self.rna_cell_types = [str(t) for t in rna_cells.cell_types]
        self.rna_classes = [str(c) for c in rna_cells.classes]
        groups = self.correspondence.rna_groups(self.rna_cell_types, self.rna_classes)
        latent = torch.as_tensor(rna_cells.latent, dtype=torch.float32)
        self.register_buffer("rna_latent", latent)
        self.register_buffer("rna_groups", groups)
        target = statistics(_chunked_moments(latent, groups, len(self.correspondence)), min_cells_for_cov)
        self.register_buffer("target_mean", target.mean)
        self.register_buffer("target_cov", target.cov)
        self.register_buffer("target_count", target.count)
        missing = [name for name, n in zip(self.correspondence.image_classes, target.count.tolist()) if n == 0]
        self.pairs_without_rna = missing  # these pairs can never pull: reported, not fatal
        if missing:
            rank_zero_warn(f"no RNA cell matches the correspondence of {', '.join(missing)}: these classes are not aligned")
        self.image_latents: LabelledLatents | None = None  # last validation epoch, all ranks
        self.last_metrics: dict[str, float] = {}
        self.last_metrics_table: pd.DataFrame | None = None

    # --- the loss -----------------------------------------------------------------------------------

    def train(self, mode: bool = True) -> JointAlignmentModule:
        """Lightning switches every submodule to training mode; the RNA VAE stays frozen in eval."""
        super().train(mode)
        self.rna_plan.eval()
        return self

    def _sum_over_ranks(self, tensor: Tensor) -> Tensor:
        """Sum a fixed-shape tensor over DDP ranks, keeping gradients (identity on one process).

        Every rank calls this for every step with the same shapes, whatever classes it holds, so no
        rank waits on a collective that another skipped.
        """
        if self._trainer is None or self.trainer.world_size == 1:
            return tensor
        return self.all_gather(tensor, sync_grads=True).sum(0)

    def _targets(self) -> ClassStatistics:
        count = self.target_count
        return ClassStatistics(self.target_mean, self.target_cov, count, count >= 1, count >= self.hparams.min_cells_for_cov)

    def losses(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
        """(total loss, named terms, the image VAE's outputs) for one image batch."""
        study, terms, outputs = self.image_plan.total_loss(batch)
        groups = self.correspondence.image_groups(batch["label"])
        moments = class_moments(outputs["mu"], groups, len(self.correspondence)).map(self._sum_over_ranks)
        align = alignment_loss(statistics(moments, self.hparams.min_cells_for_cov), self._targets(), self.hparams.cov_weight)
        total = study + self.hparams.delta * align.loss
        terms = {
            **terms,
            "study": study,
            "align": align.loss,
            "align_mean": align.mean_term,
            "align_cov": align.cov_term,
            "loss": total,
        }
        return total, terms, outputs | {"pairs_with_mean": align.pairs_with_mean, "pairs_with_cov": align.pairs_with_cov}

    def _step(self, batch: dict[str, Tensor], stage: str) -> dict[str, Tensor]:
        loss, terms, outputs = self.losses(batch)
        check_finite(terms, step=self.global_step, stage=stage)
        training = stage == "train"
        logged = {f"{stage}/{name}": value.detach() for name, value in terms.items()}
        logged[f"{stage}/pairs_with_cov"] = outputs["pairs_with_cov"].float()
        self.log_dict(logged, on_step=training, on_epoch=True, sync_dist=not training, batch_size=len(batch["label"]))
        return {"loss": loss, "mu": outputs["mu"].detach(), "label": batch["label"]}

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        out = self._step(batch, "val")
        self._val_mu.append(out["mu"].float())
        self._val_labels.append(out["label"])
        return out

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = self.image_plan.parameters()
        return torch.optim.Adam(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)

    # --- alignment quality --------------------------------------------------------------------------

    def on_validation_epoch_start(self) -> None:
        self._val_mu: list[Tensor] = []
        self._val_labels: list[Tensor] = []

    def on_validation_epoch_end(self) -> None:
        mu, labels = gather_rows(self, self._val_mu), gather_rows(self, self._val_labels).astype(np.int64)
        self.image_latents = LabelledLatents(mu, class_names(labels), np.full(len(mu), "image", dtype=object))
        if len(mu) == 0 or self.trainer.sanity_checking:
            return
        # Every rank holds the same gathered arrays, so every rank computes the same numbers.
        summary, table = self.measure(mu, labels)
        self.last_metrics, self.last_metrics_table = summary, table
        self.log_dict({f"align/{k}": v for k, v in summary.items() if np.isfinite(v)}, sync_dist=False)

    def measure(self, image_mu: np.ndarray, image_labels: np.ndarray) -> tuple[dict[str, float], pd.DataFrame]:
        """Alignment metrics (summary dict, per-class table) of image latents against the RNA set."""
        groups = self.correspondence.image_groups(torch.as_tensor(image_labels)).numpy()
        return alignment_metrics(
            np.asarray(image_mu),
            groups,
            self.rna_latent.cpu().numpy(),
            self.rna_groups.cpu().numpy(),
            self.correspondence.image_classes,
            k=self.hparams.mixing_k,
        )

    # --- what trajectories need ---------------------------------------------------------------------

    def rna_latents(self) -> LabelledLatents:
        latent = self.rna_latent.cpu().numpy()
        return LabelledLatents(latent, np.asarray(self.rna_classes, dtype=object), np.full(len(latent), "rna", dtype=object))

    @torch.no_grad()
    def encode_images(self, loader: torch.utils.data.DataLoader) -> LabelledLatents:
        """μ of every image in `loader` with the current (fine-tuned) encoder, and the images' manifest index."""
        was_training = self.training
        self.eval()
        mus, labels, indices = [], [], []
        for batch in loader:
            mus.append(self.image_plan.encode(batch).float().cpu())
            labels.append(batch["label"])
            indices.append(batch.get("index", torch.full_like(batch["label"], -1)))
        self.train(was_training)
        mu = torch.cat(mus).numpy() if mus else np.zeros((0, self.rna_latent.shape[1]), np.float32)
        labels = torch.cat(labels).numpy() if labels else np.zeros(0, np.int64)
        index = torch.cat(indices).numpy().astype(np.int64) if indices else np.zeros(0, np.int64)
        return LabelledLatents(mu, class_names(labels), np.full(len(mu), "image", dtype=object), index)

    @property
    def gene_names(self) -> list[str]:
        return list(self.hparams.gene_names) or [f"gene{i}" for i in range(self.rna_plan.vae.n_genes)]

    # --- checkpoints --------------------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Everything `load_alignment` needs to rebuild the module without the original files."""
        checkpoint[CHECKPOINT_KEY] = {
            "version": wbcvae.__version__,
            "image_plan": _plain_hparams(self.image_plan),
            "rna_plan": _plain_hparams(self.rna_plan),
            "rna_cell_types": self.rna_cell_types,
            "rna_classes": self.rna_classes,
            "image_latents": None
            if self.image_latents is None
            else {"latent": torch.as_tensor(self.image_latents.latent), "classes": [str(c) for c in self.image_latents.classes]},
        }


def load_alignment(ckpt: str | os.PathLike, map_location: str | torch.device = "cpu") -> JointAlignmentModule:
    """Rebuild a `JointAlignmentModule` from its checkpoint alone (plans from their saved hparams)."""
    checkpoint = read_checkpoint(ckpt, "alignment", map_location=map_location)
    record = checkpoint[CHECKPOINT_KEY]
    state = checkpoint["state_dict"]
    cells = RnaCells(state["rna_latent"], record["rna_cell_types"], record["rna_classes"])

    def build() -> JointAlignmentModule:
        image_plan, rna_plan = ImageVAEPlan(**record["image_plan"]), RnaVAEPlan(**record["rna_plan"])
        return JointAlignmentModule(image_plan, rna_plan, cells, **checkpoint["hyper_parameters"])

    module = rebuild(ckpt, build, state)
    saved = record.get("image_latents")
    if saved is not None:
        latent = saved["latent"].float().numpy()
        module.image_latents = LabelledLatents(latent, np.asarray(saved["classes"], dtype=object), np.full(len(latent), "image", dtype=object))
    return module.eval()


def _chunked_moments(latent: Tensor, groups: Tensor, num_groups: int, chunk: int = 8192) -> ClassMoments:
    """Moments of the whole RNA set, a chunk at a time (moments add; memory stays P×chunk×D)."""
    total = class_moments(latent[:0], groups[:0], num_groups)
    for start in range(0, len(latent), chunk):
        total = total + class_moments(latent[start : start + chunk], groups[start : start + chunk], num_groups)
    return total


def _plain_hparams(plan: L.LightningModule) -> dict:
    """A plan's init arguments as plain values (tuples as lists), loadable with weights_only=True."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dict(plan.hparams).items() if not k.startswith("_")}
