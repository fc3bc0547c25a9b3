"""A canonical pose for each crop: the cell moved to the centre and its nucleus turned to one orientation.

A smear shows the same nucleus at every angle. A latent that has to reconstruct the crop then spends
dimensions on the angle, and the mean of a class' latents (the end of every decoded path) decodes to the
average over all angles: a lobed or band-shaped nucleus turns into a ring. Turned to one pose before
Mask R-CNN reads it, a crop's angle is no longer something to encode, and a class mean is a cell.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from wbcvae.errors import InputError
from wbcvae.segmentation.classical import StainSegmenter

POSES = ("as_is", "canonical")


def pose_transform(cell: np.ndarray, nucleus: np.ndarray) -> np.ndarray:
    """2×3 `affine_grid` matrix (normalised coordinates, `align_corners=False`) that moves the centroid of
    `cell` (H×W bool, H = W) to the centre, turns the major axis of `nucleus` horizontal, and mirrors so that
    the nucleus' skew is positive along both axes: a band's or kidney's hollow side, a lobed nucleus' heavier
    end, always on the same side. Identity when no nucleus was found."""
    if not nucleus.any():
        return np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    size = cell.shape[0]

    def normalised(mask: np.ndarray) -> np.ndarray:  # N×2 pixel centres as (x, y) in [-1, 1]
        ys, xs = np.nonzero(mask)
        return (np.stack([xs, ys], 1) + 0.5) * (2.0 / size) - 1.0

    centre = normalised(cell if cell.any() else nucleus).mean(0)
    points = normalised(nucleus)
    points = points - points.mean(0)
    _, axes = np.linalg.eigh(np.cov(points.T) if len(points) > 1 else np.eye(2))
    major, minor = axes[:, 1], axes[:, 0]  # eigh sorts the variances in ascending order
    signs = [1.0 if np.mean((points @ axis) ** 3) >= 0 else -1.0 for axis in (major, minor)]
    turn = np.stack([signs[0] * major, signs[1] * minor], 1)  # columns: where the output's x and y axes point
    return np.concatenate([turn, centre[:, None]], 1)


def canonical_pose(images: torch.Tensor, segmenter: StainSegmenter) -> torch.Tensor:
    """`images` B×3×S×S in [0, 1], each turned to its canonical pose (`pose_transform` of the central
    cell the stain segmenter finds). Pixels brought in from outside the crop mirror its border."""
    if images.shape[-1] != images.shape[-2]:
        raise InputError(f"canonical pose needs square crops, got {tuple(images.shape[-2:])}")
    theta = []
    for image in images:
        found = segmenter(image.permute(1, 2, 0).cpu().numpy())
        theta.append(pose_transform(found.cell, found.nucleus))
    theta = torch.as_tensor(np.stack(theta), dtype=images.dtype, device=images.device)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False).clamp(0, 1)
