"""bench/kinetics_yardstick.py's shape rule that asks each leg of a bump to clear the spread."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))  # kinetics_yardstick imports demo_paths beside it
spec = importlib.util.spec_from_file_location("kinetics_yardstick", REPO / "bench" / "kinetics_yardstick.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_a_bump_is_transient_only_when_both_its_legs_clear_the_spread():
    t = np.linspace(0, 1, 40)[:, None]
    bump = np.exp(-(((t - 0.5) / 0.1) ** 2))
    curves = np.hstack([
        3 * bump,                       # rises 3 and falls 3: transient
        3 * t,                          # rises 3: up
        2 - 2 * t,                      # falls 2: down
        np.where(t < 0.3, 0.5 * t / 0.3, 0.5 - 3 * (t - 0.3)),  # rises 0.5 (within the spread), then falls 2.1: down
        -3 * bump,                      # dips 3 and recovers: transient
        3 * bump,                       # a bump, but the gene is not changed: flat
    ])  # fmt: skip
    spread = np.full_like(curves, 0.25)  # a difference's sd 0.35: z = 4 asks for 1.4
    moving = np.array([True, True, True, True, True, False])
    assert bench.legs_beyond_spread(curves, spread, moving, z=4.0) == ["transient", "up", "down", "down", "transient", "flat"]
    # A ratio rule at a quarter names the fourth curve's small rise a bump: 0.5 is more than a quarter of its net fall, 1.6.
    assert bench.shape_of(bench.znormalise(curves[:, 3][None])[0], transient_ratio=0.25) == "transient"
    # With a tenth of the spread, that small rise is real too, in both legs' eyes.
    assert bench.legs_beyond_spread(curves, spread / 10, moving, z=4.0)[3] == "transient"
