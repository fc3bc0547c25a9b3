"""The maths: plain `nn.Module`s for the two β-VAEs, free of any training machinery."""

from wbcvae.models.image_vae import ImageVAE
from wbcvae.models.losses import NonFiniteLossError, check_finite, kl_divergence, kl_weight, reparameterise
from wbcvae.models.rna_vae import RnaVAE

__all__ = [
    "ImageVAE",
    "RnaVAE",
    "NonFiniteLossError",
    "check_finite",
    "kl_divergence",
    "kl_weight",
    "reparameterise",
]
