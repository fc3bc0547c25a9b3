"""Image sources → manifest → crops: every reader (real PBC data, CSV, folder trees with patients), every
pixel format, the patient-grouped stratified split, and each kind of bad input."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch
from PIL import Image

from wbcvae.data.image_dataset import CropDataModule, CropDataset, place_groups, place_single_crops, split_manifest, square_crop
from wbcvae.data.images import load_image, load_mask, read_manifest
from wbcvae.errors import InputError
from wbcvae.vocabulary import CLASS_INDEX, PBC_PREFIXES

PBC_CLASSES = {v for v in PBC_PREFIXES.values() if v is not None}


@contextlib.contextmanager
def one_line_error(*fragments: str):
    """Expect an InputError whose message is one line containing every fragment."""
    with pytest.raises(InputError) as info:
        yield
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert str(fragment) in message, f"{fragment!r} not in {message!r}"


def write_rgb(path: Path, colour=(200, 100, 150), size=(6, 8)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((*size, 3), colour, np.uint8)).save(path)
    return path


def rows_by_name(manifest) -> dict[str, tuple[str, str, str]]:
    frame = manifest.frame
    columns = frame[["path", "label", "patient", "source_label"]].values
    return {Path(path).name: (label, patient, source) for path, label, patient, source in columns}


# --- Real data: the PBC sample -----------------------------------------------------------------


@pytest.fixture(scope="module")
def pbc_manifest(pbc_sample):
    return read_manifest(pbc_sample)


def test_pbc_sample_has_80_crops_per_mapped_class_and_counts_the_rest(pbc_manifest, pbc_sample):
    frame = pbc_manifest.frame
    assert pbc_manifest.source == "pbc"
    assert frame["label"].value_counts().to_dict() == {c: 80 for c in PBC_CLASSES}
    assert dict(pbc_manifest.skipped) == {"IG": 8, "NEUTROPHIL": 8, "PLATELET": 8}
    assert list(frame.columns) == ["path", "label", "patient", "source_label", "mask_path"]
    assert (frame["patient"] == "").all() and (frame["mask_path"] == "").all()
    for path, label, prefix in frame[["path", "label", "source_label"]].values:
        assert Path(path).is_absolute() and Path(path).name.startswith(prefix + "_")
        assert PBC_PREFIXES[prefix] == label
    # the class comes from the prefix, not the folder: myelocytes sit in the `ig` folder
    assert set(Path(p).parent.name for p in frame.loc[frame["label"] == "myelocyte", "path"]) == {"ig"}
    assert frame.index.equals(pd.RangeIndex(800))


def test_pbc_sample_fails_on_the_first_unknown_prefix_when_asked(pbc_sample):
    with one_line_error("'IG'", "IG_", "none of the 13 classes"):
        read_manifest(pbc_sample, unknown="fail")


def test_pbc_jpeg_crop_becomes_a_288_tensor_of_the_same_picture(pbc_manifest):
    frame = pbc_manifest.frame
    pixels = load_image(frame["path"].iat[0])
    assert pixels.dtype == np.uint8 and pixels.shape == (363, 360, 3)
    dataset = CropDataset(pbc_manifest)
    rows = [0, 85, 799]
    for row in rows:
        item = dataset[row]
        assert set(item) == {"image", "label", "index", "readable"} and item["readable"]
        image = item["image"]
        assert image.shape == (3, 288, 288) and image.dtype == torch.float32
        assert 0.0 <= image.min() and image.max() <= 1.0
        assert item["label"].item() == CLASS_INDEX[frame["label"].iat[row]] and item["index"].item() == row
    # the resized crop shows the same stained cell: mean colour within 1 % of the full-size original
    original = load_image(frame["path"].iat[85]).reshape(-1, 3).mean(axis=0) / 255
    assert np.allclose(dataset[85]["image"].mean(dim=(1, 2)).numpy(), original, atol=0.01)


def test_pbc_split_is_exactly_stratified(pbc_manifest):
    parts = split_manifest(pbc_manifest.frame, seed=3)
    assert [len(p) for p in parts] == [560, 120, 120]
    for part, per_class in zip(parts, (56, 12, 12)):
        assert part["label"].value_counts().to_dict() == {c: per_class for c in PBC_CLASSES}
    together = np.concatenate([p.index for p in parts])
    assert sorted(together) == list(range(800))


def test_datamodule_serves_pbc_batches(pbc_sample):
    module = CropDataModule(pbc_sample, crop_size=32, batch_size=4)
    module.setup("fit")
    assert {k: len(v) for k, v in module.datasets.items()} == {"train": 560, "val": 120, "test": 120}
    batch = next(iter(module.train_dataloader()))
    assert batch["image"].shape == (4, 3, 32, 32) and batch["label"].dtype == torch.int64
    val_rows = set(module.parts["val"].index)
    assert set(next(iter(module.val_dataloader()))["index"].tolist()) <= val_rows


# --- Folder trees and CSV manifests ------------------------------------------------------------


def test_folder_tree_takes_the_nearest_class_folder_and_the_patient_above_it(tmp_path):
    write_rgb(tmp_path / "Patient_07" / "Signed slides" / "Monocyte" / "a.jpg")
    write_rgb(tmp_path / "Patient_07" / "Signed slides" / "Band neutrophils" / "b.png")
    write_rgb(tmp_path / "Patient_08" / "Blast, no lineage spec" / "c.bmp")
    write_rgb(tmp_path / "Patient_08" / "Smudge cells" / "d.tif")
    write_rgb(tmp_path / "Patient_08" / "Platelets" / "e.jpg")
    write_rgb(tmp_path / "Patient_09" / "Lymphocyte, variant" / "Week 2" / "g.jpeg")
    write_rgb(tmp_path / "Monocyte" / "Segmented neutrophils" / "h.png")  # nearest class folder wins
    write_rgb(tmp_path / "Eosinophils" / "f.jpg")  # a class at the top: no patient
    (tmp_path / "Patient_07" / "notes.txt").write_text("not an image")
    (tmp_path / "Eosinophils" / "._f.jpg").write_bytes(b"macOS metadata, not an image")

    manifest = read_manifest(tmp_path)
    assert manifest.source == "folder"
    assert rows_by_name(manifest) == {
        "a.jpg": ("monocyte", "Patient_07", "Monocyte"),
        "b.png": ("neutrophil_banded", "Patient_07", "Band neutrophils"),
        "c.bmp": ("myeloblast", "Patient_08", "Blast, no lineage spec"),
        "d.tif": ("smudge_cell", "Patient_08", "Smudge cells"),
        "g.jpeg": ("lymphocyte_atypical", "Patient_09", "Lymphocyte, variant"),
        "h.png": ("neutrophil_segmented", "", "Segmented neutrophils"),
        "f.jpg": ("eosinophil", "", "Eosinophils"),
    }
    assert dict(manifest.skipped) == {"Platelets": 1}
    with one_line_error("'Platelets'", "e.jpg"):
        read_manifest(tmp_path, unknown="fail")


def test_munich_abbreviation_folders_are_a_folder_tree_not_pbc(tmp_path):
    for abbreviation in ("BAS", "LYA", "MYB", "NGB"):
        write_rgb(tmp_path / abbreviation / f"{abbreviation}_0001.png")
    manifest = read_manifest(tmp_path)
    assert manifest.source == "folder"
    assert sorted(manifest.frame["label"]) == ["basophil", "lymphocyte_atypical", "myeloblast", "neutrophil_banded"]


def write_world(root: Path, n: int = 6) -> Path:
    """A tiny world in the synthetic layout of docs/architecture.md: 40×60 crops with exact label masks."""
    rows = ["path,label,patient,mask_path,lineage,pseudotime"]
    for i in range(n):
        image = np.zeros((40, 60, 3), np.uint8)
        image[:, :10], image[:, 10:50], image[:, 50:] = (255, 0, 0), (0, 255, 0), (0, 0, 255)
        mask = np.zeros((40, 60), np.uint8)
        mask[10:30, 20:40] = 1  # cytoplasm
        mask[16:24, 26:34] = 2  # nucleus
        label = ("monocyte", "myeloblast")[i % 2]
        (root / "images" / label).mkdir(parents=True, exist_ok=True)
        (root / "masks").mkdir(exist_ok=True)
        Image.fromarray(image).save(root / "images" / label / f"{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"{i}.png")
        rows.append(f"images/{label}/{i}.png,{label},0{i % 3},masks/{i}.png,monocytic,{i / 10}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root


def test_csv_manifest_keeps_patients_extra_columns_and_resolves_relative_paths(tmp_path):
    world = write_world(tmp_path)
    for source in (world, world / "manifest.csv"):  # the folder is read through its manifest.csv
        manifest = read_manifest(source)
        frame = manifest.frame
        assert manifest.source == "csv" and len(frame) == 6
        assert list(frame.columns) == ["path", "label", "patient", "source_label", "mask_path", "lineage", "pseudotime"]
        assert frame["path"].iat[1] == str(world / "images" / "myeloblast" / "1.png")
        assert frame["mask_path"].iat[1] == str(world / "masks" / "1.png")
        assert frame["patient"].tolist() == ["00", "01", "02", "00", "01", "02"]  # strings, leading zero kept
        assert np.allclose(frame["pseudotime"], np.arange(6) / 10)


def test_csv_unknown_labels_are_counted_or_fail_naming_the_line(tmp_path):
    world = write_world(tmp_path)
    write_rgb(world / "images" / "other" / "p.png")
    with open(world / "manifest.csv", "a") as csv:
        csv.write("images/other/p.png,Platelet,09,,,\n")  # line 8: header + 6 crops before it
    manifest = read_manifest(world)
    assert dict(manifest.skipped) == {"Platelet": 1} and len(manifest.frame) == 6
    with one_line_error("'Platelet'", "manifest.csv, line 8"):
        read_manifest(world, unknown="fail")


# --- Crops, masks, splits ----------------------------------------------------------------------


def test_crops_keep_aspect_by_cutting_the_longer_side_and_masks_follow(tmp_path):
    dataset = CropDataset(read_manifest(write_world(tmp_path)), crop_size=20)
    assert dataset.has_masks
    item = dataset[1]
    assert set(item) == {"image", "label", "index", "readable", "mask", "nucleus"}
    assert item["image"].shape == (3, 20, 20) and item["mask"].shape == item["nucleus"].shape == (1, 20, 20)
    # 40×60 → 20×30, centre 20 columns = original columns 10‥50: all green, the red and blue margins gone
    green = torch.tensor([0.0, 1.0, 0.0])[:, None, None].expand(3, 20, 18)
    assert torch.allclose(item["image"][:, :, 1:-1], green, atol=0.02)
    # cell 20×20 px → 10×10, nucleus 8×8 → 4×4, both centred where they were drawn
    expected_cell, expected_nucleus = torch.zeros(20, 20), torch.zeros(20, 20)
    expected_cell[5:15, 5:15], expected_nucleus[8:12, 8:12] = 1, 1
    assert torch.equal(item["mask"][0], expected_cell) and torch.equal(item["nucleus"][0], expected_nucleus)
    assert item["label"].item() == CLASS_INDEX["myeloblast"] and item["index"].item() == 1


def test_square_crop_upscales_small_and_leaves_exact_sizes_alone():
    small = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert square_crop(small, 6, nearest=True).shape == (6, 6)
    assert set(np.unique(square_crop(small, 6, nearest=True))) <= set(range(12))
    exact = np.zeros((5, 5, 3), np.uint8)
    assert square_crop(exact, 5) is exact


def patient_frame(seed: int = 0, patients: int = 30) -> pd.DataFrame:
    """Patients of very different sizes and class mixes, plus some crops with no patient."""
    rng = np.random.default_rng(seed)
    classes = ["myeloblast", "monocyte", "eosinophil", "lymphocyte_typical"]
    rows = []
    for p in range(patients):
        mix = rng.dirichlet(np.ones(len(classes)))
        rows += [(f"P{p:02d}", c) for c in rng.choice(classes, size=int(rng.integers(5, 80)), p=mix)]
    rows += [("", c) for c in rng.choice(classes, size=60)]
    frame = pd.DataFrame(rows, columns=["patient", "label"])
    frame["path"] = [f"/x/{i}.png" for i in range(len(frame))]
    return frame


def test_split_never_puts_a_patient_in_two_parts_and_stays_near_targets():
    frame = patient_frame()
    parts = split_manifest(frame, (0.7, 0.15, 0.15), seed=1)
    patients = [set(p["patient"]) - {""} for p in parts]
    assert not (patients[0] & patients[1] or patients[0] & patients[2] or patients[1] & patients[2])
    assert sorted(np.concatenate([p.index for p in parts])) == list(range(len(frame)))
    for part, share in zip(parts, (0.7, 0.15, 0.15)):
        assert abs(len(part) / len(frame) - share) < 0.03
        per_class = part["label"].value_counts() / frame["label"].value_counts()
        assert (abs(per_class - share) < 0.08).all(), per_class.to_dict()
    again = split_manifest(frame, (0.7, 0.15, 0.15), seed=1)
    other = split_manifest(frame, (0.7, 0.15, 0.15), seed=2)
    assert all(a.index.equals(b.index) for a, b in zip(parts, again))
    assert not all(a.index.equals(b.index) for a, b in zip(parts, other))


@pytest.mark.parametrize("seed", range(4))
def test_placing_single_crops_at_once_matches_placing_them_one_by_one(seed):
    rng = np.random.default_rng(seed)
    classes = rng.integers(0, 5, size=300)  # uneven, some classes tiny; shares that tie now and then
    target = np.array([[0.7], [0.15], [0.15]]) if seed % 2 else np.array([[0.5], [0.25], [0.25]])
    target = target * np.bincount(classes, minlength=5)[None, :]
    order = rng.permutation(len(classes))
    one_hot = np.eye(5)[classes]
    assert np.array_equal(place_single_crops(target, classes, order), place_groups(target, one_hot, order))


def test_split_with_a_zero_fraction_leaves_that_part_empty():
    train, val, test = split_manifest(patient_frame(), (0.8, 0.2, 0.0))
    assert len(test) == 0 and len(val) > 0 and not set(train["patient"]) - {""} & set(val["patient"])


def test_datamodule_on_a_world_with_masks_groups_patients(tmp_path):
    world = write_world(tmp_path, n=9)
    module = CropDataModule(world, crop_size=16, batch_size=2, fractions=(0.34, 0.33, 0.33))
    module.setup()
    patients = [set(module.parts[name]["patient"]) for name in ("train", "val", "test")]
    assert sorted(map(sorted, patients)) == [["00"], ["01"], ["02"]]
    batch = next(iter(module.train_dataloader()))
    assert batch["mask"].shape == (2, 1, 16, 16) and batch["nucleus"].sum() < batch["mask"].sum()


# --- Pixel formats ------------------------------------------------------------------------------

RNG = np.random.default_rng(0)
RGB8 = RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8)
GREY8 = RNG.integers(0, 256, (5, 7), dtype=np.uint8)
ALPHA8 = RNG.integers(0, 256, (5, 7), dtype=np.uint8)
RGBA8 = np.dstack([RGB8, ALPHA8])
GREY_AS_RGB = np.dstack([GREY8] * 3)
OVER_WHITE = np.round(RGB8 * (ALPHA8[..., None] / 255.0) + 255.0 * (1 - ALPHA8[..., None] / 255.0)).astype(np.uint8)


def _pil(array, mode=None):
    return lambda path: Image.fromarray(array, mode).save(path) if mode else Image.fromarray(array).save(path)


def _tiff(array, **kw):
    return lambda path: tifffile.imwrite(path, array, **kw)


def _palette(path):
    Image.fromarray(GREY8).convert("P").save(path)  # convert("P") from L keeps the grey values in the palette


FORMATS = {
    # name: (file name, writer, expected RGB, tolerance)
    "jpeg-rgb": ("x.jpg", lambda p: Image.fromarray(RGB8).save(p, quality=100, subsampling=0), RGB8, 12),
    "jpeg-grey": ("x.jpeg", lambda p: Image.fromarray(GREY8).save(p, quality=100), GREY_AS_RGB, 4),
    "png-rgb": ("x.png", _pil(RGB8), RGB8, 0),
    "png-grey": ("x.png", _pil(GREY8), GREY_AS_RGB, 0),
    "png-rgba": ("x.png", _pil(RGBA8), OVER_WHITE, 1),
    "png-grey-alpha": ("x.png", _pil(np.dstack([GREY8, np.full_like(GREY8, 255)]), "LA"), GREY_AS_RGB, 0),
    "png-grey-16bit": ("x.png", _pil(GREY8.astype(np.uint16) * 257), GREY_AS_RGB, 0),
    "png-palette": ("x.png", _palette, GREY_AS_RGB, 0),
    "bmp-rgb": ("x.bmp", _pil(RGB8), RGB8, 0),
    "bmp-grey": ("x.bmp", _pil(GREY8), GREY_AS_RGB, 0),
    "tiff-rgb-8bit": ("x.tif", _tiff(RGB8, photometric="rgb"), RGB8, 0),
    "tiff-rgb-16bit": ("x.tiff", _tiff(RGB8.astype(np.uint16) * 257, photometric="rgb"), RGB8, 0),
    "tiff-grey-8bit": ("x.tif", _tiff(GREY8), GREY_AS_RGB, 0),
    "tiff-grey-16bit": ("x.tif", _tiff(GREY8.astype(np.uint16) * 257), GREY_AS_RGB, 0),
    "tiff-rgba-8bit": ("x.tif", _tiff(RGBA8, photometric="rgb", extrasamples=["unassalpha"]), OVER_WHITE, 1),
    "tiff-rgba-16bit": (
        "x.tif",
        _tiff(RGBA8.astype(np.uint16) * 257, photometric="rgb", extrasamples=["unassalpha"]),
        OVER_WHITE,
        1,
    ),
    "tiff-rgb-planar": (
        "x.tif",
        _tiff(np.moveaxis(RGB8, 2, 0).copy(), photometric="rgb", planarconfig="separate"),
        RGB8,
        0,
    ),
    "tiff-grey-float": ("x.tif", _tiff(GREY8.astype(np.float32) / 255), GREY_AS_RGB, 0),
}


@pytest.mark.parametrize("name", list(FORMATS))
def test_every_format_loads_as_uint8_rgb(tmp_path, name):
    file_name, write, expected, tolerance = FORMATS[name]
    write(tmp_path / file_name)
    pixels = load_image(tmp_path / file_name)
    assert pixels.dtype == np.uint8 and pixels.shape == (5, 7, 3)
    assert np.abs(pixels.astype(int) - expected.astype(int)).max() <= tolerance


def test_transparent_pixels_become_white(tmp_path):
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (10, 20, 30, 255)
    Image.fromarray(rgba).save(tmp_path / "a.png")
    assert load_image(tmp_path / "a.png").tolist() == [[[10, 20, 30], [255] * 3], [[255] * 3, [255] * 3]]


# --- Bad input ----------------------------------------------------------------------------------


def test_missing_source_and_missing_image(tmp_path):
    with one_line_error(str(tmp_path / "nowhere"), "no such file or folder"):
        read_manifest(tmp_path / "nowhere")
    with one_line_error(str(tmp_path / "gone.png")):
        load_image(tmp_path / "gone.png")


def test_empty_folder_and_a_folder_without_images(tmp_path):
    with one_line_error(str(tmp_path), "no images"):
        read_manifest(tmp_path)
    (tmp_path / "notes.txt").write_text("hello")
    with one_line_error(str(tmp_path), "no images"):
        read_manifest(tmp_path)


def test_a_folder_where_no_label_maps_names_what_was_skipped(tmp_path):
    write_rgb(tmp_path / "Platelets" / "a.png")
    with one_line_error(str(tmp_path), "Platelets 1"):
        read_manifest(tmp_path)


def test_source_that_is_neither_folder_nor_csv(tmp_path):
    image = write_rgb(tmp_path / "a.png")
    with one_line_error(str(image), "folder or a .csv"):
        read_manifest(image)


def _truncated_png(path):
    write_rgb(path, size=(64, 64))
    path.write_bytes(path.read_bytes()[:60])


@pytest.mark.parametrize(
    "file_name, write",
    [
        ("text.jpg", lambda p: p.write_bytes(b"this is not a JPEG")),
        ("cut.png", _truncated_png),
        ("junk.tif", lambda p: p.write_bytes(b"II*\x00 not really a TIFF")),
        ("empty.bmp", lambda p: p.write_bytes(b"")),
    ],
)
def test_corrupt_images_name_the_file(tmp_path, file_name, write):
    write(tmp_path / file_name)
    with one_line_error(str(tmp_path / file_name), "cannot read"):
        load_image(tmp_path / file_name)


@pytest.mark.parametrize(
    "file_name, write, says",
    [
        ("five.tif", _tiff(np.zeros((4, 4, 5), np.uint8), photometric="minisblack", planarconfig="contig"), "layout"),
        ("stack.tif", _tiff(np.zeros((3, 4, 4, 5), np.uint8), photometric="minisblack"), "axes"),
        ("int32.tif", _tiff(np.zeros((4, 4), np.int32)), "pixel type int32"),
        ("cmyk.tif", _tiff(np.zeros((4, 4, 4), np.uint8), photometric="separated"), "SEPARATED"),
        ("hot.tif", _tiff(np.full((4, 4), 3.5, np.float32)), "[0, 1]"),
        ("anim.gif", lambda p: write_rgb(p), "unsupported image format '.gif'"),
    ],
)
def test_unsupported_modes_name_the_file_and_the_problem(tmp_path, file_name, write, says):
    write(tmp_path / file_name)
    with one_line_error(str(tmp_path / file_name), says):
        load_image(tmp_path / file_name)


def test_masks_must_hold_background_cytoplasm_nucleus_labels(tmp_path):
    Image.fromarray(np.array([[0, 1], [2, 7]], np.uint8)).save(tmp_path / "bad.png")
    with one_line_error(str(tmp_path / "bad.png"), "mask value 7"):
        load_mask(tmp_path / "bad.png")
    write_rgb(tmp_path / "rgb.png")
    with one_line_error(str(tmp_path / "rgb.png"), "one channel"):
        load_mask(tmp_path / "rgb.png")
    Image.fromarray(np.array([[0, 1], [2, 2]], np.uint8)).save(tmp_path / "good.png")
    assert load_mask(tmp_path / "good.png").tolist() == [[0, 1], [2, 2]]


@pytest.mark.parametrize(
    "header, says",
    [("file,label", "no 'path' column"), ("path,class", "no 'label' column")],
)
def test_csv_without_path_or_label_column(tmp_path, header, says):
    write_rgb(tmp_path / "a.png")
    (tmp_path / "m.csv").write_text(f"{header}\na.png,monocyte\n")
    with one_line_error(str(tmp_path / "m.csv"), says):
        read_manifest(tmp_path / "m.csv")


def test_csv_listing_missing_files_duplicates_or_nothing(tmp_path):
    write_rgb(tmp_path / "a.png")
    csv = tmp_path / "m.csv"
    csv.write_text("path,label\na.png,monocyte\nb.png,monocyte\nc.png,monocyte\n")
    with one_line_error(str(csv), "2 listed file(s) do not exist", str(tmp_path / "b.png")):
        read_manifest(csv)
    csv.write_text("path,label\na.png,monocyte\n./a.png,monocyte\n")
    with one_line_error(str(csv), str(tmp_path / "a.png"), "listed 2 times"):
        read_manifest(csv)
    csv.write_text("path,label\n")
    with one_line_error(str(csv), "lists no crops"):
        read_manifest(csv)
    csv.write_bytes(b"\xff\xfe\x00\x00binary")
    with one_line_error(str(csv)):
        read_manifest(csv)


def test_crop_dataset_refuses_half_masked_manifests_and_mismatched_masks(tmp_path):
    frame = read_manifest(write_world(tmp_path)).frame
    half = frame.assign(mask_path=[m if i % 2 else "" for i, m in enumerate(frame["mask_path"])])
    with one_line_error("3 of 6 crops have no mask_path", frame["path"].iat[0]):
        CropDataset(half)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(frame["mask_path"].iat[0])
    with one_line_error(frame["mask_path"].iat[0], "8×8", "60×40"):
        CropDataset(frame)[0]


def test_bad_split_fractions_and_too_few_patients():
    frame = patient_frame(patients=2)
    with one_line_error("three non-negative numbers summing to 1"):
        split_manifest(frame, (0.7, 0.2, 0.2))
    with one_line_error("2 patient groups cannot fill 3 splits"):
        split_manifest(frame[frame["patient"] != ""])
