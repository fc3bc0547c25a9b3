"""Synthetic May-Grünwald-Giemsa crops of one white cell among red cells, with exact masks.

How a crop is made, so a newcomer can tune it:

1. `morphology(label, t, rng)` turns (class, pseudotime) into numbers a haematologist would name:
   cell radius, nucleus shape (round → kidney → band → 3–5 segments), nucleus:cytoplasm ratio,
   chromatin density/grain, nucleoli, cytoplasm colour (basophilic blue → pale pink), granules.
2. Every shape is a signed distance field (negative inside) on the pixel grid, so outlines,
   antialiasing and masks come from the same numbers: the mask is exactly `distance < 0`.
3. Stains are optical densities added up and turned into colour by Beer–Lambert
   (`rgb = background · exp(−Σ amount · OD)`), so overlapping red cells, granules over the
   nucleus and thin cytoplasm look as they do under a microscope.
4. Stain gain and background per patient (`Stain`), then blur and sensor noise.

Lengths are in pixels of a 288-px crop (the study's crop size) and scaled for other sizes; the
field of view matches a PBC crop (360 px) resized to 288. All drawing is whole-array numpy.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from scipy.ndimage import gaussian_filter, rotate

from wbcvae.data.synthetic.programme import GRANULOCYTIC_BOUNDS, PROGRAMME
from wbcvae.errors import InputError
from wbcvae.vocabulary import CLASSES, LINEAGES

REFERENCE_SIZE = 288
BACKGROUND = np.array([251.0, 226.0, 199.0], dtype=np.float32)  # empty slide between cells in the PBC crops


def _od(rgb: tuple[float, float, float]) -> np.ndarray:
    """Optical density that turns the background into `rgb` at unit amount."""
    return -np.log(np.asarray(rgb, dtype=np.float32) / BACKGROUND)


# Colours measured on the PBC sample (k-means of cell pixels), as densities per unit of stain.
OD = {
    "chromatin": _od((100, 50, 145)),
    "red_cell": _od((212, 172, 168)),
    "basophilic": _od((170, 150, 196)),  # ribosome-rich young cytoplasm: blue
    "acidophilic": _od((218, 182, 186)),  # mature neutrophil cytoplasm: pale pink-lilac
    "monocytoid": _od((192, 172, 194)),  # monocyte: grey-blue "ground glass"
    "haemoglobin": _od((214, 170, 176)),  # late erythroblast cytoplasm, like a red cell
    "azurophilic": _od((120, 45, 130)),  # primary granules: purple-red
    "specific": _od((180, 125, 165)),  # fine neutrophilic granules: lilac dust
    "eosinophilic": _od((202, 115, 112)),  # large orange granules
    "basophil_granule": _od((62, 22, 104)),  # large dark purple granules
}


@dataclass(frozen=True)
class Stain:
    """How one patient's slide was stained and photographed."""

    background: np.ndarray  # RGB of the empty slide
    gain: np.ndarray  # per-channel factor on every optical density: stain strength and hue

    def jittered(self, rng: np.random.Generator) -> Stain:
        """The same slide, one field later: a little brightness and stain variation."""
        return Stain(
            background=np.clip(self.background * (1 + rng.normal(0, 0.008)) + rng.normal(0, 1.5, 3), 0, 255),
            gain=self.gain * (1 + rng.normal(0, 0.03)) * (1 + rng.normal(0, 0.015, 3)),
        )


def patient_stain(rng: np.random.Generator) -> Stain:
    """A patient's stain: background tint and stain strength, as between real slides."""
    return Stain(
        background=np.clip(BACKGROUND + rng.normal(0, [2, 3, 4]), 0, 255),
        gain=(1 + rng.normal(0, 0.08)) * (1 + rng.normal(0, 0.05, 3)),
    )


@dataclass(frozen=True)
class Granules:
    """A population of granules: how many, their radius (px), colour and where they may lie."""

    count: int
    radius: float
    od: np.ndarray
    strength: float
    over_nucleus: bool = False


@dataclass(frozen=True)
class Morphology:
    """What a haematologist sees in one cell, as numbers (lengths in px of a 288-px crop)."""

    cell_radius: float
    outline_wobble: float  # amplitude of low-order harmonics of the outline, fraction of radius
    nucleus: str  # round | kidney | band | segmented | smudge
    nucleus_radius: float  # round/kidney: mean semi-axis; band/segmented: arc radius
    nucleus_offset: float  # eccentricity: centre shift as a fraction of the free room
    elongation: float = 1.1  # long/short semi-axis (round, kidney, lobes)
    indent: float = 0.0  # kidney: depth of the notch, fraction of the short axis
    thickness: float = 0.0  # band: half-width; segmented: lobe radius
    arc_degrees: float = 120.0  # band/segmented: half-opening of the arc
    lobes: int = 0
    roughness: float = 1.0  # px of irregularity on the nuclear outline
    chromatin_density: float = 1.0
    chromatin_contrast: float = 0.25
    chromatin_grain: float = 1.5  # px: fine (blasts) to coarse and clumped (mature)
    nucleoli: int = 0
    cytoplasm_od: np.ndarray = field(default_factory=lambda: OD["acidophilic"])
    cytoplasm_density: float = 1.0
    cytoplasm_rim: float = 0.0  # extra stain towards the cell edge (lymphocytes, blasts)
    granules: tuple[Granules, ...] = ()
    vacuoles: int = 0
    has_cytoplasm: bool = True


@dataclass(frozen=True)
class DrawnCell:
    """A crop, its exact mask, and the morphology it was drawn from (the ground truth behind the pixels)."""

    image: np.ndarray  # H×W×3 uint8
    mask: np.ndarray  # H×W uint8: 0 background (incl. red cells), 1 cytoplasm, 2 nucleus
    morphology: Morphology


# --- Morphology per class -----------------------------------------------------------------------


def _ramp(t: float, t0: float, t1: float) -> float:
    """0 before t0, 1 after t1, linear in between."""
    return float(np.clip((t - t0) / (t1 - t0), 0.0, 1.0))


def _mix(a: np.ndarray, b: np.ndarray, w: float) -> np.ndarray:
    return (1 - w) * a + w * b


def _granulocytic(t: float, rng: np.random.Generator) -> Morphology:
    """Myeloblast → segmented neutrophil; the stage boundaries are those of the programme."""
    _, blast, promyelocyte, myelocyte, metamyelocyte, band, _ = GRANULOCYTIC_BOUNDS  # where each stage ends
    radius = float(np.interp(t, [0, 0.22, 0.45, 0.7, 1], [54, 60, 57, 56, 56])) * rng.uniform(0.93, 1.07)
    maturity = _ramp(t, 0.0, 0.6)
    young_blue = 1 - _ramp(t, 0.12, 0.55)
    azurophilic = int(rng.uniform(0.7, 1.3) * np.interp(t, [0, 0.12, 0.2, 0.3, 0.45, 0.6], [4, 60, 320, 280, 60, 0]))
    specific = int(rng.uniform(0.7, 1.3) * np.interp(t, [0.3, 0.5, 1], [0, 450, 550]))
    common = dict(
        cell_radius=radius,
        outline_wobble=0.025,
        chromatin_density=0.85 + 0.3 * maturity,
        chromatin_contrast=0.15 + 0.3 * maturity,
        chromatin_grain=0.9 + 1.3 * maturity,
        nucleoli=int(rng.integers(2, 4)) if t < blast else int(rng.integers(0, 2)) if t < 0.25 else 0,
        cytoplasm_od=_mix(OD["acidophilic"], OD["basophilic"], young_blue),
        cytoplasm_density=1.0,
        cytoplasm_rim=0.25 * young_blue,
        granules=(
            Granules(azurophilic, 1.3, OD["azurophilic"], 1.0, over_nucleus=True),
            Granules(specific, 0.8, OD["specific"], 0.6),
        ),
    )
    if t < myelocyte:  # blast, promyelocyte, myelocyte: round to oval, moving off-centre
        return Morphology(
            nucleus="kidney" if t >= promyelocyte else "round",
            nucleus_radius=radius * float(np.interp(t, [0, blast, promyelocyte, myelocyte], [0.78, 0.72, 0.66, 0.6])),
            nucleus_offset=float(np.interp(t, [0, blast, myelocyte], [0.15, 0.45, 0.55])) * rng.uniform(0.6, 1.2),
            elongation=rng.uniform(1.05, 1.2) + 0.25 * _ramp(t, promyelocyte, myelocyte),
            indent=0.25 * _ramp(t, promyelocyte, myelocyte),
            roughness=0.8,
            **common,
        )
    if t < metamyelocyte:  # metamyelocyte: kidney, the notch deepening
        return Morphology(
            nucleus="kidney",
            nucleus_radius=radius * rng.uniform(0.6, 0.68),
            nucleus_offset=rng.uniform(0.2, 0.5),
            elongation=rng.uniform(1.3, 1.5),
            indent=0.25 + 0.3 * _ramp(t, myelocyte, metamyelocyte),
            **common,
        )
    if t < band:  # band: a curved sausage of even width, pinched, not segmented
        return Morphology(
            nucleus="band",
            nucleus_radius=radius * rng.uniform(0.42, 0.5),
            nucleus_offset=rng.uniform(0.0, 0.2),
            thickness=radius * rng.uniform(0.19, 0.23),
            arc_degrees=rng.uniform(95, 140),
            **common,
        )
    lobes = int(np.clip(round(3 + 2 * _ramp(t, band, 1.0) + rng.normal(0, 0.5)), 3, 5))
    return Morphology(
        nucleus="segmented",
        nucleus_radius=radius * rng.uniform(0.36, 0.44),
        nucleus_offset=rng.uniform(0.0, 0.2),
        thickness=radius * rng.uniform(0.26, 0.3) * (1.1 if lobes == 3 else 1.0),
        arc_degrees=rng.uniform(90, 150),
        lobes=lobes,
        **common,
    )


def _monocyte(t: float, rng: np.random.Generator) -> Morphology:
    radius = rng.uniform(58, 66)
    return Morphology(
        cell_radius=radius,
        outline_wobble=0.07,
        nucleus="kidney",
        nucleus_radius=radius * rng.uniform(0.66, 0.74),
        nucleus_offset=rng.uniform(0.2, 0.5),
        elongation=rng.uniform(1.15, 1.45),
        indent=rng.uniform(0.3, 0.65),
        roughness=2.0,
        chromatin_density=0.78,
        chromatin_contrast=0.3,
        chromatin_grain=1.4,
        nucleoli=1 if t < 0.3 and rng.random() < 0.5 else 0,
        cytoplasm_od=OD["monocytoid"],
        cytoplasm_density=1.0,
        cytoplasm_rim=0.1,
        granules=(Granules(int(rng.uniform(60, 140)), 0.6, OD["azurophilic"], 0.35),),
        vacuoles=int(rng.poisson(1 + 5 * t)),
    )


def _eosinophil(t: float, rng: np.random.Generator) -> Morphology:
    """Eosinophilic myelocyte (kidney nucleus, bluer granules) → mature bilobed eosinophil."""
    radius = rng.uniform(50, 57)
    granules = Granules(
        int(rng.uniform(500, 650)), 1.7, _mix(OD["eosinophilic"], OD["azurophilic"], 0.35 * (1 - t)), 0.75
    )
    common = dict(
        cell_radius=radius,
        outline_wobble=0.025,
        chromatin_density=1.0,
        chromatin_contrast=0.35,
        chromatin_grain=2.0,
        cytoplasm_od=_mix(OD["eosinophilic"], OD["basophilic"], 0.4 * (1 - t)),
        cytoplasm_density=0.35,
        granules=(granules,),
    )
    if t < 0.3:
        return Morphology(
            nucleus="kidney", nucleus_radius=radius * 0.55, nucleus_offset=0.4, elongation=1.4, indent=0.5, **common
        )
    return Morphology(
        nucleus="segmented",
        nucleus_radius=radius * rng.uniform(0.36, 0.44),
        nucleus_offset=rng.uniform(0.1, 0.4),
        thickness=radius * rng.uniform(0.33, 0.38),
        arc_degrees=rng.uniform(45, 70),
        lobes=2,
        **common,
    )


def _basophil(t: float, rng: np.random.Generator) -> Morphology:
    radius = rng.uniform(46, 54)
    return Morphology(
        cell_radius=radius,
        outline_wobble=0.04,
        nucleus="segmented" if t > 0.4 else "kidney",
        nucleus_radius=radius * 0.5 if t <= 0.4 else radius * 0.35,
        nucleus_offset=0.2,
        elongation=1.3,
        indent=0.4,
        thickness=radius * 0.26,
        arc_degrees=60,
        lobes=2,
        roughness=1.5,
        chromatin_density=0.8,
        chromatin_contrast=0.2,
        chromatin_grain=1.5,
        cytoplasm_od=_mix(OD["acidophilic"], OD["basophilic"], 0.5),
        cytoplasm_density=1.0,
        granules=(Granules(int(rng.uniform(250, 400)), 2.0, OD["basophil_granule"], 0.9, over_nucleus=True),),
    )


def _erythroblast(t: float, rng: np.random.Generator) -> Morphology:
    """Proerythroblast (large, deep blue) → orthochromatic (small, pyknotic nucleus, pink)."""
    radius = (50 - 14 * t) * rng.uniform(0.93, 1.07)
    return Morphology(
        cell_radius=radius,
        outline_wobble=0.015,
        nucleus="round",
        nucleus_radius=radius * (0.74 - 0.12 * t),
        nucleus_offset=rng.uniform(0.0, 0.35),
        elongation=rng.uniform(1.0, 1.08),
        roughness=0.6,
        chromatin_density=1.05 + 0.5 * t,
        chromatin_contrast=0.35 - 0.15 * t,
        chromatin_grain=1.8,
        nucleoli=int(rng.integers(1, 3)) if t < 0.15 else 0,
        cytoplasm_od=_mix(OD["basophilic"], OD["haemoglobin"], _ramp(t, 0.15, 0.7)),
        cytoplasm_density=1.3 - 0.3 * t,
    )


def _lymphocyte(label: str, t: float, rng: np.random.Generator) -> Morphology:
    """Typical: small, dense round nucleus, thin blue rim; atypical: larger, abundant blue cytoplasm."""
    atypical = PROGRAMME["lymphocyte_atypical"][0]
    activated = _ramp(t, atypical.start, atypical.end) if label == "lymphocyte_atypical" else 0.0
    radius = (35 + 6 * t + 18 * activated) * rng.uniform(0.93, 1.07)
    return Morphology(
        cell_radius=radius,
        outline_wobble=0.02 + 0.05 * activated,
        nucleus="kidney",
        nucleus_radius=radius * (0.86 - 0.3 * activated - 0.05 * (label == "lymphocyte_atypical")),
        nucleus_offset=rng.uniform(0.3, 0.9),
        elongation=rng.uniform(1.0, 1.12),
        indent=rng.uniform(0.0, 0.15),
        roughness=0.8,
        chromatin_density=1.3 - 0.3 * activated,
        chromatin_contrast=0.3,
        chromatin_grain=2.0,
        nucleoli=int(rng.random() < 0.5 * activated),
        cytoplasm_od=OD["basophilic"],
        cytoplasm_density=0.75 + 0.25 * activated,
        cytoplasm_rim=0.3 + 0.6 * activated,
    )


def _smudge(t: float, rng: np.random.Generator) -> Morphology:
    """A crushed nucleus smeared across the slide; t is how far it was smeared."""
    size = rng.uniform(36, 44) * (1 + 0.35 * t)
    return Morphology(
        cell_radius=size,
        outline_wobble=0.0,
        nucleus="smudge",
        nucleus_radius=size,
        nucleus_offset=0.0,
        elongation=rng.uniform(1.1, 1.3) + 0.4 * t,
        roughness=4 + 4 * t,
        chromatin_density=0.6 - 0.25 * t,
        chromatin_contrast=0.45,
        chromatin_grain=2.5,
        has_cytoplasm=False,
    )


def morphology(label: str, t: float, rng: np.random.Generator) -> Morphology:
    """The look of a cell of class `label` at pseudotime `t` on its lineage."""
    if label not in CLASSES:
        raise InputError(f"no synthetic look for {label!r}; classes: {', '.join(CLASSES)}")
    if label in LINEAGES["granulocytic"].stages:  # the myeloblast looks the same on either lineage
        return _granulocytic(t, rng)
    if label in LINEAGES["lymphoid"].stages:
        return _lymphocyte(label, t, rng)
    by_class = {
        "monocyte": _monocyte,
        "eosinophil": _eosinophil,
        "basophil": _basophil,
        "erythroblast": _erythroblast,
        "smudge_cell": _smudge,
    }
    return by_class[label](t, rng)


# --- Signed distance fields (negative inside) ----------------------------------------------------


def _coverage(sdf: np.ndarray, edge: float = 1.0) -> np.ndarray:
    """Fraction of each pixel inside the shape: an antialiased edge `edge` px wide, half-covered at sdf = 0."""
    return np.clip(0.5 - sdf / edge, 0.0, 1.0)


def _noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float | tuple[float, float]) -> np.ndarray:
    """Smooth random field with unit standard deviation and grain `sigma` px."""
    field_ = gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="wrap")
    return field_ / (field_.std() + 1e-6)


def _ellipse_sdf(x: np.ndarray, y: np.ndarray, a: float, b: float) -> np.ndarray:
    """Approximate distance to an axis-aligned ellipse (exact for circles; fine for shading)."""
    return (np.sqrt((x / a) ** 2 + (y / b) ** 2) - 1.0) * min(a, b)


def _segment_distance(x: np.ndarray, y: np.ndarray, p: np.ndarray, q: np.ndarray) -> np.ndarray:
    d = q - p
    h = np.clip(((x - p[0]) * d[0] + (y - p[1]) * d[1]) / (d @ d + 1e-9), 0.0, 1.0)
    return np.hypot(x - p[0] - h * d[0], y - p[1] - h * d[1])


def _arc_distance(x: np.ndarray, y: np.ndarray, radius: float, half_angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Distance to an arc of `radius` centred on the origin, opening ±half_angle about +x; and the angle."""
    angle = np.arctan2(y, x)
    on_arc = np.abs(angle) <= half_angle
    ex, ey = radius * np.cos(half_angle), radius * np.sin(half_angle)
    to_end = np.minimum(np.hypot(x - ex, y - ey), np.hypot(x - ex, y + ey))
    return np.where(on_arc, np.abs(np.hypot(x, y) - radius), to_end), np.clip(angle / half_angle, -1, 1)


def _nucleus_sdf(m: Morphology, x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Nucleus in its own frame: origin at its centre, +y towards the cell centre (where a notch faces)."""
    if m.nucleus in ("round", "kidney", "smudge"):
        a, b = m.nucleus_radius * np.sqrt(m.elongation), m.nucleus_radius / np.sqrt(m.elongation)
        sdf = _ellipse_sdf(x, y, a, b)
        if m.indent > 0:
            notch = 0.55 * a
            centre_y = b + notch - 2 * m.indent * b
            sdf = np.maximum(sdf, notch - np.hypot(x, y - centre_y))
        return sdf
    half = np.deg2rad(m.arc_degrees)
    # The arc bows away from the cell centre, like a band hugging the cell edge.
    ax, ay = y + m.nucleus_radius * 0.35, x
    if m.nucleus == "band":
        dist, along = _arc_distance(ax, ay, m.nucleus_radius, half)
        return dist - m.thickness * (1.0 - 0.22 * np.cos(np.pi * along))
    angles = np.linspace(-half, half, m.lobes) + rng.normal(0, 0.12, m.lobes)
    centres = np.stack([m.nucleus_radius * np.cos(angles), m.nucleus_radius * np.sin(angles)], axis=1)
    centres += rng.normal(0, 0.08 * m.thickness, centres.shape)
    sdf = np.full(x.shape, np.inf, dtype=np.float32)
    for (cx, cy), tilt in zip(centres, rng.uniform(0, np.pi, m.lobes), strict=True):
        u, v = np.cos(tilt) * (ax - cx) + np.sin(tilt) * (ay - cy), -np.sin(tilt) * (ax - cx) + np.cos(tilt) * (ay - cy)
        stretch = rng.uniform(1.0, 1.35)
        lobe_radius = m.thickness * rng.uniform(0.88, 1.12)
        sdf = np.minimum(sdf, _ellipse_sdf(u, v, lobe_radius * stretch, lobe_radius / stretch))
    for p, q in zip(centres[:-1], centres[1:], strict=True):
        sdf = np.minimum(sdf, _segment_distance(ax, ay, p, q) - 0.12 * m.thickness)
    return sdf


# --- Drawing -------------------------------------------------------------------------------------


def _splat(
    rng: np.random.Generator, shape: tuple[int, int], ys: np.ndarray, xs: np.ndarray, radius: float
) -> np.ndarray:
    """Round blobs of `radius` px (peak ≈ 1, summed where they overlap) at the given points."""
    impulses = np.zeros(shape, dtype=np.float32)
    iy, ix = np.clip(ys.astype(int), 0, shape[0] - 1), np.clip(xs.astype(int), 0, shape[1] - 1)
    np.add.at(impulses, (iy, ix), rng.uniform(0.6, 1.4, len(ys)).astype(np.float32))
    sigma = max(radius, 0.4)
    return gaussian_filter(impulses, sigma) * (2 * np.pi * sigma**2)


def _points_where(rng: np.random.Generator, allowed: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """`count` random sub-pixel positions among the pixels where `allowed` is true."""
    iy, ix = np.nonzero(allowed)
    if count <= 0 or len(iy) == 0:
        return np.zeros(0), np.zeros(0)
    pick = rng.integers(0, len(iy), count)
    return iy[pick] + rng.random(count), ix[pick] + rng.random(count)


def _red_cells(rng: np.random.Generator, size: int, scale: float, centre: np.ndarray, keep_clear: float) -> np.ndarray:
    """Amount of red-cell stain: biconcave discs (pale centre, darker rim), touching and overlapping."""
    candidates = int(rng.uniform(200, 400))
    radii = (rng.normal(28, 2, candidates) * scale).astype(np.float32)
    ys, xs = rng.uniform(-radii, size + radii), rng.uniform(-radii, size + radii)
    clear = np.hypot(ys - centre[0], xs - centre[1]) >= keep_clear + radii * rng.uniform(0.4, 0.95, candidates)
    crowding = rng.uniform(0.88, 1.06)  # < 1: neighbours may overlap a little
    placed: list[int] = []
    for i in np.flatnonzero(clear):
        gaps = np.hypot(ys[placed] - ys[i], xs[placed] - xs[i]) - (radii[placed] + radii[i]) * crowding
        if not placed or gaps.min() >= 0:
            placed.append(i)
    ys, xs, radii = ys[placed], xs[placed], radii[placed]
    n = len(placed)
    # All discs at once, each in its own (2B+1)² patch around its pixel centre, then pasted.
    half = int(np.ceil(radii.max() * 1.1)) + 2
    steps = np.arange(-half, half + 1, dtype=np.float32)
    top, left = np.floor(ys).astype(int), np.floor(xs).astype(int)
    dy = (top + 0.5 - ys).astype(np.float32)[:, None, None] + steps[None, :, None]
    dx = (left + 0.5 - xs).astype(np.float32)[:, None, None] + steps[None, None, :]
    rho = np.hypot(dy, dx) + 1e-6
    edge = radii[:, None, None] * (1 + _harmonics(rng, dy / rho, dx / rho, (0.04, 0.015), n))
    u = rho / edge
    pale = rng.uniform(0.6, 0.9, (n, 1, 1))
    profile = 1.0 - pale * np.exp(-((u / 0.58) ** 4)) + 0.35 * np.exp(-(((u - 0.8) / 0.13) ** 2))
    patches = _coverage((u - 1) * edge) * profile * rng.uniform(0.85, 1.15, (n, 1, 1))
    margin = 2 * half + 2
    canvas = np.zeros((size + 2 * margin, size + 2 * margin), dtype=np.float32)
    for patch, y, x in zip(patches, top + margin - half, left + margin - half, strict=True):
        canvas[y : y + 2 * half + 1, x : x + 2 * half + 1] += patch
    return canvas[margin : margin + size, margin : margin + size]


def _harmonics(
    rng: np.random.Generator, sin: np.ndarray, cos: np.ndarray, amplitudes: tuple[float, ...], n: int
) -> np.ndarray:
    """Σ_k a_k·cos(kθ + random phase), k = 2, 3, …, for n shapes at once (leading axis), from sin θ and cos θ.

    Built from cos θ and sin θ by the angle-addition recurrence, which is much cheaper than arctan2 and cos.
    """
    total = np.zeros(np.broadcast_shapes(sin.shape, (n, 1, 1)), dtype=np.float32)
    cos_k, sin_k = cos, sin
    for amplitude in amplitudes:
        cos_k, sin_k = cos_k * cos - sin_k * sin, sin_k * cos + cos_k * sin
        phase = rng.uniform(0, 2 * np.pi, (n, 1, 1)).astype(np.float32)
        total += amplitude * (cos_k * np.cos(phase) - sin_k * np.sin(phase))
    return total


def _reach(m: Morphology) -> float:
    """Radius (px, 288-px crop) of a disc around the cell centre sure to hold the whole cell."""
    if m.nucleus == "smudge":
        return m.nucleus_radius * np.sqrt(m.elongation) * 1.15 + 4 * m.roughness + 6
    return m.cell_radius * (1 + 4 * m.outline_wobble) + 6


def draw_cell(
    label: str, t: float, rng: np.random.Generator, size: int = REFERENCE_SIZE, stain: Stain | None = None
) -> DrawnCell:
    """One crop of a `label` cell at pseudotime `t`, centred, with red cells around it, and its mask."""
    stain = (stain or patient_stain(rng)).jittered(rng)
    m = morphology(label, t, rng)
    scale = size / REFERENCE_SIZE
    centre = size / 2 + rng.normal(0, 2.0 * scale, 2)
    # The white cell is drawn in a window around it; red cells, light and noise over the whole crop.
    reach = _reach(m) * scale
    y0, x0 = np.maximum(np.floor(centre - reach), 0).astype(int)
    y1, x1 = np.minimum(np.ceil(centre + reach), size).astype(int)
    gy, gx = np.mgrid[y0:y1, x0:x1].astype(np.float32) + 0.5
    cell_sdf, nucleus_sdf = _outlines(m, rng, scale, gy - centre[0], gx - centre[1])

    optical_density = _red_cells(rng, size, scale, centre, m.cell_radius * scale)[..., None] * OD["red_cell"]
    nucleus_cover = _coverage(nucleus_sdf, 5 * scale if m.nucleus == "smudge" else 1.0)  # a smear has no crisp edge
    window = optical_density[y0:y1, x0:x1]
    window += _cytoplasm(m, rng, scale, cell_sdf, nucleus_sdf, _coverage(cell_sdf) - nucleus_cover)
    window += _chromatin(m, rng, scale, nucleus_sdf, nucleus_cover)[..., None] * OD["chromatin"]

    tilt = rng.uniform(-0.03, 0.03, 2) / size  # uneven illumination: a gentle gradient across the field
    rows, columns = np.ogrid[0:size, 0:size]
    light = tilt[0] * (rows - size / 2) + tilt[1] * (columns - size / 2)
    rgb = np.exp(-optical_density * stain.gain.astype(np.float32)) * (stain.background * (1 + light)[..., None])
    blur = rng.uniform(0.5, 0.9) * scale
    rgb = gaussian_filter(rgb.astype(np.float32), (blur, blur, 0))
    rgb += rng.standard_normal(rgb.shape, dtype=np.float32) * rng.uniform(1.0, 2.5)  # sensor noise
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[y0:y1, x0:x1][cell_sdf < 0] = 1
    mask[y0:y1, x0:x1][nucleus_sdf < 0] = 2
    return DrawnCell(np.clip(rgb + 0.5, 0, 255).astype(np.uint8), mask, m)


def _outlines(
    m: Morphology, rng: np.random.Generator, scale: float, dy: np.ndarray, dx: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Signed distances to the cell outline and to the nucleus, at offsets (dy, dx) from the cell centre."""
    radius = m.cell_radius * scale
    rho = np.hypot(dy, dx) + 1e-6
    amplitudes = tuple(rng.normal(0, m.outline_wobble / k**0.5) for k in range(2, 6))
    cell_sdf = rho - radius * (1 + _harmonics(rng, dy / rho, dx / rho, amplitudes, 1)[0])
    # The nucleus sits off-centre by `nucleus_offset`; its frame's +y (where a notch faces) points to the cell centre.
    direction = rng.uniform(0, 2 * np.pi)
    toward_centre = -np.array([np.sin(direction), np.cos(direction)])
    room = max(radius - m.nucleus_radius * scale, 0.0)
    ny, nx = dy + m.nucleus_offset * room * toward_centre[0], dx + m.nucleus_offset * room * toward_centre[1]
    local_y = ny * toward_centre[0] + nx * toward_centre[1]
    local_x = ny * toward_centre[1] - nx * toward_centre[0]
    nucleus_sdf = _nucleus_sdf(_scaled(m, scale), local_x, local_y, rng)
    nucleus_sdf = nucleus_sdf + m.roughness * scale * _noise(rng, dy.shape, 4 * scale)
    if m.nucleus == "smudge":  # ragged strands, and no cytoplasm around them
        nucleus_sdf = nucleus_sdf + 0.4 * m.roughness * scale * _noise(rng, dy.shape, 1.5 * scale)
        return nucleus_sdf, nucleus_sdf
    return cell_sdf, np.maximum(nucleus_sdf, cell_sdf + 2.5 * scale)  # the nucleus stays inside the cell


def _scaled(m: Morphology, scale: float) -> Morphology:
    return replace(m, nucleus_radius=m.nucleus_radius * scale, thickness=m.thickness * scale)


def _chromatin(m: Morphology, rng: np.random.Generator, scale: float, sdf: np.ndarray, cover: np.ndarray) -> np.ndarray:
    """Amount of nuclear stain: clumped texture, a darker rim, pale nucleoli; streaks when smeared."""
    shape = sdf.shape
    grain = m.chromatin_grain * scale
    texture = 0.7 * _noise(rng, shape, grain) + 0.3 * _noise(rng, shape, 3 * grain)
    if m.nucleus == "smudge":  # chromatin strands drawn out in the direction of the smear
        streaks = _noise(rng, shape, (0.6 * grain, 4 * grain))
        texture = 0.6 * texture + 0.5 * rotate(streaks, rng.uniform(0, 180), reshape=False, order=1, mode="wrap")
    amount = m.chromatin_density * np.clip(1 + m.chromatin_contrast * texture, 0.2, None)
    amount *= 1 + 0.25 * np.exp(np.minimum(sdf, 0) / (2.5 * scale))  # heterochromatin lines the envelope
    if m.nucleoli:
        ys, xs = _points_where(rng, sdf < -6 * scale, m.nucleoli)
        spots = _splat(rng, shape, ys, xs, rng.uniform(2.5, 4) * scale)
        amount *= 1 - 0.4 * np.clip(spots, 0, 1)
    return amount * cover


def _cytoplasm(
    m: Morphology,
    rng: np.random.Generator,
    scale: float,
    cell_sdf: np.ndarray,
    nucleus_sdf: np.ndarray,
    cover: np.ndarray,
) -> np.ndarray:
    """Optical density (H×W×3) of cytoplasm and all granules."""
    shape = cell_sdf.shape
    if not m.has_cytoplasm:
        return np.zeros((*shape, 3), dtype=np.float32)
    amount = m.cytoplasm_density * (1 + 0.08 * _noise(rng, shape, 3 * scale))
    amount = amount * (1 + m.cytoplasm_rim * np.exp(np.minimum(cell_sdf, 0) / (5 * scale)))
    if m.vacuoles:
        ys, xs = _points_where(rng, (cell_sdf < -6 * scale) & (nucleus_sdf > 3 * scale), m.vacuoles)
        amount = amount * (1 - 0.75 * np.clip(_splat(rng, shape, ys, xs, rng.uniform(2, 3.5) * scale), 0, 1))
    optical_density = (amount * cover)[..., None] * m.cytoplasm_od
    inside_cell = cell_sdf < -1.5 * scale
    for g in m.granules:
        area_scale = scale**2  # granule counts are per 288-px crop
        allowed = inside_cell if g.over_nucleus else inside_cell & (nucleus_sdf > 0)
        ys, xs = _points_where(rng, allowed, int(round(g.count * area_scale)))
        blobs = _splat(rng, shape, ys, xs, g.radius * scale)
        optical_density += (g.strength * (1 - np.exp(-blobs)) * _coverage(cell_sdf))[..., None] * g.od
    return optical_density
