"""Training plan of the image β-VAE: α·MSE(ĥ, h) + γ·MSE(m·Î, m·I) + β·KL on feature-store batches."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from wbcvae.models.image_vae import ImageVAE
from wbcvae.models.losses import kl_divergence
from wbcvae.training.plan import Batch, Outputs, VAEPlan


class ImageVAEPlan(VAEPlan):
    """Trains `self.vae` (an `ImageVAE`) on batches with `features`, `target`, `mask`, `label`.

    The image term compares only pixels inside the cell mask m, so red cells and background in the
    crop cost nothing. Reconstruction terms are means over elements and KL is summed over latent
    dimensions, so useful β are small (see the configs in experiments/image_vae).
    """

    kind = "image"

    def __init__(
        self,
        in_channels: int = 256,
        feature_size: int = 14,
        image_size: int = 128,
        latent_dim: int = 50,
        hidden_channels: int = 128,
        alpha: float = 1.0,
        gamma: float = 1.0,
        beta: float = 1e-3,
        kl_warmup_steps: int = 0,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.vae = ImageVAE(in_channels, feature_size, image_size, latent_dim, hidden_channels)

    def losses(self, batch: Batch) -> tuple[dict[str, torch.Tensor], dict[str, float], Outputs]:
        outputs = self.vae(batch["features"])
        mask = batch["mask"]
        terms = {
            "features_mse": F.mse_loss(outputs["h_hat"], batch["features"]),
            "image_mse": F.mse_loss(mask * outputs["image_hat"], mask * batch["target"]),
            "kl": kl_divergence(outputs["mu"], outputs["logvar"]),
        }
        weights = {"features_mse": self.hparams.alpha, "image_mse": self.hparams.gamma, "kl": self.beta()}
        return terms, weights, outputs
