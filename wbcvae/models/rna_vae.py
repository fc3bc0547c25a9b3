"""RNA β-VAE: scaled expression of the kept genes → 50-d latent → expression again.

Two decoders, chosen by `likelihood`:
- "mse" (the study's): a sigmoid over genes, compared by MSE with the min-max scaled log expression;
- "nb" (as scVI): a softmax over the kept genes plus one slot for every other gene, i.e. each gene's
  share ρ of the cell's counts; counts are negative binomial with mean μ = library · ρ and a learned
  gene-wise inverse dispersion θ. The extra slot lets `library` be the cell's total over *all* genes,
  so `log1p(10⁴ · ρ)` is the same log-normalised expression the preprocessing computes from counts.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from wbcvae.models.losses import LOGVAR_RANGE, reparameterise

LIKELIHOODS = ("mse", "nb")
TARGET_SUM = 1e4  # counts per cell of the normalised expression `expression()` returns (as the preprocessing)


def _mlp(sizes: Sequence[int]) -> nn.Sequential:
    """Linear → LayerNorm → ReLU per step. LayerNorm, not BatchNorm: no batch-size or DDP-rank dependence."""
    layers: list[nn.Module] = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(n_in, n_out), nn.LayerNorm(n_out), nn.ReLU()]
    return nn.Sequential(*layers)


def negative_binomial_log_prob(counts: torch.Tensor, mean: torch.Tensor, theta: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """log NB(counts | mean, inverse dispersion θ), element-wise (scVI's parameterisation: var = μ + μ²/θ)."""
    log_theta_mean = torch.log(theta + mean + eps)
    return (
        theta * (torch.log(theta + eps) - log_theta_mean)
        + counts * (torch.log(mean + eps) - log_theta_mean)
        + torch.lgamma(counts + theta)
        - torch.lgamma(theta)
        - torch.lgamma(counts + 1)
    )


class RnaVAE(nn.Module):
    """MLP encoder n_genes → hidden… → (μ, log σ²); the decoder mirrors it back to n_genes.

    Inputs are min-max scaled log expression in [0, 1] (the preprocessing) for both likelihoods.
    The model also holds each gene's fitted log-expression range (`log_min`, `log_span`, set by the
    training plan from the preprocessing): "nb" reports `x_hat` on the input's scale with it, and both
    likelihoods' `expression` curves are log-normalised expression, the scale of the real cells.
    """

    def __init__(
        self, n_genes: int, hidden: Sequence[int] = (800, 600, 200), latent_dim: int = 50, likelihood: str = "mse"
    ) -> None:
        super().__init__()
        if n_genes < 1:
            raise ValueError(f"n_genes must be positive, got {n_genes}")
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
        self.n_genes, self.latent_dim, self.likelihood = n_genes, latent_dim, likelihood
        hidden = list(hidden)
        self.encoder = _mlp([n_genes, *hidden])
        self.to_mu = nn.Linear(hidden[-1], latent_dim)
        self.to_logvar = nn.Linear(hidden[-1], latent_dim)
        if likelihood == "mse":
            self.decoder = nn.Sequential(_mlp([latent_dim, *reversed(hidden)]), nn.Linear(hidden[0], n_genes), nn.Sigmoid())
        else:
            self.decoder = nn.Sequential(_mlp([latent_dim, *reversed(hidden)]), nn.Linear(hidden[0], n_genes + 1), nn.Softmax(-1))
            self.log_theta = nn.Parameter(torch.zeros(n_genes))
        self.register_buffer("log_min", torch.zeros(n_genes))
        self.register_buffer("log_span", torch.ones(n_genes))
        self._register_load_state_dict_pre_hook(_scaled_curves_for_old_mse)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """μ and log σ² of q(z | x) for a batch B×n_genes (log σ² within `LOGVAR_RANGE`)."""
        hidden = self.encoder(x)
        return self.to_mu(hidden), self.to_logvar(hidden).clamp(*LOGVAR_RANGE)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """"mse": reconstructed scaled expression B×n_genes in [0, 1]; "nb": each kept gene's share ρ of
        the cell's counts, B×n_genes (the rest of the cell's counts went to the genes not kept)."""
        return self.decoder(z)[:, : self.n_genes]

    def expression(self, z: torch.Tensor) -> torch.Tensor:
        """What a gene curve shows: log-normalised expression log1p(10⁴ · count / total), comparable across
        genes and with the real cells: "nb" the expected expression log1p(10⁴ · ρ), "mse" the decoded
        scaled expression mapped back through each gene's log range."""
        decoded = self.decode(z)
        return torch.log1p(TARGET_SUM * decoded) if self.likelihood == "nb" else decoded * self.log_span + self.log_min

    def set_log_range(self, low: torch.Tensor, span: torch.Tensor) -> None:
        """The preprocessing's per-gene log-expression minimum and span."""
        self.log_min.copy_(torch.as_tensor(low, dtype=self.log_min.dtype))
        self.log_span.copy_(torch.as_tensor(span, dtype=self.log_span.dtype))

    def forward(self, x: torch.Tensor, sample: bool | None = None) -> dict[str, torch.Tensor]:
        """Encode, draw z (only while training unless `sample` says otherwise; else z = μ), decode.

        `x_hat` is always on the input's scale; "nb" adds `rho` (B×n_genes) and `theta` (n_genes).
        """
        mu, logvar = self.encode(x)
        z = reparameterise(mu, logvar) if (self.training if sample is None else sample) else mu
        decoded = self.decode(z)
        if self.likelihood == "mse":
            return {"mu": mu, "logvar": logvar, "z": z, "x_hat": decoded}
        x_hat = ((torch.log1p(TARGET_SUM * decoded) - self.log_min) / self.log_span).clamp(0, 1)
        return {"mu": mu, "logvar": logvar, "z": z, "x_hat": x_hat, "rho": decoded, "theta": self.log_theta.exp()}


def _scaled_curves_for_old_mse(state_dict: dict, prefix: str, *args) -> None:
    """An "mse" checkpoint from before the log range was kept loads with the identity range (0, 1):
    its curves stay on the scaled axis it was trained on."""
    first = state_dict.get(f"{prefix}encoder.0.weight")  # hidden × n_genes
    if first is None or f"{prefix}log_min" in state_dict:
        return
    state_dict[f"{prefix}log_min"] = torch.zeros(first.shape[1], dtype=first.dtype)
    state_dict[f"{prefix}log_span"] = torch.ones(first.shape[1], dtype=first.dtype)
