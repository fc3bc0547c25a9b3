"""The hidden maturation programme both synthetic modalities are drawn from.

Every synthetic cell, image or transcriptome, is a point (lineage, pseudotime t ∈ [0, 1]) on one
of the lineages in `wbcvae.vocabulary.LINEAGES`. A class is a window of pseudotime on a lineage:
the granulocytic series tiles [0, 1] with its six stages, the other lineages are covered by one or
two classes, so every lineage is observed over the whole of [0, 1] and its gene kinetics can be
checked anywhere on it. The myeloblast opens two lineages (granulocytic and monocytic) with the
same window; each myeloblast is assigned to one of them at random.

The smudge cell is a smear artefact, not a maturation state: its "lineage" is `artefact` and its t
is the degree of smearing. It gets images but no transcriptome (`RNA_CLASSES`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from wbcvae.vocabulary import CLASSES, LINEAGES


@dataclass(frozen=True)
class Window:
    """The pseudotime interval [start, end] a class occupies on one lineage."""

    lineage: str
    start: float
    end: float


GRANULOCYTIC_BOUNDS = (0.0, 0.15, 0.32, 0.49, 0.66, 0.83, 1.0)  # where each granulocytic stage starts and ends
_BLAST_END = GRANULOCYTIC_BOUNDS[1]  # the myeloblast window is the same on both myeloid lineages

PROGRAMME: dict[str, tuple[Window, ...]] = {
    "myeloblast": (Window("granulocytic", 0.0, _BLAST_END), Window("monocytic", 0.0, _BLAST_END)),
    **{
        cls: (Window("granulocytic", lo, hi),)
        for cls, lo, hi in zip(
            LINEAGES["granulocytic"].stages[1:], GRANULOCYTIC_BOUNDS[1:-1], GRANULOCYTIC_BOUNDS[2:], strict=True
        )
    },
    "monocyte": (Window("monocytic", _BLAST_END, 1.0),),
    "eosinophil": (Window("eosinophilic", 0.0, 1.0),),  # eosinophilic myelocyte → mature bilobed cell
    "basophil": (Window("basophilic", 0.0, 1.0),),
    "erythroblast": (Window("erythroid", 0.0, 1.0),),  # proerythroblast → orthochromatic
    "lymphocyte_typical": (Window("lymphoid", 0.0, 0.6),),
    "lymphocyte_atypical": (Window("lymphoid", 0.6, 1.0),),  # activated (reactive) lymphocytes
    "smudge_cell": (Window("artefact", 0.0, 1.0),),  # t = degree of smearing
}

RNA_CLASSES: tuple[str, ...] = tuple(c for c in CLASSES if c != "smudge_cell")
RNA_LINEAGES: tuple[str, ...] = tuple(name for name in LINEAGES if name != "artefact")


def sample_cells(counts: dict[str, int], rng: np.random.Generator) -> pd.DataFrame:
    """Cells with columns label, lineage, pseudotime; `counts[cls]` of each class, in `CLASSES` order.

    Pseudotimes are stratified over the class window (one draw per equal slice, shuffled), so even
    a handful of cells spans the window; a class with two windows splits its cells between them.
    """
    rows = []
    for cls in CLASSES:
        n = counts.get(cls, 0)
        if n <= 0:
            continue
        windows = PROGRAMME[cls]
        which = rng.permutation(np.arange(n) % len(windows))
        for w_index, window in enumerate(windows):
            k = int((which == w_index).sum())
            slices = (rng.permutation(k) + rng.random(k)) / max(k, 1)
            ts = window.start + (window.end - window.start) * slices
            rows += [(cls, window.lineage, float(t)) for t in ts]
    return pd.DataFrame(rows, columns=["label", "lineage", "pseudotime"])


def programme_as_dict() -> dict[str, list[dict[str, float | str]]]:
    """The programme in a JSON-friendly form, for `ground_truth.json`."""
    return {cls: [vars(w) for w in PROGRAMME[cls]] for cls in CLASSES}
