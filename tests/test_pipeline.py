"""The whole pipeline at toy size: every stage runs, the report holds what the issue asks, a rerun resumes.
The real-RNA stage is skipped at toy size (its source is pointed away) and run alone on van Galen in a slow test."""

import json
from pathlib import Path

import pandas as pd
import pytest

from wbcvae.errors import InputError
from wbcvae.pipeline import STAGE_NAMES, Run, _real_rna, load_pipeline_config, run_pipeline
from wbcvae.pipeline_report import _real_rna_section, save_sections
from wbcvae.report.html import Section

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
    "real_rna.source=no/such/folder",
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
    assert all((out / stage / "stage.json").is_file() for stage in STAGE_NAMES if stage != "real_rna")
    assert not (out / "real_rna" / "stage.json").exists()  # skipped: tried again on the next run
    page = (report / "index.html").read_text()
    for heading in ("synthetic world", "Segmentation", "β-VAEs", "Joint latent space", "Trajectory: granulopoiesis"):
        assert heading in page
    assert "Real RNA: van Galen healthy marrow" in page and "Skipped: the real RNA source no/such/folder does not exist." in page
    metrics = json.loads((report / "metrics.json").read_text())
    assert set(metrics["seconds"]) >= set(STAGE_NAMES) - {"report"}
    assert 0 <= metrics["segmentation"]["val_iou_cell"] <= 1
    assert metrics["real_rna"] == {"skipped": "the real RNA source no/such/folder does not exist"}
    spearman = metrics["trajectory/granulopoiesis"]["pseudotime_spearman"]
    assert -1 <= spearman <= 1
    # The RNA β-VAE on its held-out cells beside PCA-50, the mean and the world's truth, in the metrics and on the page.
    reconstruction = metrics["rna_reconstruction"]["rna_vae"]
    assert set(reconstruction["held_out_molecules_mse"]) == {"model", "pca50", "training_mean", "truth"}
    assert reconstruction["held_out_molecules_mse"]["truth"] < reconstruction["held_out_molecules_mse"]["training_mean"]
    assert "RNA β-VAE on held-out cells" in page and "MSE on held-out molecules" in page
    assert list((report / "figures").glob("*strip.png")) and list((report / "tables").glob("*.csv"))


def test_report_opens_with_the_headlines_and_renders_in_a_browser(toy_run):
    from test_report import assert_renders

    page = (toy_run[1] / "index.html").read_text()
    assert page.index("Results at a glance") < page.index("Paths follow maturation") < page.index("<h2>Segmentation</h2>")
    assert_renders(toy_run[1])  # every figure (the animated paths too) loads, no text overflows; skipped without Chromium


def test_rerun_resumes_and_redoes_nothing(toy_run, capsys):
    out, _ = toy_run
    config = load_pipeline_config(REPO / "experiments/pipeline/demo.yaml", TOY)
    run_pipeline(config, out=out)
    printed = capsys.readouterr().out
    trained = [stage for stage in STAGE_NAMES if stage not in ("real_rna", "report")]
    assert all(f"[pipeline] {stage}: already done" in printed for stage in trained)
    # The skipped stage is looked at again, and the report rebuilt so that it shows this run.
    assert "[pipeline] real_rna: skipped" in printed and "[pipeline] report: done" in printed


def test_unknown_section_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("out: x\nsegmentaton: {}\n")
    with pytest.raises(InputError, match="'segmentaton'"):
        load_pipeline_config(bad)


def test_real_rna_path_must_list_cell_types(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    config = load_pipeline_config(REPO / "experiments/pipeline/demo.yaml", [f"real_rna.source={tmp_path}", "real_rna.path=HSC"])
    with pytest.raises(InputError, match="real_rna.path must list at least two cell types"):
        _real_rna(Run(config=config, out=tmp_path / "run", outputs={}))
    assert not (tmp_path / "run").exists()  # refused before any training


def test_real_rna_section_shows_the_recorded_path_after_the_training(tmp_path):
    markers = pd.DataFrame({
        "gene": ["CD34", "LYZ"], "expected": ["down", "up"], "curve": ["transient", "up"], "agrees": [False, True], "dpt_shape": ["transient", "up"],
    })  # fmt: skip
    markers.to_csv(tmp_path / "markers.csv", index=False)
    figure = tmp_path / "markers_dpt.png"
    path_text = "Real RNA: HSC → Mono. GP through the centroids of 10 diffusion-pseudotime quantiles …"
    recorded = save_sections([Section("Trajectory: HSC_to_Mono", path_text, [figure], {"markers": markers})], tmp_path / "sections")
    real = {
        "path": ["HSC", "Mono"], "source": "marrow/", "cells": 10, "genes": 5, "cells_on_path": {"HSC": 6, "Mono": 4},
        "markers_not_kept": ["AVP"], "files": {"markers": str(tmp_path / "markers.csv")}, "metrics": {"markers_agree": 1, "markers_compared": 2},
        "sections": recorded,
    }  # fmt: skip
    section, metrics = _real_rna_section(real)
    assert section.title == "Real RNA: van Galen healthy marrow, HSC → Mono"
    # With the model's held-out reconstruction recorded, its table comes first and the text says what it measures.
    scores = {"model": 0.16, "pca50": 0.17, "training_mean": 0.18}
    measures = {m: scores for m in ("log_expression_mse", "held_out_molecules_mse", "nb_log_likelihood")}
    reconstruction = {"held_out": "test", "held_out_cells": 3, "genes": 5, **measures}
    scored, _ = _real_rna_section({**real, "reconstruction": reconstruction})
    assert list(scored.tables) == ["RNA β-VAE on held-out cells", "markers"] and "on its 3 held-out cells (test split)" in scored.text
    assert list(scored.tables["RNA β-VAE on held-out cells"].columns) == ["measure", "model", "PCA-50", "training mean"]
    text = section.text
    assert text.index("trained on marrow/ (10 cells, 5 genes kept)") < text.index("Not among the kept genes: AVP") < text.index(path_text)
    assert [Path(f) for f in section.figures] == [figure] and list(section.tables) == ["markers"]
    assert metrics["markers_agree"] == 1 and metrics["marker_misses"] == {"CD34": "down"} and metrics["marker_dpt_shapes"]["CD34"] == "transient"
    # A stage.json of an earlier version recorded no section: the page says how to get one, and keeps the headline's numbers.
    section, metrics = _real_rna_section({key: value for key, value in real.items() if key != "sections"})
    assert "rerun the stage" in section.text and not section.figures and metrics["marker_shapes"] == {"CD34": "transient", "LYZ": "up"}


@pytest.mark.slow
def test_real_rna_stage_on_van_galen_lists_the_known_markers(vangalen, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    tiny = [
        f"real_rna.source={vangalen}",
        "real_rna.set.trainer.max_epochs=1",
        "real_rna.set.latent_map.method=pca",
        "real_rna.trajectory={steps: 20, samples: 2, fit_iters: 20}",
    ]
    run = Run(config=load_pipeline_config(REPO / "experiments/pipeline/demo.yaml", tiny), out=tmp_path, outputs={})
    outputs = _real_rna(run)
    assert outputs["path"] == ["HSC", "GMP", "ProMono", "Mono"] and min(outputs["cells_on_path"].values()) > 0
    assert outputs["markers_not_kept"] == []
    assert set(outputs["reconstruction"]["held_out_molecules_mse"]) == {"model", "pca50", "training_mean"}  # no truth on real data
    section, metrics = _real_rna_section(outputs)
    markers = section.tables["markers"].set_index("gene")
    assert {"CD34", "LYZ", "MPO"} <= set(markers.index) and set(markers["curve"]) <= {"up", "down", "transient", "flat"}
    assert section.title == "Real RNA: van Galen healthy marrow, HSC → Mono"
    assert f"{metrics['markers_agree']} of 17 agree" in section.text and "CD34 " in section.text and "MPO " in section.text
    # The path is shown as the synthetic ones are: through the cells' pseudotime, the DPT baseline and the chord beside it.
    assert "diffusion-pseudotime quantiles" in section.text and "Baseline:" in section.text and "The study's chord" in section.text
    assert {Path(f).name for f in section.figures} == {"paths.png", "heatmap.png", "markers.png", "markers_dpt.png"}
    # A cell type the data does not have is named, with the ones it has (the trained model is reused).
    monkeypatch.setattr("wbcvae.pipeline._train_vae", lambda *args: {"checkpoint": outputs["checkpoint"]})
    run.config["real_rna"]["path"] = ["HSC", "Neutrophil"]
    with pytest.raises(InputError, match="no 'Neutrophil' cells in .*; its cell types: .*HSC"):
        _real_rna(run)
