"""Reading checkpoints: a file carrying pickled Python objects is refused before any of it runs, a
checkpoint of the wrong kind is named as such, each in one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from wbcvae.alignment.module import load_alignment
from wbcvae.checkpoints import load_plan, read_checkpoint
from wbcvae.cli.main import main
from wbcvae.errors import InputError
from wbcvae.segmentation.maskrcnn import load_maskrcnn
from wbcvae.training import RnaVAEPlan


class WritesAFile:
    """Unpickling this writes `path`: the kind of payload a checkpoint from a stranger could carry."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.write_text, (self.path, "this ran while loading a checkpoint"))


def small_rna_checkpoint() -> dict:
    plan = RnaVAEPlan(n_genes=6, hidden=[4], latent_dim=2)
    return {
        "state_dict": plan.state_dict(),
        "hyper_parameters": dict(plan.hparams),
        "wbcvae": {"plan": "wbcvae.training.rna_plan.RnaVAEPlan", "kind": "rna", "version": "0", "data": {}},
    }


@pytest.fixture
def malicious(tmp_path) -> tuple[Path, Path]:
    """A checkpoint that looks like each kind (every record present) and carries the payload."""
    marker = tmp_path / "payload-ran"
    checkpoint = {**small_rna_checkpoint(), "wbcvae_alignment": {}, "wbcvae_init": {}, "extra": WritesAFile(marker)}
    path = tmp_path / "from-a-stranger.ckpt"
    torch.save(checkpoint, path)
    return path, marker


def test_the_payload_is_real_when_loaded_unsafely(malicious):
    path, marker = malicious
    torch.load(path, weights_only=False)
    assert marker.read_text() == "this ran while loading a checkpoint"


@pytest.mark.parametrize("load", [load_plan, load_alignment, load_maskrcnn, lambda p: read_checkpoint(p, "image", "rna")])
def test_a_checkpoint_carrying_pickled_objects_is_refused_before_it_runs(malicious, load):
    path, marker = malicious
    with pytest.raises(InputError) as err:
        load(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    assert "refusing to load: it carries pickled Python objects (getattr)" in message  # how the payload pickles
    assert not marker.exists()


def test_the_cli_refuses_it_in_one_line(malicious, tmp_path, capsys):
    path, marker = malicious
    assert main(["embed", "--ckpt", str(path), "--source", str(tmp_path), "--out", str(tmp_path / "x.h5ad")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {path}: refusing to load")
    assert not marker.exists() and not (tmp_path / "x.h5ad").exists()


def test_a_checkpoint_of_the_wrong_kind_is_named(tmp_path):
    rna = tmp_path / "rna.ckpt"
    torch.save(small_rna_checkpoint(), rna)
    plan, record = load_plan(rna)  # the right kind loads
    assert isinstance(plan, RnaVAEPlan) and record["kind"] == "rna"
    for load, expected in (
        (lambda p: load_plan(p, kind="image"), "expected an image β-VAE checkpoint (from `wbcvae train image`)"),
        (load_alignment, "expected a joint alignment checkpoint (from `wbcvae align`)"),
        (load_maskrcnn, "expected a Mask R-CNN checkpoint (from `wbcvae segment train`)"),
    ):
        with pytest.raises(InputError, match="an RNA β-VAE checkpoint; ") as err:
            load(rna)
        assert expected in str(err.value) and "\n" not in str(err.value)


def test_files_that_are_no_checkpoint_are_named(tmp_path):
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint")
    plain = tmp_path / "tensors.ckpt"
    torch.save({"weight": torch.zeros(2)}, plain)
    with pytest.raises(InputError, match="notes.ckpt: not a readable checkpoint"):
        read_checkpoint(text, "image")
    with pytest.raises(InputError, match="tensors.ckpt: not a wbcvae checkpoint; expected a Mask R-CNN"):
        read_checkpoint(plain, "maskrcnn")
    with pytest.raises(InputError, match="missing.ckpt: no such checkpoint"):
        read_checkpoint(tmp_path / "missing.ckpt", "rna")
