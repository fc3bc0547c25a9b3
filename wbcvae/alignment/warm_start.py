"""Start the alignment from a rigid fit of the image class means onto the RNA class means.

Fine-tuning from the image VAE as trained, the quickest way to lower the MSE of class means is to
pull every image latent towards the middle of the RNA classes: the encoder's μ collapses onto one
point (KL ≈ 0), and the run can stay there (the demo's alignment fell to chance in one run of two).
Before the first step we therefore move the image latent space as a whole: the orthogonal
Procrustes rotation R, scale s and shift that bring the image class means closest to their RNA
class means (least squares), z′ = s·Rᵀ(z − c_img) + c_rna. The map is folded into the encoder's
last layers (μ and log σ², the latter shifted by 2·log s) and its inverse into the decoder's first,
so the image VAE reconstructs as before; fine-tuning then refines the classes from there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from wbcvae.alignment.loss import class_moments, statistics


@dataclass(frozen=True)
class RigidMap:
    """z′ = scale · rotationᵀ (z − source_centre) + target_centre (column vectors)."""

    rotation: Tensor  # D×D orthogonal
    scale: float
    source_centre: Tensor  # D
    target_centre: Tensor  # D

    def apply(self, z: Tensor) -> Tensor:
        """The map on a batch of row vectors (N×D)."""
        return self.scale * (z - self.source_centre) @ self.rotation + self.target_centre


def procrustes(source: Tensor, target: Tensor) -> RigidMap:
    """Rotation, scale and shift that best map the rows of `source` onto `target` (P×D each, P ≥ 2)."""
    source, target = source.double(), target.double()
    source_centre, target_centre = source.mean(0), target.mean(0)
    a, b = source - source_centre, target - target_centre
    u, singular, vh = torch.linalg.svd(a.T @ b)
    rotation = u @ vh
    scale = float(singular.sum() / (a**2).sum().clamp_min(1e-12))
    return RigidMap(rotation.float(), scale, source_centre.float(), target_centre.float())


@torch.no_grad()
def fold_into_vae(vae: nn.Module, rigid: RigidMap) -> None:
    """Rewrite `to_mu`, `to_logvar` and the first decoder layer so the VAE works in the mapped space."""
    r, s = rigid.rotation.to(vae.to_mu.weight), rigid.scale
    c_img, c_rna = rigid.source_centre.to(r), rigid.target_centre.to(r)
    to_mu = vae.to_mu
    to_mu.bias.copy_(s * (to_mu.bias - c_img) @ r + c_rna)
    to_mu.weight.copy_(s * r.T @ to_mu.weight)
    vae.to_logvar.bias.add_(2 * math.log(s))  # σ′ = s·σ (the rotation of an isotropic spread)
    first = vae.from_latent[0]  # z = R (z′ − c_rna) / s + c_img
    first.bias.add_(first.weight @ (c_img - r @ c_rna / s))
    first.weight.copy_(first.weight @ r / s)


@torch.no_grad()
def image_class_means(module, loader) -> tuple[Tensor, Tensor]:
    """Per-pair mean μ of the images in `loader` under the module's image encoder, and its cell counts."""
    was_training = module.training
    module.eval()
    total = None
    for batch in loader:
        mu = module.image_plan.encode(batch).float()
        groups = module.correspondence.image_groups(batch["label"].to(module.device))
        moments = class_moments(mu, groups, len(module.correspondence))
        total = moments if total is None else total + moments
    module.train(was_training)
    stats = statistics(total)
    return stats.mean, stats.count


def procrustes_warm_start(module, loader) -> dict[str, float]:
    """Fit and fold the rigid map of the image class means onto the RNA class means (pairs both hold).

    Returns what it did (pairs used, scale, mean-term before and after) for the run's log; nothing
    changes when fewer than two pairs hold cells in both modalities.
    """
    means, count = image_class_means(module, loader)
    used = (count > 0) & (module.target_count.to(count.device) > 0)
    targets = module.target_mean.to(means.device)
    before = float(((means[used] - targets[used]) ** 2).mean()) if used.any() else float("nan")
    if int(used.sum()) < 2:
        return {"pairs": int(used.sum()), "scale": 1.0, "mean_term_before": before, "mean_term_after": before}
    rigid = procrustes(means[used], targets[used])
    fold_into_vae(module.image_plan.vae, rigid)
    after = float(((rigid.apply(means[used]) - targets[used]) ** 2).mean())
    return {"pairs": int(used.sum()), "scale": rigid.scale, "mean_term_before": before, "mean_term_after": after}


__all__ = ["RigidMap", "fold_into_vae", "image_class_means", "procrustes", "procrustes_warm_start"]
