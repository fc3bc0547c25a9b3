"""bench/vae_quality.py on a toy feature store: its measures, their ranges, and a held-out store of another source."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from wbcvae.errors import InputError
from wbcvae.features.store import FeatureStore
from wbcvae.models.image_vae import cell_on_grey
from wbcvae.training.image_plan import ImageVAEPlan

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("vae_quality", REPO / "bench" / "vae_quality.py")
quality = importlib.util.module_from_spec(spec)
spec.loader.exec_module(quality)

CLASSES = ("promyelocyte", "myelocyte", "neutrophil_segmented", "monocyte")


def toy_cells(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, uint8 crops (3×128×128: bright slide, pink cell, purple nucleus whose size falls with the
    stage) and cell masks of `n` drawn cells, classes in turn."""
    rng = np.random.default_rng(seed)
    labels = np.array(CLASSES)[np.arange(n) % len(CLASSES)]
    rows, cols = np.mgrid[:128, :128]
    crops = np.empty((n, 3, 128, 128), np.uint8)
    masks = np.empty((n, 1, 128, 128), np.uint8)
    for i in range(n):
        dy, dx = 0, 0  # a cell's outline moved by a pixel weighs more in pixel space than its nucleus
        radius = 22 - 4 * (i % len(CLASSES)) + rng.integers(-1, 2)
        cell = (rows - 64 - dy) ** 2 + (cols - 64 - dx) ** 2 < 40**2
        nucleus = (rows - 64 - dy) ** 2 + (cols - 60 - dx) ** 2 < radius**2
        image = np.where(cell, np.array([0.85, 0.72, 0.78])[:, None, None], 0.95)
        image = np.where(nucleus, np.array([0.35, 0.2, 0.5])[:, None, None], image)
        crops[i] = np.round(255 * np.clip(image + rng.normal(0, 0.01, image.shape), 0, 1))
        masks[i, 0] = cell
    return labels, crops, masks


def make_store(root: Path, n: int, seed: int, checkpoint_sha256: str = "toy") -> Path:
    """A complete feature store (the real format) of toy cells; features = a class prototype + noise."""
    labels, crops, masks = toy_cells(n, seed)
    prototypes = np.random.default_rng(0).normal(size=(len(CLASSES), 256, 14, 14))
    code = np.array([CLASSES.index(label) for label in labels])
    features = prototypes[code] + 0.3 * np.random.default_rng(seed).normal(size=(n, 256, 14, 14))
    meta = pd.DataFrame({"path": [f"/crops/{seed}-{i}.png" for i in range(n)], "label": labels, "patient": "",
                         "source_label": labels, "mask_path": ""})  # fmt: skip
    store = FeatureStore.create(root, meta, provenance={"source": "toy", "fingerprint": {"checkpoint_sha256": checkpoint_sha256}})
    store.write(np.arange(n), {"features": features.astype(np.float16), "mask": masks, "target": crops,
                               "score": np.ones(n, np.float32), "box": np.zeros((n, 4), np.float32), "origin": np.zeros(n, np.uint8)})  # fmt: skip
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny image β-VAE trained a few steps on a 48-cell toy store, and its last checkpoint."""
    from wbcvae.features.datamodule import FeatureDataModule

    folder = tmp_path_factory.mktemp("quality")
    store = make_store(folder / "train_store", 48, seed=1)
    L.seed_everything(0)
    plan = ImageVAEPlan(latent_dim=8, hidden_channels=8, kl_warmup_steps=0)
    trainer = L.Trainer(max_steps=4, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[ModelCheckpoint(dirpath=folder / "ckpt", save_last=True)])  # fmt: skip
    trainer.fit(plan, FeatureDataModule(store, batch_size=16, fractions=(0.8, 0.2, 0.0)))
    return folder / "ckpt" / "last.ckpt", folder


def test_quality_on_a_store_of_another_source_has_every_measure_with_baselines(trained):
    ckpt, folder = trained
    test_store = make_store(folder / "test_store", 20, seed=2)
    figure = folder / "figure.png"
    result = quality.evaluate(ckpt, "cpu", figure, max_cells=1000, test_store=test_store, pixel_cells=12)
    assert result["held_out"] == str(test_store) and result["held_out_cells"] == 20 and result["classes_in_test"] == 4
    assert result["train_cells"] == 40 and result["pixel_cells"] == 12 and result["stage_cells"] == 15
    representations = {"latent", "pca50_features", "pca50_image", "pca50_features+image", "colour_profile"}
    assert set(result["knn5_accuracy"]) == set(result["stage_spearman"]) == representations
    assert all(0 <= v <= 1 for v in result["knn5_accuracy"].values())
    assert all(-1 <= v <= 1 for v in result["stage_spearman"].values())
    # The pixels carry the class (nucleus size) and its stage order: their PCA-50 finds both.
    assert result["knn5_accuracy"]["pca50_image"] == 1.0 and result["stage_spearman"]["pca50_image"] > 0.8
    # So do its colours: a larger nucleus is a larger share of dark pixels.
    assert result["knn5_accuracy"]["colour_profile"] == 1.0 and result["stage_spearman"]["colour_profile"] > 0.8
    for key in ("nucleus_iou", "masked_ssim"):
        assert set(result[key]) == {"model", "pca50_image", "training_mean"}
        assert all(0 <= v <= 1 for v in result[key].values())
    # The PCA-50 reconstruction of such simple cells is near perfect, far better than their mean cell.
    assert result["nucleus_iou"]["pca50_image"] > 0.9 > result["nucleus_iou"]["training_mean"]
    assert result["masked_ssim"]["pca50_image"] > result["masked_ssim"]["training_mean"]
    assert set(result["nucleus_solidity"]) == {"input", *(f"{n}{e}" for n in ("model", "pca50_image", "training_mean") for e in ("", "/error"))}  # NaN: no segmented cell
    assert set(result["reconstruction_mse"]) == {"features", "image"}
    assert result["reconstruction_mse"]["image"]["pca50_image"] < result["reconstruction_mse"]["image"]["training_mean"]
    assert figure.stat().st_size > 0
    json.dumps(result)  # plain values only
    assert "| kNN(5) accuracy" in quality.markdown(result)


def test_a_perfect_reconstruction_scores_one():
    labels, crops, masks = toy_cells(6, seed=3)
    images = quality.on_slide(crops.astype(np.float32) / 255, masks.astype(np.float32))
    assert np.allclose(quality.masked_ssim(images, images, masks), 1.0)
    segmenter = quality.StainSegmenter()
    assert all(segmenter(image.transpose(1, 2, 0)).found for image in images)  # so IoU 1 is not two empty nuclei
    found = quality.nuclei(images, segmenter)
    assert np.allclose(quality.nucleus_iou(found, found), 1.0)
    shifted = np.roll(images, 8, axis=-1)  # the nucleus drawn 8 px off
    assert quality.nucleus_iou(found, quality.nuclei(shifted, segmenter)).max() < 0.8


def test_nucleus_solidity_tells_lobes_from_a_round_nucleus():
    rows, cols = np.mgrid[:64, :64]
    round_nucleus = (rows - 32) ** 2 + (cols - 32) ** 2 < 15**2
    lobes = np.zeros((64, 64), bool)
    for cy, cx in ((20, 20), (44, 24), (30, 46)):  # three lobes joined by a one-pixel strand
        lobes |= (rows - cy) ** 2 + (cols - cx) ** 2 < 7**2
    lobes[20:45, 20] = lobes[30, 20:47] = True
    solidity = quality.nucleus_solidity([round_nucleus, lobes, np.zeros((64, 64), bool)])
    assert solidity[0] > 0.95 and solidity[1] < 0.6 and np.isnan(solidity[2])


def test_stage_order_is_the_projection_on_the_promyelocyte_to_segmented_line():
    from wbcvae.vocabulary import CLASS_INDEX

    stages = ["promyelocyte", "myelocyte", "metamyelocyte", "neutrophil_banded", "neutrophil_segmented"]
    labels = np.array([CLASS_INDEX[s] for s in stages for _ in range(3)])
    position = np.repeat(np.arange(5.0), 3)
    codes = np.stack([position, np.ones(15)], axis=1)  # the stage along x
    assert quality.stage_spearman(codes, labels, codes, labels) == pytest.approx(1.0)
    assert quality.stage_spearman(codes, labels, -codes, labels) == pytest.approx(-1.0)
    codes[:, 1] = np.random.default_rng(0).normal(size=15)  # orthogonal noise: the centroid line tilts a little
    assert 0.9 < quality.stage_spearman(codes, labels, codes, labels) < 1.0
    assert np.isnan(quality.stage_spearman(codes[3:], labels[3:], codes, labels))  # no promyelocyte to start from


def test_a_store_from_another_maskrcnn_is_refused(trained):
    ckpt, folder = trained
    other = make_store(folder / "other_store", 8, seed=4, checkpoint_sha256="another")
    with pytest.raises(InputError, match="another Mask R-CNN checkpoint"):
        quality.evaluate(ckpt, "cpu", None, max_cells=100, test_store=other, pixel_cells=4)


def test_cells_per_class_keeps_a_seeded_subset_of_each_class(trained):
    from wbcvae.features.datamodule import FeatureDataModule

    _, folder = trained
    data = FeatureDataModule(folder / "train_store", fractions=(0.5, 0.5, 0.0), cells_per_class=5)
    data.setup("fit")
    rows = np.concatenate([data.datasets[s].rows for s in ("train", "val", "test")])
    labels = data.store.meta["label"].to_numpy()[rows]
    assert len(rows) == 20 and all((labels == c).sum() == 5 for c in CLASSES)
    again = FeatureDataModule(folder / "train_store", fractions=(0.5, 0.5, 0.0), cells_per_class=5)
    again.setup("fit")
    assert np.array_equal(np.sort(rows), np.sort(np.concatenate([again.datasets[s].rows for s in ("train", "val", "test")])))


def test_colour_outliers_finds_a_cell_read_far_off_by_a_near_empty_bin(tmp_path):
    spec = importlib.util.spec_from_file_location("colour_outliers", REPO / "bench" / "colour_outliers.py")
    outliers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(outliers)
    from wbcvae.features.datamodule import FeatureDataModule
    from wbcvae.models.losses import colour_profile

    store = make_store(tmp_path / "store", 8, seed=1)
    plan = ImageVAEPlan(latent_dim=8, hidden_channels=8, colour_bins=4)
    data = FeatureDataModule(store, batch_size=8, fractions=[1.0, 0.0, 0.0], seed=0)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    profiles = colour_profile(batch["target"], batch["mask"], 4)
    mean, std = profiles.mean(0), profiles.std(0).clamp_min(0.05)
    plan.vae.set_colour_statistics(mean, std)
    assert outliers.largest_deviations(plan, str(store)).max() < 10  # the cells' own statistics, a sane floor
    used = int(profiles.sum(0).argmax())
    std[used] = 1e-5  # as if the statistics' batches had (almost) never seen that bin
    plan.vae.set_colour_statistics(mean, std)
    assert outliers.largest_deviations(plan, str(store)).max() <= 100  # the floor on the deviation holds it
    plan.vae.colour_std[used] = 1e-5  # a checkpoint from before that floor
    assert outliers.largest_deviations(plan, str(store)).max() > 1000


def test_class_means_explain_all_of_the_pixels_when_each_class_is_one_picture(tmp_path):
    spec = importlib.util.spec_from_file_location("class_means", REPO / "bench" / "class_means.py")
    class_means = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(class_means)

    store = FeatureStore(make_store(tmp_path / "store", 24, seed=2))
    means, explained = class_means.class_pictures(store, batch=7)  # batches that split classes
    labels = store.meta["label"].to_numpy()
    assert set(means) == set(labels) and 0 < explained < 1
    one = labels == labels[0]
    pictures = cell_on_grey(torch.from_numpy(store.array("target")[one] / 255.0), torch.from_numpy(store.array("mask")[one] * 1.0))
    np.testing.assert_allclose(means[labels[0]], pictures.mean(0).numpy(), atol=1e-6)

    arrays = {name: np.asarray(store.array(name)).copy() for name in ("features", "mask", "target", "score", "box", "origin")}
    for label in set(labels):  # every cell of a class now shows the class' first cell
        first = np.flatnonzero(labels == label)[0]
        for name in ("mask", "target"):
            arrays[name][labels == label] = arrays[name][first]
    store.write(np.arange(len(labels)), arrays)
    assert class_means.class_pictures(store)[1] == pytest.approx(1.0)


def test_a_store_read_in_another_pose_is_refused_by_embed_and_the_quality_script(trained, tmp_path):
    from wbcvae.training.embed import embed

    ckpt, _ = trained
    posed = make_store(tmp_path / "posed", 8, seed=3)
    provenance = json.loads((posed / "provenance.json").read_text())
    provenance["fingerprint"]["pose"] = "canonical"  # as `wbcvae features --pose canonical` writes it
    (posed / "provenance.json").write_text(json.dumps(provenance))
    with pytest.raises(InputError, match="pose 'canonical', the model's training store in pose 'as_is'"):
        embed(ckpt, posed, tmp_path / "cells.h5ad", device="cpu")
    with pytest.raises(InputError, match="--pose as_is"):
        quality.evaluate(ckpt, "cpu", None, 100, posed, 4)
