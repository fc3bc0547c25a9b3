"""The study's three trajectories, by name, and the markers each is expected to move.

A preset lists its stages from start to end; the study fits the GP through the two end points only,
`stages(waypoints=True)` adds the maturation series in between as anchors.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from wbcvae.errors import InputError
from wbcvae.vocabulary import LINEAGES


@dataclass(frozen=True)
class TrajectoryPreset:
    name: str
    lineage: str  # the vocabulary lineage this path walks (ground truth: var `kinetic_<lineage>`)
    series: tuple[str, ...]  # every stage from start to end
    description: str
    # Known markers and the shape biology expects along the path (only genes we are sure of).
    expected_markers: dict[str, str] = field(default_factory=dict)

    @property
    def start(self) -> str:
        return self.series[0]

    @property
    def end(self) -> str:
        return self.series[-1]

    def stages(self, waypoints: bool = False) -> tuple[str, ...]:
        """The anchor stages: the two end points, or every stage of the series."""
        return self.series if waypoints else (self.start, self.end)


_GRANULOCYTIC = LINEAGES["granulocytic"].stages

PRESETS: dict[str, TrajectoryPreset] = {
    p.name: p
    for p in (
        TrajectoryPreset(
            "granulopoiesis",
            "granulocytic",
            _GRANULOCYTIC,
            "myeloblast → neutrophil_segmented through the granulocytic series",
            {"CD34": "down", "MPO": "transient", "ELANE": "transient", "AZU1": "transient", "CXCR2": "up", "FCGR3B": "up"},
        ),
        TrajectoryPreset(
            "monocytopoiesis",
            "monocytic",
            LINEAGES["monocytic"].stages,
            "myeloblast → monocyte",
            {"CD34": "down", "LYZ": "up", "S100A8": "up", "S100A9": "up", "CD14": "up", "FCN1": "up"},
        ),
        TrajectoryPreset(
            "neutrophil_maturation",
            "granulocytic",
            _GRANULOCYTIC[_GRANULOCYTIC.index("neutrophil_banded") :],
            "neutrophil_banded → neutrophil_segmented",
            {"FCGR3B": "up", "CXCR2": "up"},
        ),
    )
}


# Real marrow, HSC → GMP → ProMono → Mono (van Galen et al. 2019 cell types): stem-cell genes fall,
# primary-granule proteins peak in GMPs and promonocytes, monocyte genes rise.
MARROW_MONOCYTE_MARKERS: dict[str, str] = {
    **{gene: "down" for gene in ("CD34", "CRHBP", "HLF", "AVP", "SPINK2")},
    **{gene: "transient" for gene in ("MPO", "ELANE", "AZU1", "PRTN3", "CTSG")},
    **{gene: "up" for gene in ("LYZ", "S100A8", "S100A9", "CD14", "FCN1", "CSF1R", "VCAN")},
}


REAL_RNA_LINEAGE = "monocytic"  # the synthetic lineage the real marrow path stands beside


def real_rna_preset(path: list[str] | tuple[str, ...]) -> TrajectoryPreset:
    """The path through real marrow's cell types (start to end), read against `MARROW_MONOCYTE_MARKERS`."""
    return TrajectoryPreset(
        name=f"{path[0]}_to_{path[-1]}",
        lineage=REAL_RNA_LINEAGE,
        series=tuple(path),
        description=f"Real RNA: {' → '.join(path)}",
        expected_markers=MARROW_MONOCYTE_MARKERS,
    )


def get_preset(name: str) -> TrajectoryPreset:
    if name not in PRESETS:
        raise InputError(f"no trajectory preset {name!r}; known: {sorted(PRESETS)}")
    return PRESETS[name]
