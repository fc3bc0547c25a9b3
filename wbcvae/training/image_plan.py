"""Training plan of the image β-VAE: α·MSE(ĥ, h) + γ·MSE(m·Î, m·I) + β·KL on feature-store batches."""

from __future__ import annotations

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.nn import functional as F

from wbcvae.models.image_vae import ImageVAE
from wbcvae.models.losses import kl_divergence
from wbcvae.training.plan import Batch, Outputs, VAEPlan


class ImageVAEPlan(VAEPlan):
    """Trains `self.vae` (an `ImageVAE`) on batches with `features`, `target`, `mask`, `label`.

    The image term compares only pixels inside the cell mask m, so red cells and background in the
    crop cost nothing. The feature term is measured on standardised features (1.0 = no better than
    the channel means), with statistics fitted on up to `statistics_batches` training batches when
    training starts (kept in the checkpoint, so not refitted on resume). Reconstruction terms are
    means over elements and KL is summed over latent dimensions, so useful β are small and γ large
    (see the configs in experiments/image_vae).
    """

    kind = "image"
    input_key = "features"

    def __init__(
        self,
        in_channels: int = 256,
        feature_size: int = 14,
        image_size: int = 128,
        latent_dim: int = 50,
        hidden_channels: int = 128,
        alpha: float = 1.0,
        gamma: float = 100.0,
        beta: float = 1e-3,
        kl_warmup_steps: int = 0,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        statistics_batches: int = 64,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.vae = ImageVAE(in_channels, feature_size, image_size, latent_dim, hidden_channels)
        self.register_buffer("statistics_cells", torch.zeros((), dtype=torch.long))  # 0: not fitted yet

    def on_fit_start(self) -> None:
        if self.statistics_cells == 0:
            self.fit_feature_statistics()
        super().on_fit_start()  # reseeds after the pass above, so that pass leaves no trace on the run

    @torch.no_grad()
    def fit_feature_statistics(self) -> None:
        """Per-channel mean and std of the training features, from up to `statistics_batches` batches
        (summed over DDP ranks, so every rank standardises alike)."""
        if self.trainer.datamodule is None:
            rank_zero_warn("no DataModule to fit feature statistics on: features are used unstandardised")
            return
        loader = self.trainer.datamodule.train_dataloader()
        channels = self.hparams.in_channels
        sums = torch.zeros(3, channels, dtype=torch.float64, device=self.device)  # count, Σh, Σh²
        for _, batch in zip(range(self.hparams.statistics_batches), loader):
            h = batch["features"].to(self.device, torch.float64).transpose(0, 1).flatten(1)  # C × (B·F·F)
            sums += torch.stack([torch.full_like(h[:, 0], h.shape[1]), h.sum(1), h.pow(2).sum(1)])
        sums = self.trainer.strategy.reduce(sums, reduce_op="sum")
        count, total, squares = sums
        mean = total / count
        std = (squares / count - mean.pow(2)).clamp_min(0).sqrt()
        self.vae.set_feature_statistics(mean.float(), std.float())
        self.statistics_cells.fill_(int(count[0]) // (self.hparams.feature_size**2))

    def losses(self, batch: Batch) -> tuple[dict[str, torch.Tensor], dict[str, float], Outputs]:
        outputs = self.vae(batch[self.input_key])
        mask = batch["mask"]
        terms = {
            "features_mse": F.mse_loss(self.vae.standardise(outputs["h_hat"]), self.vae.standardise(batch["features"])),
            "image_mse": F.mse_loss(mask * outputs["image_hat"], mask * batch["target"]),
            "kl": kl_divergence(outputs["mu"], outputs["logvar"]),
        }
        weights = {"features_mse": self.hparams.alpha, "image_mse": self.hparams.gamma, "kl": self.beta()}
        return terms, weights, outputs
