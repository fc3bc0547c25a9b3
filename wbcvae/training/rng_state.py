"""Random-number state in checkpoints, so that a run resumed from `last.ckpt` draws the same shuffles and
noise as the run that was never interrupted (Lightning saves weights, optimiser and loop counters, not RNG).
"""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch


class RandomStateInCheckpoint(L.Callback):
    """Saves the Python, NumPy, torch (and CUDA) generators with every checkpoint and puts them back on
    resume. Stored as plain tensors, ints and lists, so the checkpoint still loads with `weights_only`."""

    def state_dict(self) -> dict[str, Any]:
        name, keys, position, has_gauss, cached = np.random.get_state()
        state = {
            "python": random.getstate(),
            "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(cached)],
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        random.setstate(state["python"])
        name, keys, position, has_gauss, cached = state["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached))
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
