"""Canonical pose: one cell drawn at several angles, positions and mirrorings is turned to one picture,
and a store remembers which pose its crops were read in."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from wbcvae.errors import InputError
from wbcvae.features.pose import canonical_pose, pose_transform
from wbcvae.segmentation.classical import StainSegmenter

SIZE = 64
LOBES = ((4.0, 0.0, 6.0), (-5.0, 0.0, 4.0), (1.0, 5.0, 3.0))  # (x, y, radius): heavier on +x, a bump on +y


def drawn_cell(angle: float, shift: tuple[float, float], mirror: bool = False) -> torch.Tensor:
    """A 3×64×64 crop: pink background, a pale cytoplasm disc and a three-lobed nucleus, turned by
    `angle` (radians) about the cell's centre, which sits `shift` pixels from the crop's centre."""
    rows, cols = torch.meshgrid(torch.arange(SIZE) + 0.5, torch.arange(SIZE) + 0.5, indexing="ij")
    centre = (SIZE / 2 + shift[0], SIZE / 2 + shift[1])
    crop = torch.tensor([0.96, 0.90, 0.84])[:, None, None].repeat(1, SIZE, SIZE)
    crop[:, (cols - centre[0]) ** 2 + (rows - centre[1]) ** 2 < 15**2] = torch.tensor([0.78, 0.72, 0.86])[:, None]
    c, s = math.cos(angle), math.sin(angle)
    for x, y, radius in LOBES:
        y = -y if mirror else y
        at = (centre[0] + c * x - s * y, centre[1] + s * x + c * y)
        crop[:, (cols - at[0]) ** 2 + (rows - at[1]) ** 2 < radius**2] = torch.tensor([0.36, 0.18, 0.52])[:, None]
    return crop


def nucleus_of(crop: torch.Tensor) -> np.ndarray:
    return StainSegmenter()(crop.permute(1, 2, 0).numpy()).nucleus


def test_one_cell_at_any_angle_position_and_mirroring_is_turned_to_one_picture():
    crops = torch.stack([
        drawn_cell(0.0, (0, 0)), drawn_cell(0.7, (4, -3)), drawn_cell(2.4, (-5, 2)), drawn_cell(-1.9, (3, 5), mirror=True),
    ])  # fmt: skip
    turned = canonical_pose(crops, StainSegmenter())
    before = [nucleus_of(c) for c in crops]
    after = [nucleus_of(c) for c in turned]

    def iou(a, b):
        return (a & b).sum() / (a | b).sum()

    assert min(iou(before[0], b) for b in before[1:]) < 0.3  # as drawn, the nuclei barely overlap
    assert min(iou(after[0], a) for a in after[1:]) > 0.8  # turned, they are one nucleus
    ys, xs = np.nonzero(after[0])
    assert abs(xs.mean() + 0.5 - SIZE / 2) < 4 and abs(ys.mean() + 0.5 - SIZE / 2) < 4
    assert np.ptp(xs) > np.ptp(ys)  # the long axis lies horizontal


def test_a_crop_without_a_nucleus_is_left_as_it_is():
    np.testing.assert_array_equal(pose_transform(np.zeros((8, 8), bool), np.zeros((8, 8), bool)), [[1, 0, 0], [0, 1, 0]])
    plain = torch.full((1, 3, 32, 32), 0.9)
    torch.testing.assert_close(canonical_pose(plain, StainSegmenter()), plain)
    with pytest.raises(InputError, match="square"):
        canonical_pose(torch.rand(1, 3, 32, 40), StainSegmenter())


def test_a_store_remembers_its_pose(tmp_path):
    from wbcvae.data.synthetic.world import write_world
    from wbcvae.features.extract import FeatureExtractor, extract_features
    from wbcvae.segmentation.maskrcnn import MaskRCNNModule

    world = write_world(tmp_path / "world", cells_per_class=1, rna_cells=13, n_genes=50, crop_size=64, seed=5, progress=False)
    torch.manual_seed(0)
    module = MaskRCNNModule(backbone="resnet18", input_size=64, proposals=32, roi_samples=16, mask_head=(32,))
    checkpoint = tmp_path / "maskrcnn.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams), "wbcvae_init": module.init}, checkpoint)
    with pytest.raises(InputError, match="pose"):
        FeatureExtractor(module.model, pose="upright")

    store = extract_features(world, checkpoint, tmp_path / "store", batch_size=8, progress=False, pose="canonical")
    assert store.provenance["fingerprint"]["pose"] == "canonical"
    with pytest.raises(InputError, match="different pose"):
        extract_features(world, checkpoint, tmp_path / "store", progress=False)  # as_is, the default

    as_is = extract_features(world, checkpoint, tmp_path / "as_is", batch_size=8, progress=False)
    provenance = json.loads((as_is.root / "provenance.json").read_text())
    del provenance["fingerprint"]["pose"]  # a store from before the setting existed was read as it is
    (as_is.root / "provenance.json").write_text(json.dumps(provenance))
    extract_features(world, checkpoint, as_is.root, progress=False)  # accepted: nothing to do
    assert not np.array_equal(store.array("target"), as_is.array("target"))
