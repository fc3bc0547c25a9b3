"""Dashboards: what a person looks at while a β-VAE trains.

Every callback draws from validation batches, computes on rank zero only (after gathering what it
needs from all DDP ranks), and publishes to W&B when a `WandbLogger` is attached, otherwise as PNG
files under `<run dir>/figures/`. Scalars go through `log`, so they reach every logger (CSV included).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn
from torchvision.utils import make_grid

from wbcvae.models.image_vae import cell_on_grey
from wbcvae.training.metrics import K, REFERENCE_CELLS, knn_accuracy, latent_reference
from wbcvae.vocabulary import CLASSES


def new_figure(width: float, height: float):
    """A matplotlib `Figure` made without pyplot: no GUI backend is touched (cluster nodes, notebooks)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def figure_to_array(fig) -> np.ndarray:
    """A matplotlib figure as an H×W×3 uint8 array."""
    from PIL import Image

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return np.asarray(Image.open(buffer).convert("RGB"))


class ValidationDashboard(L.Callback):
    """Shared plumbing: when to draw (every `every_n_epochs` and at the last epoch) and where to publish."""

    def __init__(self, every_n_epochs: int = 1) -> None:
        self.every_n_epochs = every_n_epochs
        self.figure_dir: Path | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # trainer.log_dir is a collective under DDP: resolve it here, on every rank.
        self.figure_dir = Path(trainer.log_dir or trainer.default_root_dir) / "figures"

    def due(self, trainer: L.Trainer) -> bool:
        if trainer.sanity_checking:
            return False
        epoch = trainer.current_epoch + 1
        last = trainer.max_epochs is not None and epoch == trainer.max_epochs
        return last or (self.every_n_epochs > 0 and epoch % self.every_n_epochs == 0)

    @rank_zero_only
    def publish(self, trainer: L.Trainer, key: str, image: np.ndarray, caption: str = "") -> None:
        """Send an H×W×3 uint8 image to W&B if attached, else write `figures/<key>_epoch<NNN>.png`."""
        wandb_loggers = [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]
        for logger in wandb_loggers:
            logger.log_image(key=key, images=[image], caption=[caption or key], step=trainer.global_step)
        if not wandb_loggers:
            from PIL import Image

            path = self.figure_dir / f"{key.replace('/', '_')}_epoch{trainer.current_epoch:03d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(path)


def gather_rows(pl_module: L.LightningModule, chunks: list[torch.Tensor]) -> np.ndarray:
    """Concatenate this rank's chunks, gather them from all ranks (a collective: call on every rank)."""
    local = torch.cat(chunks) if chunks else torch.empty(0)
    gathered = pl_module.all_gather(local.to(pl_module.device))
    if pl_module.trainer.world_size > 1:
        gathered = gathered.flatten(0, 1)
    return gathered.cpu().numpy()


class LatentCollector(ValidationDashboard):
    """Keeps μ and the class of every validation cell on the epochs the dashboard is due."""

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.mu: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self.due(trainer):
            self.mu.append(outputs["mu"].float().cpu())
            self.labels.append(outputs["label"].cpu())

    def gathered(self, pl_module: L.LightningModule) -> tuple[np.ndarray, np.ndarray]:
        return gather_rows(pl_module, self.mu), gather_rows(pl_module, self.labels).astype(int)


class LatentKnnAccuracy(LatentCollector):
    """`val/knn<k>_acc`: each validation cell's class voted by its k nearest training cells in μ-space,
    the protocol of `wbcvae.training.metrics` (the same as `bench/vae_quality.py`'s, on the test split).

    The reference costs one encoder pass over at most `reference_cells` training cells per due epoch;
    every DDP rank encodes the same cells, so the value agrees across ranks.
    """

    def __init__(self, k: int = K, every_n_epochs: int = 1, reference_cells: int = REFERENCE_CELLS) -> None:
        super().__init__(every_n_epochs)
        self.k, self.reference_cells = k, reference_cells

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.due(trainer) or trainer.train_dataloader is None:
            return
        mu, labels = self.gathered(pl_module)
        reference, reference_labels = latent_reference(pl_module, trainer.train_dataloader, self.reference_cells)
        pl_module.log(f"val/knn{self.k}_acc", knn_accuracy(reference, reference_labels, mu, labels, self.k), sync_dist=True)


class LatentMap(LatentCollector):
    """A 2-D map of the validation latent (UMAP, or PCA when asked or when cells are too few), by class.

    UMAP costs tens of seconds on a laptop CPU (numba compilation), hence `every_n_epochs=0`
    by default: only at the last epoch.
    """

    def __init__(self, method: str = "umap", every_n_epochs: int = 0, max_cells: int = 5000, seed: int = 0) -> None:
        super().__init__(every_n_epochs)
        if method not in ("umap", "pca"):
            raise ValueError(f"method must be 'umap' or 'pca', got {method!r}")
        self.method, self.max_cells, self.seed = method, max_cells, seed

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.due(trainer):
            return
        mu, labels = self.gathered(pl_module)
        if trainer.is_global_zero and len(mu) >= 3:
            self.publish(trainer, "latent/map", self.draw(mu, labels), caption="validation latent μ by class")

    def project(self, mu: np.ndarray) -> tuple[np.ndarray, str]:
        if self.method == "umap" and len(mu) > 15:
            import umap

            # A seeded UMAP runs on one thread anyway; saying so spares the warning that it does.
            return umap.UMAP(n_neighbors=15, random_state=self.seed, n_jobs=1).fit_transform(mu), "UMAP"
        centred = mu - mu.mean(0)
        _, _, components = np.linalg.svd(centred, full_matrices=False)
        return centred @ components[:2].T, "PCA"

    def draw(self, mu: np.ndarray, labels: np.ndarray) -> np.ndarray:
        from matplotlib import colormaps

        if len(mu) > self.max_cells:
            keep = np.random.default_rng(self.seed).choice(len(mu), self.max_cells, replace=False)
            mu, labels = mu[keep], labels[keep]
        xy, method = self.project(mu)
        fig = new_figure(6, 5)
        ax = fig.subplots()
        palette = colormaps["tab20"]  # one fixed colour per class, the same in every run
        for label in np.unique(labels):
            known = 0 <= label < len(CLASSES)
            at = labels == label
            colour = palette(label % 20) if known else "lightgrey"
            ax.scatter(xy[at, 0], xy[at, 1], s=6, color=colour, label=CLASSES[label] if known else "no class")
        ax.set(title=f"validation latent ({method}, {len(mu)} cells)", xticks=[], yticks=[])
        ax.legend(fontsize=7, markerscale=2, loc="center left", bbox_to_anchor=(1, 0.5))
        return figure_to_array(fig)


class ReconstructionGrid(ValidationDashboard):
    """Rows: input crop I, the target cell in its mask m, the reconstruction Î in its predicted mask
    (both on neutral grey); for the first validation cells."""

    def __init__(self, n_cells: int = 8, every_n_epochs: int = 1) -> None:
        super().__init__(every_n_epochs)
        self.n_cells = n_cells

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if batch_idx != 0 or not trainer.is_global_zero or not self.due(trainer):
            return
        n = min(self.n_cells, len(batch["target"]))
        target, mask = batch["target"][:n].float().cpu(), batch["mask"][:n].float().cpu()
        decoded = cell_on_grey(outputs["image_hat"][:n].float().cpu(), outputs["mask_logits"][:n].float().cpu().sigmoid())
        grid = make_grid(torch.cat([target, cell_on_grey(target, mask), decoded]).clamp(0, 1), nrow=n, padding=2)
        image = (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        caption = "rows: input, target cell in its mask, reconstruction in its predicted mask"
        self.publish(trainer, "reconstruction/grid", image, caption=caption)


class GeneSetReconstruction(ValidationDashboard):
    """`val/recon_mse/<set>`: reconstruction MSE averaged over the genes of each set, plus a bar chart.

    Sets come from `gene_sets`, else from the data (`gene_names_and_sets`). An `all` set is always
    included; genes the preprocessing did not keep are ignored.
    """

    def __init__(self, gene_sets: dict[str, Sequence[str]] | None = None, every_n_epochs: int = 1) -> None:
        super().__init__(every_n_epochs)
        self.gene_sets = gene_sets
        self.columns: dict[str, np.ndarray] = {}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        names, sets = gene_names_and_sets(trainer.datamodule)
        if self.gene_sets is not None:
            sets = dict(self.gene_sets)
        position = {gene: i for i, gene in enumerate(names)}
        self.columns = {}
        for name, genes in sets.items():
            kept = [position[g] for g in genes if g in position]
            if kept:
                self.columns[name] = np.asarray(kept)
            else:
                rank_zero_warn(f"gene set {name!r}: none of its genes is among the genes the model sees; skipped")

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.squared_error: torch.Tensor | None = None
        self.cells = 0

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if not self.due(trainer):
            return
        per_gene = (outputs["x_hat"].float() - batch["x"].float()).pow(2).sum(0)
        self.squared_error = per_gene if self.squared_error is None else self.squared_error + per_gene
        self.cells += len(batch["x"])

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.due(trainer) or self.squared_error is None:
            return
        totals = pl_module.all_gather(torch.cat([self.squared_error, self.squared_error.new_tensor([self.cells])]))
        if trainer.world_size > 1:
            totals = totals.sum(0)
        per_gene = (totals[:-1] / totals[-1]).cpu().numpy()
        mse = {"all": float(per_gene.mean())}
        mse.update({name: float(per_gene[columns].mean()) for name, columns in self.columns.items()})
        for name, value in mse.items():
            pl_module.log(f"val/recon_mse/{name}", value, sync_dist=True)
        if trainer.is_global_zero:
            self.publish(trainer, "reconstruction/gene_sets", self.draw(mse), caption="validation MSE per gene set")

    @staticmethod
    def draw(mse: dict[str, float]) -> np.ndarray:
        fig = new_figure(1 + 0.6 * len(mse), 3.5)
        ax = fig.subplots()
        ax.bar(list(mse), list(mse.values()), color="#4c72b0")
        ax.set(ylabel="reconstruction MSE", title="per gene set (validation)")
        ax.tick_params(axis="x", rotation=45)
        return figure_to_array(fig)


def gene_names_and_sets(datamodule: L.LightningDataModule | None) -> tuple[list[str], dict[str, list[str]]]:
    """The genes the model sees, in input order, and the gene sets the data defines.

    Read from the DataModule's `gene_names` / `gene_sets` when it has them; otherwise from its fitted
    `preprocessor` (kept genes; the user's markers, else a boolean `adata.var["marker"]`, as the set
    `markers`) and from `adata.var` columns `kinetic_<lineage>` (the synthetic world's ground truth:
    sets `<lineage>:<kinetic>`).
    """
    names = list(getattr(datamodule, "gene_names", None) or [])
    sets = dict(getattr(datamodule, "gene_sets", None) or {})
    preprocessor = getattr(datamodule, "preprocessor", None)
    if not names and preprocessor is not None:
        names = list(preprocessor.genes)
    adata = getattr(datamodule, "adata", None)
    if not sets and preprocessor is not None and preprocessor.markers:
        sets["markers"] = list(preprocessor.markers)
    elif not sets and adata is not None and adata.var.get("marker", pd.Series(dtype=object)).dtype == bool:
        sets["markers"] = list(adata.var_names[adata.var["marker"]])
    if adata is not None:
        for column in [c for c in adata.var.columns if c.startswith("kinetic_")]:
            kinetics = adata.var[column].astype(str)
            for kinetic in sorted(kinetics.unique()):
                sets.setdefault(f"{column.removeprefix('kinetic_')}:{kinetic}", list(kinetics.index[kinetics == kinetic]))
    return names, sets
