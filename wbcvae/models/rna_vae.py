"""RNA β-VAE: scaled expression of the kept genes → 50-d latent → expression again."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from wbcvae.models.losses import reparameterise


def _mlp(sizes: Sequence[int]) -> nn.Sequential:
    """Linear → LayerNorm → ReLU per step. LayerNorm, not BatchNorm: no batch-size or DDP-rank dependence."""
    layers: list[nn.Module] = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(n_in, n_out), nn.LayerNorm(n_out), nn.ReLU()]
    return nn.Sequential(*layers)


class RnaVAE(nn.Module):
    """MLP encoder n_genes → hidden… → (μ, log σ²); the decoder mirrors it back to n_genes.

    Inputs are min-max scaled to [0, 1] by the preprocessing, so the decoder ends in a sigmoid.
    """

    def __init__(self, n_genes: int, hidden: Sequence[int] = (800, 600, 200), latent_dim: int = 50) -> None:
        super().__init__()
        if n_genes < 1:
            raise ValueError(f"n_genes must be positive, got {n_genes}")
        self.n_genes = n_genes
        self.latent_dim = latent_dim
        hidden = list(hidden)
        self.encoder = _mlp([n_genes, *hidden])
        self.to_mu = nn.Linear(hidden[-1], latent_dim)
        self.to_logvar = nn.Linear(hidden[-1], latent_dim)
        self.decoder = nn.Sequential(
            _mlp([latent_dim, *reversed(hidden)]),
            nn.Linear(hidden[0], n_genes),
            nn.Sigmoid(),
        )

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """μ and log σ² of q(z | x) for a batch B×n_genes."""
        hidden = self.encoder(x)
        return self.to_mu(hidden), self.to_logvar(hidden)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Reconstructed scaled expression B×n_genes in [0, 1]."""
        return self.decoder(z)

    def forward(self, x: torch.Tensor, sample: bool | None = None) -> dict[str, torch.Tensor]:
        """Encode, draw z (only while training unless `sample` says otherwise; else z = μ), decode."""
        mu, logvar = self.encode(x)
        z = reparameterise(mu, logvar) if (self.training if sample is None else sample) else mu
        return {"mu": mu, "logvar": logvar, "z": z, "x_hat": self.decode(z)}
