"""A feature-matching term for the image loss, on a network trained here: the first two stages of the ResNet
that `wbcvae segment pretrain` taught to name the cell types of the labelled crops (nothing downloaded).

Pixel MSE lets a decoder draw the average of the cells that share a latent neighbourhood: a disc with a
darker centre. A network that tells a band from a segmented neutrophil responds to the nucleus' outline,
its lobes and the granules; asking the decoded cell to match the crop in its features (as LPIPS does with
ImageNet networks) asks for that structure. Frozen, in eval mode, so its batch norms never learn from the
decoder's output.
"""

from __future__ import annotations

import os

import torch
import torchvision
from torch import nn

from wbcvae.checkpoints import read_state_dict
from wbcvae.errors import InputError, one_line
from wbcvae.models.image_vae import NEUTRAL_GREY

# The pretrained file is fitted to the detector's pixel normalisation (`fit_to_detector_pixels`).
from wbcvae.segmentation.maskrcnn import PIXEL_MEAN, PIXEL_STD, check_backbone

class PerceptualNetwork(nn.Module):
    """A ResNet's stem and its first two stages, frozen: image (B×3×S×S in [0, 1]) → two feature maps.
    Its modules keep torchvision's names (`conv1`, `bn1`, `layer1`, …), so a ResNet state dict loads as it is."""

    def __init__(self, backbone: str = "resnet18") -> None:
        super().__init__()
        check_backbone(backbone)
        resnet = torchvision.models.get_model(backbone, weights=None)
        self.conv1, self.bn1, self.relu, self.maxpool = resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool
        # at a quarter and an eighth of the crop: outlines, lobes, granules; deeper stages cost more than they add on a CPU
        self.layer1, self.layer2 = resnet.layer1, resnet.layer2
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> PerceptualNetwork:
        """Always in eval mode: batch norm keeps the statistics it was trained with."""
        return super().train(False)

    def load_file(self, path: str | os.PathLike) -> None:
        """Copy the stem and stages from a ResNet state dict (the `.pth` `wbcvae segment pretrain` writes)."""
        state = read_state_dict(path, "perceptual network")
        own = self.state_dict()
        try:
            self.load_state_dict({key: value for key, value in state.items() if key in own})
        except RuntimeError as err:  # missing tensors, or tensors of another shape (another backbone)
            raise InputError(
                f"{path}: not a ResNet state dict that fits this network ({one_line(err)[:200]}); give the .pth `wbcvae segment pretrain` writes"
            ) from None

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        quarter = self.layer1(self.maxpool(self.relu(self.bn1(self.conv1((image - self.pixel_mean) / self.pixel_std)))))
        return [quarter, self.layer2(quarter)]


def perceptual_distance(network: PerceptualNetwork, image: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """How far m·Î is from m·I (both on neutral grey) in `network`'s features: per stage, the squared distance
    between feature vectors normalised to unit length over channels (as LPIPS does), averaged over positions,
    summed over stages. 0 for the same cell; what lies outside m is the same grey in both, so it costs nothing."""
    grey = (1 - mask) * NEUTRAL_GREY
    with torch.no_grad():
        wanted = network(mask * target + grey)
    total = image.new_zeros(())
    for got, want in zip(network(mask * image + grey), wanted):
        total = total + (unit(got) - unit(want)).pow(2).sum(1).mean()
    return total


def unit(features: torch.Tensor) -> torch.Tensor:
    """Each position's feature vector (B×C×H×W, over C) scaled to unit length."""
    return features / features.norm(dim=1, keepdim=True).clamp_min(1e-6)
