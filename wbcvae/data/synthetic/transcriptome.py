"""Synthetic single-cell RNA counts along the same maturation programme as the images.

Each gene has, on each lineage, a kinetic (up, down, transient or flat) and its log mean is

    log μ(g, lineage, t) = baseline_g + offset_{g,lineage} + amplitude_{g,lineage} · shape_kinetic(t)

with `shape` rising 0 → 1 (up), falling 0 → −1 (down), a bump peaking at 1 (transient) or 0 (flat).
Granulocytic and monocytic genes have no offset, so both lineages start from the same myeloblast;
other lineages get an identity offset per gene. Counts are negative binomial around
`library size × patient batch × μ`, then extra zeros (dropout) hit weakly expressed genes hardest.

Named markers follow the biology (`MARKERS`); the rest are `SYN0001`, … with random kinetics. The
smudge cell, a smear artefact, has no transcriptome (see `programme.RNA_CLASSES`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from wbcvae.data.synthetic.programme import RNA_LINEAGES
from wbcvae.errors import InputError

KINETICS = ("up", "down", "transient", "flat")
MYELOID_ROOT = ("granulocytic", "monocytic")  # lineages sharing the myeloblast: no identity offset
SWITCH_STEEPNESS = 0.07  # pseudotime over which an up/down gene switches (logistic scale)


@dataclass(frozen=True)
class Kinetic:
    """How one gene behaves along one lineage. `timing`: midpoint (up/down) or peak (transient)."""

    kind: str = "flat"
    timing: float = 0.5
    amplitude: float = 0.0  # natural-log units
    offset: float = 0.0  # identity of the lineage: level at t = 0 relative to the gene's baseline
    width: float = 0.12  # transient: standard deviation of the bump


@dataclass(frozen=True)
class Marker:
    """A named gene: log mean at the start of its lineages, and how it moves on each of them."""

    baseline: float
    kinetics: dict[str, Kinetic]
    elsewhere: float = 0.0  # offset on lineages not listed (e.g. CD34 absent outside its lineages)


def _k(kind: str, timing: float = 0.5, amplitude: float = 0.0, offset: float = 0.0, width: float = 0.12) -> Kinetic:
    return Kinetic(kind, timing, amplitude, offset, width)


_MONO_DOWN = {"granulocytic": _k("down", 0.15, 3.0), "monocytic": _k("down", 0.15, 3.0)}


def _primary_granule(baseline: float, peak: float, amplitude: float, width: float = 0.14, in_monocytes: float = 1.5):
    """Azurophilic-granule protein: some in blasts, made in promyelocytes, gone by the band; fades in monocytes."""
    return Marker(
        np.log(baseline),
        {"granulocytic": _k("transient", peak, amplitude, width=width), "monocytic": _k("down", 0.3, in_monocytes)},
        elsewhere=-2.0,
    )


MARKERS: dict[str, Marker] = {
    # Stem/progenitor: high in the myeloblast, lost on maturation.
    "CD34": Marker(np.log(4.0), _MONO_DOWN, elsewhere=-4.0),
    "KIT": Marker(np.log(1.5), {**_MONO_DOWN, "erythroid": _k("down", 0.3, 2.5)}, elsewhere=-3.0),
    # Primary (azurophilic) granules: made in promyelocytes, then switched off.
    "MPO": _primary_granule(0.3, 0.26, 4.5, width=0.15, in_monocytes=2.0),
    "ELANE": _primary_granule(0.1, 0.27, 5.0),
    "AZU1": _primary_granule(0.1, 0.28, 4.5),
    "PRTN3": _primary_granule(0.1, 0.28, 4.5),
    "CTSG": _primary_granule(0.1, 0.3, 4.2),
    "MKI67": Marker(
        np.log(0.6),
        {"granulocytic": _k("transient", 0.3, 1.5), "erythroid": _k("transient", 0.3, 1.5)},
        elsewhere=-1.0,
    ),
    # Secondary (specific) granules: myelocyte and metamyelocyte.
    "LTF": Marker(np.log(0.05), {"granulocytic": _k("transient", 0.55, 5.0)}),
    "CAMP": Marker(np.log(0.05), {"granulocytic": _k("transient", 0.55, 4.5)}),
    "LCN2": Marker(np.log(0.05), {"granulocytic": _k("transient", 0.58, 4.5)}),
    # Mature neutrophils.
    "CSF3R": Marker(np.log(0.1), {"granulocytic": _k("up", 0.72, 3.8), "monocytic": _k("up", 0.5, 1.5)}),
    "FCGR3B": Marker(np.log(0.05), {"granulocytic": _k("up", 0.78, 4.5)}),
    "CXCR2": Marker(np.log(0.05), {"granulocytic": _k("up", 0.75, 4.0)}),
    "MME": Marker(np.log(0.05), {"granulocytic": _k("up", 0.8, 3.5)}),
    "S100A8": Marker(np.log(0.3), {"granulocytic": _k("up", 0.45, 4.0), "monocytic": _k("up", 0.4, 4.0)}),
    "S100A9": Marker(np.log(0.3), {"granulocytic": _k("up", 0.45, 4.0), "monocytic": _k("up", 0.4, 4.0)}),
    # Monocytes.
    "LYZ": Marker(np.log(0.5), {"granulocytic": _k("up", 0.4, 1.0), "monocytic": _k("up", 0.35, 4.0)}),
    "CD14": Marker(np.log(0.05), {"monocytic": _k("up", 0.45, 4.0)}),
    "FCN1": Marker(np.log(0.05), {"monocytic": _k("up", 0.4, 4.0)}),
    "CSF1R": Marker(np.log(0.1), {"monocytic": _k("up", 0.35, 3.0)}),
    "VCAN": Marker(np.log(0.05), {"monocytic": _k("up", 0.5, 3.5)}),
    # Eosinophils: granule proteins early, Charcot–Leyden crystal protein on maturation.
    "PRG2": Marker(np.log(0.05), {"eosinophilic": _k("transient", 0.35, 4.5)}),
    "EPX": Marker(np.log(0.05), {"eosinophilic": _k("transient", 0.4, 4.0)}),
    "CLC": Marker(np.log(0.05), {"eosinophilic": _k("up", 0.45, 4.5), "basophilic": _k("up", 0.45, 3.5)}),
    # Basophils.
    "HDC": Marker(np.log(0.05), {"basophilic": _k("up", 0.4, 4.5)}),
    "CPA3": Marker(np.log(0.05), {"basophilic": _k("transient", 0.4, 4.0)}),
    "MS4A2": Marker(np.log(0.05), {"basophilic": _k("up", 0.5, 4.0)}),
    # Erythroblasts: GATA1/KLF1 early, haemoglobin accumulating.
    "GATA1": Marker(
        np.log(0.05), {"erythroid": _k("transient", 0.35, 4.0, width=0.18), "eosinophilic": _k("flat", offset=2.5)}
    ),
    "KLF1": Marker(np.log(0.05), {"erythroid": _k("transient", 0.4, 3.8, width=0.15)}),
    "HBB": Marker(np.log(0.1), {"erythroid": _k("up", 0.5, 6.0)}),
    "HBA1": Marker(np.log(0.1), {"erythroid": _k("up", 0.55, 5.5)}),
    "GYPA": Marker(np.log(0.05), {"erythroid": _k("up", 0.45, 4.0)}),
    # Lymphocytes: identity genes flat and high; activation (atypical, reactive) genes up.
    "CD3E": Marker(np.log(0.02), {"lymphoid": _k("flat", offset=4.5)}),
    "CD79A": Marker(np.log(0.02), {"lymphoid": _k("flat", offset=3.5)}),
    "CD52": Marker(np.log(0.3), {"lymphoid": _k("flat", offset=2.5)}),
    "HLA-DRA": Marker(np.log(1.0), {"lymphoid": _k("up", 0.7, 2.5), "monocytic": _k("up", 0.4, 1.5)}),
    "GZMB": Marker(np.log(0.05), {"lymphoid": _k("up", 0.75, 4.0)}),
    "CD38": Marker(np.log(0.1), {"lymphoid": _k("up", 0.75, 3.0)}),
    # Housekeeping: flat everywhere.
    "ACTB": Marker(np.log(20.0), {}),
    "GAPDH": Marker(np.log(8.0), {}),
}


@dataclass
class GeneProgramme:
    """Per gene: name, baseline, dispersion, and per lineage the kinetic parameters (arrays of length n_genes)."""

    names: list[str]
    baseline: np.ndarray
    dispersion: np.ndarray  # negative binomial: variance = μ + μ²/dispersion
    kinetics: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # lineage → parameter → values

    def log_mean(self, lineage: str, t: np.ndarray) -> np.ndarray:
        """cells × genes log mean expression of cells at pseudotimes `t` on `lineage`."""
        p = self.kinetics[lineage]
        t = np.asarray(t, dtype=float)[:, None]
        return self.baseline + p["offset"] + p["amplitude"] * kinetic_shape(p["kind"], t, p["timing"], p["width"])

    def as_json(self) -> dict:
        return {
            "names": self.names,
            "baseline": self.baseline.round(4).tolist(),
            "dispersion": self.dispersion.round(4).tolist(),
            "kinetics": {
                lineage: {k: (v.tolist() if v.dtype.kind in "OU" else v.round(4).tolist()) for k, v in params.items()}
                for lineage, params in self.kinetics.items()
            },
        }


def kinetic_shape(kind: np.ndarray, t: np.ndarray, timing: np.ndarray, width: np.ndarray) -> np.ndarray:
    """The unit curve of each kinetic at pseudotime t: up 0→1, down 0→−1, transient bump to 1, flat 0."""

    def switch(x):
        return 1 / (1 + np.exp(-(x - timing) / SWITCH_STEEPNESS))

    rising = (switch(t) - switch(0.0)) / (switch(1.0) - switch(0.0))  # exactly 0 at t=0 and 1 at t=1
    bump = np.exp(-0.5 * ((t - timing) / width) ** 2)
    return np.select([kind == "up", kind == "down", kind == "transient"], [rising, -rising, bump], 0.0)


def make_gene_programme(n_genes: int, rng: np.random.Generator) -> GeneProgramme:
    """Markers first, then `SYN0001…` genes with random kinetics (55 % flat, 15 % each of the others).

    A random gene has a top level; on each lineage a changing gene spans [top − amplitude, top]: up
    genes start low, down genes start at the top, transient genes peak at it. As many genes rise as
    fall, so a cell's total mRNA stays about constant along pseudotime and a flat gene stays flat after
    library-size normalisation. Myeloid genes start at the same level on both lineages (the shared
    myeloblast): low when they rise on the granulocytic lineage (or else the monocytic one); the
    monocytic offsets are then set so that every gene, markers included, starts there exactly.
    """
    if n_genes < len(MARKERS):
        raise InputError(f"n_genes must be at least {len(MARKERS)} (the named markers), got {n_genes}")
    n_random = n_genes - len(MARKERS)
    names = list(MARKERS) + [f"SYN{i + 1:04d}" for i in range(n_random)]
    top = rng.normal(np.log(1.0), 1.0, n_random).clip(np.log(0.02), np.log(30.0))
    random = {}
    for lineage in RNA_LINEAGES:
        kind = rng.choice(KINETICS, size=n_random, p=[0.15, 0.15, 0.15, 0.55])
        random[lineage] = {
            "kind": kind,
            "timing": rng.uniform(0.25, 0.75, n_random),
            "amplitude": np.where(kind == "flat", 0.0, rng.uniform(1.0, 3.0, n_random)),
            "width": rng.uniform(0.08, 0.15, n_random),
        }
    starts_low = {lin: np.isin(random[lin]["kind"], ("up", "transient")) for lin in RNA_LINEAGES}
    root_deficit = np.select(
        [starts_low[lin] for lin in MYELOID_ROOT], [random[lin]["amplitude"] for lin in MYELOID_ROOT], 0.0
    )
    baseline = top - root_deficit  # the level at t = 0 on the myeloid lineages
    for lineage in RNA_LINEAGES:
        params = random[lineage]
        if lineage in MYELOID_ROOT:
            params["offset"] = np.zeros(n_random)
        else:  # own start level: top (plus an identity shift), minus the amplitude when rising
            identity = rng.normal(0, 0.5, n_random)
            params["offset"] = root_deficit + identity - np.where(starts_low[lineage], params["amplitude"], 0.0)
    programme = GeneProgramme(
        names=names,
        baseline=np.concatenate([[m.baseline for m in MARKERS.values()], baseline]),
        dispersion=np.exp(rng.normal(np.log(4.0), 0.5, n_genes)),
    )
    for lineage in RNA_LINEAGES:
        markers = [m.kinetics.get(lineage, Kinetic(offset=m.elsewhere)) for m in MARKERS.values()]
        programme.kinetics[lineage] = {
            key: np.concatenate([np.array([getattr(k, key) for k in markers]), random[lineage][key]])
            for key in ("kind", "timing", "amplitude", "offset", "width")
        }
    # One myeloblast: shift the monocytic levels so that both lineages start where the granulocytic one does.
    start = {lin: programme.log_mean(lin, np.zeros(1))[0] for lin in MYELOID_ROOT}
    programme.kinetics["monocytic"]["offset"] += start["granulocytic"] - start["monocytic"]
    return programme


def cell_log_means(
    cells: pd.DataFrame,
    genes: GeneProgramme,
    rng: np.random.Generator,
    patient_effects: dict[str, tuple[float, np.ndarray]],
) -> np.ndarray:
    """cells × genes log mean counts of cells with columns lineage, pseudotime, patient: each cell's true
    expression before sampling noise. `rng` draws each cell's library size; `draw_counts` goes on with it.

    `patient_effects[patient] = (log library-size factor, per-gene log batch shift)`.
    """
    log_mu = np.empty((len(cells), len(genes.names)))
    for lineage, rows in cells.groupby("lineage").indices.items():
        log_mu[rows] = genes.log_mean(str(lineage), cells["pseudotime"].to_numpy()[rows])
    for patient, rows in cells.groupby("patient").indices.items():
        size_factor, batch = patient_effects[str(patient)]
        log_mu[rows] += size_factor + batch
    return log_mu + rng.normal(0, 0.35, (len(cells), 1))  # library size varies cell to cell


def dropout_probability(log_mu: np.ndarray) -> np.ndarray:
    """The chance that a count is set to zero after sampling: highest for weakly expressed genes."""
    return 0.5 / (1 + np.exp(1.5 * (log_mu - np.log(0.5))))


def draw_counts(log_mu: np.ndarray, genes: GeneProgramme, rng: np.random.Generator) -> np.ndarray:
    """cells × genes int32 counts around `cell_log_means`: negative binomial, then dropout."""
    mu = np.exp(log_mu)
    counts = rng.poisson(rng.gamma(genes.dispersion, mu / genes.dispersion))  # negative binomial
    counts[rng.random(mu.shape) < dropout_probability(log_mu)] = 0
    return counts.astype(np.int32)
