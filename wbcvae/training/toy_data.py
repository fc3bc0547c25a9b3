"""Tiny in-memory DataModules that honour the feature-batch and RNA-batch contracts.

They exist so the training plans can be smoke-tested, benchmarked and run under DDP in seconds,
without a feature store or an `.h5ad` on disk. Classes differ by a random prototype plus noise,
so a latent that learns anything separates them (kNN accuracy well above chance).
"""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset


class TensorDictDataset(Dataset):
    """Row i of every tensor, as a dict, plus `index` = i (the row in the source)."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self.tensors = tensors
        self.length = len(next(iter(tensors.values())))

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {**{key: value[i] for key, value in self.tensors.items()}, "index": torch.tensor(i)}


class _ToyDataModule(L.LightningDataModule):
    """Splits one in-memory dataset into train / val / test by a seeded permutation."""

    def __init__(self, n_cells: int, n_classes: int, batch_size: int, seed: int, val_fraction: float) -> None:
        super().__init__()
        self.n_cells, self.n_classes, self.batch_size = n_cells, n_classes, batch_size
        self.seed, self.val_fraction = seed, val_fraction
        self.generator = torch.Generator().manual_seed(seed)
        self.labels = torch.arange(n_cells) % n_classes
        self.dataset = TensorDictDataset({**self.make_tensors(), "label": self.labels})
        order = torch.randperm(n_cells, generator=self.generator)
        n_held = max(1, int(round(n_cells * val_fraction)))
        self.splits = {"val": order[:n_held], "test": order[n_held : 2 * n_held], "train": order[2 * n_held :]}

    def make_tensors(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def noisy_prototypes(self, shape: tuple[int, ...], noise: float) -> torch.Tensor:
        """One random prototype per class, repeated per cell of that class, plus Gaussian noise."""
        prototypes = torch.randn(self.n_classes, *shape, generator=self.generator)
        return prototypes[self.labels] + noise * torch.randn(self.n_cells, *shape, generator=self.generator)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        subset = torch.utils.data.Subset(self.dataset, self.splits[split].tolist())
        return DataLoader(subset, batch_size=self.batch_size, shuffle=shuffle)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset, batch_size=self.batch_size, shuffle=False)


class ToyFeatureDataModule(_ToyDataModule):
    """Feature batches: `features` C×F×F, `target` 3×S×S in [0, 1], `mask` 1×S×S (a centred disc)."""

    def __init__(
        self,
        n_cells: int = 64,
        n_classes: int = 4,
        in_channels: int = 256,
        feature_size: int = 14,
        image_size: int = 128,
        batch_size: int = 16,
        seed: int = 0,
        val_fraction: float = 0.2,
    ) -> None:
        self.in_channels, self.feature_size, self.image_size = in_channels, feature_size, image_size
        super().__init__(n_cells, n_classes, batch_size, seed, val_fraction)
        self.save_hyperparameters()

    def make_tensors(self) -> dict[str, torch.Tensor]:
        size = self.image_size
        features = self.noisy_prototypes((self.in_channels, self.feature_size, self.feature_size), noise=0.5)
        colours = torch.rand(self.n_classes, 3, 1, 1, generator=self.generator)[self.labels]
        yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
        radius = torch.hypot(yy - size / 2, xx - size / 2)
        disc = (radius < size * 0.35).float().expand(self.n_cells, 1, size, size)
        target = (colours * disc + 0.05 * torch.rand(self.n_cells, 3, size, size, generator=self.generator)).clamp(0, 1)
        return {"features": features, "target": target, "mask": disc.contiguous()}


class ToyRnaDataModule(_ToyDataModule):
    """RNA batches: `x` B×G in [0, 1] and `z_atlas` B×latent, both driven by the class."""

    def __init__(
        self,
        n_cells: int = 128,
        n_classes: int = 4,
        genes: int = 200,
        latent_dim: int = 50,
        batch_size: int = 32,
        seed: int = 0,
        val_fraction: float = 0.2,
    ) -> None:
        # `genes`, not `n_genes`: Lightning refuses a DataModule hparam that shadows the model's unset `n_genes`.
        self.n_genes, self.latent_dim = genes, latent_dim
        super().__init__(n_cells, n_classes, batch_size, seed, val_fraction)
        self.gene_names = [f"gene{i:04d}" for i in range(genes)]
        half = genes // 2
        self.gene_sets = {"first_half": self.gene_names[:half], "second_half": self.gene_names[half:]}
        self.save_hyperparameters()

    def make_tensors(self) -> dict[str, torch.Tensor]:
        x = torch.sigmoid(self.noisy_prototypes((self.n_genes,), noise=0.5))
        z_atlas = self.noisy_prototypes((self.latent_dim,), noise=0.2)
        return {"x": x, "z_atlas": z_atlas}
