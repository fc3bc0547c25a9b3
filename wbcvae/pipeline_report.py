"""The pipeline's report page: one section per stage, built from what the stages left on disk.

Stages record their outputs in `OUT/<stage>/stage.json`, so the report can be (re)built from a
resumed run without holding anything in memory from earlier stages.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pandas as pd

from wbcvae.report.html import Section

VAE_METRICS = ("val/loss", "val/knn_accuracy")


def save_sections(sections: list[Section], folder: Path) -> list[dict[str, Any]]:
    """Sections as JSON-able records, their tables written as CSV files in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for number, section in enumerate(sections):
        tables = {}
        for name, table in section.tables.items():
            path = folder / f"{number:02d}-{re.sub(r'[^a-z0-9]+', '-', name.lower())}.csv"
            table.to_csv(path, index=False)
            tables[name] = str(path)
        records.append({"title": section.title, "text": section.text, "figures": [str(f) for f in section.figures], "tables": tables})
    return records


def load_sections(records: list[dict[str, Any]]) -> list[Section]:
    return [
        Section(r["title"], r["text"], r["figures"], {name: pd.read_csv(path) for name, path in r["tables"].items()})
        for r in records
    ]


def pipeline_sections(outputs: dict[str, dict[str, Any]]) -> tuple[list[Section], dict[str, Any]]:
    """(sections, metrics) for the whole run, from each stage's recorded outputs."""
    report_dir = Path(outputs["world"]["images"]).parent / "report-figures"
    report_dir.mkdir(parents=True, exist_ok=True)
    metrics: dict[str, Any] = {"seconds": {stage: out.get("seconds") for stage, out in outputs.items()}}
    sections = [_world_section(outputs["world"], report_dir), _segmentation_section(outputs["segmentation"], report_dir, outputs["world"])]
    metrics["segmentation"] = outputs["segmentation"]["quality"]
    vae_section, metrics["vae"] = _vae_section(outputs)
    sections.append(vae_section)
    metrics |= outputs["alignment"]["metrics"]
    sections += load_sections(outputs["alignment"]["sections"])
    real_rna_section, metrics["real_rna"] = _real_rna_section(outputs["real_rna"])
    sections.append(real_rna_section)
    return sections, metrics


def _world_section(world: dict[str, Any], folder: Path) -> Section:
    from wbcvae.data.montage import montage
    from wbcvae.data.summary import summarise

    figure = montage(world["images"], None, folder / "world_montage.png", per_class=4)
    text = (
        "The synthetic world: crops and transcriptomes drawn from one hidden maturation programme, "
        "so every later number can be checked against ground truth.\n\n" + summarise(Path(world["images"]))
    )
    return Section("Data: the synthetic world", text, [figure])


def _segmentation_section(segmentation: dict[str, Any], folder: Path, world: dict[str, Any]) -> Section:
    from wbcvae.segmentation.overlay import mask_figure

    figure = folder / "masks.png"
    mask_figure(world["images"], figure, checkpoint=segmentation["checkpoint"], count=12)
    quality = segmentation["quality"]
    text = (
        f"Mask R-CNN ({quality.get('init')}) trained for {quality.get('steps')} steps on {quality.get('targets')} masks: "
        f"validation IoU of the cell {quality.get('val_iou_cell')}. Outlines: classical pseudo-mask (green), "
        "Mask R-CNN (yellow)."
    )
    return Section("Segmentation", text, [figure])


def _real_rna_section(real: dict[str, Any]) -> tuple[Section, dict[str, Any]]:
    """The decoded path on real marrow RNA: which known markers go up and down, and whether as expected."""
    from wbcvae.trajectory.run import marker_sentence

    if "skipped" in real:
        return Section("Real RNA: van Galen healthy marrow", f"Skipped: {real['skipped']}."), {"skipped": real["skipped"]}
    path, files, m = real["path"], real["files"], real["metrics"]
    markers = pd.read_csv(files["markers"]) if "markers" in files else pd.DataFrame()
    stages = " → ".join(f"{t} ({n} cells)" for t, n in real["cells_on_path"].items())
    lines = [
        f"The RNA β-VAE trained on {real['source']} ({real['cells']} cells, {real['genes']} genes kept), then a GP "
        f"through the latent centroids of {stages} "
        f"(RBF lengthscale {m['lengthscale']:.3f}), decoded into expression. Genes by shape: {m['genes_up']} up, "
        f"{m['genes_down']} down, {m['genes_transient']} transient, {m['genes_flat']} flat (k-Shape with k={m['k_used']}).",
        marker_sentence(markers) if len(markers) else "None of the known markers is among the genes the model keeps.",
    ]
    if real["markers_not_kept"]:
        lines.append(f"Not among the kept genes: {', '.join(real['markers_not_kept'])}.")
    tables = {"known markers": markers} if len(markers) else {}
    section = Section(
        f"Real RNA: van Galen healthy marrow, {path[0]} → {path[-1]}",
        "\n\n".join(lines),
        [files["heatmap"], files["markers_plot"]],
        tables | {"clusters": pd.read_csv(files["clusters"])},
    )
    agreement = {
        "markers_agree": int(markers["agrees"].sum()) if len(markers) else 0,
        "markers_compared": len(markers),
        "marker_shapes": dict(zip(markers.get("gene", []), markers.get("curve", []))),
    }
    return section, {**m, **agreement}


def _vae_section(outputs: dict[str, dict[str, Any]]) -> tuple[Section, dict[str, Any]]:
    rows, figures = [], []
    for stage in ("image_vae", "rna_vae"):
        run_dir = Path(outputs[stage]["checkpoint"]).parent.parent
        row = {"model": stage}
        metrics_csv = run_dir / "metrics.csv"
        if metrics_csv.is_file():
            frame = pd.read_csv(metrics_csv)
            for column in frame.columns:
                if column.startswith("val/") and frame[column].notna().any():
                    row[column] = float(frame[column].dropna().iloc[-1])
        rows.append(row)
        figures += sorted((run_dir / "figures").glob("*.png"))[-2:]
    table = pd.DataFrame(rows)
    text = "Last validation metrics of each β-VAE (latent kNN accuracy with k = 5 on held-out cells)."
    return Section("The two β-VAEs", text, figures, {"validation metrics": table}), {r["model"]: r for r in rows}
