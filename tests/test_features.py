"""Feature extraction and the feature store: shapes and provenance, the fallback for crops without a
detection, resuming after SIGKILL to the same bytes, and the feature batches the image VAE reads."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign

from wbcvae.data.images import read_manifest
from wbcvae.data.synthetic.world import write_world
from wbcvae.errors import InputError
from wbcvae.features.datamodule import FeatureDataModule
from wbcvae.features.extract import FeatureExtractor, extract_features
from wbcvae.features.store import FEATURE_SHAPE, ORIGINS, FeatureStore
from wbcvae.segmentation.maskrcnn import MaskRCNNModule
from wbcvae.vocabulary import CLASS_INDEX

REPO = Path(__file__).resolve().parents[1]
ARRAYS = ("features", "mask", "target", "score", "box", "origin", "done")



@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("feat") / "world"
    return write_world(out, cells_per_class=2, rna_cells=26, n_genes=50, crop_size=64, seed=5, progress=False)


def small_module(seed: int = 0) -> MaskRCNNModule:
    torch.manual_seed(seed)
    return MaskRCNNModule(backbone="resnet18", input_size=64, proposals=32, roi_samples=16, mask_head=(32,))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A random-init model saved the way training saves one (state dict, hyper-parameters, init)."""
    module = small_module()
    path = tmp_path_factory.mktemp("ckpt") / "maskrcnn.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams), "wbcvae_init": module.init}, path)
    return path


@pytest.fixture(scope="module")
def store(world, checkpoint, tmp_path_factory) -> FeatureStore:
    return extract_features(world, checkpoint, tmp_path_factory.mktemp("st") / "store", batch_size=4, progress=False)


def test_extractor_pools_the_central_detection_from_the_fpn():
    module = small_module()
    module.model.roi_heads.score_thresh = 0.0  # let a random model report boxes
    extractor = FeatureExtractor(module.model, min_score=0.0, target_size=32)
    images = torch.rand(3, 3, 64, 64)
    out = extractor(images)
    assert out["features"].shape == (3, *FEATURE_SHAPE)
    assert out["mask"].shape == (3, 1, 32, 32) and set(out["mask"].unique().tolist()) <= {0, 1}
    assert out["target"].shape == (3, 3, 32, 32)
    assert out["origin"].tolist() == [ORIGINS.index("detection")] * 3 and (out["score"] > 0).all()
    # the features are RoIAlign of the reported box on the model's own FPN
    with torch.inference_mode():
        pyramid = module.model.backbone(module.model.transform(list(images))[0].tensors)
        pooled = MultiScaleRoIAlign(["0", "1", "2", "3"], 14, 2)(pyramid, [b[None] for b in out["box"]], [(64, 64)] * 3)
    torch.testing.assert_close(out["features"], pooled)
    torch.testing.assert_close(out["target"], torch.nn.functional.interpolate(images, size=32, mode="bilinear", antialias=True))


def test_no_detection_falls_back_to_the_pseudo_mask_and_says_so():
    extractor = FeatureExtractor(small_module().model, min_score=1.01)  # nothing can score above 1
    cell = torch.zeros(3, 64, 64)
    cell[:] = torch.tensor([0.96, 0.90, 0.84])[:, None, None]  # background
    rows, cols = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    for radius, colour in ((14, [0.78, 0.72, 0.86]), (8, [0.36, 0.18, 0.52])):  # cytoplasm, nucleus
        cell[:, (rows - 32) ** 2 + (cols - 30) ** 2 < radius**2] = torch.tensor(colour)[:, None]
    blank = torch.ones(3, 64, 64)
    out = extractor(torch.stack([cell, blank]))
    assert [ORIGINS[o] for o in out["origin"].tolist()] == ["pseudo_mask", "whole_crop"]
    assert out["score"].tolist() == [0.0, 0.0]
    assert out["box"][0].tolist() == pytest.approx([17, 19, 44, 46], abs=1.5)  # the drawn cell
    assert out["box"][1].tolist() == [0, 0, 64, 64]
    assert out["mask"][1].all()


def test_store_holds_every_manifest_row_with_provenance(store, world, checkpoint):
    assert len(store) == 26 and store.complete
    assert store.array("features").shape == (26, *FEATURE_SHAPE) and store.array("features").dtype == np.float16
    assert store.array("target").shape == (26, 3, 128, 128)
    table = store.table()
    assert table["path"].tolist() == read_manifest(world).frame["path"].tolist()
    assert table["index"].tolist() == list(range(26))
    assert set(table["origin"]) <= set(ORIGINS)
    provenance = json.loads((store.root / "provenance.json").read_text())
    assert provenance["init"] == {"init": "random"} and provenance["model"]["backbone"] == "resnet18"
    assert len(provenance["fingerprint"]["checkpoint_sha256"]) == 64
    assert provenance["rows"] == 26


def test_complete_store_is_a_noop_and_another_checkpoint_is_refused(store, world, checkpoint, tmp_path, capsys):
    before = {name: (store.root / f"{name}.npy").stat().st_mtime_ns for name in ARRAYS}
    extract_features(world, checkpoint, store.root, batch_size=4, progress=False)
    assert "nothing to do" in capsys.readouterr().out
    assert before == {name: (store.root / f"{name}.npy").stat().st_mtime_ns for name in ARRAYS}

    other = small_module(seed=1)
    torch.save({"state_dict": other.state_dict(), "hyper_parameters": dict(other.hparams), "wbcvae_init": other.init}, tmp_path / "other.ckpt")
    with pytest.raises(InputError, match="checkpoint_sha256"):
        extract_features(world, tmp_path / "other.ckpt", store.root, progress=False)


def test_a_failed_write_leaves_its_rows_undone(tmp_path, store):
    fresh = FeatureStore.create(tmp_path / "s", store.meta.drop(columns=["row", "index"]), {"fingerprint": {}})
    values = {name: np.asarray(store.array(name))[:2] for name in ARRAYS if name != "done"}
    with pytest.raises(ValueError):
        fresh.write(np.array([0, 1]), {**values, "origin": np.zeros((2, 7))})  # the last array written fails
    assert not fresh.done.any()
    fresh.write(np.array([0, 1]), values)
    assert fresh.done.tolist()[:3] == [True, True, False]
    np.testing.assert_array_equal(fresh.array("features")[:2], store.array("features")[:2])


def test_sigkill_mid_extraction_then_resume_gives_the_same_bytes(world, checkpoint, store, tmp_path):
    """A run killed hard after its first batches is completed by a second run, identical to an
    uninterrupted run row for row (deterministic CPU inference, same batches)."""
    target = tmp_path / "killed"
    code = (
        "import torch; torch.set_num_threads(1); from wbcvae.features.extract import extract_features; "
        f"extract_features({str(world)!r}, {str(checkpoint)!r}, {str(target)!r}, batch_size=4, progress=False)"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    worker = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=REPO)
    done_at_kill = 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and worker.poll() is None:
        if (target / "done.npy").exists():
            done_at_kill = int(np.load(target / "done.npy").sum())
            if done_at_kill >= 4:
                worker.send_signal(signal.SIGKILL)
                break
        time.sleep(0.02)
    worker.wait(timeout=30)
    assert worker.returncode == -signal.SIGKILL, "the extraction finished before it could be killed"
    interrupted = FeatureStore(target)
    assert 4 <= interrupted.done.sum() < len(interrupted)

    extract_features(world, checkpoint, target, batch_size=4, progress=False)
    resumed = FeatureStore(target)
    assert resumed.complete
    for name in ARRAYS:
        np.testing.assert_array_equal(resumed.array(name), store.array(name), err_msg=name)


def test_feature_batches_follow_the_contract(store):
    data = FeatureDataModule(store.root, batch_size=5, fractions=(0.5, 0.25, 0.25), seed=0)
    data.setup()
    rows = np.concatenate([data.datasets[name].rows for name in ("train", "val", "test")])
    assert sorted(rows.tolist()) == list(range(26))  # every row in exactly one split
    batch = next(iter(data.train_dataloader()))
    assert batch["features"].dtype == torch.float32 and batch["features"].shape == (5, *FEATURE_SHAPE)
    assert batch["target"].shape == (5, 3, 128, 128) and 0 <= batch["target"].min() and batch["target"].max() <= 1
    assert batch["mask"].shape == (5, 1, 128, 128) and set(batch["mask"].unique().tolist()) <= {0.0, 1.0}
    meta = store.meta.set_index("index")
    assert batch["label"].tolist() == [CLASS_INDEX[meta.loc[int(i), "label"]] for i in batch["index"]]
    row = int(batch["index"][0])
    np.testing.assert_array_equal(batch["features"][0].numpy(), store.array("features")[row].astype(np.float32))


def test_incomplete_store_is_refused_by_the_datamodule(tmp_path, store):
    FeatureStore.create(tmp_path / "half", store.meta.drop(columns=["row", "index"]), {"fingerprint": {}})
    with pytest.raises(InputError, match="26 of 26 rows not extracted"):
        FeatureDataModule(tmp_path / "half").setup()
    with pytest.raises(InputError, match="not a feature store"):
        FeatureStore(tmp_path)
