"""Turn a latent path into what a haematologist looks at: images along the path and gene curves.

Decoders are duck-typed: a VAE with `.render(z)` (the image VAE: the decoded cell in its predicted
mask on grey) or `.decode(z)`, or any callable z → output; when the output is a tuple its last
element is taken. The mean path is decoded once; the GP's posterior samples are decoded too and
summarised as a per-step spread (pixel-wise and per-gene standard deviation; for genes also the band
holding the central 95 % of the samples, which, unlike ±2 sd, never leaves the range a decoder can give,
e.g. below zero expression), so the figures show how sure the path is. Without an image decoder
(a path through an RNA-only latent) only the genes are decoded. Beside the decoded cells, a strip can
show the real image cell nearest the path at each frame (`CellCrops`): what a blurred decoding cannot draw
(a band nucleus, its lobes), the cells the path runs through can.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from PIL import Image, ImageDraw
from torch import Tensor, nn

from wbcvae.report.html import save_figure
from wbcvae.trajectory.gp import Trajectory
from wbcvae.utils.atomic import atomic_path

Decoder = Callable[[Tensor], Tensor]
BAND = (0.025, 0.975)  # the quantiles of the decoded posterior samples the gene figures shade


def as_decoder(model: nn.Module | Callable) -> Decoder:
    """A function z → tensor on the model's device, in eval mode, from a VAE or a plain callable."""
    # `expression`: the RNA VAE's gene curves (normalised expression for a count model)
    fn = getattr(model, "render", None) or getattr(model, "expression", None) or getattr(model, "decode", None) or model
    owner = model if isinstance(model, nn.Module) else getattr(fn, "__self__", None)

    def decode(z: Tensor) -> Tensor:
        with _evaluating(owner), torch.no_grad():
            out = fn(z.to(_device_of(owner)))
        out = out[-1] if isinstance(out, (tuple, list)) else out
        return out.detach().float().cpu()

    return decode


@dataclass
class DecodedPath:
    """Both decoders' view of one trajectory (N steps)."""

    name: str
    t: np.ndarray  # N
    images: Tensor | None  # N×3×H×W, decoded mean path (None without an image decoder)
    strip_steps: np.ndarray  # F indices into the N steps: the frames of the image strip
    image_std: Tensor | None  # F×H×W, pixel spread over posterior samples at `strip_steps` (channel mean)
    genes: np.ndarray  # N×G, decoded mean path
    gene_std: np.ndarray | None  # N×G, spread over posterior samples
    gene_band: np.ndarray | None  # 2×N×G: the samples' `BAND` quantiles
    gene_names: list[str]

    def gene_frame(self) -> pd.DataFrame:
        """The steps × genes expression matrix, indexed by pseudotime."""
        return pd.DataFrame(self.genes, index=pd.Index(np.round(self.t, 6), name="pseudotime"), columns=self.gene_names)


def strip_frame_steps(steps: int, frames: int) -> np.ndarray:
    """The steps of an N-step path that its image strip shows: `frames` of them, evenly spread, both ends included."""
    return np.unique(np.linspace(0, steps - 1, frames).round().astype(int))


def decode_path(
    trajectory: Trajectory,
    image_decoder: Decoder | None,
    gene_decoder: Decoder,
    gene_names: Sequence[str],
    batch_size: int = 64,
    strip_frames: int = 10,
) -> DecodedPath:
    """Decode the mean path and summarise the decoded posterior samples (genes only when `image_decoder` is None).

    Posterior samples are decoded to images only at the `strip_frames` steps the strip shows: every
    step of every sample would cost most of a CPU run's trajectory time for pixels nobody looks at.
    """
    genes = _decode_batched(gene_decoder, trajectory.mean, batch_size)
    if genes.shape[1] != len(gene_names):
        raise ValueError(f"gene decoder returns {genes.shape[1]} genes but {len(gene_names)} gene names were given")
    images = None if image_decoder is None else _decode_batched(image_decoder, trajectory.mean, batch_size).clamp(0, 1)
    strip_steps = strip_frame_steps(len(trajectory.t), strip_frames)
    image_std = gene_std = gene_band = None
    if len(trajectory.samples) > 1:
        # Images: running moments, as every sample's decoded frames at once would take hundreds of MB. Genes are
        # held (S×N×G float32: 16 samples × 100 steps × 2,432 genes is 16 MB) for their quantiles.
        image_moments = _Moments()
        gene_samples = []
        for path in trajectory.samples:
            if image_decoder is not None:
                image_moments.add(_decode_batched(image_decoder, path[strip_steps], batch_size))
            gene_samples.append(_decode_batched(gene_decoder, path, batch_size).float().numpy())
        image_std = None if image_decoder is None else image_moments.std().mean(1)
        gene_samples = np.stack(gene_samples)
        gene_std = gene_samples.std(0, ddof=1, dtype=np.float64).astype(np.float32)
        gene_band = np.quantile(gene_samples, BAND, axis=0)
    return DecodedPath(
        trajectory.name, trajectory.t.numpy(), images, strip_steps, image_std,
        genes.numpy(), gene_std, gene_band, list(gene_names),
    )  # fmt: skip


@dataclass
class CellCrops:
    """Labelled image cells in the joint latent and a reader of their masked crops (on grey), so that a strip
    can show the real cell nearest each of its frames."""

    latent: np.ndarray  # M×D
    classes: np.ndarray  # M class names
    read: Callable[[np.ndarray], Tensor]  # positions in `latent` → K×3×H×W crops in [0, 1]

    def nearest(self, points: np.ndarray) -> tuple[Tensor, list[str]]:
        """The crop and class of the cell nearest (Euclidean) each of `points` (K×D)."""
        distances = ((np.asarray(points)[:, None, :] - self.latent[None, :, :]) ** 2).sum(-1)
        closest = distances.argmin(1)
        return self.read(closest), [str(c) for c in self.classes[closest]]


def save_image_strip(decoded: DecodedPath, path: Path, nearest: tuple[Tensor, list[str]] | None = None) -> Path:
    """PNG: the decoded images at the strip's steps, under them their spread over posterior samples and,
    given `nearest` (`CellCrops.nearest` of the strip's path points), the real cell nearest each one."""
    steps = decoded.strip_steps
    labels = ["decoded", *(["spread (sd)"] if decoded.image_std is not None else []), *(["nearest cell"] if nearest else [])]
    fig = Figure(figsize=(1.3 * len(steps), 1.45 * len(labels) + 0.3))
    axes = fig.subplots(len(labels), len(steps), squeeze=False)
    vmax = float(decoded.image_std.max()) if decoded.image_std is not None else 1.0
    for col, step in enumerate(steps):
        axes[0, col].imshow(decoded.images[step].permute(1, 2, 0).numpy())
        axes[0, col].set_title(f"t={decoded.t[step]:.2f}", fontsize=8)
        if decoded.image_std is not None:
            axes[1, col].imshow(decoded.image_std[col].numpy(), cmap="magma", vmin=0, vmax=max(vmax, 1e-6))
        if nearest:
            crops, classes = nearest
            axes[-1, col].imshow(crops[col].permute(1, 2, 0).numpy())
            axes[-1, col].set_xlabel(classes[col].replace("_", " "), fontsize=7)
    for row, label in enumerate(labels):
        axes[row, 0].set_ylabel(label, fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(decoded.name, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def save_gif(decoded: DecodedPath, path: Path, frame_ms: int = 80) -> Path:
    """Animated GIF of every decoded step, its pseudotime written in the corner."""
    frames = []
    for step, image in enumerate(decoded.images):
        frame = Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
        ImageDraw.Draw(frame).text((3, 2), f"t={decoded.t[step]:.2f}", fill=(0, 0, 0))
        frames.append(frame)
    with atomic_path(path) as tmp:
        frames[0].save(tmp, format="GIF", save_all=True, append_images=frames[1:], duration=frame_ms, loop=0)
    return Path(path)


def save_gene_curves(decoded: DecodedPath, groups: Mapping[str, Sequence[str]], path: Path, dashed: Collection[str] = ()) -> Path:
    """PNG, one panel per group of genes (titled by its key): each decoded curve scaled to its own range (0 at
    its lowest step, 1 at its highest; the central 95 % of the posterior samples shaded on the same scale), so
    when genes of any level fall, peak or rise reads across them at a glance. Genes in `dashed` are drawn dashed."""
    groups = {title: genes for title, genes in groups.items() if len(genes)} or {"no genes to draw": []}
    fig = Figure(figsize=(3.3 * len(groups), 3.2))
    axes = fig.subplots(1, len(groups), squeeze=False, sharey=True)[0]
    for ax, (title, genes) in zip(axes, groups.items()):
        for gene in genes:
            j = decoded.gene_names.index(gene)
            curve = decoded.genes[:, j]
            low, span = curve.min(), np.ptp(curve) or 1.0
            (line,) = ax.plot(decoded.t, (curve - low) / span, ls="--" if gene in dashed else "-", label=gene)
            shade_band(ax, decoded, j, line.get_color(), low, span, alpha=0.1)  # lighter: several bands overlap
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("pseudotime")
        if genes:
            ax.legend(fontsize=6)
    axes[0].set_ylabel("decoded expression, scaled to its range")
    fig.suptitle(decoded.name, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def shade_band(ax, decoded: DecodedPath, gene: int, colour: str, low: float = 0.0, span: float = 1.0, alpha: float = 0.2) -> None:
    """Shade where the central 95 % of a gene's decoded posterior samples lie, as (value − `low`) / `span`
    (nothing without samples)."""
    if decoded.gene_band is not None:
        bottom, top = (decoded.gene_band[:, :, gene] - low) / span
        ax.fill_between(decoded.t, bottom, top, color=colour, alpha=alpha)


def _decode_batched(decoder: Decoder, z: Tensor, batch_size: int) -> Tensor:
    return torch.cat([decoder(chunk) for chunk in z.split(batch_size)])


class _Moments:
    """Running mean and variance (Welford) of equally shaped tensors."""

    def __init__(self) -> None:
        self.n, self.mean, self.m2 = 0, None, None

    def add(self, x: Tensor) -> None:
        x = x.double()
        self.n += 1
        if self.mean is None:
            self.mean, self.m2 = x.clone(), torch.zeros_like(x)
            return
        delta = x - self.mean
        self.mean += delta / self.n
        self.m2 += delta * (x - self.mean)

    def std(self) -> Tensor:
        return (self.m2 / max(self.n - 1, 1)).sqrt().float()


def _device_of(module: nn.Module | None) -> torch.device:
    if isinstance(module, nn.Module):
        for tensor in module.parameters():
            return tensor.device
    return torch.device("cpu")


@contextlib.contextmanager
def _evaluating(module: nn.Module | None) -> Iterator[None]:
    """Eval mode while decoding (no dropout, frozen batch-norm statistics), then back as it was."""
    if not isinstance(module, nn.Module):
        yield
        return
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)
