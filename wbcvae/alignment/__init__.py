"""Joint latent space: the image β-VAE fine-tuned so its classes sit on the frozen RNA VAE's classes."""

from wbcvae.alignment.loss import ClassMoments, ClassStatistics, Correspondence, alignment_loss, class_moments, statistics
from wbcvae.alignment.metrics import alignment_metrics
from wbcvae.alignment.module import JointAlignmentModule, LabelledLatents, RnaCells, load_alignment

__all__ = [
    "ClassMoments",
    "ClassStatistics",
    "Correspondence",
    "JointAlignmentModule",
    "LabelledLatents",
    "RnaCells",
    "alignment_loss",
    "alignment_metrics",
    "class_moments",
    "load_alignment",
    "statistics",
]
