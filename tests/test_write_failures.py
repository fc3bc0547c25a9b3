"""A result that cannot be written (file-size limit, read-only folder, a file where a folder should be)
ends the command with one line naming the path, exit code 1, no traceback, the previous output intact."""

from __future__ import annotations

import errno
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from wbcvae.cli.main import main
from wbcvae.features.store import FeatureStore
from wbcvae.training import ImageVAEPlan
from wbcvae.utils import atomic

REPO = Path(__file__).resolve().parents[1]
PREVIOUS = b"the previous complete output"


@pytest.fixture(scope="module")
def image_run(tmp_path_factory) -> tuple[Path, Path]:
    """A 6-row feature store and an (untrained) image β-VAE checkpoint that reads it."""
    folder = tmp_path_factory.mktemp("image_run")
    n = 6
    labels = ["monocyte", "eosinophil"] * 3
    meta = pd.DataFrame({"path": [f"/crops/{i}.png" for i in range(n)], "label": labels, "patient": "P1", "source_label": labels, "mask_path": ""})
    store = FeatureStore.create(folder / "features", meta, provenance={"source": "test"})
    store.write(np.arange(n), {
        "features": np.zeros((n, 256, 14, 14), np.float16), "mask": np.ones((n, 1, 128, 128), np.uint8),
        "target": np.zeros((n, 3, 128, 128), np.uint8), "score": np.ones(n, np.float32),
        "box": np.zeros((n, 4), np.float32), "origin": np.zeros(n, np.uint8),
    })  # fmt: skip
    plan = ImageVAEPlan(hidden_channels=4, latent_dim=3)
    record = {"plan": "wbcvae.training.image_plan.ImageVAEPlan", "kind": "image", "version": "test", "data": {}}
    checkpoint = folder / "image.ckpt"
    torch.save({"state_dict": plan.state_dict(), "hyper_parameters": dict(plan.hparams), "wbcvae": record}, checkpoint)
    return store.root, checkpoint


def wbcvae(*args: str, max_file_bytes: int, cwd: Path) -> subprocess.CompletedProcess:
    """`wbcvae …` in a process whose files may not grow past `max_file_bytes` (`ulimit -f`)."""
    limit = lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))  # noqa: E731
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled"}
    return subprocess.run([sys.executable, "-m", "wbcvae", *args], cwd=cwd, env=environment, preexec_fn=limit,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def error_lines(stderr: str) -> list[str]:
    assert "Traceback" not in stderr, stderr[-2000:]
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_embed_over_the_file_size_limit_fails_in_one_line_and_keeps_the_old_file(image_run, tmp_path):
    store, checkpoint = image_run
    out = tmp_path / "image.h5ad"
    out.write_bytes(PREVIOUS)
    done = wbcvae("embed", "--ckpt", str(checkpoint), "--source", str(store), "--out", str(out), max_file_bytes=4096, cwd=tmp_path)
    assert done.returncode == 1  # not -11 (HDF5's segmentation fault) nor -25 (SIGXFSZ)
    assert error_lines(done.stderr) == [f"error: cannot write {out}: file too large for this system's file-size limit "
                                        "(`ulimit -f`); raise the limit or choose another disk, then rerun (the previous "
                                        "complete output, if any, is untouched)"]  # fmt: skip
    assert out.read_bytes() == PREVIOUS and [p.name for p in tmp_path.iterdir()] == ["image.h5ad"]


@pytest.mark.slow
def test_training_over_the_file_size_limit_fails_in_one_line(tmp_path):
    toy = ["--data", "wbcvae.training.toy_data.ToyRnaDataModule", "--data.n_cells", "40", "--data.genes", "40",
           "--data.latent_dim", "8", "--model.hidden", "[16]", "--model.latent_dim", "8", "--wandb", "false",
           "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false", "--latent_map.method", "pca"]  # fmt: skip
    done = wbcvae("train", "rna", *toy, "--trainer.default_root_dir", "runs", max_file_bytes=20_000, cwd=tmp_path)
    assert done.returncode == 1
    (line,) = error_lines(done.stderr)
    assert line.startswith("error: cannot write runs/rna_vae: file too large") or line.startswith("error: cannot write runs/rna_vae/"), line


@pytest.mark.slow
def test_feature_extraction_over_the_file_size_limit_fails_in_one_line(tmp_path):
    from wbcvae.data.synthetic.world import write_world
    from wbcvae.segmentation.maskrcnn import MaskRCNNModule

    world = write_world(tmp_path / "world", cells_per_class=1, rna_cells=26, n_genes=50, crop_size=64, seed=5, progress=False)
    module = MaskRCNNModule(backbone="resnet18", input_size=64, proposals=32, roi_samples=16, mask_head=(32,))
    checkpoint = tmp_path / "maskrcnn.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams), "wbcvae_init": module.init}, checkpoint)
    store = tmp_path / "store"
    done = wbcvae("features", str(world), "--checkpoint", str(checkpoint), "--store", str(store), max_file_bytes=100_000, cwd=tmp_path)
    assert done.returncode == 1
    (line,) = error_lines(done.stderr)
    assert line.startswith(f"error: cannot write {store}: file too large") and not store.exists()


def test_a_read_only_folder_fails_in_one_line_and_leaves_nothing_behind(image_run, tmp_path, monkeypatch, capsys):
    """Root ignores permission bits, so the read-only file system is simulated where the result lands."""
    store, checkpoint = image_run
    out = tmp_path / "image.h5ad"
    out.write_bytes(PREVIOUS)

    def read_only(source, target):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(target))

    monkeypatch.setattr(atomic.os, "replace", read_only)
    assert main(["embed", "--ckpt", str(checkpoint), "--source", str(store), "--out", str(out)]) == 1
    (line,) = error_lines(capsys.readouterr().err)
    assert line.startswith(f"error: cannot write {out}: the file system is read-only; choose an output folder on a writable disk")
    assert out.read_bytes() == PREVIOUS and [p.name for p in tmp_path.iterdir()] == ["image.h5ad"]  # no .partial left


def test_a_file_where_the_output_folder_should_be_is_named(image_run, tmp_path, capsys):
    store, checkpoint = image_run
    (tmp_path / "results").write_text("a file, not a folder")
    out = tmp_path / "results" / "image.h5ad"
    assert main(["embed", "--ckpt", str(checkpoint), "--source", str(store), "--out", str(out)]) == 1
    (line,) = error_lines(capsys.readouterr().err)
    assert line.startswith(f"error: cannot write {out}: a parent of this path is a file, not a folder")


def test_a_full_disk_in_hdf5_words_is_recognised():
    """h5py reports the errno only inside its message."""
    err = RuntimeError("Can't decrement id ref count (file write failed: errno = 28, error message = 'No space left on device')")
    assert atomic.write_failure(err, "x.h5ad").startswith("cannot write x.h5ad: no space left on the disk")
    assert atomic.write_failure(FileNotFoundError(errno.ENOENT, "missing", "in.csv")) is None  # a read error is no write failure
