"""The report page: headlines beside their baselines, captioned figures, the grouped metric table, a
folder that opens when copied, and a real browser's view of it (every image loads, no text overflows)."""

from __future__ import annotations

import functools
import html
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from wbcvae.pipeline_report import captioned, headlines, load_sections, save_sections, write_results_page
from wbcvae.report import Caption, Headline, Section, write_report

METRICS = {
    "seconds": {"world": 12.0, "alignment": 136.0, "report": None},
    "segmentation": {"val_iou_cell": 0.9, "val_detected": 1.0, "init": {"init": "random"}},
    "vae": {
        "image_vae": {"val/loss": 1.5, "val/knn5_acc": 0.4},
        "rna_vae": {"val/loss": 0.8, "val/knn5_acc": 0.6, "val/recon_mse/granulocytic:transient_and_a_long_gene_set_name": 0.1},
    },
    "alignment": {"nearest_centroid_accuracy": 0.51, "chance_accuracy": 1 / 12, "mixing_entropy": float("nan")},
    "pairs_without_rna": ["smudge_cell"],
    "trajectory/granulopoiesis": {
        "pseudotime_spearman": 1.0, "ari_curves": 0.53, "curve_shape_accuracy": 0.79, "transient_recall": 0.6, "genes_compared": 2000,
        "markers_agree": 2, "markers_compared": 3,
    },
    "trajectory/monocytopoiesis": {"pseudotime_spearman": 0.995, "ari_curves": 0.32, "curve_shape_accuracy": 0.69, "transient_recall": 0.1, "genes_compared": 2000},
    "trajectory/neutrophil_maturation": {"pseudotime_spearman": 0.995},
    "real_rna": {"markers_agree": 6, "markers_compared": 6, "marker_shapes": {"CD34": "down", "LYZ": "up", "S100A8": "up"}},
    # What a later stage might add: a new group and a new key, neither known to the page.
    "decoder": {"masked_image_mse": 0.01, "a_metric_name_without_any_label_that_runs_on_and_on_and_on_and_on_and_on": 3},
}
MARKERS = pd.DataFrame(
    {"gene": ["CD34", "MPO", "CXCR2"], "expected": ["down", "transient", "up"], "curve": ["down", "up", "up"], "agrees": [True, False, True]}
)


def _figures(folder: Path) -> dict[str, Path]:
    """Stand-ins with the demo's shapes: a wide strip, a plot, an animated path."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    files = {"strip": folder / "strip.png", "markers": folder / "markers.png", "gif": folder / "path.gif"}
    Image.fromarray(rng.integers(0, 255, (330, 1430, 3), dtype=np.uint8)).save(files["strip"])
    Image.fromarray(rng.integers(0, 255, (360, 650, 3), dtype=np.uint8)).save(files["markers"])
    frames = [Image.fromarray(np.full((96, 96, 3), 40 * i, dtype=np.uint8)) for i in range(5)]
    frames[0].save(files["gif"], save_all=True, append_images=frames[1:], duration=100, loop=0)
    return files


def _demo_like_report(folder: Path, figures: dict[str, Path]) -> Path:
    """A report with every part the pipeline's has, written through the pipeline report's own helpers."""
    wide = pd.DataFrame({f"column_{i}_with_a_long_name": np.linspace(0, 1, 30) for i in range(24)})
    sections = [
        Section("Data: the synthetic world", "Crops and transcriptomes.\n\nImages: 39 crops\n" + "\n".join(f"class_{i}   3" for i in range(13))),
        Section(
            "Trajectory: granulopoiesis",
            "A path through a_very_long_unbroken_identifier_" + "x" * 150 + ".",
            [figures["strip"], figures["gif"], Caption(figures["markers"], "Known markers."), folder / "chord_vs_data.png"],
            {"markers": MARKERS, "kinetics": wide},
        ),
    ]
    return write_results_page(sections, METRICS, folder / "report")


# --- the page's content -------------------------------------------------------------------------


def test_headlines_put_each_result_beside_its_baseline():
    lines = {h.result.partition(":")[0]: h for h in headlines(METRICS)}
    aligned = lines["Modalities aligned"]
    assert (aligned.value, aligned.baseline) == ("51\u00a0%", "chance 8\u00a0% (1 of 12 classes)") and "well above chance" in aligned.reading
    assert lines["Paths follow maturation"].value.split("\n") == ["granulopoiesis 1.00", "monocytopoiesis 0.99", "neutrophil maturation 0.99"]
    kinetics = lines["Gene kinetics match the truth"]
    assert kinetics.value == "granulopoiesis 0.53 (79\u00a0% of 2000; transient 60\u00a0%)\nmonocytopoiesis 0.32 (69\u00a0% of 2000; transient 10\u00a0%)"
    assert "ARI 0: chance" in kinetics.baseline and "neutrophil maturation: not scored" in kinetics.reading
    assert lines["Known markers on the synthetic paths going the expected way (up, down, transient)"].value == "2 of 3\ngranulopoiesis 2 of 3"
    real = lines["Known markers on real marrow RNA (van Galen) going the expected way"]
    assert real.value == "6 of 6" and real.reading.endswith("as biology expects: CD34 down; LYZ, S100A8 up")
    with_trend = {**METRICS, "real_rna": {**METRICS["real_rna"], "markers_as_dpt": 5}}
    real = {h.result.partition(":")[0]: h for h in headlines(with_trend)}[real.result.partition(":")[0]]
    assert real.reading.endswith("LYZ, S100A8 up; 5 of 6 have the shape of the real cells' own DPT trend")
    # A miss is listed apart from the markers that went the expected way, with its shape and the way expected; when
    # the real cells' own DPT trend has that shape too, the miss is theirs, and the reading says so.
    shapes = {**METRICS["real_rna"]["marker_shapes"], "CD34": "transient"}
    one_miss = {**METRICS["real_rna"], "markers_agree": 5, "marker_shapes": shapes, "marker_misses": {"CD34": "down"}}
    real = {h.result.partition(":")[0]: h for h in headlines({**METRICS, "real_rna": one_miss})}[real.result.partition(":")[0]]
    assert real.reading.endswith("as biology expects: LYZ, S100A8 up; not as expected: CD34 transient (expected down)")
    as_cells = {**one_miss, "marker_dpt_shapes": {"CD34": "transient", "LYZ": "up"}}
    real = {h.result.partition(":")[0]: h for h in headlines({**METRICS, "real_rna": as_cells})}[real.result.partition(":")[0]]
    assert real.reading.endswith("not as expected: CD34 transient (expected down; the cells' own DPT trend is transient too)")
    mostly_missed = {"markers_agree": 1, "markers_compared": 3, "marker_shapes": {"CD34": "up", "LYZ": "up", "S100A8": "down"},
                     "marker_misses": {"CD34": "down", "S100A8": "up"}}  # fmt: skip
    real = {h.result.partition(":")[0]: h for h in headlines({**METRICS, "real_rna": mostly_missed})}[real.result.partition(":")[0]]
    assert real.reading == ("most known markers do not move as biology expects (at this training scale); as expected: LYZ up; "
                            "not as expected: CD34 up (expected down), S100A8 down (expected up)")  # fmt: skip
    assert lines["Cells segmented"].value == "0.90 (a cell found in 100\u00a0% of crops)"


def test_reconstruction_headline_sets_the_model_beside_pca_and_the_truth():
    """The RNA β-VAE's MSE on held-out molecules, beside PCA-50 (and the truth on a synthetic world); the reading
    names the data where the model does not beat PCA-50."""
    synthetic = {"held_out_molecules_mse": {"model": 0.9637, "pca50": 0.9725, "training_mean": 1.16, "truth": 0.9297}}
    real = {"held_out_molecules_mse": {"model": 0.1645, "pca50": 0.1729, "training_mean": 0.1785}}
    title = "RNA β-VAE reconstructs held-out cells"
    [line] = [h for h in headlines({"rna_reconstruction": {"rna_vae": synthetic, "real_rna_vae": real}}) if h.result.startswith(title)]
    assert line.value == "synthetic 0.9637\nreal marrow 0.1645"
    assert line.baseline == "synthetic: PCA-50 0.9725, the truth 0.9297 (the best any model can do); real marrow: PCA-50 0.1729"
    assert line.reading.startswith("below PCA-50")
    behind = {"held_out_molecules_mse": {"model": 0.18, "pca50": 0.1729, "training_mean": 0.1785}}
    [line] = [h for h in headlines({"rna_reconstruction": {"real_rna_vae": behind}}) if h.result.startswith(title)]
    assert line.reading.startswith("not below PCA-50 on real marrow") and "truth" not in line.baseline


def test_headlines_drop_what_the_run_did_not_measure():
    skipped = {"skipped": "no real RNA source configured"}
    found = headlines({"alignment": {"nearest_centroid_accuracy": np.nan, "chance_accuracy": 0.1}, "real_rna": skipped, "trajectory/x": {}})
    title = "Known markers on real marrow RNA (van Galen) going the expected way"
    assert found == [Headline(title, "not run", "–", "skipped: no real RNA source configured")]
    assert headlines({}) == []


def test_page_reads_top_down_and_tolerates_new_and_missing_parts(tmp_path):
    index = _demo_like_report(tmp_path, _figures(tmp_path / "figs"))
    page = index.read_text()
    order = ["Results at a glance", "Contents", "Data: the synthetic world", "Trajectory: granulopoiesis", "All metrics"]
    assert [page.index(f">{heading}<") for heading in order] == sorted(page.index(f">{heading}<") for heading in order)
    assert "<td class=value>51\u00a0%</td><td>chance 8\u00a0% (1 of 12 classes)</td>" in page
    # Captions: from CAPTIONS by file name, the producer's own, the file name for an unknown figure.
    assert "Look for a gradual change of nucleus size" in page and "<figcaption>Known markers.</figcaption>" in page
    assert 'src="figures/02-trajectory-granulopoiesis-path.gif"' in page
    assert "Figure not available: chord_vs_data.png" in page  # missing: named, the rest of the page still there
    # The full table: grouped and in words; unknown keys shown too; the one-per-path group as columns.
    metrics = page[page.index('<section id="metrics">') :]
    assert "<h3>Joint latent space</h3>" in metrics and "image cells nearest their class&#x27; RNA centroid" in metrics
    assert "<h3>decoder</h3>" in metrics and "masked image mse" in metrics and "<h3>Other</h3>" in metrics
    assert "<th>granulopoiesis</th><th>monocytopoiesis</th><th>neutrophil maturation</th>" in metrics
    assert "validation · kNN accuracy (k = 5)" in metrics and "val/knn5_acc" not in metrics
    assert "<td>alignment</td><td>136</td>" in metrics  # a stage name in the seconds group is not a group title
    # Long tables folded, short ones shown; the data summary's printed table kept as text.
    assert "<details><summary>table: kinetics (first 25 of 30 rows)" in page and "<h3>markers · <a" in page
    assert "<details><summary>Images: 39 crops</summary><pre>class_0   3" in page
    assert json.loads((index.parent / "metrics.json").read_text())["alignment"]["mixing_entropy"] is None


def test_folder_opens_when_copied_every_link_relative_and_inside_it(tmp_path):
    index = _demo_like_report(tmp_path, _figures(tmp_path / "figs"))
    copy = tmp_path / "elsewhere" / "report"
    shutil.copytree(index.parent, copy)
    shutil.rmtree(tmp_path / "figs")
    page = (copy / "index.html").read_text()
    links = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert links and not re.search(r"https?:|file:|//|@import|url\(", page)
    targets = [link for link in links if not link.startswith("#")]
    assert all((copy / link).is_file() for link in targets), targets
    anchors = {link[1:] for link in links if link.startswith("#")}
    assert anchors <= set(re.findall(r'id="([^"]+)"', page))


def test_two_figures_with_one_file_name_both_appear(tmp_path):
    for model in ("image", "rna"):
        (tmp_path / model).mkdir()
        Image.new("RGB", (8, 8), "red" if model == "image" else "blue").save(tmp_path / model / "latent_map_epoch003.png")
    figures = [tmp_path / "image/latent_map_epoch003.png", tmp_path / "rna/latent_map_epoch003.png"]
    index = write_report(tmp_path / "report", [Section("β-VAEs", figures=figures)], {})
    copied = sorted((index.parent / "figures").iterdir())
    assert [p.name for p in copied] == ["01-vaes-2-latent_map_epoch003.png", "01-vaes-latent_map_epoch003.png"]
    assert {Image.open(p).getpixel((0, 0)) for p in copied} == {(255, 0, 0), (0, 0, 255)}


# --- in a real browser --------------------------------------------------------------------------

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Run in the page once everything (images included) has loaded; leaves its findings as JSON in the DOM.
CHECKS_JS = """
window.addEventListener('load', () => {
  const images = [...document.images].map(i => ({src: i.getAttribute('src'), loaded: i.complete && i.naturalWidth > 0}));
  const overflowing = [];
  for (const el of document.body.querySelectorAll('*')) {
    if (['auto', 'scroll', 'hidden'].includes(getComputedStyle(el).overflowX)) continue;  // a scroll box by design
    if (el.clientWidth > 0 && el.scrollWidth > el.clientWidth + 1)
      overflowing.push(`${el.tagName.toLowerCase()}: ${el.textContent.trim().slice(0, 60)} (${el.scrollWidth} > ${el.clientWidth} px)`);
  }
  const root = document.documentElement;
  const out = document.createElement('pre');
  out.id = 'wbcvae-checks';
  out.textContent = JSON.stringify({images, overflowing, page: [root.scrollWidth, root.clientWidth]});
  document.body.appendChild(out);
});
"""


@functools.cache
def chromium() -> str | None:
    """The system's Chromium if it starts (Debian: `apt-get install chromium`; Ubuntu's is a snap stub), else None."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path and subprocess.run([path, "--version"], capture_output=True, timeout=60).returncode == 0:
            return path
    return None


def browser_checks(report: Path, width: int) -> dict:
    """Open a copy of the report folder in headless Chromium at `width` px; what the page's checks found."""
    browser = chromium()
    if browser is None:
        pytest.skip("no Chromium that starts (Debian: apt-get install chromium; .ci/run installs it as root)")
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "report"
        shutil.copytree(report, copy)
        page = (copy / "index.html").read_text()
        (copy / "checked.html").write_text(page.replace("</body>", f"<script>{CHECKS_JS}</script></body>"))
        flags = [*CHROMIUM_FLAGS, f"--user-data-dir={tmp}/profile", f"--window-size={width},900", "--dump-dom"]
        dom = subprocess.run([browser, *flags, (copy / "checked.html").as_uri()], capture_output=True, text=True, timeout=120).stdout
    found = re.search(r'<pre id="wbcvae-checks">(.*?)</pre>', dom, re.S)
    assert found, f"the page's checks did not run in Chromium; it printed: {dom[:300]!r}"
    return json.loads(html.unescape(found.group(1)))


def assert_renders(report: Path, widths: tuple[int, ...] = (1280, 640)) -> None:
    """Every image decodes, no element's text spills out of its box, no sideways scrolling, at each width."""
    for width in widths:
        checks = browser_checks(report, width)
        assert checks["images"] and all(i["loaded"] for i in checks["images"]), [i for i in checks["images"] if not i["loaded"]]
        assert checks["overflowing"] == [], f"at {width} px"
        assert checks["page"][0] <= checks["page"][1], f"the page scrolls sideways at {width} px"


def test_demo_like_report_renders_in_chromium(tmp_path):
    assert_renders(_demo_like_report(tmp_path, _figures(tmp_path / "figs")).parent)


def test_browser_check_catches_a_broken_image_and_overflowing_text(tmp_path):
    figure = tmp_path / "fig.png"
    Image.new("RGB", (4, 4)).save(figure)
    index = write_report(tmp_path / "report", [Section("x", "ok", [figure])], {})
    (index.parent / "figures" / "01-x-fig.png").write_bytes(b"not a png")
    index.write_text(index.read_text().replace("<p>ok</p>", '<p style="white-space: nowrap">' + "word " * 400 + "</p>"))
    checks = browser_checks(index.parent, 800)
    assert [i["loaded"] for i in checks["images"]] == [False]
    assert any(o.startswith("p: word word") for o in checks["overflowing"]) and checks["page"][0] > checks["page"][1]



def test_stage_records_keep_figure_captions(tmp_path):
    """A stage's sections go through stage.json (a resumed run rebuilds the page from it): captions survive."""
    figures = [tmp_path / "strip.png", Caption(tmp_path / "dpt.png", "Look for the trend.")]
    section = Section("Trajectory: x", "text", figures, {"markers": MARKERS})
    records = json.loads(json.dumps(save_sections([section], tmp_path / "sections")))
    (loaded,) = load_sections(records)
    assert loaded.figures == [str(tmp_path / "strip.png"), Caption(str(tmp_path / "dpt.png"), "Look for the trend.")]
    assert loaded.tables["markers"].equals(MARKERS)
    strip, dpt = captioned(loaded).figures  # the bare figure gets its caption by file name, the other keeps its own
    assert strip.text.startswith("The decoded cell along the path") and dpt.text == "Look for the trend."
