"""Training speed and memory of the two β-VAEs, every ratio measured in this one run.

1. Lightning overhead: steps/s of the training plan through `Trainer` (CSV logging every step) against a
   bare PyTorch loop over the same model, batch and DataLoader. Target: Lightning ≥ 0.9× bare.
2. Input pipeline: batches/s of the DataModule's train loader alone against training steps/s on a batch
   already in memory. Target: the loader ≥ 5× faster than a step consumes.
3. RNA from a lazy (backed) .h5ad: peak memory of a process that sets up the RnaDataModule and draws
   batches, for 10k and 200k synthetic cells. Target: within 1.2×; the same 200k file read into memory
   is shown for contrast.

    python bench/bench_training.py [--world demo/world] [--store runs/features/world] [--out runs/bench]

Without a world / store, sections 1–2 use the in-memory toy DataModules of `wbcvae.training.toy_data`
(and say so). Results are printed and written to `<out>/bench_training.json`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anndata as ad
import lightning as L
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from lightning.pytorch.loggers import CSVLogger

from wbcvae.training import ImageVAEPlan, RnaVAEPlan
from wbcvae.training.plan import VAEPlan
from wbcvae.training.toy_data import ToyFeatureDataModule, ToyRnaDataModule


def cases(args: argparse.Namespace) -> dict[str, tuple[VAEPlan, L.LightningDataModule, str]]:
    """name → (a fresh plan, its DataModule set up, what the data is)."""
    found = {}
    if args.world and (Path(args.world) / "rna.h5ad").is_file():
        from wbcvae.data.rna_datamodule import RnaDataModule

        rna = RnaDataModule(args.world, batch_size=args.batch_size, atlas="pca")
        rna.setup("fit")
        found["rna"] = (lambda: RnaVAEPlan(n_genes=rna.n_genes), rna, f"RnaDataModule({args.world})")
    else:
        rna = ToyRnaDataModule(n_cells=4000, genes=2000, batch_size=args.batch_size)
        found["rna"] = (lambda: RnaVAEPlan(n_genes=2000), rna, "toy in-memory RNA (no --world)")
    if args.store and Path(args.store).is_dir():
        from wbcvae.features.datamodule import FeatureDataModule

        image = FeatureDataModule(args.store, batch_size=args.image_batch_size)
        image.setup("fit")
        found["image"] = (ImageVAEPlan, image, f"FeatureDataModule({args.store})")
    else:
        image = ToyFeatureDataModule(n_cells=8 * args.image_batch_size, batch_size=args.image_batch_size)
        found["image"] = (ImageVAEPlan, image, "toy in-memory features (no --store)")
    return found


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def to_device(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: value.to(device(), non_blocking=True) for key, value in batch.items()}


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def bare_steps_per_s(make_plan, datamodule: L.LightningDataModule, warmup: int, steps: int) -> float:
    """A plain loop: batch to device, forward, the plan's loss, backward, Adam step."""
    torch.manual_seed(0)
    plan = make_plan().to(device()).train()
    optimiser = plan.configure_optimizers()
    batches = (batch for _ in itertools.count() for batch in datamodule.train_dataloader())
    for step in range(warmup + steps):
        if step == warmup:
            sync()
            start = time.perf_counter()
        loss, _, _ = plan.total_loss(to_device(next(batches)))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    sync()
    return steps / (time.perf_counter() - start)


class StepTimer(L.Callback):
    """Wall time from the start of training step `warmup` to the end of the last step."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.end = warmup, 0.0, 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup:
            sync()
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        sync()
        self.end = time.perf_counter()


def lightning_steps_per_s(make_plan, datamodule: L.LightningDataModule, warmup: int, steps: int, log_dir: Path) -> float:
    """The training plan through `Trainer`, logging every step to CSV, no validation or checkpoints."""
    torch.manual_seed(0)
    timer = StepTimer(warmup)
    trainer = L.Trainer(
        max_steps=warmup + steps, accelerator="auto", devices=1, logger=CSVLogger(log_dir), log_every_n_steps=1,
        limit_val_batches=0, num_sanity_val_steps=0, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[timer],
    )  # fmt: skip
    trainer.fit(make_plan(), datamodule)
    return steps / (timer.end - timer.start)


def loader_batches_per_s(datamodule: L.LightningDataModule, batches: int) -> float:
    """The train loader alone, batches moved to the device as training would."""
    drawn = (batch for _ in itertools.count() for batch in datamodule.train_dataloader())
    to_device(next(drawn))  # first batch: opens files, starts workers
    sync()
    start = time.perf_counter()
    for _ in range(batches):
        to_device(next(drawn))
    sync()
    return batches / (time.perf_counter() - start)


def step_only_per_s(make_plan, datamodule: L.LightningDataModule, warmup: int, steps: int) -> float:
    """Training steps on one batch already on the device: what the model alone can consume."""
    torch.manual_seed(0)
    plan = make_plan().to(device()).train()
    optimiser = plan.configure_optimizers()
    batch = to_device(next(iter(datamodule.train_dataloader())))
    for step in range(warmup + steps):
        if step == warmup:
            sync()
            start = time.perf_counter()
        loss, _, _ = plan.total_loss(batch)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    sync()
    return steps / (time.perf_counter() - start)


# --- backed .h5ad memory -------------------------------------------------------------------------

CELL_TYPES = ("neutrophil", "classical monocyte", "b cell", "erythroblast")


def write_counts(path: Path, cells: int, genes: int, seed: int = 0, chunk: int = 20_000) -> Path:
    """A Tabula-Sapiens-shaped .h5ad of Poisson counts (≈5 % non-zero), written once and reused."""
    if path.is_file():
        return path
    rng = np.random.default_rng(seed)
    blocks = []
    for start in range(0, cells, chunk):
        rows = min(chunk, cells - start)
        block = sp.random(rows, genes, density=0.05, format="csr", random_state=rng, dtype=np.float32)
        block.data = rng.poisson(3.0, size=block.nnz).astype(np.float32) + 1
        blocks.append(block.astype(np.int32))
    obs = pd.DataFrame({"cell_ontology_class": rng.choice(CELL_TYPES, cells)}, index=[f"cell{i}" for i in range(cells)])
    adata = ad.AnnData(X=sp.vstack(blocks, format="csr"), obs=obs, var=pd.DataFrame(index=[f"G{i:05d}" for i in range(genes)]))
    path.parent.mkdir(parents=True, exist_ok=True)
    adata.write_h5ad(path)
    return path


def peak_memory_child(source: str, preprocessor: str, lazy: bool, batches: int, batch_size: int) -> None:
    """Run in a fresh process: set up the RnaDataModule, draw `batches` training batches, print peak RSS."""
    from wbcvae.data.rna_datamodule import RnaDataModule

    baseline = _status_mb("VmRSS")
    datamodule = RnaDataModule(source, batch_size=batch_size, preprocessor=preprocessor, lazy=lazy)
    datamodule.setup("fit")
    for _, _ in zip(range(batches), datamodule.train_dataloader()):
        pass
    print(json.dumps({"baseline_mb": baseline, "peak_mb": _status_mb("VmHWM")}))


def _status_mb(field: str) -> float:
    """A memory field of /proc/self/status in MB. VmHWM, the peak RSS, starts afresh at exec
    (unlike getrusage's ru_maxrss, which a child inherits from the parent that forked it)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status (the memory benchmark needs Linux)")


def peak_memory(source: Path, preprocessor: Path, lazy: bool, batches: int, batch_size: int) -> dict:
    command = [sys.executable, __file__, "--memory-child", str(source), str(preprocessor), str(lazy), str(batches), str(batch_size)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def memory_section(out: Path, small: int, big: int, genes: int, batch_size: int) -> dict:
    from wbcvae.data.rna import read_rna
    from wbcvae.data.rna_preprocess import RnaPreprocessor

    files = {n: write_counts(out / f"counts_{n}.h5ad", n, genes) for n in (small, big)}
    preprocessor = out / "preprocessor.json"
    if not preprocessor.is_file():  # one fitted preprocessing for both, so only the serving is compared
        RnaPreprocessor(n_top_genes=genes, atlas="pca").fit(read_rna(files[small], lazy=True)).save(preprocessor)
    result = {f"lazy_{n}": peak_memory(files[n], preprocessor, True, 20, batch_size) for n in (small, big)}
    result[f"in_memory_{big}"] = peak_memory(files[big], preprocessor, False, 20, batch_size)
    result["ratio_lazy_big_over_small"] = result[f"lazy_{big}"]["peak_mb"] / result[f"lazy_{small}"]["peak_mb"]
    return result


def print_memory_section(args: argparse.Namespace) -> dict:
    small, big = args.cells
    print(f"\n== RNA from a lazy .h5ad: peak memory, {small:,} vs {big:,} cells × {args.genes} genes, batch {args.batch_size}")
    memory = memory_section(args.out, small, big, args.genes, args.batch_size)
    for key in (f"lazy_{small}", f"lazy_{big}", f"in_memory_{big}"):
        m = memory[key]
        print(f"{key:>16}: peak {m['peak_mb']:7.0f} MB  (after imports {m['baseline_mb']:.0f} MB: +{m['peak_mb'] - m['baseline_mb']:.0f} MB)")
    print(f"  lazy {big:,} / lazy {small:,} = {memory['ratio_lazy_big_over_small']:.3f}   (target ≤ 1.20)")
    return memory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", default="demo/world", help="a synthetic world (its rna.h5ad feeds the RNA VAE)")
    parser.add_argument("--store", default="runs/features/world", help="a feature store for the image VAE")
    parser.add_argument("--batch-size", type=int, default=128, help="RNA batch (the study's 128)")
    parser.add_argument("--image-batch-size", type=int, default=32, help="image batch (128 on a GPU)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="bare/Lightning alternations; medians are reported")
    parser.add_argument("--cells", type=int, nargs=2, default=(10_000, 200_000), help="small and large .h5ad")
    parser.add_argument("--genes", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=Path("runs/bench"))
    parser.add_argument("--sections", nargs="+", choices=("rna", "image", "memory"), default=("rna", "image", "memory"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    warmup = 5
    report: dict = {"device": str(device()), "torch_threads": torch.get_num_threads()}

    for name, (make_plan, datamodule, what) in cases(args).items():
        if name not in args.sections:
            continue
        print(f"\n== {name} β-VAE on {what} ({device()})")
        bare, lightning = [], []
        with tempfile.TemporaryDirectory() as logs:
            for _ in range(args.rounds):  # alternate, so drifting machine load hits both alike
                bare.append(bare_steps_per_s(make_plan, datamodule, warmup, args.steps))
                lightning.append(lightning_steps_per_s(make_plan, datamodule, warmup, args.steps, Path(logs)))
        loader = loader_batches_per_s(datamodule, args.steps)
        step = step_only_per_s(make_plan, datamodule, warmup, args.steps)
        row = {
            "data": what,
            "bare_steps_per_s": statistics.median(bare),
            "lightning_steps_per_s": statistics.median(lightning),
            "loader_batches_per_s": loader,
            "step_only_per_s": step,
        }
        row["lightning_over_bare"] = row["lightning_steps_per_s"] / row["bare_steps_per_s"]
        row["loader_over_step"] = loader / step
        report[name] = row
        print(f"bare loop        {row['bare_steps_per_s']:8.2f} steps/s   (rounds: {', '.join(f'{v:.2f}' for v in bare)})")
        print(f"Lightning        {row['lightning_steps_per_s']:8.2f} steps/s   (rounds: {', '.join(f'{v:.2f}' for v in lightning)})")
        print(f"  Lightning / bare = {row['lightning_over_bare']:.3f}   (target ≥ 0.90)")
        print(f"DataModule alone {loader:8.2f} batches/s; step alone {step:.2f} steps/s")
        print(f"  loader / step = {row['loader_over_step']:.1f}×   (target ≥ 5)")

    if "memory" in args.sections:
        report["memory"] = print_memory_section(args)

    (args.out / "bench_training.json").write_text(json.dumps(report, indent=2))
    print(f"\nwritten to {args.out / 'bench_training.json'}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--memory-child":
        source, preprocessor, lazy, batches, batch_size = sys.argv[2:7]
        peak_memory_child(source, preprocessor, lazy == "True", int(batches), int(batch_size))
    else:
        main()
