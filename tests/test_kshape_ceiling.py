"""bench/kshape_ceiling.py's k-Shape with limited shifts."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np

from wbcvae.trajectory import kinetics

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("kshape_ceiling", REPO / "bench" / "kshape_ceiling.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_limited_shifts_tell_a_bump_from_its_shifted_copy_and_are_undone_after():
    t = np.linspace(0, 1, 50)
    early, late = (kinetics.znormalise(np.exp(-(((t - c) / 0.08) ** 2))[None])[0] for c in (0.3, 0.6))  # one bump, 15 steps apart
    pair = np.stack([early, late])
    assert kinetics.shape_distances(pair)[0, 1] < 0.1  # k-Shape: nearly the same shape, shifted (zero-filled)
    with bench.shifts_within(5):
        assert kinetics.shape_distances(pair)[0, 1] > 0.5
    with bench.shifts_within(15):
        assert kinetics.shape_distances(pair)[0, 1] < 0.1
    assert kinetics.shape_distances(pair)[0, 1] < 0.1  # the full cross-correlation is back


def test_started_from_the_calls_keeps_well_separated_shapes_apart():
    t = np.linspace(0, 1, 40)
    rng = np.random.default_rng(0)
    up = [1 / (1 + np.exp(-(t - c) / 0.05)) for c in rng.uniform(0.3, 0.7, 10)]
    down = [1 - u for u in up]
    bumps = [np.exp(-(((t - c) / 0.1) ** 2)) for c in rng.uniform(0.4, 0.6, 10)]
    z = kinetics.znormalise(np.array(up + down + bumps) + 0.01 * rng.standard_normal((30, 40)))
    calls = np.array(["up"] * 10 + ["down"] * 10 + ["transient"] * 10)
    labels = bench.started_from_calls(z, calls)
    assert [len(set(labels[i : i + 10])) for i in (0, 10, 20)] == [1, 1, 1] and len(set(labels)) == 3


def test_a_folder_without_a_demo_is_named(tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "bench" / "kshape_ceiling.py"), "--demo", str(tmp_path)], capture_output=True, text=True)
    assert out.returncode != 0 and str(tmp_path) in out.stderr and "make demo" in out.stderr and "Traceback" not in out.stderr
