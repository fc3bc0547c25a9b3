"""Training speed of our RNA β-VAE against scvi-tools' SCVI, the anchor a user would run instead.

Both train on the same cells (the training split of our seeded split) and genes (our seurat_v3 choice),
for the same epochs, batch size and torch threads, on CPU, without validation:
- SCVI (negative binomial, as ours with `likelihood: nb`) at `--width` hidden units, one layer, 50 latents;
- ours with `likelihood: nb` at the same width, twice: fitting the PCA atlas at start-up (data without an
  embedding), and reading the atlas' own embedding from `obsm` (the study's setting; here a 50-d one computed
  before the clock starts, as an atlas such as Tabula Sapiens ships its scVI embedding);
- ours at the default config (experiments/rna_vae/laptop.yaml).
Printed per model, as the median of `--repeats` runs (the models take turns): cells/s over the epochs after the
first (the first pays for warm-up) and its ratio to SCVI's, and start-up: seconds from the counts in memory to the
first training batch (ours: split, gene choice, scaling and atlas PCA, Lightning; SCVI: gene choice, setup_anndata,
model, Lightning). Reading the source is timed once, separately (both need it).

Start-up is compared fairly in two views, both printed: with gene choice (SCVI's timed start-up runs the
same batch-aware seurat_v3 choice a user would run before handing SCVI its genes, `RnaPreprocessor`'s
own) and without it (each model's start-up less its own timed gene choice).

    python bench/bench_scvi.py [--source ../shared/data/vangalen2019] [--epochs 4] [--threads 1] [--repeats 3]

Needs scvi-tools (`pip install -e '.[bench]'`); without it the script says so and exits 0.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import tempfile
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
import yaml

from wbcvae.data.rna import read_rna
from wbcvae.data.rna_datamodule import RnaDataModule
from wbcvae.data.rna_preprocess import RnaPreprocessor
from wbcvae.training import RnaVAEPlan

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "experiments" / "rna_vae" / "laptop.yaml"


class GeneChoiceTimer:
    """Seconds spent in `RnaPreprocessor._choose_genes` while active, so start-up can be read without it."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def __enter__(self) -> GeneChoiceTimer:
        choose = self.choose = RnaPreprocessor._choose_genes

        def timed(preprocessor, *args):
            started = time.perf_counter()
            try:
                return choose(preprocessor, *args)
            finally:
                self.seconds += time.perf_counter() - started

        RnaPreprocessor._choose_genes = timed
        return self

    def __exit__(self, *exc) -> None:
        RnaPreprocessor._choose_genes = self.choose


class Clock(L.Callback):
    """Wall-clock of the first training batch and of each training epoch's end."""

    def __init__(self, started: float) -> None:
        self.started, self.first_batch, self.epoch_ends = started, None, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.first_batch is None:
            self.first_batch = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.epoch_ends.append(time.perf_counter())

    def summary(self, cells: int, genes_s: float) -> dict:
        """Start-up seconds with and without the gene choice (`genes_s` of it), and cells/s over the epochs after the first."""
        epochs, startup = np.diff(self.epoch_ends), self.first_batch - self.started
        return {
            "startup_s": round(startup, 2), "genes_s": round(genes_s, 2), "startup_without_genes_s": round(startup - genes_s, 2),
            "cells_per_s": round(cells / float(np.median(epochs)), 1),
        }  # fmt: skip


def median_run(runs: list[dict]) -> dict:
    """Each timing's median over repeated runs of one model (a start-up of a fraction of a second moves by tens of
    percent between runs on a shared machine); the other fields are the first run's."""
    return runs[0] | {key: round(float(np.median([run[key] for run in runs])), 2) for key in ("startup_s", "genes_s", "startup_without_genes_s", "cells_per_s")}


def trainer_settings(epochs: int, clock: Clock) -> dict:
    """A bare Trainer; its root folder is a temporary one, so our plan's preprocessor.json lands there, not in the cwd."""
    return dict(
        default_root_dir=tempfile.mkdtemp(prefix="bench_scvi_"), max_epochs=epochs, accelerator="cpu", devices=1, callbacks=[clock], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
    )  # fmt: skip


def train_ours(adata, args, hidden: list[int], model_args: dict, atlas: str = "pca") -> dict:
    """Our RNA β-VAE; `atlas`: "pca" fits the PCA atlas inside the timed start-up, "obsm" reads the atlas'
    own embedding from `obsm["X_atlas"]` (the study's setting: an atlas such as Tabula Sapiens ships one)."""
    started = time.perf_counter()
    clock = Clock(started)
    data = RnaDataModule(adata, batch_size=args.batch_size, n_top_genes=args.genes, markers=args.markers, atlas=atlas, atlas_key="X_atlas", seed=0)
    plan = RnaVAEPlan(**{**model_args, "hidden": hidden, "latent_dim": 50})
    with GeneChoiceTimer() as genes:
        L.Trainer(**trainer_settings(args.epochs, clock)).fit(plan, data)
    return {**clock.summary(len(data.splits["train"]), genes.seconds), "hidden": hidden, "likelihood": plan.hparams.likelihood, "atlas": atlas}


def train_scvi(adata, rows: np.ndarray, args) -> dict:
    """SCVI on the training cells and the genes `RnaPreprocessor` chooses (chosen inside the timed start-up, as a user would)."""
    import scvi

    started = time.perf_counter()
    clock = Clock(started)
    with GeneChoiceTimer() as timer:
        genes = RnaPreprocessor(n_top_genes=args.genes, markers=args.markers)._choose_genes(adata, rows)
    cells = adata[rows, genes].copy()
    scvi.model.SCVI.setup_anndata(cells)
    model = scvi.model.SCVI(cells, n_hidden=args.width, n_layers=1, n_latent=50, gene_likelihood="nb")
    model.train(train_size=1.0, batch_size=args.batch_size, **trainer_settings(args.epochs, clock))
    return {**clock.summary(len(rows), timer.seconds), "hidden": [args.width], "likelihood": "nb", "atlas": "—"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default=str(REPO / ".." / "shared" / "data" / "vangalen2019"))
    parser.add_argument("--all-samples", action="store_true", help="van Galen: every sample, not only the healthy marrow")
    parser.add_argument("--genes", type=int, default=2432)
    parser.add_argument("--markers", nargs="*", default=[])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--width", type=int, default=128, help="hidden units of SCVI and of our equal-width model")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each model, in turns; the medians are printed")
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args()
    if importlib.util.find_spec("scvi") is None:
        print("skipped: scvi-tools is not installed (pip install -e '.[bench]')")
        return
    torch.set_num_threads(args.threads)
    L.seed_everything(0, verbose=False)
    started = time.perf_counter()
    vangalen = any(Path(args.source).glob("*.dem.txt.gz"))
    adata = read_rna(args.source, healthy_only=vangalen and not args.all_samples)
    read_s = time.perf_counter() - started
    # Our split and genes, fitted once first: this also pays one-time costs (numba compiling scanpy's
    # loess helpers) that would otherwise land on whichever model is timed first.
    reference = RnaDataModule(adata, n_top_genes=args.genes, markers=args.markers, atlas="pca", seed=0)
    reference.setup("fit")
    adata.obsm["X_atlas"] = reference.preprocessor.transform(adata)[1]  # an atlas that brings its own 50-d embedding
    default = yaml.safe_load(DEFAULT_CONFIG.read_text())["model"]
    default_hidden = default.pop("hidden")
    models = {
        "scvi": lambda: train_scvi(adata, reference.splits["train"], args),
        "ours_equal_width": lambda: train_ours(adata, args, [args.width], {**default, "likelihood": "nb"}),
        "ours_equal_width_obsm_atlas": lambda: train_ours(adata, args, [args.width], {**default, "likelihood": "nb"}, atlas="obsm"),
        "ours_default": lambda: train_ours(adata, args, default_hidden, default),
    }
    rounds = [{name: train() for name, train in models.items()} for _ in range(args.repeats)]  # the models take turns
    results = {name: median_run([one[name] for one in rounds]) for name in models}
    print(f"{adata.n_obs} cells ({len(reference.splits['train'])} trained on) × {args.genes} genes, {args.epochs} epochs, "
          f"batch {args.batch_size}, {args.threads} thread(s), median of {args.repeats} runs each; reading the source: {read_s:.1f} s")  # fmt: skip
    print("| model | likelihood | hidden | atlas | cells/s | × SCVI | start-up with gene choice (s) | gene choice (s) | start-up without (s) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        ratio = r["cells_per_s"] / results["scvi"]["cells_per_s"]
        print(f"| {name} | {r['likelihood']} | {r['hidden']} | {r['atlas']} | {r['cells_per_s']:.0f} | {ratio:.2f} | {r['startup_s']:.2f} "
              f"| {r['genes_s']:.2f} | {r['startup_without_genes_s']:.2f} |")  # fmt: skip
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"read_s": read_s, **results}, indent=2))


if __name__ == "__main__":
    main()
