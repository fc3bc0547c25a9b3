"""The pieces both β-VAEs share: reparameterisation, the KL term, its warm-up, and the NaN guard."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch


class NonFiniteLossError(RuntimeError):
    """A loss term became NaN or infinite; training stops rather than silently corrupting the weights."""


def reparameterise(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Sample z = μ + σ·ε so the sample stays differentiable in μ and log σ²."""
    return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(q(z|x) ‖ N(0, I)), summed over latent dimensions and averaged over the batch."""
    return (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1)).mean()


def kl_weight(beta: float, step: int, warmup_steps: int) -> float:
    """β ramped linearly from 0 over `warmup_steps` optimiser steps, so the decoder learns before the prior bites."""
    if warmup_steps <= 0:
        return beta
    return beta * min(1.0, step / warmup_steps)


def check_finite(terms: Mapping[str, torch.Tensor], step: int, stage: str) -> None:
    """Raise `NonFiniteLossError` naming the step and every term that is NaN or infinite."""
    values = torch.stack([value.detach().float() for value in terms.values()])
    if bool(torch.isfinite(values).all()):  # one device sync per step, not one per term
        return
    bad = [f"{name}={value:g}" for name, value in zip(terms, values.tolist()) if not math.isfinite(value)]
    raise NonFiniteLossError(f"non-finite loss at {stage} step {step}: {', '.join(bad)}")
