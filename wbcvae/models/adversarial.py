"""An adversarial term for the image decoder: a patch discriminator, trained beside the β-VAE, that tells the crops
from what the decoder draws.

Pixel MSE makes a decoder draw, for each latent, the average of the cells near it: a disc with a darker centre,
not a nucleus with lobes. A discriminator that learns to tell real cells from decoded ones gives the decoder a
gradient towards what real cells look like. It is a PatchGAN (pix2pix, VQGAN): one logit per ~38-pixel patch,
so it judges chromatin, the nucleus' outline and lobes rather than the whole cell.

The decoder is judged on two kinds of drawing: the reconstructions of the batch's cells, and *mixes*, latents
between two cells of the batch (z = a·μ_i + (1 − a)·μ_j, a uniform). A trajectory's frames decode points between
cells (centroids of many of them), exactly where a decoder trained on reconstructions alone draws averages;
ACAI (Berthelot et al. 2019) asks the same of an autoencoder's interpolants.

Every image the discriminator sees is what a figure shows (`cell_on_grey`): a crop inside its cell mask, a
decoded cell inside its own predicted mask, on neutral grey; the background never gives a real cell away.

Both players learn in the one optimiser step: the discriminator's loss reaches only its own weights (the decoded
images are detached), the decoder's non-saturating loss only the β-VAE's (the discriminator's weights are read
detached). The decoder's term is weighted adaptively, as VQGAN does: `adversarial_weight` × the ratio of the pixel
term's gradient to the adversarial term's at the decoder's last layer, so that 1 means "pull as hard as γ·MSE".
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from wbcvae.models.image_vae import ImageVAE, cell_on_grey

ADAPTIVE_WEIGHT_MAX = 1e4  # the ratio of gradient norms is capped (VQGAN's bound) while the adversarial one is ~0


class PatchDiscriminator(nn.Module):
    """Image (B×3×S×S in [0, 1]) → one real-or-decoded logit per patch (B×1×S/8×S/8): three stride-2 4×4
    convolutions and a 3×3 one, leaky ReLUs, no normalisation (the cells of a batch are judged one by one)."""

    def __init__(self, channels: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width_in = 3
        for width in (channels, 2 * channels, 4 * channels):
            layers += [nn.Conv2d(width_in, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
            width_in = width
        self.body = nn.Sequential(*layers, nn.Conv2d(width_in, 1, 3, padding=1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.body(2 * image - 1)


def latent_mixes(mu: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Each cell's μ mixed with another cell's of the batch, a uniform share of each (B×D)."""
    device = mu.device if generator is None else generator.device
    partner = torch.randperm(len(mu), generator=generator, device=device).to(mu.device)
    share = torch.rand(len(mu), 1, generator=generator, device=device).to(mu)
    return share * mu + (1 - share) * mu[partner]


def adversarial_losses(
    discriminator: PatchDiscriminator,
    vae: ImageVAE,
    outputs: dict[str, torch.Tensor],
    target: torch.Tensor,
    mask: torch.Tensor,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(the decoder's non-saturating loss, the discriminator's loss) on the cells of `outputs` (a β-VAE's
    forward of the crops `target` with cell masks `mask`): real crops against their reconstructions and mixes
    (drawn with `generator`)."""
    _, mixed, mixed_mask = vae.decode(latent_mixes(outputs["mu"], generator))
    decoded = torch.cat([outputs["image_hat"], mixed])
    decoded = cell_on_grey(decoded, torch.cat([outputs["mask_logits"], mixed_mask]).sigmoid().detach())
    real = cell_on_grey(target, mask)
    real_logits, fake_logits = discriminator(real), discriminator(decoded.detach())
    discriminator_loss = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits)) + F.binary_cross_entropy_with_logits(
        fake_logits, torch.zeros_like(fake_logits)
    )
    frozen = {name: weight.detach() for name, weight in discriminator.named_parameters()}
    judged = torch.func.functional_call(discriminator, frozen, (decoded,))
    decoder_loss = F.binary_cross_entropy_with_logits(judged, torch.ones_like(judged))
    return decoder_loss, discriminator_loss


def adaptive_weight(pixel_term: torch.Tensor, adversarial_term: torch.Tensor, last_layer: torch.Tensor) -> torch.Tensor:
    """‖∂pixel/∂W‖ / ‖∂adversarial/∂W‖ at the decoder's last layer W (detached; VQGAN's balance)."""
    pixel_grad = torch.autograd.grad(pixel_term, last_layer, retain_graph=True)[0]
    adversarial_grad = torch.autograd.grad(adversarial_term, last_layer, retain_graph=True)[0]
    return (pixel_grad.norm() / (adversarial_grad.norm() + 1e-4)).clamp(0, ADAPTIVE_WEIGHT_MAX).detach()
