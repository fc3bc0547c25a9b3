"""How good is a trained β-VAE on cells it never trained on, every figure beside its baselines from the same run.

Protocol (one for every number):
- *Training cells*: the training split of the DataModule the checkpoint was trained on, rebuilt (same class,
  arguments and seeded split; an RNA run reuses its saved preprocessing). Every yardstick is fitted on them
  alone: the training mean, the PCA-50 axes, the kNN reference and the stage centroids.
- *Held-out cells*: with `--test-store STORE` (image checkpoints) every readable row of another feature store,
  e.g. another source, encoded by the model (the store must come from the same Mask R-CNN checkpoint as the
  training store, or its features mean something else); otherwise the test split, or the validation split
  when the patient-grouped split left the test split empty (it only chose the best checkpoint).
- *Representations*: the latent μ (z = μ, deterministic) against PCA-50 of each reconstruction target, fitted
  on the training cells and applied to the held-out ones: RNA expression; for images the RoI features
  (standardised per channel with the model's training statistics, as the encoder sees them) and the masked
  pixels m·I; and both image codes side by side (each scaled to unit total variance): do the crop's own pixels
  add morphology that h lacks? And, as it is, the crop's colour profile (`colour_profile`, 16 bins: the cell's
  histogram per colour channel and its share of the crop), what an encoder with `colour_bins` reads beside h.
- *kNN(5) accuracy*: each held-out cell's class voted by its 5 nearest training cells; chance: always
  answering the most frequent held-out class.
- *Stage order*: the granulocytic stages of `LINEAGES` from promyelocyte to segmented neutrophil
  (PMY < MY < MMY < BNE < SNE); each held-out cell of those stages is projected onto the line from the
  promyelocyte centroid to the segmented-neutrophil centroid (training cells); Spearman ρ of projection and stage.
- *Reconstruction MSE* per term (features in standardised units: 1.0 = the channel means), beside the
  training mean and the PCA-50 reconstruction.
- Images only, on each held-out cell's pixels inside its cell mask m, shown on the slide's white background:
  *nucleus IoU* between the nucleus the classical stain segmenter finds in the input and in the
  reconstruction (1 where it finds none in either), and *masked SSIM* (scikit-image's RGB SSIM map averaged
  over m: a reference implementation, not the training loss's own luminance SSIM); baselines: the same for the PCA-50
  reconstruction of the masked pixels and for the training cells' mean cell (per pixel, the mean colour of
  the training cells covering it).
- *Nucleus solidity* of the segmented neutrophils (images only): the nucleus' area over that of its convex hull,
  as the stain segmenter finds it in the input and in each reconstruction. Lobes joined by thin strands score
  well under 1, a round or kidney blob near 1: does the decoder draw the segments the input has? Its mean, and
  per cell the absolute difference to the input's (a ragged, speckled reconstruction also scores low: the mean
  alone would reward it).
- For image checkpoints a figure of held-out cells, one per class: input, masked target, the reconstruction
  inside its own predicted mask on grey (the store's mask for a model without a mask head), the PCA-50 one.

    python bench/vae_quality.py runs/pbc_train/image_vae/version_0/checkpoints/last.ckpt \
        --test-store runs/pbc_train/features/pbc_sample [--out runs/pbc_train/quality] [--figure FIGURE.png]
    python bench/vae_quality.py --pipeline demo   # every β-VAE a `wbcvae pipeline` run trained
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr
from skimage.metrics import structural_similarity
from skimage.morphology import convex_hull_image
from sklearn.decomposition import PCA
from torch.utils.data import DataLoader

from wbcvae.checkpoints import load_plan
from wbcvae.errors import InputError
from wbcvae.models.image_vae import cell_on_grey
from wbcvae.models.losses import COLOUR_BINS, colour_profile
from wbcvae.segmentation.classical import StainSegmenter
from wbcvae.training.callbacks import new_figure
from wbcvae.training.embed import rebuild_datamodule
from wbcvae.training.metrics import held_out_dataloader, knn_accuracy, reference_loader
from wbcvae.training.plan import VAEPlan
from wbcvae.training.yardsticks import fit_pca, mse
from wbcvae.utils.atomic import atomic_path
from wbcvae.vocabulary import CLASS_INDEX, CLASSES, LINEAGES

GRANULOCYTIC = LINEAGES["granulocytic"].stages
STAGES = GRANULOCYTIC[GRANULOCYTIC.index("promyelocyte") :]  # PMY < MY < MMY < BNE < SNE
SLIDE = 1.0  # background the segmenter and SSIM see around a cell: bright, like the slide between cells


# term → (batch key of the truth, output key of the reconstruction, batch key of the mask or None)
RECONSTRUCTIONS = {
    "rna": {"expression": ("x", "x_hat", None)},
    "image": {"features": ("features", "h_hat", None), "image": ("target", "image_hat", "mask")},
}


class Split:
    """One split's μ, labels, and per term the (masked) truth and reconstruction, flattened per cell;
    for images also the crops, masks and reconstructions the pixel measures need (`keep_images`)."""

    def __init__(self, plan: VAEPlan, kind: str, keep_images: bool) -> None:
        self.plan, self.terms, self.keep_images = plan, RECONSTRUCTIONS[kind], keep_images
        self.parts: dict[str, list[np.ndarray]] = defaultdict(list)

    def add(self, batch: dict[str, torch.Tensor], outputs: dict[str, torch.Tensor]) -> None:
        self.parts["mu"].append(outputs["mu"].float().cpu().numpy())
        self.parts["label"].append(batch["label"].cpu().numpy())
        for term, (truth_key, output_key, mask_key) in self.terms.items():
            mask = batch[mask_key] if mask_key else 1.0
            scale = self.plan.vae.standardise if term == "features" else (lambda value: value)
            self.parts[f"{term}/truth"].append((mask * scale(batch[truth_key].float())).flatten(1).cpu().numpy())
            if self.keep_images:  # reconstructions are only scored on held-out cells
                self.parts[f"{term}/recon"].append((mask * scale(outputs[output_key].float())).flatten(1).cpu().numpy())
        if "mask" in batch:
            self.parts["mask"].append(batch["mask"].cpu().numpy().astype(np.float32))
            self.parts["colour"].append(colour_profile(batch["target"].float(), batch["mask"].float(), COLOUR_BINS).cpu().numpy())
        if self.keep_images and "image_hat" in outputs:
            shown = outputs["mask_logits"].sigmoid() if "mask_logits" in outputs else batch["mask"]
            for name, value in (("target", batch["target"]), ("image_hat", outputs["image_hat"]), ("shown_mask", shown)):
                self.parts[name].append(value.float().cpu().numpy())

    def __getitem__(self, name: str) -> np.ndarray:
        return np.concatenate(self.parts[name])

    def __contains__(self, name: str) -> bool:
        return name in self.parts


@torch.no_grad()
def collect(plan: VAEPlan, kind: str, loader, device: str, max_cells: int, keep_images: bool) -> Split:
    """The first `max_cells` cells of `loader` through the VAE in eval mode (z = μ: deterministic)."""
    split, cells = Split(plan, kind, keep_images), 0
    for batch in loader:
        batch = {key: value.to(device) for key, value in batch.items()}
        _, _, outputs = plan.losses(batch)
        split.add(batch, outputs)
        cells += len(batch["label"])
        if cells >= max_cells:
            break
    return split


def joint_part(train_codes: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """`codes` scaled by the training codes' total spread, so two codes weigh alike side by side."""
    return codes / np.sqrt(train_codes.var(0).sum())


def stage_spearman(train: np.ndarray, train_labels: np.ndarray, test: np.ndarray, test_labels: np.ndarray) -> float:
    """Spearman ρ between granulocytic stage and position along the promyelocyte → segmented-neutrophil
    line of training centroids; NaN when an end class has no training cells or under two stages are held out."""
    first, last = (train[train_labels == CLASS_INDEX[name]] for name in (STAGES[0], STAGES[-1]))
    stage_of_label = {CLASS_INDEX[name]: i for i, name in enumerate(STAGES)}
    keep = np.isin(test_labels, list(stage_of_label))
    stages = np.array([stage_of_label.get(label, -1) for label in test_labels[keep]])
    if not len(first) or not len(last) or len(np.unique(stages)) < 2:
        return float("nan")
    start, direction = first.mean(0), last.mean(0) - first.mean(0)
    position = (test[keep] - start) @ direction
    return float(spearmanr(stages, position).statistic)


def on_slide(images: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """B×3×S×S images inside their B×1×S×S cell masks, on the slide's bright background."""
    return cell_on_grey(torch.from_numpy(images), torch.from_numpy(masks), grey=SLIDE).numpy()


def nuclei(images: np.ndarray, segmenter: StainSegmenter) -> list[np.ndarray]:
    """The nucleus mask the stain segmenter finds in each image (B×3×S×S, already on the slide background)."""
    return [segmenter(image.transpose(1, 2, 0)).nucleus for image in images]


def nucleus_iou(truth: list[np.ndarray], drawn: list[np.ndarray]) -> np.ndarray:
    """Per cell, IoU of the nucleus found in the input and in the reconstruction (`nuclei`); 1 when neither has one."""
    scores = []
    for a, b in zip(truth, drawn):
        union = (a | b).sum()
        scores.append((a & b).sum() / union if union else 1.0)
    return np.asarray(scores)


def nucleus_solidity(found: list[np.ndarray]) -> np.ndarray:
    """Per cell, the nucleus' area over its convex hull's (all its pieces together); NaN where none was found."""
    return np.asarray([n.sum() / convex_hull_image(n).sum() if n.any() else np.nan for n in found])


def masked_ssim(inputs: np.ndarray, reconstructions: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Per cell, the SSIM map of reconstruction against input averaged over the pixels of its cell mask."""
    scores = []
    for truth, recon, mask in zip(inputs, reconstructions, masks):
        _, ssim_map = structural_similarity(truth, recon, channel_axis=0, data_range=1.0, full=True)
        inside = mask[0] > 0.5
        scores.append(ssim_map.mean(0)[inside].mean() if inside.any() else np.nan)
    return np.asarray(scores)


def pca_images(pca: PCA, masked: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The PCA-50 reconstructions of flattened masked images, as B×3×S×S in [0, 1]."""
    return np.clip(pca.inverse_transform(pca.transform(masked)), 0, 1).reshape(-1, *shape).astype(np.float32)


def pixel_measures(train: Split, test: Split, pca: PCA, max_cells: int) -> tuple[dict, dict, dict, int]:
    """Nucleus IoU, masked SSIM and the segmented neutrophils' nucleus solidity (means over at most `max_cells`
    held-out cells, a seeded draw so that a store sorted by class is not cut to its first classes) of the model,
    the PCA-50 reconstruction and the training mean cell (solidity of the inputs too); and how many cells
    they were measured on."""
    total = len(test["label"])
    chosen = np.sort(np.random.default_rng(0).permutation(total)[:max_cells])
    target, mask = test["target"][chosen], test["mask"][chosen]
    shape = target.shape[1:]
    train_masked, covered = train["image/truth"].reshape(-1, *shape).sum(0), train["mask"].sum(0)
    mean_colour = train_masked.sum((1, 2), keepdims=True) / max(covered.sum(), 1)
    mean_cell = np.where(covered > 0, train_masked / np.maximum(covered, 1), mean_colour)  # no cell there: the mean colour
    candidates = {
        "model": test["image_hat"][chosen],
        "pca50_image": pca_images(pca, test["image/truth"][chosen], shape),
        "training_mean": np.broadcast_to(mean_cell, target.shape).astype(np.float32),
    }
    truth = on_slide(target, mask)
    segmenter = StainSegmenter()
    segmented = test["label"][chosen] == CLASS_INDEX["neutrophil_segmented"]
    truth_nuclei = nuclei(truth, segmenter)
    truth_solidity = nucleus_solidity([n for n, keep in zip(truth_nuclei, segmented) if keep])
    iou, ssim, solidity = {}, {}, {"input": _nanmean(truth_solidity)}
    for name, images in candidates.items():
        shown = on_slide(np.ascontiguousarray(images), mask)
        drawn = nuclei(shown, segmenter)
        iou[name] = float(np.mean(nucleus_iou(truth_nuclei, drawn)))
        ssim[name] = float(np.nanmean(masked_ssim(truth, shown, mask)))
        drawn_solidity = nucleus_solidity([n for n, keep in zip(drawn, segmented) if keep])
        solidity[name], solidity[f"{name}/error"] = _nanmean(drawn_solidity), _nanmean(np.abs(drawn_solidity - truth_solidity))
    return iou, ssim, solidity, len(chosen)


def _nanmean(values: np.ndarray) -> float:
    """The mean over the finite values; NaN without one."""
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


def reconstruction_figure(test: Split, pca: PCA, title: str, path: Path) -> None:
    """Columns: the first held-out cell of each class; rows: input crop, masked target, the reconstruction
    inside its own predicted mask on grey, and the PCA-50 reconstruction inside the cell mask."""
    labels = test["label"]
    first = {label: i for i, label in reversed(list(enumerate(labels))) if label >= 0}
    columns = sorted(first)
    cells = np.array([first[label] for label in columns])
    target, mask, image_hat, shown = (test[name][cells] for name in ("target", "mask", "image_hat", "shown_mask"))
    grey = lambda images, masks: cell_on_grey(torch.from_numpy(images), torch.from_numpy(masks)).numpy()  # noqa: E731
    rows = {
        "input": target,
        "masked target": grey(target, mask),
        "reconstruction\n(its own mask)": grey(image_hat, shown),
        "PCA-50": grey(pca_images(pca, test["image/truth"][cells], target.shape[1:]), mask),
    }
    fig = new_figure(1.6 * len(columns), 1.75 * len(rows))
    axes = fig.subplots(len(rows), len(columns), squeeze=False)
    for column, label in enumerate(columns):
        for row, (name, images) in enumerate(rows.items()):
            ax = axes[row, column]
            ax.imshow(np.clip(images[column].transpose(1, 2, 0), 0, 1))
            ax.set_xticks([]), ax.set_yticks([])
            if row == 0:
                ax.set_title(CLASSES[label].replace("_", "\n"), fontsize=8)
            if column == 0:
                ax.set_ylabel(name, fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)


def held_out_loader(datamodule, test_store: Path | None) -> tuple[DataLoader, str, str | None]:
    """The held-out cells (see the protocol), what they are, and the test store's folder if one was given."""
    if test_store is None:
        return *held_out_dataloader(datamodule), None
    from wbcvae.features.datamodule import FeatureDataset
    from wbcvae.features.store import FeatureStore

    train_store = getattr(datamodule, "store", None)
    if train_store is None:
        raise InputError(f"--test-store {test_store}: the checkpoint was not trained on a feature store")
    store = FeatureStore(test_store)
    if len(store.missing()):
        raise InputError(f"{store.root}: {len(store.missing())} of {len(store)} rows not extracted yet; run `wbcvae features` again to finish")
    store.require_read_like(train_store.provenance, f"the training store {train_store.root}")
    rows = store.readable_rows()
    return DataLoader(FeatureDataset(store, rows), batch_size=datamodule.hparams.batch_size), "store", str(store.root)


def evaluate(ckpt: Path, device: str, figure: Path | None, max_cells: int, test_store: Path | None, pixel_cells: int) -> dict:
    started = time.perf_counter()
    plan, record = load_plan(ckpt, map_location=device)
    plan.eval()
    kind = record["kind"]
    datamodule = rebuild_datamodule(record)
    datamodule.setup("fit")
    loader, held_out, test_source = held_out_loader(datamodule, test_store)
    # the training log's kNN reference (all training cells, or the same seeded draw of max_cells)
    train = collect(plan, kind, reference_loader(datamodule.train_dataloader(), max_cells), device, max_cells, keep_images=False)
    test = collect(plan, kind, loader, device, max_cells, keep_images=True)
    labelled = test["label"][test["label"] >= 0]
    result = {
        "checkpoint": str(ckpt),
        "kind": kind,
        "data": record["data"].get("source") or record["data"]["hparams"].get("store_dir"),
        "held_out": test_source or held_out,
        "train_cells": len(train["label"]),
        "held_out_cells": len(test["label"]),
        "classes_in_test": len(np.unique(labelled)),
        "chance_accuracy": float(np.bincount(labelled).max() / len(labelled)) if len(labelled) else float("nan"),
        "stage_cells": int(np.isin(test["label"], [CLASS_INDEX[s] for s in STAGES]).sum()),
    }
    codes = {"latent": (train["mu"], test["mu"])}
    pcas, result["reconstruction_mse"] = {}, {}
    for term in RECONSTRUCTIONS[kind]:
        truth, train_truth = test[f"{term}/truth"], train[f"{term}/truth"]
        pcas[term] = pca = fit_pca(train_truth)
        codes[f"pca50_{term}"] = (pca.transform(train_truth), pca.transform(truth))
        result["reconstruction_mse"][term] = {
            "model": mse(test[f"{term}/recon"], truth),
            "training_mean": mse(np.broadcast_to(train_truth.mean(0), truth.shape), truth),
            f"pca50_{term}": mse(pca.inverse_transform(codes[f"pca50_{term}"][1]), truth),
        }
    if kind == "image":  # the pixels beside h, linearly: does the masked crop add morphology the features lack?
        features, image = codes["pca50_features"], codes["pca50_image"]
        codes["pca50_features+image"] = tuple(
            np.hstack([joint_part(features[0], features[i]), joint_part(image[0], image[i])]) for i in (0, 1)
        )
        codes["colour_profile"] = (train["colour"], test["colour"])
    result["knn5_accuracy"] = {name: knn_accuracy(a, train["label"], b, test["label"], k=5) for name, (a, b) in codes.items()}
    result["stage_spearman"] = {name: stage_spearman(a, train["label"], b, test["label"]) for name, (a, b) in codes.items()}
    if "image_hat" in test:
        result["nucleus_iou"], result["masked_ssim"], result["nucleus_solidity"], result["pixel_cells"] = pixel_measures(
            train, test, pcas["image"], pixel_cells
        )
        if figure is not None:
            reconstruction_figure(test, pcas["image"], f"held-out cells of {Path(result['held_out']).name}, trained on {Path(result['data']).name}", figure)
            result["figure"] = str(figure)
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


PIPELINE_VAE_STAGES = ("image_vae", "rna_vae", "real_rna")


def pipeline_checkpoints(folder: Path) -> list[Path]:
    """The best checkpoint of each β-VAE stage a pipeline run finished (`<stage>/stage.json`)."""
    found = []
    for stage in PIPELINE_VAE_STAGES:
        marker = folder / stage / "stage.json"
        recorded = json.loads(marker.read_text()).get("checkpoint") if marker.is_file() else None
        if recorded:
            found.append(Path(recorded))
    if not found:
        raise SystemExit(f"error: {folder}: no finished β-VAE stage ({', '.join(PIPELINE_VAE_STAGES)}) of a `wbcvae pipeline` run")
    return found


COLUMNS = ("input", "model", "pca50_features", "pca50_image", "pca50_features+image", "colour_profile", "pca50_expression", "training_mean")
HEADERS = {"input": "the input itself", "model": "β-VAE", "pca50_features": "PCA-50 RoI features", "pca50_image": "PCA-50 masked pixels",
           "pca50_features+image": "both PCA-50 side by side", "colour_profile": "colour profile", "pca50_expression": "PCA-50 expression",
           "training_mean": "training mean"}  # fmt: skip


def markdown(result: dict) -> str:
    """One result as a table: measures in rows, the β-VAE and its baselines in columns."""
    columns = [c for c in COLUMNS if c in ("model", "training_mean") or c in result["knn5_accuracy"] or c in result.get("nucleus_solidity", {})]
    rows = {
        f"kNN(5) accuracy (chance {result['chance_accuracy']:.3f})": {("model" if k == "latent" else k): v for k, v in result["knn5_accuracy"].items()},
        f"stage Spearman ρ ({result['stage_cells']} cells)": {("model" if k == "latent" else k): v for k, v in result["stage_spearman"].items()},
    }
    for name, key in (("nucleus IoU", "nucleus_iou"), ("masked SSIM", "masked_ssim"), ("nucleus solidity, segmented neutrophils", "nucleus_solidity")):
        if key in result:
            rows[f"{name} ({result['pixel_cells']} cells)"] = {k: v for k, v in result[key].items() if "/" not in k}
    if "nucleus_solidity" in result:
        errors = {k.split("/")[0]: v for k, v in result["nucleus_solidity"].items() if k.endswith("/error")}
        rows["its error per cell (absolute difference to the input's) ↓"] = errors
    for term, values in result["reconstruction_mse"].items():
        rows[f"{term} MSE"] = values
    lines = [
        f"{result['data']} → {result['held_out']} ({result['held_out_cells']} held-out cells, {result['classes_in_test']} classes; "
        f"{result['train_cells']} training cells; {result['kind']} β-VAE {result['checkpoint']})",
        "",
        "| measure | " + " | ".join(HEADERS[c] for c in columns) + " |",
        "|---" * (len(columns) + 1) + "|",
    ]
    for name, values in rows.items():
        cells = [f"{values[c]:.4f}" if "MSE" in name and c in values else f"{values[c]:.3f}" if c in values else "—" for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", type=Path, nargs="*")
    parser.add_argument("--pipeline", type=Path, default=None, help="a `wbcvae pipeline` output folder: add the β-VAEs it trained")
    parser.add_argument("--test-store", type=Path, default=None, help="image checkpoints: held-out cells from this feature store (another source)")
    parser.add_argument("--out", type=Path, default=Path("runs/quality"), help="folder for vae_quality.json and vae_quality.md")
    parser.add_argument("--figure", type=Path, default=None, help="reconstruction figure path (image checkpoints; one per checkpoint: -N suffix)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--max-cells", type=int, default=5000, help="cells per split at most (memory: the PCA yardsticks)")
    parser.add_argument("--pixel-cells", type=int, default=1000, help="held-out cells for nucleus IoU and SSIM at most (time: the segmenter)")
    args = parser.parse_args()
    if args.pipeline is not None:
        args.checkpoints += pipeline_checkpoints(args.pipeline)
    if not args.checkpoints:
        parser.error("no checkpoint given (name some, or --pipeline FOLDER)")
    results = []
    for n, ckpt in enumerate(args.checkpoints):
        figure = None
        if args.figure is not None:
            figure = args.figure if len(args.checkpoints) == 1 else args.figure.with_stem(f"{args.figure.stem}-{n}")
        results.append(evaluate(ckpt, args.device, figure, args.max_cells, args.test_store, args.pixel_cells))
    tables = "\n".join(markdown(r) for r in results)
    for name, text in (("vae_quality.json", json.dumps(results, indent=2)), ("vae_quality.md", tables)):
        with atomic_path(args.out / name) as tmp:
            tmp.write_text(text)
    print(tables)
    print(f"written to {args.out / 'vae_quality.json'} and {args.out / 'vae_quality.md'}")


if __name__ == "__main__":
    main()
