"""Class statistics and the alignment loss that pulls image classes onto RNA classes.

For every pair in a `Correspondence` (an image class ↔ one or more RNA labels) the loss is
`MSE(mean_img, mean_rna) + cov_weight · KL(softmax(cov_rna) ‖ softmax(cov_img))`, the softmax taken
row by row (each covariance row becomes a distribution over latent dimensions).

Statistics travel as *moments* (cell count, sum of z, sum of z zᵀ) because moments add: chunks of
the RNA set, and DDP ranks that see different classes, combine by plain summation of fixed-shape
tensors, so every rank takes part in every reduction (no hang) and nothing from an earlier batch is
reused (no stale values). A pair absent from the batch contributes nothing; a pair with fewer than
`min_cells_for_cov` cells contributes its mean term only, because one cell has no covariance.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from wbcvae.errors import InputError
from wbcvae.vocabulary import CLASS_INDEX, CLASSES


@dataclass(frozen=True)
class Correspondence:
    """Which RNA cells stand for which image class.

    `pairs` maps an image class (canonical name) to RNA labels; an RNA cell belongs to the pair when
    its source cell type (e.g. van Galen "HSC") or its canonical class equals one of those labels.
    """

    pairs: tuple[tuple[str, tuple[str, ...]], ...]

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, str | Sequence[str]]) -> Correspondence:
        if not mapping:
            raise InputError("alignment correspondence is empty: map at least one image class to RNA labels")
        pairs = []
        for image_class, rna_labels in mapping.items():
            if image_class not in CLASS_INDEX:
                raise InputError(f"correspondence key {image_class!r} is not one of the 13 classes {list(CLASSES)}")
            labels = (rna_labels,) if isinstance(rna_labels, str) else tuple(rna_labels)
            if not labels:
                raise InputError(f"correspondence for {image_class!r} lists no RNA labels")
            pairs.append((image_class, tuple(str(label) for label in labels)))
        return cls(tuple(pairs))

    @property
    def image_classes(self) -> tuple[str, ...]:
        return tuple(image_class for image_class, _ in self.pairs)

    def __len__(self) -> int:
        return len(self.pairs)

    def image_groups(self, labels: Tensor) -> Tensor:
        """Pair index of each image cell from its integer class label (−1: in no pair)."""
        lookup = torch.full((len(CLASSES) + 1,), -1, dtype=torch.long, device=labels.device)
        for pair, image_class in enumerate(self.image_classes):
            lookup[CLASS_INDEX[image_class]] = pair
        safe = torch.where((labels >= 0) & (labels < len(CLASSES)), labels, torch.full_like(labels, len(CLASSES)))
        return lookup[safe]

    def rna_groups(self, cell_types: Sequence[str], classes: Sequence[str | None]) -> Tensor:
        """Pair index of each RNA cell from its source cell type and canonical class (−1: in no pair)."""
        index = {}
        for pair, (_, rna_labels) in enumerate(self.pairs):
            for label in rna_labels:
                index.setdefault(label, pair)
        groups = [index.get(str(t), index.get(str(c), -1)) for t, c in zip(cell_types, classes, strict=True)]
        return torch.tensor(groups, dtype=torch.long)


@dataclass
class ClassMoments:
    """Per-group count (P), sum of z (P×D) and sum of outer products z zᵀ (P×D×D)."""

    count: Tensor
    total: Tensor
    outer: Tensor

    def __add__(self, other: ClassMoments) -> ClassMoments:
        return ClassMoments(self.count + other.count, self.total + other.total, self.outer + other.outer)

    def map(self, fn: Callable[[Tensor], Tensor]) -> ClassMoments:
        """Apply `fn` to every tensor, e.g. a sum over DDP ranks."""
        return ClassMoments(fn(self.count), fn(self.total), fn(self.outer))


def class_moments(z: Tensor, groups: Tensor, num_groups: int) -> ClassMoments:
    """Moments of `z` (N×D) per group; cells with group −1 are left out. Computed in float32."""
    # Mixed precision would lose the outer products to fp16 cancellation; the sizes are tiny anyway.
    with torch.autocast(device_type=z.device.type, enabled=False):
        z = z.float()
        member = (groups[:, None] == torch.arange(num_groups, device=z.device)[None, :]).float()  # N×P
        count = member.sum(0)
        total = member.T @ z
        weighted = member.T[:, :, None] * z[None, :, :]  # P×N×D
        outer = weighted.transpose(1, 2) @ z  # P×D×D
    return ClassMoments(count, total, outer)


@dataclass
class ClassStatistics:
    """Per-group mean and covariance, with flags saying which of them are defined."""

    mean: Tensor  # P×D
    cov: Tensor  # P×D×D
    count: Tensor  # P
    has_mean: Tensor  # P bool: at least one cell
    has_cov: Tensor  # P bool: at least `min_cells_for_cov` cells


def statistics(moments: ClassMoments, min_cells_for_cov: int = 2) -> ClassStatistics:
    """Means and unbiased covariances from moments; undefined entries are zeros, never NaN."""
    if min_cells_for_cov < 2:
        raise InputError(f"min_cells_for_cov must be at least 2 (one cell has no covariance), got {min_cells_for_cov}")
    n = moments.count
    mean = moments.total / n.clamp(min=1)[:, None]
    scatter = moments.outer - n[:, None, None] * mean[:, :, None] * mean[:, None, :]
    cov = scatter / (n - 1).clamp(min=1)[:, None, None]
    cov = 0.5 * (cov + cov.transpose(1, 2))  # exact symmetry despite rounding
    return ClassStatistics(mean, cov, n, n >= 1, n >= min_cells_for_cov)


@dataclass
class AlignmentTerms:
    loss: Tensor  # mean_term + cov_weight · cov_term
    mean_term: Tensor  # MSE of means, averaged over pairs present
    cov_term: Tensor  # KL of softmaxed covariances, averaged over pairs with a covariance
    pairs_with_mean: Tensor  # how many pairs contributed a mean term
    pairs_with_cov: Tensor


def softmax_cov_kl(target_cov: Tensor, cov: Tensor) -> Tensor:
    """KL(softmax(target) ‖ softmax(cov)) per matrix, rows as distributions, averaged over rows."""
    log_p = F.log_softmax(target_cov, dim=-1)
    log_q = F.log_softmax(cov, dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1).mean(-1)


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean over masked entries; zero (still attached to the graph) when none is selected."""
    return torch.where(mask, values, torch.zeros_like(values)).sum() / mask.sum().clamp(min=1)


def alignment_loss(image: ClassStatistics, target: ClassStatistics, cov_weight: float = 1.0) -> AlignmentTerms:
    """The alignment loss between image statistics of a batch and the fixed RNA targets."""
    with torch.autocast(device_type=image.mean.device.type, enabled=False):
        use_mean = image.has_mean & target.has_mean
        use_cov = image.has_cov & target.has_cov
        mse = ((image.mean.float() - target.mean.float()) ** 2).mean(-1)
        kl = softmax_cov_kl(target.cov.float(), image.cov.float())
        mean_term = _masked_mean(mse, use_mean)
        cov_term = _masked_mean(kl, use_cov)
    return AlignmentTerms(
        loss=mean_term + cov_weight * cov_term,
        mean_term=mean_term,
        cov_term=cov_term,
        pairs_with_mean=use_mean.sum(),
        pairs_with_cov=use_cov.sum(),
    )
