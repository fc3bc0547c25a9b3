"""Issue 10's targets at a glance, read from the runs that measure them: one markdown row per target, with what
the issue measured before (quoted from it), what the runs give, and whether the target holds.

- `--demo`: a `make demo` folder (`report/metrics.json`): the synthetic paths, van Galen's HSC → Mono path and the
  RNA β-VAEs' held-out reconstruction;
- `--world`: a `make kinetics-world` folder (the same pipeline on 10,000 RNA cells), its synthetic paths beside the
  demo's;
- `--speed`: the JSON `python bench/bench_scvi.py --out FILE` writes (needs scvi-tools): cells/s and start-up.

    python bench/kinetics_targets.py --demo demo --world runs/kinetics_world --speed runs/bench_scvi.json

A part whose run is not given is left out. The synthetic ARI is read two ways: each gene's kinetic called from its
own decoded curve (`ari_curves`, what the report names a gene by) and the ids of k-Shape's clusters (`ari_clusters`,
the issue's measure before).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from wbcvae.pipeline_report import METRIC_LABELS
from wbcvae.training.rna_quality import MEASURES
from wbcvae.trajectory.presets import MARROW_MONOCYTE_MARKERS

SYNTHETIC = {  # metric → (target wording, threshold, the "before" for granulopoiesis / monocytopoiesis, format)
    "ari_curves": ("ARI of the genes' kinetics vs the true ones ≥ 0.8", 0.8, "—", "{:.3f}"),
    "ari_clusters": ("ARI of k-Shape's clusters vs the true kinetics ≥ 0.8", 0.8, "0.53 / 0.32", "{:.3f}"),
    "transient_recall": ("truly transient genes called transient ≥ 70 %", 0.7, "— / 0 of 317", "{:.1f} %"),
    "curve_shape_accuracy": ("genes whose kinetic is right ≥ 90 %", 0.9, "—", "{:.1f} %"),
    "pseudotime_spearman": ("Spearman vs true pseudotime ≥ 0.99", 0.99, "—", "{:.3f}"),
}
PATHS = ("granulopoiesis", "monocytopoiesis")


def metrics(folder: Path) -> dict:
    path = folder / "report" / "metrics.json"
    if not path.is_file():
        raise SystemExit(f"{path}: no metrics.json (run `make demo` or `make kinetics-world` first)")
    return json.loads(path.read_text())


def holds(ok: bool) -> str:
    return "yes" if ok else "**no**"


def synthetic_rows(runs: dict[str, dict]) -> list[list[str]]:
    rows = []
    for key, (target, threshold, before, form) in SYNTHETIC.items():
        values = {run: [m[f"trajectory/{p}"][key] for p in PATHS] for run, m in runs.items()}
        shown = [" / ".join(form.format(100 * v if "%" in form else v) for v in values[run]) for run in runs]
        rows.append([f"synthetic, granulopoiesis / monocytopoiesis: {target}", before, *shown,
                     holds(all(v >= threshold for vs in values.values() for v in vs))])  # fmt: skip
    return rows


def van_galen_rows(m: dict, columns: int) -> list[list[str]]:
    real = m.get("real_rna")
    if not real:
        return []
    misses = ", ".join(f"{g} {shape}" for g, shape in sorted(real["marker_shapes"].items()) if g in real.get("marker_misses", {}))
    agree, compared, known = real["markers_agree"], real["markers_compared"], len(MARROW_MONOCYTE_MARKERS)
    pad = [""] * (columns - 1)
    return [
        [f"van Galen HSC → Mono: the {known} known markers among the genes", "several HSC markers absent", f"{compared} of {known}", *pad, holds(compared == known)],
        ["van Galen HSC → Mono: every marker the expected way", "—", f"{agree} of {compared}" + (f" ({misses})" if misses else ""), *pad, holds(agree == compared)],
        ["van Galen HSC → Mono: correlation with the cells' DPT trend, per marker", "—", f"median r {real['dpt_correlation_median']:.2f}", *pad, "reported"],
    ]  # fmt: skip


def reconstruction_rows(m: dict, columns: int) -> list[list[str]]:
    rows, pad = [], [""] * (columns - 1)
    for name, data in (("rna_vae", "synthetic world"), ("real_rna_vae", "van Galen")):
        scores = m.get("rna_reconstruction", {}).get(name)
        if not scores:
            continue
        for key in MEASURES:  # lower is better, but for the likelihood
            model, pca = scores[key]["model"], scores[key]["pca50"]
            better = model > pca if key == "nb_log_likelihood" else model < pca
            truth = f", the truth {scores[key]['truth']:.4f}" if "truth" in scores[key] else ""
            before = "0.0538 vs 0.0514 (min-max scaled)" if (key, name) == ("log_expression_mse", "rna_vae") else "—"
            shown = f"{model:.4f} vs {pca:.4f}{truth}".replace("-", "−")
            rows.append([f"held-out RNA, {data}: {METRIC_LABELS[key]} better than PCA-50's", before, shown, *pad, holds(better)])
    return rows


def speed_rows(speed: dict, columns: int) -> list[list[str]]:
    scvi, pad = speed["scvi"], [""] * (columns - 1)
    equal, obsm = speed["ours_equal_width"], speed["ours_equal_width_obsm_atlas"]
    ratio = equal["cells_per_s"] / scvi["cells_per_s"]
    return [
        ["speed: cells/s at SCVI's width ≥ 1× SCVI's", "1.9× (MSE decoder)", f"{ratio:.2f}×", *pad, holds(ratio >= 1)],
        ["start-up under SCVI's: the atlas' own embedding (`obsm`)", "27–29 s vs 14 s", f"{obsm['startup_s']:.2f} s vs {scvi['startup_s']:.2f} s", *pad, holds(obsm["startup_s"] < scvi["startup_s"])],
        ["start-up under SCVI's: the PCA atlas fitted at start-up", "27–29 s vs 14 s", f"{equal['startup_s']:.2f} s vs {scvi['startup_s']:.2f} s", *pad, holds(equal["startup_s"] < scvi["startup_s"])],
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, default=Path("demo"), help="a `make demo` folder")
    parser.add_argument("--world", type=Path, default=None, help="a `make kinetics-world` folder")
    parser.add_argument("--speed", type=Path, default=None, help="`bench/bench_scvi.py --out`'s JSON")
    args = parser.parse_args()
    demo = metrics(args.demo)
    runs = {"measured (the demo; speed: bench_scvi)": demo} | ({"larger world": metrics(args.world)} if args.world else {})
    rows = synthetic_rows(runs) + van_galen_rows(demo, len(runs)) + reconstruction_rows(demo, len(runs))
    if args.speed:
        rows += speed_rows(json.loads(args.speed.read_text()), len(runs))
    header = ["target", "the issue's (before)", *runs, "holds"]
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
