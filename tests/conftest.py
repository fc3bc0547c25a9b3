"""Shared fixtures: where the real data lives, and small CPU-friendly defaults."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from threadpoolctl import threadpool_limits

# One BLAS thread: tiny test matrices gain nothing from more, and on a loaded 2-core machine an
# oversubscribed eigendecomposition is ~100x slower (300x300: 2.2 s with 2 threads, 0.03 s with 1).
threadpool_limits(1, user_api="blas")
# Likewise one torch thread: on a shared 2-core box a Mask R-CNN step took 18 s with two threads, 2.9 s with one.
torch.set_num_threads(1)



@pytest.fixture(autouse=True)
def _one_torch_thread_in_every_test():
    """Put the thread count back after each test: Lightning's launcher sets it to CPUs ÷ processes when
    a trainer first fits (2 here), and convolutions on another thread count round differently, which
    broke a later test's byte-for-byte comparison with a one-thread subprocess."""
    yield
    torch.set_num_threads(1)


REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO / ".." / "shared" / "data").resolve()


def _shared(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"real data {path} is absent (it sits beside the repo as ../shared/data in the team's checkouts)")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`<repo>/../shared/data`, or skip when a user's clone has no shared data beside it."""
    return _shared(".")


@pytest.fixture(scope="session")
def pbc_sample() -> Path:
    return _shared("pbc_sample")


@pytest.fixture(scope="session")
def vangalen() -> Path:
    return _shared("vangalen2019")
