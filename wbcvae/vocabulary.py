"""One vocabulary of white-blood-cell classes, their lineages, and how other datasets spell them.

Every reader in `wbcvae.data` turns its source's labels into these canonical names through
`LabelMapper`, so models, plots and configs only ever see the 13 study classes.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from wbcvae.errors import InputError

CLASSES: tuple[str, ...] = (
    "myeloblast",
    "promyelocyte",
    "myelocyte",
    "metamyelocyte",
    "neutrophil_banded",
    "neutrophil_segmented",
    "monocyte",
    "eosinophil",
    "basophil",
    "erythroblast",
    "lymphocyte_typical",
    "lymphocyte_atypical",
    "smudge_cell",
)
CLASS_INDEX: dict[str, int] = {name: i for i, name in enumerate(CLASSES)}


@dataclass(frozen=True)
class Lineage:
    """A differentiation series: its classes in stage order (earliest first)."""

    name: str
    stages: tuple[str, ...]


LINEAGES: dict[str, Lineage] = {
    lin.name: lin
    for lin in (
        Lineage(
            "granulocytic",
            (
                "myeloblast",
                "promyelocyte",
                "myelocyte",
                "metamyelocyte",
                "neutrophil_banded",
                "neutrophil_segmented",
            ),
        ),
        Lineage("monocytic", ("myeloblast", "monocyte")),
        Lineage("eosinophilic", ("eosinophil",)),
        Lineage("basophilic", ("basophil",)),
        Lineage("erythroid", ("erythroblast",)),
        Lineage("lymphoid", ("lymphocyte_typical", "lymphocyte_atypical")),
        Lineage("artefact", ("smudge_cell",)),
    )
}


def lineages_of(cls: str) -> list[str]:
    """Names of the lineages a class belongs to (the myeloblast starts two)."""
    return [lin.name for lin in LINEAGES.values() if cls in lin.stages]


def stage_of(cls: str, lineage: str) -> int:
    """Position of `cls` in `lineage` (0 = earliest)."""
    return LINEAGES[lineage].stages.index(cls)


# --- Alias tables -------------------------------------------------------------------------------
# Keys are compared after `normalise_label`; a value of None marks a label we know but that names
# none of the 13 classes (e.g. platelets): it is treated like any unknown label.

PBC_PREFIXES: dict[str, str | None] = {
    # Acevedo et al. 2020 (PBC dataset): the subtype is the file-name prefix.
    "BA": "basophil",
    "EO": "eosinophil",
    "ERB": "erythroblast",
    "LY": "lymphocyte_typical",
    "MO": "monocyte",
    "PMY": "promyelocyte",
    "MY": "myelocyte",
    "MMY": "metamyelocyte",
    "BNE": "neutrophil_banded",
    "SNE": "neutrophil_segmented",
    "IG": None,  # immature granulocyte, stage unspecified
    "NEUTROPHIL": None,  # band or segmented, unspecified
    "PLATELET": None,
}

MUNICH_AML_ABBREVIATIONS: dict[str, str | None] = {
    # Matek et al. 2019, AML-Cytomorphology_LMU: 15 classes onto our 13.
    "BAS": "basophil",
    "EBO": "erythroblast",
    "EOS": "eosinophil",
    "KSC": "smudge_cell",
    "LYA": "lymphocyte_atypical",
    "LYT": "lymphocyte_typical",
    "MMZ": "metamyelocyte",
    "MOB": "myeloblast",  # monoblast: a blast, counted with the blasts as in the study
    "MON": "monocyte",
    "MYB": "myeloblast",
    "MYO": "myelocyte",
    "NGB": "neutrophil_banded",
    "NGS": "neutrophil_segmented",
    "PMB": "promyelocyte",  # bilobed promyelocyte
    "PMO": "promyelocyte",
}

FREE_TEXT: dict[str, str | None] = {
    # How clinicians name folders; matched after normalise_label (lower case, plurals dropped).
    "blast": "myeloblast",
    "blast no lineage spec": "myeloblast",
    "myeloblast": "myeloblast",
    "monoblast": "myeloblast",
    "promyelocyte": "promyelocyte",
    "promyelocyte bilobed": "promyelocyte",
    "myelocyte": "myelocyte",
    "metamyelocyte": "metamyelocyte",
    "band neutrophil": "neutrophil_banded",
    "neutrophil band": "neutrophil_banded",
    "neutrophil banded": "neutrophil_banded",
    "banded neutrophil": "neutrophil_banded",
    "band": "neutrophil_banded",
    "segmented neutrophil": "neutrophil_segmented",
    "neutrophil segmented": "neutrophil_segmented",
    "neutrophil segment": "neutrophil_segmented",
    "segmented": "neutrophil_segmented",
    "monocyte": "monocyte",
    "eosinophil": "eosinophil",
    "basophil": "basophil",
    "erythroblast": "erythroblast",
    "normoblast": "erythroblast",
    "nucleated red blood cell": "erythroblast",
    "lymphocyte": "lymphocyte_typical",
    "lymphocyte typical": "lymphocyte_typical",
    "typical lymphocyte": "lymphocyte_typical",
    "lymphocyte variant": "lymphocyte_atypical",
    "lymphocyte atypical": "lymphocyte_atypical",
    "atypical lymphocyte": "lymphocyte_atypical",
    "reactive lymphocyte": "lymphocyte_atypical",
    "smudge cell": "smudge_cell",
    "smudge": "smudge_cell",
    "basket cell": "smudge_cell",
    "neutrophil": None,  # band or segmented, unspecified
    "ig": None,
    "immature granulocyte": None,
    "platelet": None,
}

VANGALEN_CELLTYPES: dict[str, str | None] = {
    # van Galen et al. 2019 `CellType`; malignant "X-like" types map as X (see `resolve`).
    "HSC": "myeloblast",
    "Prog": "myeloblast",
    "GMP": "promyelocyte",
    "ProMono": "monocyte",
    "Mono": "monocyte",
    "earlyEry": "erythroblast",
    "lateEry": "erythroblast",
    "ProB": "lymphocyte_typical",
    "B": "lymphocyte_typical",
    "Plasma": "lymphocyte_typical",
    "T": "lymphocyte_typical",
    "CTL": "lymphocyte_typical",
    "NK": "lymphocyte_typical",
    "cDC": None,
    "pDC": None,
}

TABULA_SAPIENS_ONTOLOGY: dict[str, str | None] = {
    # Tabula Sapiens `cell_ontology_class`.
    "hematopoietic stem cell": "myeloblast",
    "common myeloid progenitor": "myeloblast",
    "granulocyte monocyte progenitor cell": "promyelocyte",
    "promyelocyte": "promyelocyte",
    "myelocyte": "myelocyte",
    "metamyelocyte": "metamyelocyte",
    "neutrophil": "neutrophil_segmented",
    "classical monocyte": "monocyte",
    "non-classical monocyte": "monocyte",
    "intermediate monocyte": "monocyte",
    "monocyte": "monocyte",
    "eosinophil": "eosinophil",
    "basophil": "basophil",
    "erythroid progenitor cell": "erythroblast",
    "erythroblast": "erythroblast",
    "t cell": "lymphocyte_typical",
    "cd4-positive, alpha-beta t cell": "lymphocyte_typical",
    "cd8-positive, alpha-beta t cell": "lymphocyte_typical",
    "b cell": "lymphocyte_typical",
    "naive b cell": "lymphocyte_typical",
    "memory b cell": "lymphocyte_typical",
    "plasma cell": "lymphocyte_typical",
    "natural killer cell": "lymphocyte_typical",
    "erythrocyte": None,
    "platelet": None,
}

ALIAS_TABLES: dict[str, dict[str, str | None]] = {
    "pbc": PBC_PREFIXES,
    "munich_aml": MUNICH_AML_ABBREVIATIONS,
    "free_text": FREE_TEXT,
    "vangalen": VANGALEN_CELLTYPES,
    "tabula_sapiens": TABULA_SAPIENS_ONTOLOGY,
}


def normalise_label(label: str) -> str:
    """Lower case, punctuation and underscores to spaces, English plurals dropped per word."""
    words = re.sub(r"[^0-9a-z+\-]+", " ", str(label).lower().replace("_", " ")).split()
    singular = [w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w for w in words]
    return " ".join(singular)


def _normalised(table: dict[str, str | None]) -> dict[str, str | None]:
    return {normalise_label(k): v for k, v in table.items()}


_LOOKUP: dict[str, dict[str, str | None]] = {name: _normalised(t) for name, t in ALIAS_TABLES.items()}
_CANONICAL = {normalise_label(c): c for c in CLASSES}
_MISSING = object()


def resolve(label: str, tables: tuple[str, ...] = tuple(ALIAS_TABLES)) -> str | None:
    """Canonical class of `label`, or None when it names none of the 13 classes.

    Canonical names are tried first, then `tables` in order. A van Galen malignant type
    ("GMP-like") resolves as its normal counterpart ("GMP").
    """
    key = normalise_label(label)
    if key in _CANONICAL:
        return _CANONICAL[key]
    for name in tables:
        hit = _LOOKUP[name].get(key, _MISSING)
        if hit is not _MISSING:
            return hit  # type: ignore[return-value]
    if key.endswith(" like") or key.endswith("-like"):
        return resolve(re.sub(r"[ -]like$", "", key), tables)
    return None


UNKNOWN_POLICIES = ("skip", "fail")


@dataclass
class LabelMapper:
    """Maps a source's labels to classes and applies the user's policy for the rest.

    `skip` drops unknown labels and counts them per label (`skipped`), so summaries can report them;
    `fail` raises `InputError` on the first one, naming it and where it came from.
    """

    tables: tuple[str, ...] = tuple(ALIAS_TABLES)
    unknown: str = "skip"
    skipped: Counter = field(default_factory=Counter)

    def __post_init__(self) -> None:
        if self.unknown not in UNKNOWN_POLICIES:
            raise InputError(f"unknown-label policy must be one of {UNKNOWN_POLICIES}, got {self.unknown!r}")
        missing = [t for t in self.tables if t not in ALIAS_TABLES]
        if missing:
            raise InputError(f"no alias table named {missing[0]!r}; known: {sorted(ALIAS_TABLES)}")

    def __call__(self, label: str, where: str = "") -> str | None:
        cls = resolve(label, self.tables)
        if cls is None:
            if self.unknown == "fail":
                at = f" ({where})" if where else ""
                raise InputError(f"label {label!r}{at} names none of the 13 classes (use unknown='skip' to drop it)")
            self.skipped[str(label)] += 1
        return cls
