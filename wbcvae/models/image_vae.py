"""Image β-VAE: Mask R-CNN RoI features (256×14×14) → 50-d latent → features again → the masked crop."""

from __future__ import annotations

import torch
from torch import nn

from wbcvae.models.losses import reparameterise


class ImageVAE(nn.Module):
    """Encodes RoIAlign feature maps; decodes to ĥ (same shape) and from ĥ to a 3×S×S image Î in [0, 1].

    The image is decoded *from ĥ*, not from z directly, so the feature decoder is what carries the
    morphology and the image head only renders it (as in the study).

    FPN features are far from unit scale (per-channel means of ±6 are common), which a freshly
    initialised network needs thousands of steps just to reach. So the network works on features
    standardised per channel with `feature_mean` / `feature_std` (buffers, saved with the weights,
    fitted on training data by `set_feature_statistics`); `encode` takes and `decode` returns ĥ in
    the features' own units.
    """

    def __init__(
        self,
        in_channels: int = 256,
        feature_size: int = 14,
        image_size: int = 128,
        latent_dim: int = 50,
        hidden_channels: int = 128,
    ) -> None:
        super().__init__()
        if feature_size % 2:
            raise ValueError(f"feature_size must be even (one stride-2 stage), got {feature_size}")
        if image_size % 8 or image_size // 8 < feature_size:
            raise ValueError(
                f"image_size must be a multiple of 8 and at least 8×feature_size ({8 * feature_size}), got {image_size}"
            )
        self.feature_shape = (in_channels, feature_size, feature_size)
        self.image_size = image_size
        self.latent_dim = latent_dim
        bottleneck = hidden_channels // 2
        self._bottleneck_shape = (bottleneck, feature_size // 2, feature_size // 2)
        flat = bottleneck * (feature_size // 2) ** 2

        self.register_buffer("feature_mean", torch.zeros(in_channels, 1, 1))
        self.register_buffer("feature_std", torch.ones(in_channels, 1, 1))
        self.encoder = nn.Sequential(
            nn.Conv2d(in_channels, hidden_channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden_channels, bottleneck, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
        )
        self.to_mu = nn.Linear(flat, latent_dim)
        self.to_logvar = nn.Linear(flat, latent_dim)

        self.from_latent = nn.Sequential(nn.Linear(latent_dim, flat), nn.ReLU())
        self.feature_decoder = nn.Sequential(
            nn.ConvTranspose2d(bottleneck, hidden_channels, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden_channels, in_channels, 3, padding=1),  # ĥ is unbounded, like FPN features
        )
        # A "valid" transposed conv grows F×F to S/8×S/8 (14 → 16); unlike interpolation its backward
        # pass is deterministic on CUDA, which exact resume (deterministic mode) needs.
        grow = image_size // 8 - feature_size + 1
        self.image_stem = nn.Sequential(nn.ConvTranspose2d(in_channels, 64, grow), nn.ReLU())
        self.image_head = nn.Sequential(
            nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(32, 16, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(16, 16, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 3, 3, padding=1),
            nn.Sigmoid(),  # targets are crops in [0, 1]
        )

    def set_feature_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Per-channel mean and standard deviation (C values each) of the training features."""
        self.feature_mean.copy_(mean.reshape(-1, 1, 1))
        self.feature_std.copy_(std.reshape(-1, 1, 1).clamp_min(1e-6))

    def standardise(self, h: torch.Tensor) -> torch.Tensor:
        """Features in the units the network works in: per channel, zero mean and unit variance."""
        return (h - self.feature_mean) / self.feature_std

    def encode(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """μ and log σ² of q(z | h) for a batch of feature maps B×C×F×F."""
        hidden = self.encoder(self.standardise(h))
        return self.to_mu(hidden), self.to_logvar(hidden)

    def decode(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reconstructed feature maps ĥ (B×C×F×F, the features' units) and the image Î (B×3×S×S)."""
        bottleneck = self.from_latent(z).view(-1, *self._bottleneck_shape)
        standardised = self.feature_decoder(bottleneck)
        h_hat = standardised * self.feature_std + self.feature_mean
        return h_hat, self.image_head(self.image_stem(standardised))

    def forward(self, h: torch.Tensor, sample: bool | None = None) -> dict[str, torch.Tensor]:
        """Encode, draw z (only while training unless `sample` says otherwise; else z = μ), decode."""
        mu, logvar = self.encode(h)
        z = reparameterise(mu, logvar) if (self.training if sample is None else sample) else mu
        h_hat, image_hat = self.decode(z)
        return {"mu": mu, "logvar": logvar, "z": z, "h_hat": h_hat, "image_hat": image_hat}
