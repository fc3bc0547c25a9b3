"""Reading checkpoints: the one door through which every checkpoint the package uses comes in.

A checkpoint is a pickle, and unpickling can run code. Every read here is `torch.load(weights_only=True)`:
only tensors, numbers, strings and plain containers come back, and a file that carries any other Python
object is refused with one line naming it. The file's kind is then checked (a β-VAE checkpoint given where a
Mask R-CNN one is expected is named as such), and the classes to rebuild are chosen from a fixed table,
never imported by a name written in the file.
"""

from __future__ import annotations

import json
import os
import pickle
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from wbcvae.errors import InputError, one_line

T = TypeVar("T", bound=torch.nn.Module)

if TYPE_CHECKING:
    from wbcvae.training.plan import VAEPlan

# kind → what the user calls it and which command writes it
KINDS = {
    "image": ("an image β-VAE", "wbcvae train image"),
    "rna": ("an RNA β-VAE", "wbcvae train rna"),
    "alignment": ("a joint alignment", "wbcvae align"),
    "maskrcnn": ("a Mask R-CNN", "wbcvae segment train"),
}
ALIGNMENT_KEY = "wbcvae_alignment"  # the record `JointAlignmentModule` writes
MASKRCNN_KEY = "wbcvae_init"  # the record `MaskRCNNModule` writes (how its weights were initialised)


def checkpoint_kind(checkpoint: object) -> str | None:
    """Which of `KINDS` a loaded checkpoint is, from the record its writer left; None for anything else."""
    if not isinstance(checkpoint, dict):
        return None
    if ALIGNMENT_KEY in checkpoint:
        return "alignment"
    if MASKRCNN_KEY in checkpoint:
        return "maskrcnn"
    record = checkpoint.get("wbcvae")
    kind = record.get("kind") if isinstance(record, dict) else None
    return kind if kind in ("image", "rna") else None


def read_checkpoint(path: str | os.PathLike, *kinds: str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The checkpoint at `path`, read safely, checked to be one of `kinds` (keys of `KINDS`)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such checkpoint")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL (\S+)", str(err))  # the class or function the file would have called
        if found or "add_safe_globals" in str(err):
            what = f" ({found.group(1)})" if found else ""
            raise InputError(
                f"{path}: refusing to load: it carries pickled Python objects{what}; only plain tensors, numbers, "
                "strings and containers are loaded (use a checkpoint written by wbcvae, or re-save its tensors)"
            ) from None
        raise InputError(f"{path}: not a readable checkpoint ({one_line(err)[:200]})") from None
    except Exception as err:  # not a zip, truncated, a text file: all mean the same to the user
        raise InputError(f"{path}: not a readable checkpoint ({one_line(err)[:200]})") from None
    found = checkpoint_kind(checkpoint)
    if found not in kinds:
        wanted = " or ".join(f"{KINDS[k][0]} checkpoint (from `{KINDS[k][1]}`)" for k in kinds)
        actual = f"{KINDS[found][0]} checkpoint" if found else "not a wbcvae checkpoint"
        raise InputError(f"{path}: {actual}; expected {wanted}")
    return checkpoint


def read_state_dict(path: str | os.PathLike, what: str = "weights file") -> dict[str, torch.Tensor]:
    """The tensors of a local `.pth` state dict (a bare one, or under "state_dict"), read safely."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} {path} does not exist (nothing is downloaded: give a local .pth)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the user's input problem
        raise InputError(f"{path}: not a readable torch state dict ({type(err).__name__})") from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict) or not state:
        raise InputError(f"{path}: expected a state dict of tensors")
    return state


def load_plan(
    ckpt: str | os.PathLike, map_location: str | torch.device = "cpu", kind: str | None = None
) -> tuple[VAEPlan, dict]:
    """The β-VAE training plan saved in `ckpt` (image or RNA, or only `kind`) and its `wbcvae` record
    (with the checkpoint's epoch and global step)."""
    from wbcvae.training.image_plan import ImageVAEPlan
    from wbcvae.training.rna_plan import RnaVAEPlan

    plans = {"image": ImageVAEPlan, "rna": RnaVAEPlan}
    checkpoint = read_checkpoint(ckpt, *([kind] if kind else plans), map_location=map_location)
    record = checkpoint["wbcvae"]
    plan = rebuild(ckpt, lambda: plans[record["kind"]](**saved_hparams(checkpoint)), checkpoint["state_dict"])
    record = {**record, "epoch": checkpoint.get("epoch"), "global_step": checkpoint.get("global_step")}
    return plan.to(map_location), record


def kept_genes(record: dict) -> list[str]:
    """The genes an RNA β-VAE's preprocessor kept, in its input order, from its `wbcvae` record (`load_plan`)."""
    return json.loads(record["preprocessor"]["json"])["genes"]


def saved_hparams(checkpoint: dict) -> dict:
    """The init arguments a Lightning checkpoint saved (private ones left out)."""
    return {k: v for k, v in checkpoint.get("hyper_parameters", {}).items() if not k.startswith("_")}


def rebuild(ckpt: str | os.PathLike, build: Callable[[], T], state_dict: dict, what: str = "models") -> T:
    """`build()` a module and load `state_dict` into it. A checkpoint written by a version whose models
    had other arguments or layers becomes one line naming `ckpt`."""
    try:
        module = build()
        module.load_state_dict(state_dict)
    except (TypeError, RuntimeError, KeyError) as err:
        raise InputError(f"{ckpt}: its weights do not fit this version's {what} ({one_line(err)[:240]})") from None
    return module
