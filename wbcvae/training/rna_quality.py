"""How well an RNA β-VAE reconstructs held-out cells, on a scale fair to every likelihood and yardstick.

What both likelihoods finally report is the log-normalised expression log1p(10⁴ · counts / library) of the kept
genes; every reconstruction is scored on it, for the held-out cells of the checkpoint's own rebuilt DataModule (the
test split, else the validation split), beside PCA-50 of the training cells and their mean:
- *MSE* of the reconstruction: "nb" the expected log-normalised expression of counts drawn from its
  NB(library · ρ, θ) (the best guess of a log value: log1p(10⁴ · ρ), the log of the expected count, sits above it by
  Jensen's gap), "mse" the decoded scaled expression mapped back through the preprocessing's per-gene range;
- *NB log-likelihood* of the held-out counts per cell and gene: the count model with its own μ = library · ρ and θ;
  every other reconstruction turned into counts the same way, μ = library · expm1(reconstruction) / 10⁴ (at least
  10⁻³), with each gene's θ fitted to the training cells by moments. Higher is better;
- *MSE on held-out molecules* (molecular cross-validation, Batson, Royer & Webber 2019): each held-out cell's counts
  are split at random into two halves, A and B, two independent draws of the same cell. Every reconstruction sees A
  and is scored against B's log-normalised expression ("nb": the expected value under NB(library_B · ρ, θ); "mse":
  its decoded log values, at the training depth, having no depth to adjust; PCA-50 and the mean fitted to the
  training cells' A halves, at the depth they reconstruct). The plain MSE lets a code score by copying its input's
  sampling noise: PCA-50 keeps each held-out cell's noise along its 50 axes, which the truth then shares. Here that
  noise is B's own, so the measure scores what a trajectory decodes, the cell's expression.

On a synthetic world (a `ground_truth.json` beside the data) the world's own expression is scored beside them
(`TruthYardstick`): the best prediction of a cell's expression there is, so it tests each measure.
`bench/rna_quality.py` prints these for checkpoints, with scvi-tools' SCVI beside them on request.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
import torch

from wbcvae.checkpoints import load_plan
from wbcvae.errors import InputError
from wbcvae.models.rna_vae import TARGET_SUM, negative_binomial_log_prob
from wbcvae.training.embed import rebuild_datamodule
from wbcvae.training.metrics import held_out_dataloader
from wbcvae.training.yardsticks import fit_pca, mse

MIN_MEAN = 1e-3  # floor of a yardstick's expected count: log(0) would make one zero-mean gene decide the score
MAX_COUNT = 256  # counts summed over for an expected log value; beyond, the plug-in log1p(10⁴ · μ / library)
FIRST_COUNTS = 32  # the counts summed over first: all the mass of most values' distribution
MEASURES = ("log_expression_mse", "held_out_molecules_mse", "nb_log_likelihood")


class Yardstick(Protocol):
    """A reconstruction scored beside the model from `collect`'s held-out cells alone (SCVI, the truth)."""

    def scores(self, test: dict, split_seed: int) -> dict[str, float]: ...


def log_normalised(counts: np.ndarray, library: np.ndarray) -> np.ndarray:
    return np.log1p(TARGET_SUM * counts / np.maximum(library, 1))


@torch.no_grad()
def collect(plan, preprocessor, loader, device: str, max_cells: int, held_out: bool) -> dict[str, np.ndarray]:
    """Per cell: counts, library, log-normalised truth and the model's reconstruction on that scale
    (a count model's only for `held_out` cells: the training cells need none)."""
    parts, cells = defaultdict(list), 0
    for batch in loader:
        out = plan.vae(batch["x"].to(device))
        if plan.vae.likelihood == "mse" or held_out:
            parts["recon"].append(model_log_expression(plan.vae, preprocessor, out, batch["library"]))
        counts, library = batch["counts"].numpy(), batch["library"].numpy()
        parts["counts"].append(counts)
        parts["library"].append(library)
        parts["truth"].append(log_normalised(counts, library))
        parts["index"].append(batch["index"].numpy())
        if "rho" in out:
            parts["mean"].append(library * out["rho"].cpu().numpy())
        cells += len(counts)
        if cells >= max_cells:
            break
    return {name: np.concatenate(values) for name, values in parts.items()}


def model_log_expression(vae, preprocessor, out: dict, library: torch.Tensor | np.ndarray) -> np.ndarray:
    """The model's reconstruction (`out`, its forward pass) on the log-normalised scale: a count model's expected
    value at `library` (cells × 1), the MSE model's decoded values mapped back through the preprocessing's range."""
    if vae.likelihood == "mse":
        return out["x_hat"].cpu().numpy() * preprocessor.gene_span + preprocessor.gene_min
    library = torch.as_tensor(library, dtype=out["rho"].dtype, device=out["rho"].device)
    return expected_log_expression(library * out["rho"], out["theta"], library).cpu().numpy()


def molecular_split(counts: np.ndarray, library: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Halves A and B of each cell's molecules (binomial thinning at ½) and their libraries: the kept genes'
    share as drawn, the other genes' (not at hand) half each."""
    counts = np.rint(counts).astype(np.int64)
    half_a = rng.binomial(counts, 0.5)
    library_a = (library - counts.sum(1, keepdims=True)) / 2 + half_a.sum(1, keepdims=True)
    return half_a.astype(np.float32), (counts - half_a).astype(np.float32), library_a, library - library_a


def held_out_halves(test: dict, seed: int) -> tuple[np.ndarray, ...]:
    """`molecular_split` of `collect`'s held-out cells, seeded apart from the training cells' split: every model
    scored on held-out molecules (ours, SCVI) sees the same halves, whatever the training order."""
    return molecular_split(test["counts"], test["library"], np.random.default_rng([seed, 1]))


@torch.no_grad()
def molecular_cross_validation(plan, preprocessor, train: dict, test: dict, device: str, seed: int) -> dict[str, float]:
    """Log-expression MSE on held-out molecules (see the module's docstring) of `collect`'s held-out cells,
    yardsticks fitted to its training cells: model, PCA-50 and mean."""
    train_a, _, train_library_a, _ = molecular_split(train["counts"], train["library"], np.random.default_rng([seed, 0]))
    train_halves = log_normalised(train_a, train_library_a)
    pca = fit_pca(train_halves)
    half_a, half_b, library_a, library_b = held_out_halves(test, seed)
    out = plan.vae(torch.from_numpy(preprocessor.scaled_expression(half_a, library_a)).to(device))
    model = model_log_expression(plan.vae, preprocessor, out, library_b)
    log_a, truth = log_normalised(half_a, library_a), log_normalised(half_b, library_b)
    yardsticks = {"model": model, "pca50": pca.inverse_transform(pca.transform(log_a)), "training_mean": train_halves.mean(0)}
    return {name: mse(np.broadcast_to(recon, truth.shape), truth) for name, recon in yardsticks.items()}


def expected_log_expression(mean: torch.Tensor, theta: torch.Tensor, library: torch.Tensor) -> torch.Tensor:
    """E[log1p(10⁴ · X / library)] for X ~ NB(mean, θ) (mean: cells × genes, θ: genes, library: cells × 1), summed
    over X < MAX_COUNT; where that misses more than 0.1 % of the mass (large means, where Jensen's gap is small) the
    plug-in value instead. Most values are small counts: each is first summed over X < FIRST_COUNTS, and only those
    whose mass that leaves short by more than 10⁻⁷ over X < MAX_COUNT."""
    theta, library = theta.expand_as(mean).reshape(-1), library.expand_as(mean).reshape(-1)
    expected, mass = _summed_log_expression(mean.reshape(-1), theta, library, FIRST_COUNTS)
    rest = torch.nonzero(mass < 1 - 1e-7).squeeze(1)
    if len(rest):
        wide, wide_mass = _summed_log_expression(mean.reshape(-1)[rest], theta[rest], library[rest], MAX_COUNT)
        plug_in = torch.log1p(TARGET_SUM * mean.reshape(-1)[rest] / library[rest])
        expected[rest] = torch.where(wide_mass > 0.999, wide, plug_in)
    return expected.reshape(mean.shape)


def _summed_log_expression(mean: torch.Tensor, theta: torch.Tensor, library: torch.Tensor, counts: int) -> tuple[torch.Tensor, ...]:
    """Σ_{x < counts} P(x) · log1p(10⁴ · x / library) and Σ P(x), for flat vectors of NB means, θs and libraries;
    in blocks of at most 2¹⁹ terms."""
    x = torch.arange(counts, dtype=mean.dtype, device=mean.device)
    expected, mass = torch.empty_like(mean), torch.empty_like(mean)
    for block in torch.arange(len(mean), device=mean.device).split(max(1, 2**19 // counts)):
        probability = negative_binomial_log_prob(x, mean[block, None], theta[block, None]).exp()
        expected[block] = (probability * torch.log1p(TARGET_SUM * x / library[block, None])).sum(-1)
        mass[block] = probability.sum(-1)
    return expected, mass


def expected_counts(log_expression: np.ndarray, library: np.ndarray) -> np.ndarray:
    return np.maximum(library * np.expm1(log_expression) / TARGET_SUM, MIN_MEAN)


def moment_theta(counts: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Each gene's inverse dispersion by moments, var = μ + μ²/θ, given per-cell means (clipped to [10⁻³, 10⁴])."""
    excess = ((counts - mean) ** 2 - mean).sum(0)
    return np.clip((mean**2).sum(0) / np.maximum(excess, 1e-12), 1e-3, 1e4)


def nb_log_likelihood(counts: np.ndarray, mean: np.ndarray, theta: np.ndarray) -> float:
    return float(_nb_log_prob(counts, mean, theta).mean())


def _nb_log_prob(counts: np.ndarray, mean: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """`negative_binomial_log_prob` of numpy arrays, element-wise, in float64."""
    return negative_binomial_log_prob(*(torch.as_tensor(a, dtype=torch.float64) for a in (counts, mean, theta))).numpy()


class TruthYardstick:
    """A synthetic world's own expression (`rna_truth`): each held-out cell's expected log-normalised expression
    under the zero-inflated negative binomial its counts were drawn from, at its observed library. No model can
    predict a cell's expression better; a yardstick that scores better copies the cell's sampling noise."""

    def __init__(self, world: Path, genes: list[str]) -> None:
        from wbcvae.data.synthetic.world import rna_truth

        truth = rna_truth(world)
        self.columns = pd.Index(truth.genes).get_indexer(genes)
        self.truth = truth

    def scores(self, test: dict, split_seed: int) -> dict[str, float]:
        """The three measures for `collect`'s held-out cells (rows of rna.h5ad at `test["index"]`); the likelihood is
        the zero-inflated one. On held-out molecules, the truth of half B: binomial thinning keeps an NB an NB, its
        mean halved, and a dropped-out zero stays zero."""
        rows = np.ix_(test["index"], self.columns)
        mean, dropout, theta = self.truth.mean[rows], self.truth.dropout[rows], self.truth.dispersion[self.columns]
        _, half_b, _, library_b = held_out_halves(test, split_seed)

        def expected(depth: float, library: np.ndarray) -> np.ndarray:  # E[log1p(10⁴ · X / library)], X the thinned draw
            values = expected_log_expression(*(torch.as_tensor(a, dtype=torch.float64) for a in (mean * depth, theta, library)))
            return (1 - dropout) * values.numpy()

        likelihood = (1 - dropout) * np.exp(_nb_log_prob(test["counts"], mean, theta)) + dropout * (test["counts"] == 0)
        return {
            "log_expression_mse": mse(expected(1.0, test["library"]), test["truth"]),
            "held_out_molecules_mse": mse(expected(0.5, library_b), log_normalised(half_b, library_b)),
            "nb_log_likelihood": float(np.log(likelihood).mean()),
        }


def truth_of(source: str | None, genes: list[str]) -> TruthYardstick | None:
    """The truth of a synthetic world when `source` is one (its folder or its rna.h5ad); None for any other data,
    and, with a warning, for a world whose counts this version cannot draw again (the other measures still stand)."""
    if source is None:
        return None
    world = Path(source) if Path(source).is_dir() else Path(source).parent
    if not (world / "ground_truth.json").is_file() or not (Path(source).is_dir() or Path(source).name == "rna.h5ad"):
        return None
    try:
        return TruthYardstick(world, genes)
    except InputError as err:
        warnings.warn(f"no truth beside the RNA reconstruction: {err}", stacklevel=2)
        return None


def held_out_reconstruction(
    ckpt: str | Path,
    device: str = "cpu",
    max_cells: int = 5000,
    split_seed: int = 0,
    anchors: Mapping[str, Callable[[dict], Yardstick]] | None = None,
) -> dict:
    """The three measures (`MEASURES`) of an RNA β-VAE checkpoint and its yardsticks (PCA-50, the training mean, on a
    synthetic world the truth) on its held-out cells, at most `max_cells` per split. `anchors`: name → a function of
    the training cells (`collect`'s dict) that returns another `Yardstick` to score beside them (the bench's SCVI)."""
    plan, record = load_plan(ckpt, map_location=device)
    plan.eval()
    datamodule = rebuild_datamodule(record)
    datamodule.setup("fit")
    preprocessor = datamodule.preprocessor
    train = collect(plan, preprocessor, datamodule.train_dataloader(), device, max_cells, held_out=False)
    loader, held_out = held_out_dataloader(datamodule)
    test = collect(plan, preprocessor, loader, device, max_cells, held_out=True)
    pca = fit_pca(train["truth"])
    yardsticks = {  # name → (train reconstruction, held-out reconstruction), log-normalised
        "pca50": (pca.inverse_transform(pca.transform(train["truth"])), pca.inverse_transform(pca.transform(test["truth"]))),
        "training_mean": (np.broadcast_to(train["truth"].mean(0), train["truth"].shape), np.broadcast_to(train["truth"].mean(0), test["truth"].shape)),
        "model": (train.get("recon"), test["recon"]),
    }  # fmt: skip
    log_mse = {name: mse(recon, test["truth"]) for name, (_, recon) in yardsticks.items()}
    nb_ll = {}
    for name, (train_recon, recon) in yardsticks.items():
        if name == "model" and plan.vae.likelihood == "nb":
            nb_ll[name] = nb_log_likelihood(test["counts"], test["mean"], plan.vae.log_theta.detach().exp().cpu().numpy())
            continue
        theta = moment_theta(train["counts"], expected_counts(train_recon, train["library"]))
        nb_ll[name] = nb_log_likelihood(test["counts"], expected_counts(recon, test["library"]), theta)
    held_out_molecules = molecular_cross_validation(plan, preprocessor, train, test, device, split_seed)
    others = {name: make(train) for name, make in (anchors or {}).items()}
    truth = truth_of(record["data"].get("source"), preprocessor.genes)
    if truth is not None:
        others["truth"] = truth
    for name, other in others.items():
        scores = other.scores(test, split_seed)
        log_mse[name], held_out_molecules[name], nb_ll[name] = (scores[measure] for measure in MEASURES)
    return {
        "checkpoint": str(ckpt),
        "data": record["data"].get("source"),
        "likelihood": plan.vae.likelihood,
        "hidden": list(plan.hparams.hidden),
        "epochs": record.get("epoch"),
        "held_out": held_out,
        "train_cells": len(train["truth"]),
        "held_out_cells": len(test["truth"]),
        "genes": train["truth"].shape[1],
        "log_expression_mse": log_mse,
        "nb_log_likelihood": nb_ll,
        "held_out_molecules_mse": held_out_molecules,
    }
