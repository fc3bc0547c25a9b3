"""bench/kinetics_targets.py: each target's row and whether it holds, read from a run's metrics.json."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _path(ari_curves: float, ari_clusters: float) -> dict:
    return {"ari_curves": ari_curves, "ari_clusters": ari_clusters, "transient_recall": 0.9, "curve_shape_accuracy": 0.95, "pseudotime_spearman": 1.0}


def _scores(model: float, pca: float) -> dict:
    return {"model": model, "pca50": pca, "training_mean": 9.0}


def _write(folder: Path, metrics: dict) -> Path:
    (folder / "report").mkdir(parents=True)
    (folder / "report" / "metrics.json").write_text(json.dumps(metrics))
    return folder


def test_rows_say_which_targets_hold(tmp_path):
    demo = {
        "trajectory/granulopoiesis": _path(0.9, 0.85),
        "trajectory/monocytopoiesis": _path(0.85, 0.7),
        "real_rna": {"markers_agree": 16, "markers_compared": 17, "dpt_correlation_median": 0.96,
                     "marker_shapes": {"CD34": "transient", "LYZ": "up"}, "marker_misses": {"CD34": "down"}},
        "rna_reconstruction": {"rna_vae": {"held_out_molecules_mse": _scores(0.9, 1.0), "log_expression_mse": _scores(0.8, 0.7),
                                           "nb_log_likelihood": _scores(-0.9, -1.0)}},
    }  # fmt: skip
    world = {"trajectory/granulopoiesis": _path(0.9, 0.9), "trajectory/monocytopoiesis": _path(0.9, 0.81)}
    speed = {
        "scvi": {"cells_per_s": 100.0, "startup_s": 0.25},
        "ours_equal_width": {"cells_per_s": 120.0, "startup_s": 0.5},
        "ours_equal_width_obsm_atlas": {"cells_per_s": 130.0, "startup_s": 0.2},
    }
    (tmp_path / "speed.json").write_text(json.dumps(speed))
    out = subprocess.run(
        [sys.executable, str(REPO / "bench" / "kinetics_targets.py"), "--demo", str(_write(tmp_path / "demo", demo)),
         "--world", str(_write(tmp_path / "world", world)), "--speed", str(tmp_path / "speed.json")],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    rows = {line.split(" | ")[0].lstrip("| "): line.rstrip(" |").split(" | ")[-1] for line in out.splitlines()[2:]}
    assert rows["synthetic, granulopoiesis / monocytopoiesis: ARI of the genes' kinetics vs the true ones ≥ 0.8"] == "yes"
    assert rows["synthetic, granulopoiesis / monocytopoiesis: ARI of k-Shape's clusters vs the true kinetics ≥ 0.8"] == "**no**"  # the demo's 0.7
    assert rows["van Galen HSC → Mono: every marker the expected way"] == "**no**"
    assert "16 of 17 (CD34 transient)" in out
    assert rows["held-out RNA, synthetic world: MSE on held-out molecules better than PCA-50's"] == "yes"
    assert rows["held-out RNA, synthetic world: log-expression MSE (plain) better than PCA-50's"] == "**no**"
    assert rows["held-out RNA, synthetic world: NB log-likelihood per count better than PCA-50's"] == "yes"  # higher is better
    assert rows["speed: cells/s at SCVI's width ≥ 1× SCVI's"] == "yes"
    assert rows["start-up under SCVI's: the atlas' own embedding (`obsm`)"] == "yes"
    assert rows["start-up under SCVI's: the PCA atlas fitted at start-up"] == "**no**"
    assert "0.850 / 0.700 | 0.900 / 0.810" in out and "−0.9000 vs −1.0000" in out  # the demo's and the larger world's columns side by side


def test_a_missing_run_is_named(tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "bench" / "kinetics_targets.py"), "--demo", str(tmp_path)], capture_output=True, text=True)
    assert out.returncode != 0 and "metrics.json" in out.stderr and "make demo" in out.stderr
