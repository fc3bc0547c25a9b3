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
from wbcvae.errors import InputError
from wbcvae.models.image_vae import NEUTRAL_GREY

# The pretrained file is fitted to the detector's pixel normalisation (`fit_to_detector_pixels`).
from wbcvae.segmentation.maskrcnn import PIXEL_MEAN, PIXEL_STD, check_backbone

STAGES = ("layer1", "layer2")  # at a quarter and an eighth of the crop: outlines, lobes, granules; deeper costs more than it adds on a CPU


class PerceptualNetwork(nn.Module):
    """A ResNet's stem and its first two stages, frozen: image (B×3×S×S in [0, 1]) → two feature maps."""

    def __init__(self, backbone: str = "resnet18") -> None:
        super().__init__()
        check_backbone(backbone)
        resnet = torchvision.models.get_model(backbone, weights=None)
        self.stem = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool)
        self.stages = nn.ModuleList(getattr(resnet, name) for name in STAGES)
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
        renamed = {"conv1.": "stem.0.", "bn1.": "stem.1.", **{f"{name}.": f"stages.{i}." for i, name in enumerate(STAGES)}}
        own = self.state_dict()
        fitting = {}
        for key, value in state.items():
            for old, new in renamed.items():
                if key.startswith(old) and (new + key[len(old):]) in own:
                    fitting[new + key[len(old):]] = value
        missing = [key for key in own if key not in fitting or fitting[key].shape != own[key].shape]
        if missing:
            raise InputError(f"{path}: not a ResNet state dict that fits this network ({len(missing)} tensors missing or of "
                             f"another shape, e.g. {missing[0]}); give the .pth `wbcvae segment pretrain` writes")
        self.load_state_dict(fitting)

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem((image - self.pixel_mean) / self.pixel_std)
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


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
