"""The pipeline's report page: the headline results, then one section per stage, built from what the
stages left on disk.

Stages record their outputs in `OUT/<stage>/stage.json`, so the report can be (re)built from a
resumed run without holding anything in memory from earlier stages. Every headline reads its
numbers with `.get`: a stage that did not run, or a metric a later version renames, drops that line
and leaves the number in the full table, instead of breaking the page.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from wbcvae.report.html import Caption, Headline, Section, to_jsonable, write_report

# What to look for in each figure, by file name. A figure without an entry is shown with its file name.
CAPTIONS = {
    "world_montage.png": "Synthetic crops, one row per class. Look for maturation down the granulocytic rows: "
    "the nucleus goes from round (myeloblast) to kidney-shaped, banded and segmented, the cytoplasm from blue to pink.",
    "masks.png": "Held-out crops with the classical pseudo-mask (green) and Mask R-CNN's mask (yellow). Look for "
    "yellow outlines that hug the white cell and leave the red cells around it out.",
    "latent_map_epoch*.png": "Validation cells in the latent space (2-D map), coloured by class. Look for each class "
    "forming its own group, and the maturation stages of a lineage lying next to each other in order.",
    "reconstruction_grid_epoch*.png": "Validation crops (top) and what the image β-VAE makes of them (bottom rows). "
    "Look for the nucleus shape and the colours coming back; fine texture blurs at this scale.",
    "reconstruction_gene_sets_epoch*.png": "Reconstruction error of the RNA β-VAE per gene set (lineage : kinetic). "
    "Look for no set far above the others: that would be a programme the model ignores.",
    "joint_latent.png": "Image latents (held-out crops, fine-tuned encoder) and the frozen RNA latents, by class "
    "(left) and by modality (right). Look for image points landing on the RNA cells of their own class.",
    "strip.png": "The decoded cell along the path (top), its pixel spread over paths drawn from the GP posterior "
    "and, at the bottom, the real crop nearest the path at each frame (a cell of the feature store, not decoded). "
    "Look for a gradual change of nucleus size, shape and shade from the first stage to the last; bright spread marks "
    "where the path is uncertain.",
    "path.gif": "The same path, animated: one decoded cell per step from the first stage to the last.",
    "paths.png": "The path's cells on their first two principal components, coloured by pseudotime, with the data "
    "path (red) through the centroids of their pseudotime quantiles and the study's chord (black) through class "
    "anchors; diamonds mark each path's anchors. Look for the red path following the cloud where the chord cuts "
    "across it.",
    "markers_dpt.png": "The baseline a user would run instead: each known marker's decoded curve (blue, left axis, the "
    "central 95 % of the posterior samples shaded) beside the real cells' mean along scanpy's diffusion pseudotime "
    "(orange, right axis), their Pearson r above each panel. Look for the two rising and falling together. The axes "
    "differ: the decoded curve is the log of a cell's expected expression, the trend a mean of the cells' log counts, "
    "which sits lower.",
    "heatmap.png": "Z-normalised decoded expression of each k-Shape cluster's top genes along the path. Look for "
    "blocks that rise, fall or peak mid-way: each block is one kinetic programme.",
    "markers.png": "Known markers' decoded expression along the path, one panel per expected shape, each curve scaled "
    "to its own range (the central 95 % of the cells drawn along posterior paths shaded); a marker whose curve has "
    "another shape is dashed. Look for each marker moving the way biology expects, and for the order of events: "
    "which genes fall before others peak or rise.",
}

# The full metric table at the end of the page: a title for each group (a top-level key of metrics.json),
# and metric key segments in words.
METRIC_GROUPS = {
    "seconds": "Seconds per stage",
    "segmentation": "Segmentation (Mask R-CNN)",
    "vae": "β-VAEs (last validation epoch)",
    "rna_reconstruction": "RNA β-VAEs on held-out cells: reconstruction against PCA-50, the mean and the truth",
    "alignment": "Joint latent space",
    "trajectory": "Trajectories (synthetic ground truth)",
    "real_rna": "Real RNA (van Galen)",
}
METRIC_LABELS = {
    "image_vae": "image β-VAE",
    "rna_vae": "RNA β-VAE",
    "real_rna_vae": "real RNA β-VAE",
    "pairs_without_rna": "classes without RNA",
    "val": "validation",
    "knn5_acc": "kNN accuracy (k = 5)",
    "recon_mse": "reconstruction MSE",
    "features_mse": "feature MSE",
    "image_mse": "image MSE",
    "expression_mse": "expression MSE",
    "expression_nb": "expression NB negative log-likelihood",
    "atlas_cosine": "cosine to the atlas embedding",
    "kl": "KL divergence",
    "val_iou_cell": "validation IoU of the cell",
    "val_detected": "share of validation crops with a cell found",
    "crops_without_target": "crops without a target mask",
    "train_seconds": "training seconds",
    "nearest_centroid_accuracy": "image cells nearest their class' RNA centroid",
    "chance_accuracy": "chance level of that (1 / classes)",
    "centroid_distance_ratio": "centroid distance, image→RNA over between classes",
    "mixing_entropy": "modality mixing entropy (1 = mixed)",
    "modality_silhouette": "modality silhouette",
    "lengthscale": "GP lengthscale",
    "k_used": "k-Shape clusters",
    "mean_path_sd": "mean sd of the path",
    "pseudotime_spearman": "Spearman: path position vs true pseudotime",
    "ari_curves": "ARI: kinetics called from each gene's curve vs true kinetics",
    "ari_clusters": "ARI: k-Shape clusters vs true kinetics",
    "ari_shapes": "ARI: k-Shape cluster names vs true kinetics",
    "shape_accuracy": "genes with the right shape (by cluster name)",
    "curve_shape_accuracy": "genes with the right shape (own curve)",
    "genes_compared": "genes compared",
    "markers_agree": "known markers as expected",
    "markers_as_dpt": "known markers shaped as their DPT trend",
    "markers_compared": "known markers compared",
    "marker_shapes": "marker shape",
    "marker_misses": "marker expected otherwise",
    "marker_dpt_shapes": "marker shape in the cells' DPT trend",
    "log_expression_mse": "log-expression MSE (plain)",
    "held_out_molecules_mse": "MSE on held-out molecules",
    "nb_log_likelihood": "NB log-likelihood per count",
    "pca50": "PCA-50",
    "training_mean": "training mean",
    "truth": "the truth (synthetic world)",
    "held_out": "held-out split",
    "held_out_cells": "held-out cells",
}


def write_pipeline_report(outputs: dict[str, dict[str, Any]], folder: Path) -> Path:
    """The report folder for the whole run; returns its `index.html`."""
    sections, metrics = pipeline_sections(outputs)
    return write_results_page(sections, metrics, folder)


def write_results_page(sections: Sequence[Section], metrics: Mapping[str, Any], folder: Path) -> Path:
    """The pipeline's page for any sections and metrics: captions filled in, headlines on top, metrics in words."""
    sections = [captioned(section) for section in sections]
    return write_report(
        folder,
        sections,
        metrics,
        title="wbcvae pipeline report",
        headlines=headlines(metrics),
        labels=METRIC_LABELS,
        group_titles=METRIC_GROUPS,
    )


def captioned(section: Section) -> Section:
    """The section with a caption on every figure that has none (looked up in `CAPTIONS` by file name)."""
    figures = []
    for figure in section.figures:
        path = Path(figure.path if isinstance(figure, Caption) else figure)
        text = figure.text if isinstance(figure, Caption) else ""
        figures.append(Caption(path, text or _caption(path.name)))
    return Section(section.title, section.text, figures, section.tables)


def _caption(name: str) -> str:
    return next((text for pattern, text in CAPTIONS.items() if fnmatch.fnmatch(name, pattern)), "")


# --- headlines -----------------------------------------------------------------------------------


def headlines(metrics: Mapping[str, Any]) -> list[Headline]:
    """The results a reader looks for first, each beside its baseline, from whatever the run measured."""
    metrics = to_jsonable(metrics)  # NaN (not measured) reads as missing
    trajectories = {k.partition("/")[2]: v for k, v in metrics.items() if k.startswith("trajectory/") and isinstance(v, dict)}
    found = [
        _alignment_headline(metrics.get("alignment") or {}),
        _pseudotime_headline(trajectories),
        _kinetics_headline(trajectories),
        _synthetic_markers_headline(trajectories),
        _real_markers_headline(metrics.get("real_rna") or {}),
        _reconstruction_headline(metrics.get("rna_reconstruction") or {}),
        _segmentation_headline(metrics.get("segmentation") or {}),
    ]
    return [h for h in found if h is not None]


def _alignment_headline(alignment: Mapping[str, Any]) -> Headline | None:
    accuracy, chance = alignment.get("nearest_centroid_accuracy"), alignment.get("chance_accuracy")
    if accuracy is None or not chance:
        return None
    if accuracy >= 3 * chance:
        reading = "well above chance: images land near the RNA cells of their own class"
    elif accuracy >= 1.5 * chance:
        reading = "above chance, but many images sit nearer another class (fine-tune longer: alignment.max_epochs)"
    else:
        reading = "about chance: the two modalities are not aligned yet"
    return Headline(
        "Modalities aligned: held-out image cells nearest to their own class' RNA centroid",
        _pct(accuracy),
        f"chance {_pct(chance)} (1 of {round(1 / chance)} classes)",
        reading,
    )


def _pseudotime_headline(trajectories: Mapping[str, Mapping[str, Any]]) -> Headline | None:
    scores = {name: m["pseudotime_spearman"] for name, m in trajectories.items() if m.get("pseudotime_spearman") is not None}
    if not scores:
        return None
    worst = min(scores, key=scores.get)
    if scores[worst] >= 0.9:
        reading = "every path walks its lineage in the order of maturation"
    elif scores[worst] >= 0.5:
        reading = "the paths follow maturation, with some disorder"
    else:
        reading = f"{_name(worst)} does not follow maturation"
    return Headline(
        "Paths follow maturation: Spearman between position on the path and true pseudotime",
        "\n".join(f"{_name(n)} {s:.2f}" for n, s in scores.items()),
        "0: order unrelated to maturation; 1: perfect order",
        reading,
    )


def _kinetics_headline(trajectories: Mapping[str, Mapping[str, Any]]) -> Headline | None:
    scored = {name: m for name, m in trajectories.items() if m.get("ari_curves") is not None}
    if not scored:
        return None
    parts = []
    for name, m in scored.items():
        part = f"{_name(name)} {m['ari_curves']:.2f}"
        if m.get("curve_shape_accuracy") is not None:
            part += f" ({_pct(m['curve_shape_accuracy'])} of {m.get('genes_compared', '?')}; transient {_pct(m.get('transient_recall', 0))})"
        parts.append(part)
    mean = sum(m["ari_curves"] for m in scored.values()) / len(scored)
    if mean >= 0.5:
        reading = "the genes' kinetics recover the true up/down/transient/flat ones"
    elif mean >= 0.2:
        reading = "the genes' kinetics partly recover the true ones"
    else:
        reading = "the genes' kinetics are no better than chance"
    unscored = [_name(n) for n, m in trajectories.items() if n not in scored and m.get("pseudotime_spearman") is not None]
    if unscored:
        reading += f" ({', '.join(unscored)}: not scored, the path walks only part of its lineage)"
    return Headline(
        "Gene kinetics match the truth: ARI of the kinetics called from each decoded curve (genes right; transient ones found)",
        "\n".join(parts),
        "ARI 0: chance, 1: the true grouping; a random call is right for 25\u00a0% of genes",
        reading,
    )


def _synthetic_markers_headline(trajectories: Mapping[str, Mapping[str, Any]]) -> Headline | None:
    counts = {name: (m["markers_agree"], m["markers_compared"]) for name, m in trajectories.items() if m.get("markers_compared")}
    if not counts:
        return None
    agree, total = (sum(c[i] for c in counts.values()) for i in (0, 1))
    return Headline(
        "Known markers on the synthetic paths going the expected way (up, down, transient)",
        f"{agree} of {total}\n" + "\n".join(f"{_name(n)} {a} of {t}" for n, (a, t) in counts.items()),
        f"a random shape (up, down, transient, flat) matches 1 in 4: {total / 4:.1f} of {total}",
        _marker_reading(agree, total),
    )


def _real_markers_headline(real: Mapping[str, Any]) -> Headline | None:
    title = "Known markers on real marrow RNA (van Galen) going the expected way"
    if "skipped" in real:
        return Headline(title, "not run", "–", f"skipped: {real['skipped']}")
    agree, total = real.get("markers_agree"), real.get("markers_compared")
    if not total:
        return None
    misses = real.get("marker_misses") or {}
    by_shape: dict[str, list[str]] = {}  # the markers that went the expected way; the others follow, with the way expected
    for gene, shape in (real.get("marker_shapes") or {}).items():
        if gene not in misses:
            by_shape.setdefault(shape, []).append(gene)
    shapes = "; ".join(f"{', '.join(genes)} {shape}" for shape, genes in by_shape.items())
    reading = _marker_reading(agree, total)
    if shapes:
        reading += (": " if agree >= 0.5 * total else "; as expected: ") + shapes
    return Headline(
        title,
        f"{agree} of {total}",
        f"a random shape (up, down, transient, flat) matches 1 in 4: {total / 4:.1f} of {total}",
        reading + _misses(real) + _as_cells(real, total),
    )


def _misses(real: Mapping[str, Any]) -> str:
    """The markers that did not go the expected way: their decoded shape, the way expected, and whether the real
    cells' own DPT trend has the decoded shape too (then the miss is in the data, not in the decoding)."""
    misses = real.get("marker_misses") or {}
    decoded, cells = real.get("marker_shapes") or {}, real.get("marker_dpt_shapes") or {}

    def one(gene: str, expected: str) -> str:
        shape = decoded.get(gene)
        said = f"{gene} {shape}" if shape else gene
        if shape is not None and cells.get(gene) == shape:
            return f"{said} (expected {expected}; the cells' own DPT trend is {shape} too)"
        return f"{said} (expected {expected})"

    return f"; not as expected: {', '.join(one(gene, expected) for gene, expected in misses.items())}" if misses else ""


def _as_cells(real: Mapping[str, Any], total: int) -> str:
    """What the user's own baseline says: how many decoded markers have the shape of the cells' DPT trend."""
    as_dpt = real.get("markers_as_dpt")
    return "" if as_dpt is None else f"; {as_dpt} of {total} have the shape of the real cells' own DPT trend"


def _marker_reading(agree: int, total: int) -> str:
    if agree >= 0.8 * total:
        return "the known markers rise and fall as biology expects"
    if agree >= 0.5 * total:
        return "most known markers move as biology expects"
    return "most known markers do not move as biology expects (at this training scale)"


def _reconstruction_headline(reconstruction: Mapping[str, Any]) -> Headline | None:
    scores = {stage: r["held_out_molecules_mse"] for stage, r in reconstruction.items() if r.get("held_out_molecules_mse")}
    if not scores:
        return None
    names = {"rna_vae": "synthetic", "real_rna_vae": "real marrow"}
    value = "\n".join(f"{names.get(stage, stage)} {s['model']:.4f}" for stage, s in scores.items())
    baseline = "; ".join(
        f"{names.get(stage, stage)}: PCA-50 {s['pca50']:.4f}" + (f", the truth {s['truth']:.4f} (the best any model can do)" if "truth" in s else "")
        for stage, s in scores.items()
    )
    behind = [names.get(stage, stage) for stage, s in scores.items() if s["model"] >= s["pca50"]]
    if behind:
        reading = f"not below PCA-50 on {', '.join(behind)}: the model recovers less of a cell's expression than the best linear code"
    else:
        reading = "below PCA-50: the model predicts a held-out cell's expression better than the best linear code as wide"
    return Headline("RNA β-VAE reconstructs held-out cells: MSE against molecules it did not see (lower is better)", value, baseline, reading)


def _segmentation_headline(quality: Mapping[str, Any]) -> Headline | None:
    iou = quality.get("val_iou_cell")
    if iou is None:
        return None
    value = f"{iou:.2f}"
    if quality.get("val_detected") is not None:
        value += f" (a cell found in {_pct(quality['val_detected'])} of crops)"
    if iou >= 0.8:
        reading = "the masks outline the cells"
    elif iou >= 0.5:
        reading = "rough masks: the features see part of the background"
    else:
        reading = "the masks miss the cells (train longer: segmentation.set.trainer.max_steps)"
    result = "Cells segmented: IoU of Mask R-CNN's mask with the true cell, held-out crops"
    return Headline(result, value, "0: no overlap; 1: the exact outline", reading)


def _pct(share: float) -> str:
    return f"{100 * share:.0f}\u00a0%"  # a no-break space: the number and its % stay on one line


def _name(key: str) -> str:
    return key.replace("_", " ")


# --- sections ------------------------------------------------------------------------------------


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
        figures = [{"path": str(f.path), "caption": f.text} if isinstance(f, Caption) else str(f) for f in section.figures]
        records.append({"title": section.title, "text": section.text, "figures": figures, "tables": tables})
    return records


def load_sections(records: list[dict[str, Any]]) -> list[Section]:
    return [
        Section(
            r["title"],
            r["text"],
            [Caption(f["path"], f.get("caption", "")) if isinstance(f, dict) else f for f in r["figures"]],
            {name: pd.read_csv(path) for name, path in r["tables"].items()},
        )
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
    reconstruction = {"rna_vae": outputs["rna_vae"].get("reconstruction"), "real_rna_vae": outputs["real_rna"].get("reconstruction")}
    metrics["rna_reconstruction"] = {stage: r for stage, r in reconstruction.items() if r}
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
    init = quality.get("init")
    text = (
        f"Mask R-CNN ({init.get('init') if isinstance(init, dict) else init} init) trained for {quality.get('steps')} "
        f"steps on {quality.get('targets')} masks: validation IoU of the cell {quality.get('val_iou_cell')}. "
        "Its masks decide which pixels the RoIAlign features (and so the image β-VAE) see."
    )
    return Section("Segmentation", text, [figure])


def _real_rna_section(real: dict[str, Any]) -> tuple[Section, dict[str, Any]]:
    """The decoded path on real marrow RNA, shown as the synthetic paths are (`trajectory.run.report_section`,
    recorded by the stage), after what the model was trained on: which known markers go up and down, and whether as
    expected."""
    title = "Real RNA: van Galen healthy marrow"
    if "skipped" in real:
        return Section(title, f"Skipped: {real['skipped']}."), {"skipped": real["skipped"]}
    path = real["path"]
    stages = " → ".join(f"{t} ({n} cells)" for t, n in real["cells_on_path"].items())
    lines = [f"The RNA β-VAE trained on {real['source']} ({real['cells']} cells, {real['genes']} genes kept); the path's cell types: {stages}."]
    if real["markers_not_kept"]:
        lines.append(f"Not among the kept genes: {', '.join(real['markers_not_kept'])}.")
    if "sections" in real:
        path_section = load_sections(real["sections"])[0]
    else:  # a stage.json of an earlier version, which did not record its section
        path_section = Section("", "Its path, figures and tables: rerun the stage (delete real_rna/stage.json in the run's folder).")
    markers = pd.read_csv(real["files"]["markers"]) if "markers" in real["files"] else pd.DataFrame()
    if not len(markers):
        lines.append("None of the known markers is among the genes the model keeps.")
    tables = dict(path_section.tables)
    if real.get("reconstruction"):
        lines.append(RECONSTRUCTION_TEXT.format(**real["reconstruction"]))
        tables = {RECONSTRUCTION_TABLE: _reconstruction_table(real["reconstruction"]), **tables}
    section = Section(f"{title}, {path[0]} → {path[-1]}", "\n\n".join([*lines, path_section.text]), path_section.figures, tables)
    shapes = {
        "marker_shapes": dict(zip(markers.get("gene", []), markers.get("curve", []))),
        "marker_misses": {g: e for g, e, ok in zip(markers.get("gene", []), markers.get("expected", []), markers.get("agrees", [])) if not ok},
        "marker_dpt_shapes": dict(zip(markers.get("gene", []), markers.get("dpt_shape", []))),
    }
    return section, {"markers_agree": 0, "markers_compared": 0, **real["metrics"], **shapes}


def _vae_section(outputs: dict[str, dict[str, Any]]) -> tuple[Section, dict[str, Any]]:
    """Each β-VAE's last validation numbers and newest figures; the per-gene-set errors go to the full table."""
    last, figures = {}, []
    for stage, model in (("image_vae", "Image β-VAE"), ("rna_vae", "RNA β-VAE")):
        run_dir = Path(outputs[stage]["checkpoint"]).parent.parent
        last[stage] = {}
        metrics_csv = run_dir / "metrics.csv"
        if metrics_csv.is_file():
            frame = pd.read_csv(metrics_csv)
            for column in frame.columns:
                if column.startswith("val/") and frame[column].notna().any():
                    last[stage][column] = float(frame[column].dropna().iloc[-1])
        figures += [Caption(path, f"{model}. {_caption(path.name)}".strip()) for path in _last_epoch_figures(run_dir / "figures")]
    names = list(dict.fromkeys(k for values in last.values() for k in values if k.count("/") == 1))
    table = pd.DataFrame({"metric": [METRIC_LABELS.get(n[4:], n[4:].replace("_", " ")) for n in names]})
    for stage, values in last.items():
        table[METRIC_LABELS[stage]] = [values.get(n) for n in names]
    text = "Last validation metrics of each β-VAE (latent kNN accuracy with k = 5 on held-out cells)."
    tables = {"validation metrics": table}
    reconstruction = outputs["rna_vae"].get("reconstruction")
    if reconstruction:
        text += "\n\n" + RECONSTRUCTION_TEXT.format(**reconstruction)
        tables[RECONSTRUCTION_TABLE] = _reconstruction_table(reconstruction)
    return Section("The two β-VAEs", text, figures, tables), last


RECONSTRUCTION_TABLE = "RNA β-VAE on held-out cells"
RECONSTRUCTION_TEXT = (
    "The RNA β-VAE on its {held_out_cells} held-out cells ({held_out} split), beside PCA-50 and the mean of the training "
    "cells (and, on a synthetic world, the truth the counts were drawn from). The plain MSE lets a code score by copying "
    "each cell's own sampling noise (where the truth is known, PCA-50 can score below it). The MSE on held-out molecules "
    "(each cell's counts split in two halves: reconstruct from one, score against the other) and the likelihood score "
    "what a trajectory decodes, the cell's expression."
)


def _reconstruction_table(reconstruction: Mapping[str, Any]) -> pd.DataFrame:
    """One row per measure, one column per reconstruction (model, PCA-50, mean, the truth where known)."""
    measures = ("held_out_molecules_mse", "nb_log_likelihood", "log_expression_mse")
    table = pd.DataFrame({"measure": [METRIC_LABELS[m] for m in measures]})
    for column in ("model", "pca50", "training_mean", "truth"):
        if column in reconstruction[measures[0]]:
            table[METRIC_LABELS.get(column, column)] = [reconstruction[m].get(column) for m in measures]
    return table


def _last_epoch_figures(folder: Path) -> list[Path]:
    """The newest of each kind of figure a training run drew (`latent_map_epoch014.png`, …)."""
    latest: dict[str, Path] = {}
    for path in sorted(folder.glob("*.png")):
        latest[re.sub(r"_epoch\d+$", "", path.stem)] = path
    return list(latest.values())
