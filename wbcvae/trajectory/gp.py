"""A Gaussian process from pseudotime to the 50-d latent: the differentiation path and its uncertainty.

Anchors are (pseudotime, latent) pairs: the start class at t = 0, the end class at t = 1 and, when
asked, intermediate stages evenly in between. An anchor is either a class centroid (the path then
passes through it: the noise is fixed tiny) or a sample of cells of that class (the noise is learnt,
so the path runs through the class' middle and the variance reflects its spread).

The GP is a batch of independent GPs, one per latent dimension, sharing one RBF lengthscale (a
coherent speed along the path) with a scale per dimension. It works on CPU in float64: a few hundred
points at most, where float32 Cholesky factorisations are fragile.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

with warnings.catch_warnings():  # linear_operator decorates with torch.jit.script, deprecated in this torch
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)
    import gpytorch

from wbcvae.errors import InputError

ANCHOR_MODES = ("centroid", "cells")
CENTROID_NOISE = 1e-5  # in standardised units: the path interpolates its anchors
# The shortest RBF lengthscale, in path pseudotime (0 … 1). A data path puts a tenth of its waypoints in each
# DPT quantile, so a large start class (half the cells of myeloblast → monocyte) holds several, scattered
# inside a cloud whose order the latent does not resolve; at 0.15 the GP follows that scatter and the path
# dawdles there (demo monocytopoiesis: pseudotime Spearman 0.988; 0.996 at 0.25, other figures alike, README).
MIN_LENGTHSCALE = 0.25
MAX_LENGTHSCALE = 2.0  # longer and the path ignores its waypoints


@dataclass
class Anchors:
    """Points the path is fitted through: pseudotime `t` (n), latent `z` (n×D), stage of each."""

    t: Tensor
    z: Tensor
    stages: list[str]
    mode: str = "centroid"  # or "cells" (learnt noise) or "quantiles" (centroids of pseudotime quantiles)
    scatter: Tensor | None = None  # n×D: variance of the cells each centroid stands for (None for "cells")


def class_anchors(
    latent: Tensor | np.ndarray,
    classes: Sequence[str],
    stages: Sequence[str],
    mode: str = "centroid",
    cells_per_stage: int = 32,
    seed: int = 0,
) -> Anchors:
    """Anchors for `stages` (start, …, end at t = 0 … 1, evenly spaced) from labelled latents."""
    if mode not in ANCHOR_MODES:
        raise InputError(f"anchor mode must be one of {ANCHOR_MODES}, got {mode!r}")
    if len(stages) < 2:
        raise InputError(f"a trajectory needs a start and an end stage, got {list(stages)}")
    latent = torch.as_tensor(np.asarray(latent), dtype=torch.float64)
    classes = np.asarray(classes, dtype=object)
    rng = np.random.default_rng(seed)
    ts, zs, scatters, names = [], [], [], []
    for i, stage in enumerate(stages):
        members = np.flatnonzero(classes == stage)
        if len(members) == 0:
            present = sorted(set(classes.tolist()))
            raise InputError(f"no cells of class {stage!r} to anchor the trajectory; classes present: {present}")
        if mode == "centroid":
            points = latent[members].mean(0, keepdim=True)
            scatters.append(latent[members].var(0, unbiased=False, keepdim=True))
        else:
            chosen = rng.choice(members, size=min(cells_per_stage, len(members)), replace=False)
            points = latent[np.sort(chosen)]
        ts.append(torch.full((len(points),), i / (len(stages) - 1), dtype=torch.float64))
        zs.append(points)
        names += [stage] * len(points)
    return Anchors(torch.cat(ts), torch.cat(zs), names, mode, torch.cat(scatters) if scatters else None)


@dataclass
class Trajectory:
    """The GP's prediction on a grid of pseudotimes: mean, variance and posterior samples (S×N×D)."""

    name: str
    t: Tensor  # N
    mean: Tensor  # N×D
    variance: Tensor  # N×D
    samples: Tensor  # S×N×D (S may be 0): posterior paths plus the cells' scatter around them
    anchors: Anchors


class _BatchPathGP(gpytorch.models.ExactGP):
    """One GP per latent dimension (a batch of D), one shared lengthscale, a scale per dimension."""

    def __init__(self, t: Tensor, y: Tensor, likelihood: gpytorch.likelihoods.Likelihood, lengthscale_bounds: tuple):
        super().__init__(t, y, likelihood)
        dims = torch.Size([y.shape[0]])
        self.mean_module = gpytorch.means.ConstantMean(batch_shape=dims)
        rbf = gpytorch.kernels.RBFKernel(lengthscale_constraint=gpytorch.constraints.Interval(*lengthscale_bounds))
        self.covar_module = gpytorch.kernels.ScaleKernel(rbf, batch_shape=dims)

    def forward(self, t: Tensor) -> gpytorch.distributions.MultivariateNormal:
        return gpytorch.distributions.MultivariateNormal(self.mean_module(t), self.covar_module(t))


class LatentPathGP:
    """Exact GP pseudotime → latent, fitted to `anchors` by maximising the marginal likelihood.

    `lengthscale_bounds` (in pseudotime units, the path spans [0, 1]) keep the path from collapsing
    onto its anchors (too short) or ignoring the waypoints (too long).
    """

    def __init__(
        self,
        anchors: Anchors,
        fit_iters: int = 100,
        learning_rate: float = 0.1,
        lengthscale_bounds: tuple[float, float] = (MIN_LENGTHSCALE, MAX_LENGTHSCALE),
    ):
        self.anchors = anchors
        z = anchors.z.double()
        self.dims = z.shape[1]
        self.offset = z.mean(0)
        self.scale = z.std().clamp(min=1e-6) if len(z) > 1 else torch.tensor(1.0, dtype=torch.float64)
        y = ((z - self.offset) / self.scale).T.contiguous()  # D×n: one GP per row
        t = self._batched(anchors.t)
        noise_constraint = gpytorch.constraints.GreaterThan(CENTROID_NOISE / 10)
        self.likelihood = gpytorch.likelihoods.GaussianLikelihood(noise_constraint=noise_constraint).double()
        self.model = _BatchPathGP(t, y, self.likelihood, lengthscale_bounds).double()
        self.model.covar_module.base_kernel.lengthscale = 0.5
        if anchors.mode == "centroid":  # class centroids: interpolated (quantiles and cells: noise learnt)
            self.likelihood.noise = CENTROID_NOISE
            self.likelihood.raw_noise.requires_grad_(False)
        else:
            self.likelihood.noise = 0.1
        self._fit(t, y, fit_iters, learning_rate)

    def _batched(self, t: Tensor) -> Tensor:
        """Pseudotimes as the D×N×1 input of the batch GP."""
        return torch.as_tensor(t, dtype=torch.float64).reshape(1, -1, 1).expand(self.dims, -1, 1)

    def _fit(self, t: Tensor, y: Tensor, iters: int, learning_rate: float) -> None:
        self.model.train()
        self.likelihood.train()
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimiser = torch.optim.Adam(params, lr=learning_rate)
        mll = gpytorch.mlls.ExactMarginalLogLikelihood(self.likelihood, self.model)
        with torch.enable_grad(), _quiet_numerics(), _one_torch_thread():
            for _ in range(iters):
                optimiser.zero_grad()
                loss = -mll(self.model(t), y).sum()
                loss.backward()
                optimiser.step()
        self.model.eval()
        self.likelihood.eval()

    @property
    def lengthscale(self) -> float:
        return float(self.model.covar_module.base_kernel.lengthscale.item())

    def predict(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """Predictive mean and variance of the noise-free latent path (N×D each) at pseudotimes `t`."""
        with torch.no_grad(), _quiet_numerics():
            post = self.model(self._batched(t))
            mean = post.mean.T * self.scale + self.offset
            variance = post.variance.T.clamp(min=0) * self.scale**2
        return mean.float(), variance.float()

    def sample(self, t: Tensor, num_samples: int, seed: int = 0) -> Tensor:
        """Paths drawn from the posterior (S×N×D): what the decoders turn into an uncertainty band."""
        if num_samples == 0:
            return torch.zeros(0, len(t), self.dims)
        generator = torch.random.get_rng_state()
        torch.manual_seed(seed)
        try:
            with torch.no_grad(), _quiet_numerics():
                draws = self.model(self._batched(t)).rsample(torch.Size([num_samples]))  # S×D×N
        finally:
            torch.random.set_rng_state(generator)
        return (draws.transpose(1, 2) * self.scale + self.offset).float()

    def cell_scatter(self, t: Tensor) -> Tensor:
        """Variance (N×D) of the cells around the path at pseudotimes `t`: the anchors' scatter
        interpolated between them, or the learnt noise when the GP was fitted to cells."""
        if self.anchors.scatter is None:
            return (self.likelihood.noise.detach() * self.scale**2).expand(len(t), self.dims).clone()
        order = torch.argsort(self.anchors.t)
        at, scatter = self.anchors.t[order].numpy(), self.anchors.scatter[order].double().numpy()
        columns = [np.interp(np.asarray(t, dtype=np.float64), at, scatter[:, j]) for j in range(self.dims)]
        return torch.as_tensor(np.stack(columns, axis=1))

    def trajectory(self, steps: int = 100, num_samples: int = 16, seed: int = 0, name: str = "") -> Trajectory:
        """Mean, variance and samples on `steps` evenly spaced pseudotimes from 0 to 1.

        The samples are cells drawn along the path: a posterior path plus, at each step, the cells'
        scatter around it (`cell_scatter`). Decoded, their spread says how much a gene varies among
        cells at one pseudotime, the yardstick for calling its change along the path real.
        """
        if steps < 2:
            raise InputError(f"a trajectory needs at least 2 steps, got {steps}")
        t = torch.linspace(0, 1, steps, dtype=torch.float64)
        mean, variance = self.predict(t)
        paths = self.sample(t, num_samples, seed)
        generator = torch.Generator().manual_seed(seed + 1)
        scatter = torch.randn(paths.shape, generator=generator, dtype=torch.float64) * self.cell_scatter(t).sqrt()
        return Trajectory(name, t.float(), mean, variance, (paths + scatter).float(), self.anchors)



@contextlib.contextmanager
def _one_torch_thread() -> Iterator[None]:
    """Matrices of a few hundred rows: threads only add overhead (and crawl on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@contextlib.contextmanager
def _quiet_numerics() -> Iterator[None]:
    """Silence gpytorch's jitter notes and its 'input matches the training data' hint (we predict at anchors)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gpytorch.utils.warnings.NumericalWarning)
        warnings.simplefilter("ignore", gpytorch.utils.warnings.GPInputWarning)
        yield
