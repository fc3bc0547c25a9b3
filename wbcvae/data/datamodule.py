"""The train/val/test plumbing every DataModule shares; subclasses fill `self.datasets` in `setup`."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset


class SplitDataModule(L.LightningDataModule):
    """Serves `self.datasets[split]` with the batch size and workers in `self.hparams`.

    Subclasses call `save_hyperparameters()` (with `batch_size` and `num_workers` among them) and set
    `self.datasets = {"train": …, "val": …, "test": …}` in `setup`. Under DDP Lightning swaps in a
    distributed sampler, so nothing here is rank-aware.
    """

    datasets: dict[str, Dataset]
    collate_fn = None

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def _loader(self, split: str, shuffle: bool = False) -> DataLoader:
        workers = self.hparams.num_workers
        return DataLoader(
            self.datasets[split],
            batch_size=self.hparams.batch_size,
            shuffle=shuffle,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=torch.cuda.is_available(),
            collate_fn=self.collate_fn,
        )
