"""bench/kinetics_ceiling.py: the kinetics a synthetic world's own cells allow, by the trajectories' rule."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from wbcvae.data.synthetic.world import write_world

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("kinetics_ceiling", REPO / "bench" / "kinetics_ceiling.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_more_cells_pin_the_kinetics_better(tmp_path):
    """Along the true pseudotime, the up/down/transient/flat calls recover the truth, better with more cells."""
    scores = {}
    for n in (300, 1500):
        world = write_world(tmp_path / f"w{n}", cells_per_class=1, rna_cells=n, n_genes=300, crop_size=64, seed=0, progress=False)
        scores[n] = bench.ceiling(str(world)).set_index("lineage")
    assert list(scores[300].index) == ["granulocytic", "monocytic"]
    assert scores[1500].at["granulocytic", "ari_curves"] > 0.4
    assert scores[1500].at["granulocytic", "ari_curves"] > scores[300].at["granulocytic", "ari_curves"]
