"""Shared fixtures: where the real data lives, and small CPU-friendly defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

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
