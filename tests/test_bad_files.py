"""Unreadable input files: a truncated JPEG, a 0-byte PNG and a text file named .jpg among good crops are
left out, counted and named under `--bad-files skip` (the default) and stop the run, naming the file,
under `fail`; van Galen sample tables that cannot be parsed or lack their pair are named the same way."""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from wbcvae.cli.main import main
from wbcvae.data.bad_files import BadFiles
from wbcvae.data.image_dataset import CropDataModule
from wbcvae.data.images import check_images, read_manifest
from wbcvae.data.rna import read_rna
from wbcvae.errors import InputError
from wbcvae.features.datamodule import FeatureDataModule
from wbcvae.features.extract import extract_features
from wbcvae.features.store import ORIGINS
from wbcvae.segmentation.maskrcnn import MaskRCNNModule

BAD = ("lymphocyte/empty.png", "lymphocyte/text.jpg", "monocyte/truncated.jpg")


def _jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (24, 24, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.fixture
def crops(tmp_path) -> Path:
    """A folder tree of six crops in two classes, three of them unreadable (`BAD`)."""
    root = tmp_path / "crops"
    for i, name in enumerate(("lymphocyte/a.jpg", "lymphocyte/b.jpg", "monocyte/c.jpg")):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(_jpeg(i))
    (root / "monocyte/truncated.jpg").write_bytes(_jpeg(9)[:300])
    (root / "lymphocyte/empty.png").write_bytes(b"")
    (root / "lymphocyte/text.jpg").write_text("not a picture\n")
    return root


def _one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def test_check_images_keeps_the_good_crops_and_names_the_bad(crops):
    frame = read_manifest(crops).frame
    bad = BadFiles("skip")
    kept = check_images(frame, bad, progress=False)
    assert sorted(Path(p).name for p in kept["path"]) == ["a.jpg", "b.jpg", "c.jpg"]
    assert sorted(bad.files) == [str(crops / name) for name in BAD]
    assert all(reason.startswith(path) and "cannot read this image" in reason for path, reason in bad.files.items())
    assert bad.warning("unreadable image") == "warning: skipped 3 unreadable images: empty.png, text.jpg, truncated.jpg"
    with pytest.raises(InputError, match=r"empty\.png: cannot read this image.*--bad-files skip") as err:
        check_images(frame, BadFiles("fail"), progress=False)
    _one_line(err)


def test_training_crops_leave_out_unreadable_files_or_stop(crops, capsys):
    data = CropDataModule(crops, crop_size=16, fractions=(1.0, 0.0, 0.0))
    data.setup()
    assert len(data.datasets["train"]) == 3 and len(data.bad_files) == 3
    assert "skipped 3 unreadable images" in capsys.readouterr().err
    with pytest.raises(InputError, match="empty.png"):
        CropDataModule(crops, crop_size=16, bad_files="fail").setup()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    module = MaskRCNNModule(backbone="resnet18", input_size=32, proposals=16, roi_samples=8, mask_head=(16,))
    path = tmp_path_factory.mktemp("ckpt") / "maskrcnn.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams), "wbcvae_init": module.init}, path)
    return path


def test_features_skip_unreadable_crops_and_record_them(crops, checkpoint, tmp_path, capsys):
    store = extract_features(crops, checkpoint, tmp_path / "store", batch_size=4, progress=False)
    assert store.complete
    table = store.table()
    unreadable = table["origin"] == "unreadable"
    assert sorted(table.loc[unreadable, "path"]) == [str(crops / name) for name in BAD]
    assert not np.asarray(store.array("features"))[unreadable.to_numpy()].any()
    provenance = json.loads((store.root / "provenance.json").read_text())
    assert sorted(provenance["unreadable"]) == [str(crops / name) for name in BAD]
    err = capsys.readouterr().err
    assert "warning: skipped 3 unreadable images: empty.png, text.jpg, truncated.jpg" in err
    # a model never sees them
    data = FeatureDataModule(store.root, batch_size=2, fractions=(1.0, 0.0, 0.0))
    data.setup()
    assert sorted(store.meta["path"].iloc[data.datasets["train"].rows]) == [
        str(crops / name) for name in ("lymphocyte/a.jpg", "lymphocyte/b.jpg", "monocyte/c.jpg")
    ]
    # a rerun finds the store complete and still names them; asking for `fail` now stops on them
    extract_features(crops, checkpoint, store.root, batch_size=4, progress=False)
    assert "skipped 3 unreadable images" in capsys.readouterr().err
    with pytest.raises(InputError, match="empty.png"):
        extract_features(crops, checkpoint, store.root, batch_size=4, progress=False, bad_files="fail")


def test_features_fail_stops_at_the_first_unreadable_crop(crops, checkpoint, tmp_path):
    with pytest.raises(InputError, match=r"empty\.png: cannot read this image") as err:
        extract_features(crops, checkpoint, tmp_path / "store", batch_size=4, progress=False, bad_files="fail")
    _one_line(err)
    assert ORIGINS[-1] == "unreadable"


def test_data_summary_check_lists_the_unreadable_images(crops, capsys):
    assert main(["data", "summary", str(crops)]) == 0
    assert "6 crops" in capsys.readouterr().out  # without --check nothing is decoded
    assert main(["data", "summary", str(crops), "--check"]) == 0
    out = capsys.readouterr().out
    assert "3 crops" in out and "3 unreadable" in out
    for name in BAD:
        assert f"  {crops / name}: cannot read this image" in out
    assert main(["data", "summary", str(crops), "--check", "--bad-files", "fail"]) == 2
    (error,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]  # after the progress bar
    assert error.startswith(f"error: {crops / BAD[0]}: cannot read this image") and error.endswith("--bad-files skip to leave such files out")


# --- van Galen sample tables ----------------------------------------------------------------------


def _write_sample(folder: Path, sample: str, kinds: tuple[str, ...] = ("dem", "anno")) -> None:
    folder.mkdir(exist_ok=True)
    cells = [f"{sample}_{i}" for i in range(3)]
    if "dem" in kinds:
        counts = pd.DataFrame(np.arange(12).reshape(4, 3), index=pd.Index([f"G{j}" for j in range(4)], name="Gene"), columns=cells)
        with gzip.open(folder / f"GSM1_{sample}.dem.txt.gz", "wt") as f:
            counts.to_csv(f, sep="\t")
    if "anno" in kinds:
        with gzip.open(folder / f"GSM2_{sample}.anno.txt.gz", "wt") as f:
            pd.DataFrame({"Cell": cells, "CellType": ["T", "Mono", "HSC"]}).to_csv(f, sep="\t", index=False)


def test_vangalen_names_every_unpaired_and_unparseable_sample(tmp_path, capsys):
    folder = tmp_path / "vg"
    _write_sample(folder, "BM1")
    _write_sample(folder, "AML2-D0", kinds=("dem",))
    _write_sample(folder, "AML3-D0", kinds=("anno",))
    _write_sample(folder, "AML4-D0")
    (folder / "GSM1_AML4-D0.dem.txt.gz").write_bytes(b"\x1f\x8b broken gzip")

    adata = read_rna(folder)
    assert adata.obs["sample"].unique().tolist() == ["BM1"]
    err = capsys.readouterr().err
    for name in ("GSM1_AML2-D0.dem.txt.gz", "GSM2_AML3-D0.anno.txt.gz", "GSM1_AML4-D0.dem.txt.gz"):
        assert name in err
    assert "skipped 3 unreadable or unpaired sample files" in err

    assert main(["data", "summary", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "skipped 3 sample file(s)" in out
    assert "GSM1_AML2-D0.dem.txt.gz: no matching AML2-D0.anno.txt.gz beside it" in out
    assert "GSM2_AML3-D0.anno.txt.gz: no matching AML3-D0.dem.txt.gz beside it" in out
    assert "GSM1_AML4-D0.dem.txt.gz: not a genes × cells table" in out

    with pytest.raises(InputError, match="2 sample file.* GSM1_AML2-D0.dem.txt.gz, GSM2_AML3-D0.anno.txt.gz") as err:
        read_rna(folder, bad_files="fail")
    _one_line(err)
    for name in ("GSM1_AML2-D0.dem.txt.gz", "GSM2_AML3-D0.anno.txt.gz"):
        (folder / name).unlink()
    with pytest.raises(InputError, match=r"GSM1_AML4-D0\.dem\.txt\.gz: not a genes × cells table") as err:
        read_rna(folder, bad_files="fail")
    _one_line(err)
