"""Classical stain segmentation of one white cell in an MGG crop: pseudo-masks where a source has no masks.

In May-Grünwald-Giemsa smears the nucleus is the most purple thing in the crop, the background is
bright, and red cells sit between the two. So: turn colours into optical densities (absorbances add
up like stains do), threshold the red absorbance for the nucleus, keep the nucleus nearest the crop
centre (lobes of one segmented nucleus are joined first), then take the stained region around it,
split from touching red cells by a marker watershed so the cell does not leak into its neighbours.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from skimage import feature, filters, measure, morphology, segmentation


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

    nucleus_join: closing radius (fraction of the side) that joins the lobes of one segmented nucleus.
    lobe_reach: dark pieces within this many nucleus radii of the central nucleus join it; pieces
        farther away are other cells' nuclei and keep the cell from spreading over them.
    min_nucleus_area: specks below this fraction of the crop area are ignored (platelets, granules).
    red_cell_gap: centres of stained blobs farther than this many nucleus radii from the nucleus
        seed red cells, which compete with the white cell for the stained pixels between them.
    max_cytoplasm: the cell reaches at most this many nucleus radii beyond the nucleus.
    """

    nucleus_join: float = 0.03
    lobe_reach: float = 0.75
    min_nucleus_area: float = 0.003
    red_cell_gap: float = 0.3
    max_cytoplasm: float = 1.5
    smoothing: float = 0.004

    def __call__(self, image: np.ndarray) -> StainMasks:
        """`image`: H×W×3 RGB, uint8 or float in [0, 1]."""
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an H×W×3 RGB image, got shape {image.shape}")
        side = min(image.shape[:2])
        density = filters.gaussian(optical_density(image), sigma=max(self.smoothing * side, 0.5), channel_axis=-1)
        nucleus, other_nuclei = self._nuclei(density[..., 0], side)
        if not nucleus.any():
            return StainMasks(cell=nucleus, nucleus=nucleus)
        cell = self._cell(density.sum(axis=-1), nucleus, other_nuclei, side)
        return StainMasks(cell=cell | nucleus, nucleus=nucleus)

    def _nuclei(self, red_density: np.ndarray, side: int) -> tuple[np.ndarray, np.ndarray]:
        """The central nucleus and every other one (neighbouring white cells), as boolean masks."""
        # Red absorbance: purple nuclei absorb red strongly; red cells, eosinophil granules and
        # pale cytoplasm hardly do.
        if np.ptp(red_density) < 1e-6:
            nothing = np.zeros(red_density.shape, dtype=bool)
            return nothing, nothing
        dark = _drop_specks(red_density > _thresholds(red_density)[-1], self.min_nucleus_area * red_density.size)
        joined = morphology.closing(dark, morphology.disk(max(1, round(self.nucleus_join * side))))
        centre = ((red_density.shape[0] - 1) / 2, (red_density.shape[1] - 1) / 2)
        central = dark & nearest_component(joined, centre)
        # Lobes a little farther apart still belong to it; nuclei beyond are other cells'.
        reach = ndi.distance_transform_edt(~central) <= self.lobe_reach * np.sqrt(central.sum() / np.pi)
        pieces = measure.label(dark)
        nucleus = np.isin(pieces, np.unique(pieces[reach & dark])) & dark
        return ndi.binary_fill_holes(nucleus), dark & ~nucleus

    def _cell(self, total_density: np.ndarray, nucleus: np.ndarray, other_nuclei: np.ndarray, side: int) -> np.ndarray:
        # Touching round blobs (the cell, red cells, other white cells) split at their necks: a
        # watershed on the distance to the unstained background, seeded by the nucleus and by the
        # centres of red cells and nuclei of other white cells.
        stained = ndi.binary_fill_holes(total_density > _thresholds(total_density)[0])
        hull = morphology.convex_hull_image(nucleus)
        radius = np.sqrt(hull.sum() / np.pi)
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


def _centroid(mask: np.ndarray) -> tuple[float, float]:
    rows, cols = np.nonzero(mask)
    return float(rows.mean()), float(cols.mean())
