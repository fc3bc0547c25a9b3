"""The whole pipeline at toy size: every stage runs, the report holds what the issue asks, a rerun resumes."""

import json
from pathlib import Path

import pytest

from wbcvae.errors import InputError
from wbcvae.pipeline import STAGE_NAMES, load_pipeline_config, run_pipeline

REPO = Path(__file__).resolve().parents[1]
TOY = [
    "world.cells_per_class=3",
    "world.rna_cells=260",
    "world.n_genes=120",
    "world.crop_size=96",
    "segmentation.set.trainer.max_steps=2",
    "segmentation.set.model.input_size=64",
    "segmentation.set.trainer.check_val_every_n_epoch=1",
    "features.batch_size=8",
    "image_vae.set.trainer.max_epochs=1",
    "image_vae.set.latent_map.method=pca",
    "rna_vae.set.trainer.max_epochs=1",
    "rna_vae.set.latent_map.method=pca",
    "alignment.max_epochs=1",
    "alignment.trajectory.steps=20",
    "alignment.trajectory.samples=2",
    "alignment.trajectory.fit_iters=10",
]


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory, monkeypatch_module):
    monkeypatch_module.chdir(REPO)  # the demo config names its stage configs relative to the repo
    out = tmp_path_factory.mktemp("pipeline") / "run"
    config = load_pipeline_config(REPO / "experiments/pipeline/demo.yaml", TOY)
    return out, run_pipeline(config, out=out)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_every_stage_finishes_and_the_report_has_its_parts(toy_run):
    out, report = toy_run
    assert report == out / "report"
    assert all((out / stage / "stage.json").is_file() for stage in STAGE_NAMES)
    page = (report / "index.html").read_text()
    for heading in ("synthetic world", "Segmentation", "β-VAEs", "Joint latent space", "Trajectory: granulopoiesis"):
        assert heading in page
    metrics = json.loads((report / "metrics.json").read_text())
    assert set(metrics["seconds"]) >= set(STAGE_NAMES) - {"report"}
    assert 0 <= metrics["segmentation"]["val_iou_cell"] <= 1
    spearman = metrics["trajectory/granulopoiesis"]["pseudotime_spearman"]
    assert -1 <= spearman <= 1
    assert list((report / "figures").glob("*strip.png")) and list((report / "tables").glob("*.csv"))


def test_rerun_resumes_and_redoes_nothing(toy_run, capsys):
    out, _ = toy_run
    config = load_pipeline_config(REPO / "experiments/pipeline/demo.yaml", TOY)
    run_pipeline(config, out=out)
    printed = capsys.readouterr().out
    assert all(f"[pipeline] {stage}: already done" in printed for stage in STAGE_NAMES)


def test_unknown_section_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("out: x\nsegmentaton: {}\n")
    with pytest.raises(InputError, match="'segmentaton'"):
        load_pipeline_config(bad)
