"""wbcvae: one latent space for white-blood-cell morphology and transcriptome."""

from wbcvae.vocabulary import CLASSES, LINEAGES

__version__ = "0.1.0"
LATENT_DIM = 50  # the study's shared latent size
__all__ = ["CLASSES", "LINEAGES", "LATENT_DIM", "__version__"]
