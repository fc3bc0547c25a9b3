"""The pieces of the β-VAE objectives: reparameterisation, the KL term, its warm-up, the NaN guard, and the
image terms that keep structure (masked SSIM, masked image gradients, the distance between colour histograms), the
colour profile the image encoder reads beside h, and the soft Dice of a predicted mask."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch.nn import functional as F


class NonFiniteLossError(RuntimeError):
    """A loss term became NaN or infinite; training stops rather than silently corrupting the weights."""


# Both encoders keep log σ² of q(z | ·) in this range: on make pbc-train's features the image β-VAE's residual head
# drove it up until exp() overflowed (KL 2 → 65 over ten steps, then inf at step 55, whatever the learning rate or
# gradient clipping). Trained models stay well inside it (image: within ±4.3; RNA: −5.1 to −2.4).
LOGVAR_RANGE = (-20.0, 10.0)


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


def _gaussian_blur(x: torch.Tensor, window: int, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur per channel (depthwise convolutions, zero-padded to keep the size)."""
    offsets = torch.arange(window, dtype=x.dtype, device=x.device) - (window - 1) / 2
    kernel = torch.exp(-offsets.pow(2) / (2 * sigma**2))
    kernel = (kernel / kernel.sum()).repeat(x.shape[1], 1, 1, 1)  # C×1×1×W
    x = F.conv2d(x, kernel, padding=(0, window // 2), groups=x.shape[1])
    return F.conv2d(x, kernel.transpose(2, 3), padding=(window // 2, 0), groups=x.shape[1])


def masked_ssim(
    image: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, window: int = 7, sigma: float = 1.5
) -> torch.Tensor:
    """Structural similarity of the luminance of m·Î and m·I (images in [0, 1]), averaged over the pixels
    inside m; one value per image (B). 1 means identical local means, contrasts and structure; a blur
    scores well below 1 even where its MSE is small, which is why it is a loss term here. Both images are
    masked before the local statistics, so what lies outside the cell costs nothing, as in the MSE.
    Luminance only (colour is the MSE's job): a third of the cost of RGB on a CPU."""
    c1, c2 = 0.01**2, 0.03**2  # the usual constants for a data range of 1
    luma = torch.tensor([0.299, 0.587, 0.114], dtype=image.dtype, device=image.device).view(1, 3, 1, 1)
    x, y = mask * (image * luma).sum(1, keepdim=True), mask * (target * luma).sum(1, keepdim=True)
    moments = _gaussian_blur(torch.cat([x, y, x * x, y * y, x * y], dim=1), window, sigma)
    mu_x, mu_y, xx, yy, xy = moments.unbind(1)
    var_x, var_y, cov = xx - mu_x.pow(2), yy - mu_y.pow(2), xy - mu_x * mu_y
    ssim = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x.pow(2) + mu_y.pow(2) + c1) * (var_x + var_y + c2))
    weight = mask[:, 0]
    return (ssim * weight).flatten(1).sum(1) / weight.flatten(1).sum(1).clamp_min(1e-6)


def masked_gradient_l1(image: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean |∇Î − ∇I| over horizontal and vertical neighbour pairs that both lie inside m: edges (the
    nucleus outline, lobes, granules) must be where the target has them, which MSE alone lets blur away."""
    total, count = image.new_zeros(()), image.new_zeros(())
    for dim in (2, 3):
        size = image.shape[dim] - 1
        pair = mask.narrow(dim, 0, size) * mask.narrow(dim, 1, size)
        difference = image.diff(dim=dim) - target.diff(dim=dim)
        total = total + (pair * difference.abs()).sum()
        count = count + pair.sum() * image.shape[1]
    return total / count.clamp_min(1.0)


def soft_dice_loss(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1 − soft Dice of sigmoid(logits) against a 0/1 mask, per image (B×1×S×S), averaged. Unlike BCE it
    does not care how small the cell is: a cell of a tenth of the crop weighs as much as the background,
    so the head cannot settle on "all background", the cheapest answer for BCE alone."""
    p = logits.sigmoid().flatten(1)
    m = mask.flatten(1)
    dice = (2 * (p * m).sum(1) + 1) / (p.sum(1) + m.sum(1) + 1)
    return (1 - dice).mean()


COLOUR_SIZE = 64  # crops are averaged down to this size before their colours are binned: a quarter of the memory, the same colours
COLOUR_BINS = 16  # intensity bins per channel where no model setting says otherwise (the colour term of a model that does not read colours, the bench's baseline)


def colour_histogram(image: torch.Tensor, mask: torch.Tensor, bins: int) -> torch.Tensor:
    """Per channel, the share of the cell's pixels in each of `bins` intensity bins (B×3×bins, rows sum
    to 1; an empty mask gives zeros): the colours of the cytoplasm, nucleus and granules, wherever they
    lie. Soft (each value shares itself between its two nearest bin centres), so it is differentiable in
    `image`. Image (B×3×S×S in [0, 1]) and mask (B×1×S×S) are first averaged to COLOUR_SIZE pixels."""
    if image.shape[-1] > COLOUR_SIZE:
        image, mask = F.adaptive_avg_pool2d(image, COLOUR_SIZE), F.adaptive_avg_pool2d(mask, COLOUR_SIZE)
    centres = (torch.arange(bins, device=image.device, dtype=image.dtype) + 0.5) / bins
    values = image.flatten(2).clamp(centres[0], centres[-1])  # B×3×P, inside the outer centres: weights sum to 1
    weights = (1 - (values[..., None] - centres).abs() * bins).clamp_min(0)  # B×3×P×bins
    cell = mask.flatten(2)[..., None]  # B×1×P×1
    return (weights * cell).sum(2) / cell.sum(2).clamp_min(1e-6)


def colour_profile(image: torch.Tensor, mask: torch.Tensor, bins: int) -> torch.Tensor:
    """What the image encoder reads beside h: the cell's colour histogram (`colour_histogram`, flattened)
    and its share of the crop, B×(3·bins + 1). No Mask R-CNN feature carries these as plainly: on the
    held-out PBC crops, a kNN on this profile alone names the class far more often than one on PCA-50 of h."""
    return torch.cat([colour_histogram(image, mask, bins).flatten(1), mask.flatten(1).mean(1, keepdim=True)], 1)


def colour_distance(image: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, bins: int) -> torch.Tensor:
    """Earth mover's distance between the colours of `image` and `target` inside `mask`, per channel (the
    L1 distance of their cumulative histograms, in units of the intensity range), averaged. Pixel MSE
    forgives a decoder that paints every cell its average colour; this does not."""
    cumulative = [colour_histogram(x, mask, bins).cumsum(-1) for x in (image, target)]
    return (cumulative[0] - cumulative[1]).abs().sum(-1).mean() / bins
