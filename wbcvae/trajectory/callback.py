"""Trajectories from a trained joint model: at the end of training (a callback) or from a checkpoint.

Anchors come from both modalities pooled: the frozen RNA latents and the image latents of the
fine-tuned encoder, so a class present in only one modality (real marrow RNA has no neutrophils,
blood images no HSCs) can still anchor a path.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader

from wbcvae.alignment.module import JointAlignmentModule, LabelledLatents
from wbcvae.errors import InputError
from wbcvae.features.datamodule import FeatureDataset
from wbcvae.features.store import FeatureStore
from wbcvae.models.image_vae import cell_on_grey
from wbcvae.trajectory.decode import CellCrops, as_decoder
from wbcvae.trajectory.expression import CellExpression
from wbcvae.trajectory.presets import PRESETS
from wbcvae.trajectory.recovery import GroundTruth
from wbcvae.trajectory.run import TrajectoryResult, TrajectorySettings, run_trajectory


def run_presets(
    module: JointAlignmentModule,
    out_dir: str | Path,
    presets: Sequence[str] = tuple(PRESETS),
    settings: TrajectorySettings | None = None,
    truth: GroundTruth | None = None,
    image_cells: LabelledLatents | None = None,
    expression: CellExpression | None = None,
    crops: CellCrops | None = None,
) -> dict[str, TrajectoryResult]:
    """Run each preset on the module's latents; a preset whose classes are missing is skipped with a warning.

    `expression`: the RNA cells' counts (rows as the module's RNA cells), for the DPT-trend baseline
    beside each decoded curve and the yardstick of flat vs changed genes. `crops`: image cells whose
    real crop each strip shows beside its decoded frames.
    """
    image_cells = image_cells if image_cells is not None else module.image_latents
    cells = LabelledLatents.concat([module.rna_latents(), *([image_cells] if image_cells is not None else [])])
    if expression is not None:  # image cells have no RNA
        expression = expression.padded(len(cells.latent))
    image_decoder, gene_decoder = as_decoder(module.image_plan.vae), as_decoder(module.rna_plan.vae)
    results = {}
    for name in presets:
        try:
            results[name] = run_trajectory(
                name, cells.latent, cells.classes, image_decoder, gene_decoder, module.gene_names, out_dir, settings, truth,
                cells.modality, expression, crops,
            )
        except InputError as err:
            rank_zero_warn(f"trajectory {name!r} skipped: {err}")
    return results


class TrajectoryCallback(L.Callback):
    """At the end of `fit`, on rank zero: fit and decode every preset, write the files under
    `<run dir>/trajectories/`, and log strips, heatmaps, cluster tables and numbers to the loggers."""

    def __init__(
        self,
        presets: Sequence[str] = tuple(PRESETS),
        settings: TrajectorySettings | None = None,
        truth: GroundTruth | None = None,
        out_dir: str | Path | None = None,
        expression: CellExpression | None = None,
    ) -> None:
        unknown = [p for p in presets if p not in PRESETS]
        if unknown:
            raise InputError(f"no trajectory preset {unknown[0]!r}; known: {sorted(PRESETS)}")
        self.presets, self.settings, self.truth, self.expression = tuple(presets), settings, truth, expression
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.results: dict[str, TrajectoryResult] = {}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.out_dir is None:  # trainer.log_dir is a collective under DDP: resolve it on every rank
            self.out_dir = Path(trainer.log_dir or trainer.default_root_dir) / "trajectories"

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        if not isinstance(pl_module, JointAlignmentModule):
            raise TypeError(f"TrajectoryCallback needs a JointAlignmentModule, got {type(pl_module).__name__}")
        images = _all_images(trainer, pl_module)
        crops = store_crops(getattr(trainer.datamodule, "store", None), images) if images is not None else None
        self.results = run_presets(pl_module, self.out_dir, self.presets, self.settings, self.truth, images, self.expression, crops)
        for name, result in self.results.items():
            _log_result(trainer, name, result)


def _all_images(trainer: L.Trainer, module: JointAlignmentModule) -> LabelledLatents | None:
    """Every training and validation image through the final encoder; the last validation latents
    when there is no DataModule to read them from."""
    datamodule = trainer.datamodule
    if datamodule is None:
        return module.image_latents
    parts = [module.encode_images(getattr(datamodule, f"{split}_dataloader")()) for split in ("train", "val")]
    return LabelledLatents.concat(parts)


def store_images(module: JointAlignmentModule, store: FeatureStore, batch_size: int = 64) -> LabelledLatents:
    """Every readable crop of a complete `store`, read like the one the module was aligned on, through its
    (fine-tuned) encoder."""
    store.require_read_like(module.hparams.image_store, "the store the image model was aligned on")
    store.require_complete()
    store.require_feature_shape(module.image_plan.vae.feature_shape)
    return module.encode_images(DataLoader(FeatureDataset(store, store.readable_rows()), batch_size=batch_size))


def store_crops(store: FeatureStore | None, images: LabelledLatents) -> CellCrops | None:
    """The image cells' masked crops on grey, read back from the feature store they came from (None without one)."""
    if not isinstance(store, FeatureStore):
        return None
    rows = pd.Index(store.meta["index"]).get_indexer(images.index)
    known = rows >= 0
    cells = FeatureDataset(store, rows[known])  # items as the model reads them: target in [0, 1], mask

    def read(positions: np.ndarray) -> torch.Tensor:
        items = [cells[int(p)] for p in positions]
        return cell_on_grey(torch.stack([item["target"] for item in items]), torch.stack([item["mask"] for item in items]))

    return CellCrops(images.latent[known], images.classes[known], read)


def _log_result(trainer: L.Trainer, name: str, result: TrajectoryResult) -> None:
    numbers = {f"trajectory/{name}/{k}": float(v) for k, v in result.metrics.items() if np.isfinite(v)}
    for logger in trainer.loggers:
        logger.log_metrics(numbers, step=trainer.global_step)
        if isinstance(logger, WandbLogger):
            images = [str(result.files[key]) for key in ("strip", "heatmap", "markers_plot")]
            logger.log_image(key=f"trajectory/{name}", images=images, caption=["decoded path", "gene kinetics", "markers"])
            logger.log_table(key=f"trajectory/{name}/clusters", dataframe=result.tables["clusters"])
