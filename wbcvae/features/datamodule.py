"""Feature batches for the image VAE, read from a complete `FeatureStore`."""

from __future__ import annotations

import os

import numpy as np
import torch
from torch.utils.data import Dataset

from wbcvae.data.datamodule import SplitDataModule
from wbcvae.data.image_dataset import SPLITS, split_manifest
from wbcvae.features.store import FeatureStore
from wbcvae.vocabulary import CLASS_INDEX


class FeatureDataset(Dataset):
    """Rows of a store as the feature batch of docs/architecture.md: `features` float32 256×14×14,
    `target` float32 3×128×128 in [0, 1], `mask` float32 1×128×128, `label` int64, `index` int64
    (the manifest row). Arrays are memory-mapped on first use, so each DataLoader worker maps its own."""

    def __init__(self, store: FeatureStore, rows: np.ndarray):
        self.store = store
        self.rows = np.asarray(rows, dtype=np.int64)
        self.labels = store.meta["label"].map(CLASS_INDEX).to_numpy(np.int64)
        self.indices = store.meta["index"].to_numpy(np.int64)
        self._arrays: dict[str, np.memmap] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not self._arrays:
            self._arrays = {name: self.store.array(name) for name in ("features", "target", "mask")}
        row = self.rows[i]
        arrays = self._arrays
        return {
            "features": torch.from_numpy(arrays["features"][row].astype(np.float32)),
            "target": torch.from_numpy(arrays["target"][row].astype(np.float32) / 255.0),
            "mask": torch.from_numpy(arrays["mask"][row].astype(np.float32)),
            "label": torch.tensor(self.labels[row]),
            "index": torch.tensor(self.indices[row]),
        }

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_arrays": {}}  # workers re-open the maps rather than copy them


class FeatureDataModule(SplitDataModule):
    """Train/val/test batches from the store at `store_dir`, split like the crops (`split_manifest`:
    stratified by class, grouped by patient). Refuses an incomplete store: a VAE trained on half the
    rows would look fine and be wrong. Rows whose image could not be decoded are left out.
    `cells_per_class` keeps at most that many rows of each class (a seeded draw, before splitting):
    the same store serves a reduced-scale experiment."""

    def __init__(
        self,
        store_dir: str | os.PathLike,
        batch_size: int = 64,
        fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
        seed: int = 0,
        num_workers: int = 0,
        cells_per_class: int | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.store: FeatureStore | None = None
        self.datasets: dict[str, FeatureDataset] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.store is not None:
            return
        store = FeatureStore(self.hparams.store_dir)
        store.require_complete()
        meta = store.meta.iloc[store.readable_rows()]
        if self.hparams.cells_per_class is not None:
            shuffled = meta.sample(frac=1.0, random_state=self.hparams.seed)
            meta = meta.loc[np.sort(shuffled.groupby("label").head(self.hparams.cells_per_class).index)]
        parts = split_manifest(meta, self.hparams.fractions, self.hparams.seed)
        self.store = store
        self.datasets = {name: FeatureDataset(store, part["row"].to_numpy()) for name, part in zip(SPLITS, parts)}
