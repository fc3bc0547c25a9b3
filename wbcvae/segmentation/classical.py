"""Classical stain segmentation of one white cell in an MGG crop: pseudo-masks where a source has no masks.

In May-Grünwald-Giemsa smears the nucleus is the most purple thing in the crop, the background is
bright, and red cells sit between the two. So: turn colours into optical densities (absorbances add
up like stains do) and threshold the red absorbance for the nucleus, keeping the nucleus nearest the
crop centre (lobes of one segmented nucleus are joined first).

The cytoplasm is where the two methods differ:

- `v2` (default) unmixes every pixel's density, less the background's, into the crop's own red-cell
  colour and its nucleus colour. Red cells carry almost none of the nucleus colour, while even the
  palest neutrophil cytoplasm carries some, so the white cell is the region holding that colour
  around the nucleus: pale cytoplasm is kept and touching red cells are not taken. Every nucleus
  lobe inside that region belongs to the cell; the cell holds the convex hull of its lobes. A cell
  ringed by stain without the nucleus colour has a cytoplasm coloured like the red cells: there the
  shape decides, as in v1.
- `v1` (the first version, kept to measure against) takes everything stained around the nucleus and
  splits it from touching red cells by a watershed on the distance to the background. It cuts pale
  cytoplasm off, leaks into red cells whose necks are wide, and drops lobes far from the centre one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from skimage import feature, filters, measure, morphology, segmentation

METHODS = ("v2", "v1")
# Optical-density direction of a red cell in MGG, less the background's (median over PBC crops): used
# when a crop has too few red-cell pixels of its own to measure it.
RED_CELL_COLOUR = np.array([0.51, 0.74, 0.44])


@dataclass(frozen=True)
class StainMasks:
    """Boolean H×W masks of the central white cell; `cell` = nucleus + cytoplasm."""

    cell: np.ndarray
    nucleus: np.ndarray

    @property
    def found(self) -> bool:
        return bool(self.nucleus.any())

    def box(self) -> tuple[float, float, float, float] | None:
        """(x1, y1, x2, y2) of the cell in pixels, or None when nothing was found."""
        return mask_box(self.cell)


def mask_box(mask: np.ndarray) -> tuple[float, float, float, float] | None:
    """Tight (x1, y1, x2, y2) box around a binary mask, x2/y2 exclusive; None when empty."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


def optical_density(rgb: np.ndarray) -> np.ndarray:
    """Per-channel absorbance −log(I/I₀) of an RGB image in [0, 1] (or uint8): stains add up linearly here."""
    rgb = np.asarray(rgb, dtype=np.float64)
    if rgb.max() > 1.0:
        rgb = rgb / 255.0
    return -np.log(np.clip(rgb, 1.0 / 255.0, 1.0))


def nearest_component(mask: np.ndarray, point: tuple[float, float]) -> np.ndarray:
    """The connected component of `mask` with the pixel closest to `point` (row, col); empty if none."""
    labels = measure.label(mask)
    if labels.max() == 0:
        return np.zeros_like(mask, dtype=bool)
    rows, cols = np.nonzero(labels)
    closest = np.argmin((rows - point[0]) ** 2 + (cols - point[1]) ** 2)
    return labels == labels[rows[closest], cols[closest]]


@dataclass(frozen=True)
class StainSegmenter:
    """Finds the white cell nearest the centre of an RGB crop. Lengths are fractions of the crop side
    or multiples of the nucleus radius, so one setting works at 128 px and at 360 px.

    method: `v2` (colour unmixing, the default) or `v1` (the first version); see the module docstring.
    nucleus_join: closing radius (fraction of the side) that joins the lobes of one segmented nucleus.
    lobe_reach: dark pieces within this many nucleus radii of the central nucleus join it; pieces
        farther away are other cells' nuclei and keep the cell from spreading over them.
    min_nucleus_area: specks below this fraction of the crop area are ignored (platelets, granules).
    red_cell_gap: (v1) centres of stained blobs farther than this many nucleus radii from the nucleus
        seed red cells, which compete with the white cell for the stained pixels between them.
    max_cytoplasm: the cell reaches at most this many nucleus radii beyond the nucleus.
    cytoplasm_stain: (v2) a pixel is the cell's when it holds at least this fraction of the nucleus's
        own amount of nucleus colour (pale neutrophil cytoplasm ~0.1, red cells ~0.03).
    red_ring: (v2) when more than this fraction of a thin ring around the cell found by colour is
        stained without the nucleus's colour, the cytoplasm is coloured like the red cells (the
        synthetic world's eosinophils; no real PBC crop checked) and the shape decides, as in v1.
    """

    method: str = "v2"
    nucleus_join: float = 0.03
    lobe_reach: float = 0.75
    min_nucleus_area: float = 0.003
    red_cell_gap: float = 0.3
    max_cytoplasm: float = 1.5
    smoothing: float = 0.004
    cytoplasm_stain: float = 0.05
    red_ring: float = 0.95

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method {self.method!r} is not one of {METHODS}")

    def __call__(self, image: np.ndarray) -> StainMasks:
        """`image`: H×W×3 RGB, uint8 or float in [0, 1]."""
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an H×W×3 RGB image, got shape {image.shape}")
        side = min(image.shape[:2])
        density = filters.gaussian(optical_density(image), sigma=max(self.smoothing * side, 0.5), channel_axis=-1)
        dark = self._dark(density[..., 0])
        central = self._central(dark, side)
        if not central.any():
            return StainMasks(cell=central, nucleus=central)
        if self.method == "v1":
            nucleus, other_nuclei = self._lobes(dark, central)
            cell = self._cell_v1(density.sum(axis=-1), nucleus, other_nuclei, side)
            return StainMasks(cell=cell | nucleus, nucleus=nucleus)
        return self._cell_v2(density, dark, central, side)

    def _dark(self, red_density: np.ndarray) -> np.ndarray:
        """Every nucleus in the crop: red absorbance is high in purple nuclei; red cells, eosinophil
        granules and pale cytoplasm hardly absorb red."""
        if np.ptp(red_density) < 1e-6:
            return np.zeros(red_density.shape, dtype=bool)
        return _drop_specks(red_density > _thresholds(red_density)[-1], self.min_nucleus_area * red_density.size)

    def _central(self, dark: np.ndarray, side: int) -> np.ndarray:
        """The dark pieces nearest the crop centre, after joining those close enough to be lobes."""
        joined = morphology.closing(dark, morphology.disk(max(1, round(self.nucleus_join * side))))
        centre = ((dark.shape[0] - 1) / 2, (dark.shape[1] - 1) / 2)
        return dark & nearest_component(joined, centre)

    def _lobes(self, dark: np.ndarray, central: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The central nucleus with the lobes a little farther apart, and every other nucleus."""
        reach = ndi.distance_transform_edt(~central) <= self.lobe_reach * _radius(central)
        pieces = measure.label(dark)
        nucleus = np.isin(pieces, np.unique(pieces[reach & dark])) & dark
        return ndi.binary_fill_holes(nucleus), dark & ~nucleus

    def _cell_v2(self, density: np.ndarray, dark: np.ndarray, central: np.ndarray, side: int) -> StainMasks:
        hull = morphology.convex_hull_image(central)
        radius = _radius(hull)
        from_nucleus = ndi.distance_transform_edt(~hull)
        stain = nucleus_stain(density, central, from_nucleus > self.max_cytoplasm * radius)
        level = self.cytoplasm_stain * np.median(stain[central])
        # Averaged over a granule or two: granular cytoplasm is patchy, red cells evenly bare.
        held = filters.gaussian(stain, sigma=0.01 * side) > level
        # Thin rims of red cells and specks of stain fall to the opening; the nucleus stays whole.
        held = morphology.opening(held, morphology.disk(max(1, round(0.015 * side)))) | dark | hull
        region = nearest_component(ndi.binary_fill_holes(held), _centroid(central))
        # Every lobe inside the region is the cell's, however far from the central one, unless it
        # reaches the crop's edge: then it is a neighbouring white cell's, split off at the neck.
        pieces = measure.label(dark & region)
        edge = np.unique(np.concatenate([pieces[0], pieces[-1], pieces[:, 0], pieces[:, -1]]))
        others = np.isin(pieces, edge[edge > 0]) & ~central
        nucleus = (pieces > 0) & ~others
        if others.any():
            markers = np.where(region, 0, 3).astype(np.int32)
            markers[others] = 2
            markers[morphology.convex_hull_image(nucleus)] = 1
            region = segmentation.watershed(-ndi.distance_transform_edt(region), markers) == 1
            nucleus &= region
        region &= from_nucleus <= self.max_cytoplasm * radius
        cell = ndi.binary_fill_holes(region | morphology.convex_hull_image(nucleus))
        ring = morphology.dilation(cell, morphology.disk(max(1, round(0.03 * side)))) & ~cell
        total = density.sum(axis=-1)
        if ring.any() and (ring & ~held & (total > _thresholds(total)[0])).mean() / ring.mean() > self.red_ring:
            # Stained all round, without the nucleus's colour: a cytoplasm coloured like the red cells
            # (the synthetic world's eosinophils). The shape decides, as in v1.
            cell |= self._cell_v1(total, nucleus, dark & ~nucleus, side)
            held = held | cell
        cell = self._to_edge(density, cell, held, side)
        cell = filters.gaussian(cell.astype(float), sigma=0.015 * side) > 0.5  # a smooth outline, no rags
        cell = nearest_component(cell, _centroid(nucleus)) | nucleus
        return StainMasks(cell=ndi.binary_fill_holes(cell), nucleus=ndi.binary_fill_holes(nucleus))

    def _to_edge(self, density: np.ndarray, cell: np.ndarray, held: np.ndarray, side: int) -> np.ndarray:
        """The cell's outline moved onto the nearest colour edge: the colour threshold sits inside a
        cytoplasm that fades out. A band a few pixels wide either side of the outline is flooded from
        the cell, from the background and from the red cells (stained pixels without nucleus colour)
        over the density's gradient, so the outline lands where the colour changes most."""
        total = density.sum(axis=-1)
        band = max(1, round(0.02 * side))
        inner = morphology.erosion(cell, morphology.disk(band))
        outer = ~morphology.dilation(cell, morphology.disk(band))
        stained = total > _thresholds(total)[0]
        markers = np.zeros(cell.shape, np.int32)
        markers[outer & ~stained] = 2
        markers[outer & stained & ~held] = 3
        markers[inner] = 1
        edges = sum(filters.sobel(density[..., c]) for c in range(3))
        return segmentation.watershed(edges, markers) == 1

    def _cell_v1(self, total_density: np.ndarray, nucleus: np.ndarray, other_nuclei: np.ndarray, side: int) -> np.ndarray:
        # Touching round blobs (the cell, red cells, other white cells) split at their necks: a
        # watershed on the distance to the unstained background, seeded by the nucleus and by the
        # centres of red cells and nuclei of other white cells.
        stained = ndi.binary_fill_holes(total_density > _thresholds(total_density)[0])
        hull = morphology.convex_hull_image(nucleus)
        radius = _radius(hull)
        from_nucleus = ndi.distance_transform_edt(~hull)
        depth = ndi.distance_transform_edt(stained)
        centres = feature.peak_local_max(
            depth, min_distance=max(2, round(0.03 * side)), labels=measure.label(stained), exclude_border=False
        )
        far = from_nucleus[centres[:, 0], centres[:, 1]] > self.red_cell_gap * radius
        red_seeds = np.zeros_like(stained)
        red_seeds[centres[far, 0], centres[far, 1]] = True
        markers = np.where(stained, 0, 2).astype(np.int32)
        markers[(morphology.dilation(red_seeds, morphology.disk(1)) & stained) | other_nuclei] = 3
        markers[hull] = 1
        cell = segmentation.watershed(-depth, markers) == 1
        cell &= from_nucleus <= self.max_cytoplasm * radius
        cell = morphology.opening(ndi.binary_fill_holes(cell), morphology.disk(max(1, round(0.01 * side))))
        return nearest_component(cell | nucleus, _centroid(nucleus))


def nucleus_stain(density: np.ndarray, nucleus: np.ndarray, afar: np.ndarray) -> np.ndarray:
    """Per pixel, the amount of the nucleus's colour in `density` (H×W×3 optical densities), in the
    nucleus's units, once the background is taken off and the red-cell colour unmixed out.

    Colours are measured on the crop itself (stain and scanner vary from slide to slide): the
    background is the least stained third, the nucleus colour the median over `nucleus`, the red-cell
    colour the median over the moderately stained pixels in `afar` (far from the nucleus, so mostly
    red cells), or `RED_CELL_COLOUR` when there are too few of them or they look like the nucleus.
    """
    total = density.sum(axis=-1)
    low, high = _thresholds(total)
    background = np.median(density[total <= low], axis=0) if (total <= low).any() else density.reshape(-1, 3).min(axis=0)
    od = density - background
    nucleus_colour = _unit(np.median(od[nucleus], axis=0))
    red = afar & (total > low) & (total <= high)
    red_colour = _unit(np.median(od[red], axis=0)) if red.sum() >= 0.01 * red.size else _unit(RED_CELL_COLOUR)
    if red_colour @ nucleus_colour > 0.97 or not np.isfinite(red_colour).all():  # within ~14°: not two colours
        red_colour = _unit(RED_CELL_COLOUR)
    amounts = od.reshape(-1, 3) @ np.linalg.pinv(np.stack([red_colour, nucleus_colour], axis=1)).T
    return amounts[:, 1].reshape(total.shape)


def _unit(vector: np.ndarray) -> np.ndarray:
    return vector / max(float(np.linalg.norm(vector)), 1e-12)


def _thresholds(channel: np.ndarray) -> np.ndarray:
    """Two thresholds splitting a stain channel into background, red cells / cytoplasm, and nuclei."""
    try:
        return filters.threshold_multiotsu(channel, classes=3)
    except ValueError:  # too few distinct values for three classes
        return np.repeat(filters.threshold_otsu(channel), 2)


def _drop_specks(mask: np.ndarray, min_area: float) -> np.ndarray:
    labels = measure.label(mask)
    keep = np.bincount(labels.ravel()) >= min_area
    keep[0] = False
    return keep[labels]


def _radius(mask: np.ndarray) -> float:
    """Radius of the disc with the mask's area."""
    return float(np.sqrt(mask.sum() / np.pi))


def _centroid(mask: np.ndarray) -> tuple[float, float]:
    rows, cols = np.nonzero(mask)
    return float(rows.mean()), float(cols.mean())
