"""Image β-VAE: Mask R-CNN RoI features (256×14×14) → 50-d latent → features again → the masked crop."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from wbcvae.errors import InputError
from wbcvae.models.losses import LOGVAR_RANGE, reparameterise

IMAGE_DECODERS = ("residual", "study")
NEUTRAL_GREY = 0.5
# The least deviation a colour-profile entry is standardised by: 1 % of a cell's pixels (the profile's
# entries are shares of them). A bin (almost) empty in the statistics' batches otherwise reads a cell
# that has a few pixels there at thousands of sd, and its KL spikes (a 1e-5 deviation once gave 10,680 sd).
COLOUR_STD_FLOOR = 0.01


def cell_on_grey(image: torch.Tensor, cell: torch.Tensor, grey: float = NEUTRAL_GREY) -> torch.Tensor:
    """The picture a figure shows: `image` (B×3×S×S) where `cell` (B×1×S×S, a mask or a probability)
    is above one half, neutral grey elsewhere. A decoder is only trained on the pixels inside the cell,
    so what it draws outside is unconstrained noise that must never reach a figure.

    Where a sample's `cell` is nowhere above one half (a mask head early in training is unsure
    everywhere), its threshold drops to half its own maximum: the most likely region of the cell is
    shown rather than a plain grey square. An all-zero mask still shows nothing."""
    threshold = (0.5 * cell.flatten(1).amax(1)).clamp_max(0.5).view(-1, 1, 1, 1)
    return torch.where(cell > threshold, image, torch.full_like(image, grey))


class Upsample2x(nn.Module):
    """Nearest-neighbour ×2 as a broadcast: no checkerboard (unlike a stride-2 transposed conv), and its
    backward is a plain sum, deterministic on CUDA, which exact resume (deterministic mode) needs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        return x[:, :, :, None, :, None].expand(b, c, h, 2, w, 2).reshape(b, c, 2 * h, 2 * w)


class ResidualBlock(nn.Module):
    """x + conv(relu(conv(relu(x)))): depth without a harder optimisation."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def residual_image_head(in_channels: int, grow: int, channels: int) -> tuple[nn.Sequential, int]:
    """ĥ (F×F) → an S×S feature map: a stride-1 "valid" transposed conv grows F to S/8 (a full
    convolution, so no checkerboard), then three stages of upsample + conv, with residual blocks at the
    two coarse stages where the nucleus shape and lobes are laid out. Channels halve per stage
    (`channels` at S/8, at least 16). Returns the network and its output channels."""
    widths = [max(channels >> stage, 16) for stage in range(4)]  # S/8, S/4, S/2, S
    layers: list[nn.Module] = [nn.ConvTranspose2d(in_channels, widths[0], grow), ResidualBlock(widths[0])]
    for stage in (1, 2, 3):
        layers += [nn.ReLU(), Upsample2x(), nn.Conv2d(widths[stage - 1], widths[stage], 3, padding=1)]
        if stage == 1:
            layers.append(ResidualBlock(widths[stage]))
    return nn.Sequential(*layers, nn.ReLU()), widths[3]


def study_image_head(in_channels: int, grow: int) -> tuple[nn.Sequential, int]:
    """The study's head: stride-2 transposed convolutions down to 16 channels at S×S (kept for the ablation)."""
    layers = [nn.ConvTranspose2d(in_channels, 64, grow), nn.ReLU()]
    for c_in, c_out in ((64, 32), (32, 16), (16, 16)):
        layers += [nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1), nn.ReLU()]
    return nn.Sequential(*layers), 16


def bilinear_matrix(size_in: int, size_out: int) -> torch.Tensor:
    """The size_out×size_in matrix of 1-d bilinear resizing (align_corners=False): M·X·Mᵀ resizes a map X.
    A fixed matrix product rather than `F.interpolate`, whose backward is not deterministic on CUDA."""
    return F.interpolate(torch.eye(size_in)[:, None], size=size_out, mode="linear", align_corners=False)[:, 0].T


class MaskHead(nn.Module):
    """ĥ (standardised, C×F×F) → the cell mask's logits (1×S×S): where cells usually lie (`prior_logits`,
    the per-pixel log-odds of the training masks, `set_prior`) plus what ĥ says of this cell, read by a
    3×3 and a 1×1 convolution at F×F (as Mask R-CNN's own mask head reads an outline off these RoI
    features) and resized bilinearly to S. Both on purpose: at the end of the image head, from p = ½,
    the logits had barely moved after a hundred Adam steps (each weight moves by about the learning rate
    per step) and every figure drew an empty mask; from the prior the mask is a cell from the first step."""

    def __init__(self, in_channels: int, feature_size: int, image_size: int, hidden: int = 32) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_channels, hidden, 3, padding=1), nn.ReLU(), nn.Conv2d(hidden, 1, 1))
        nn.init.zeros_(self.body[-1].bias)
        self.prior_logits = nn.Parameter(torch.zeros(1, image_size, image_size))
        self.register_buffer("resize", bilinear_matrix(feature_size, image_size), persistent=False)

    @torch.no_grad()
    def set_prior(self, cell_fraction: torch.Tensor | float) -> None:
        """Start from the log-odds of the cell's share of each pixel (an S×S map, or one number)."""
        fraction = torch.as_tensor(cell_fraction, dtype=self.prior_logits.dtype).clamp(1e-3, 1 - 1e-3)
        self.prior_logits.copy_(torch.logit(fraction).to(self.prior_logits.device).expand_as(self.prior_logits))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.resize @ self.body(h) @ self.resize.T + self.prior_logits


def _no_colour_in_old_checkpoints(module: ImageVAE, state_dict: dict, prefix: str, *args) -> None:
    """A checkpoint from before the colour profile existed reads h alone: it loads with empty colour statistics.
    One from before the colour decoder keeps this model's freshly initialised one (nothing trained it)."""
    if f"{prefix}to_mu.weight" not in state_dict:
        return
    if f"{prefix}colour_mean" not in state_dict:
        state_dict[f"{prefix}colour_mean"] = torch.zeros(0)
        state_dict[f"{prefix}colour_std"] = torch.ones(0)
    if module.colour_decoder is not None:
        for name, tensor in module.colour_decoder.state_dict().items():
            state_dict.setdefault(f"{prefix}colour_decoder.{name}", tensor.detach().clone())


class ImageVAE(nn.Module):
    """Encodes RoIAlign feature maps; decodes to ĥ (same shape) and from ĥ to a 3×S×S image Î in [0, 1]
    and the logits of the cell mask (1×S×S).

    The image is decoded *from ĥ*, not from z directly, so the feature decoder is what carries the
    morphology and the image head only renders it (as in the study). The mask logits, read off ĥ by a
    short `MaskHead`, let a figure show the decoded cell inside its own predicted outline (`render`)
    rather than the pixels the masked image loss never constrained. `image_decoder` picks the head: "residual" (upsample + conv with
    residual blocks, `image_channels` wide at S/8) or "study" (the study's transposed convolutions).

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
        image_decoder: str = "study",
        image_channels: int = 64,
        colour_bins: int = 0,
        n_classes: int = 0,
    ) -> None:
        super().__init__()
        if feature_size % 2:
            raise ValueError(f"feature_size must be even (one stride-2 stage), got {feature_size}")
        if image_size % 8 or image_size // 8 < feature_size:
            raise ValueError(
                f"image_size must be a multiple of 8 and at least 8×feature_size ({8 * feature_size}), got {image_size}"
            )
        if image_decoder not in IMAGE_DECODERS:
            raise InputError(f"image_decoder must be one of {', '.join(IMAGE_DECODERS)}, got {image_decoder!r}")
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
        # The crop's colour profile (`colour_profile`: histograms + the cell's share), standardised, joins h's
        # code here when `colour_bins` > 0; 0 is the study's encoder, which reads h alone.
        self.colour_bins = colour_bins
        self.colour_dim = 3 * colour_bins + 1 if colour_bins else 0
        self.register_buffer("colour_mean", torch.zeros(self.colour_dim))
        self.register_buffer("colour_std", torch.ones(self.colour_dim))
        self.to_mu = nn.Linear(flat + self.colour_dim, latent_dim)
        self.to_logvar = nn.Linear(flat + self.colour_dim, latent_dim)
        # ... and z gives it back (`colour_hat`, standardised): a term on it keeps the colours in the latent.
        self.colour_decoder = nn.Linear(latent_dim, self.colour_dim) if self.colour_dim else None
        self._register_load_state_dict_pre_hook(_no_colour_in_old_checkpoints, with_module=True)
        # With `n_classes` > 0, a linear read-out of μ names the cell type (`class_logits`), as scANVI's classifier
        # does: a loss on it asks the latent to keep the classes apart. 0 is the study's unsupervised β-VAE.
        self.classifier = nn.Linear(latent_dim, n_classes) if n_classes else None

        self.from_latent = nn.Sequential(nn.Linear(latent_dim, flat), nn.ReLU())
        self.feature_decoder = nn.Sequential(
            nn.ConvTranspose2d(bottleneck, hidden_channels, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden_channels, in_channels, 3, padding=1),  # ĥ is unbounded, like FPN features
        )
        grow = image_size // 8 - feature_size + 1  # kernel of the "valid" transposed conv F → S/8 (14 → 16)
        if image_decoder == "residual":
            self.image_head, width = residual_image_head(in_channels, grow, image_channels)
        else:
            self.image_head, width = study_image_head(in_channels, grow)
        self.to_pixels = nn.Sequential(nn.Conv2d(width, 3, 3, padding=1), nn.Sigmoid())  # targets are crops in [0, 1]
        self.mask_head = MaskHead(in_channels, feature_size, image_size)
        self.mask_head.set_prior(0.1)  # about a white cell's share of a crop; refitted on the training masks

    def set_feature_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Per-channel mean and standard deviation (C values each) of the training features."""
        self.feature_mean.copy_(mean.reshape(-1, 1, 1))
        self.feature_std.copy_(std.reshape(-1, 1, 1).clamp_min(1e-6))

    def standardise(self, h: torch.Tensor) -> torch.Tensor:
        """Features in the units the network works in: per channel, zero mean and unit variance."""
        return (h - self.feature_mean) / self.feature_std

    def set_colour_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Mean and standard deviation of each entry of the training cells' colour profiles; the deviation
        no less than `COLOUR_STD_FLOOR`, so that no entry reads a cell at more than 100 sd."""
        self.colour_mean.copy_(mean)
        self.colour_std.copy_(std.clamp_min(COLOUR_STD_FLOOR))

    def standardise_colour(self, colour: torch.Tensor) -> torch.Tensor:
        """Colour profiles in the units the encoder reads and `colour_hat` gives back."""
        return (colour - self.colour_mean) / self.colour_std

    def encode(self, h: torch.Tensor, colour: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """μ and log σ² of q(z | h) for a batch of feature maps B×C×F×F, and of the crops' colour profiles
        (B×colour_dim, `colour_profile`) when the model reads them."""
        hidden = self.encoder(self.standardise(h))
        if self.colour_dim:
            if colour is None:
                raise InputError(f"this image β-VAE reads each crop's colour profile ({self.colour_bins} bins) beside h; none was given")
            hidden = torch.cat([hidden, self.standardise_colour(colour)], 1)
        return self.to_mu(hidden), self.to_logvar(hidden).clamp(*LOGVAR_RANGE)

    def decode(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reconstructed feature maps ĥ (B×C×F×F, the features' units), the image Î (B×3×S×S) and the
        cell mask's logits (B×1×S×S)."""
        bottleneck = self.from_latent(z).view(-1, *self._bottleneck_shape)
        standardised = self.feature_decoder(bottleneck)
        h_hat = standardised * self.feature_std + self.feature_mean
        return h_hat, self.to_pixels(self.image_head(standardised)), self.mask_head(standardised)

    def render(self, z: torch.Tensor) -> torch.Tensor:
        """What figures show of a latent: the decoded cell inside its own predicted mask, on grey (B×3×S×S)."""
        _, image_hat, mask_logits = self.decode(z)
        return cell_on_grey(image_hat, mask_logits.sigmoid())

    def forward(self, h: torch.Tensor, sample: bool | None = None, colour: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Encode, draw z (only while training unless `sample` says otherwise; else z = μ), decode."""
        mu, logvar = self.encode(h, colour)
        z = reparameterise(mu, logvar) if (self.training if sample is None else sample) else mu
        h_hat, image_hat, mask_logits = self.decode(z)
        outputs = {"mu": mu, "logvar": logvar, "z": z, "h_hat": h_hat, "image_hat": image_hat, "mask_logits": mask_logits}
        if self.colour_decoder is not None:
            outputs["colour_hat"] = self.colour_decoder(z)  # B×colour_dim, standardised
        if self.classifier is not None:
            outputs["class_logits"] = self.classifier(mu)  # B×n_classes
        return outputs
