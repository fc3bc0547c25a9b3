"""Crash safety, measured: `kill -9` at a random moment (a seeded delay), run again, and the numbers of the
final report equal those of a run that was never interrupted; for the whole pipeline and for the
alignment stage resumed from its `last.ckpt`. Toy sizes, but each still trains several models: slow."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_pipeline import TOY

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
PRELUDE = (
    "import torch, threadpoolctl; torch.set_num_threads(1); threadpoolctl.threadpool_limits(1, user_api='blas'); "
)


def _python(code: str) -> subprocess.Popen:
    """`code` in a fresh interpreter on one thread, as the tests run (conftest.py)."""
    return subprocess.Popen([sys.executable, "-c", PRELUDE + code], env={**os.environ, **ONE_THREAD}, cwd=REPO)


def _finish(code: str) -> None:
    worker = _python(code)
    assert worker.wait(timeout=900) == 0


def _kill_after(code: str, seconds: float) -> bool:
    """Run `code`, SIGKILL it after `seconds`; False if it finished first."""
    worker = _python(code)
    try:
        worker.wait(timeout=seconds)
        return False
    except subprocess.TimeoutExpired:
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=60)
        return True


def _pipeline_code(out: Path) -> str:
    return (
        "from wbcvae.pipeline import load_pipeline_config, run_pipeline; "
        f"run_pipeline(load_pipeline_config('experiments/pipeline/demo.yaml', {TOY!r}), out={str(out)!r})"
    )


def numbers(metrics: dict, out: Path) -> dict:
    """The report's metrics without timings (any key naming seconds), paths made relative to the run folder."""

    def clean(value):
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items() if "seconds" not in k}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value.replace(str(out), "OUT") if isinstance(value, str) else value

    return clean(metrics)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, float]:
    """The toy pipeline, never interrupted, and how long it took."""
    out = tmp_path_factory.mktemp("reference") / "run"
    started = time.monotonic()
    _finish(_pipeline_code(out))
    return out, time.monotonic() - started


def test_pipeline_killed_at_a_random_moment_resumes_to_the_same_report(reference, tmp_path):
    out_ref, seconds = reference
    out = tmp_path / "run"
    delay = random.Random(11).uniform(0.2, 0.8) * seconds
    assert _kill_after(_pipeline_code(out), delay), "the pipeline finished before it could be killed"
    assert not (out / "report" / "metrics.json").exists()
    _finish(_pipeline_code(out))
    expected = numbers(json.loads((out_ref / "report" / "metrics.json").read_text()), out_ref)
    resumed = numbers(json.loads((out / "report" / "metrics.json").read_text()), out)
    assert resumed == expected


ALIGN_EPOCHS = 6


def _align_code(reference_out: Path, out: Path, numbers_file: Path, ckpt: Path | None = None) -> str:
    """`fit_alignment` on the reference run's models and features, its metrics written to `numbers_file`."""
    stage = {name: json.loads((reference_out / name / "stage.json").read_text()) for name in ("world", "features", "image_vae", "rna_vae")}
    settings = {
        "image_ckpt": stage["image_vae"]["checkpoint"],
        "rna_ckpt": stage["rna_vae"]["checkpoint"],
        "features": stage["features"]["store"],
        "rna": stage["world"]["rna"],
        "out": str(out),
        "wandb": False,
        "max_epochs": ALIGN_EPOCHS,
        "batch_size": 8,  # a few optimiser steps per epoch, so a kill can land mid-epoch
        "trajectories": ["granulopoiesis"],
        "trajectory": {"steps": 20, "samples": 2, "fit_iters": 10},
    }
    return (
        "import json; from wbcvae.alignment.run import AlignConfig, fit_alignment; from wbcvae.report.html import to_jsonable; "
        f"config = AlignConfig.from_yaml('experiments/alignment/synthetic.yaml', **{settings!r}); "
        f"run = fit_alignment(config, ckpt_path={str(ckpt) if ckpt else None!r}); "
        f"open({str(numbers_file)!r}, 'w').write(json.dumps(to_jsonable(run.metrics)))"
    )


def _modified(path: Path, worker: subprocess.Popen, after: float = 0.0) -> float:
    """When `path` was (re)written after time `after` (wall clock), waiting for it while `worker` runs."""
    while worker.poll() is None:
        if path.exists() and path.stat().st_mtime > after:
            return path.stat().st_mtime
        time.sleep(0.05)
    raise AssertionError(f"the run ended before {path} was written")


def test_alignment_killed_mid_training_resumes_from_its_checkpoint_to_the_same_numbers(reference, tmp_path):
    out_ref, _ = reference
    _finish(_align_code(out_ref, tmp_path / "whole", tmp_path / "whole.json"))

    worker = _python(_align_code(out_ref, tmp_path / "killed", tmp_path / "killed.json"))
    last = tmp_path / "killed" / "alignment" / "version_0" / "checkpoints" / "last.ckpt"
    first = _modified(last, worker)
    epoch = _modified(last, worker, after=first) - first
    time.sleep(random.Random(7).uniform(0.2, 2.5) * epoch)  # in epoch 3, 4 or 5 of 6
    assert worker.poll() is None, "the alignment finished before it could be killed"
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=60)
    assert not (tmp_path / "killed.json").exists()

    _finish(_align_code(out_ref, tmp_path / "killed", tmp_path / "resumed.json", ckpt=last))
    whole = json.loads((tmp_path / "whole.json").read_text())
    resumed = json.loads((tmp_path / "resumed.json").read_text())
    assert resumed["alignment"] and resumed == whole
