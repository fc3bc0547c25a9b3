"""requirements.lock: every dependency pinned, within pyproject.toml's ranges, and what is installed."""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]


def _lock() -> dict[str, str]:
    lines = [line.strip() for line in (REPO / "requirements.lock").read_text().splitlines()]
    pins = [line.split("==") for line in lines if line and not line.startswith("#")]
    assert all(len(pin) == 2 for pin in pins), "every line of requirements.lock is `name==version`"
    return {canonicalize_name(name): version for name, version in pins}


def test_every_dependency_is_pinned_within_its_range():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    lock = _lock()
    for line in project["dependencies"] + project["optional-dependencies"]["dev"]:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        assert name in lock, f"{requirement.name} is not in requirements.lock: run `make lock`"
        assert requirement.specifier.contains(lock[name], prereleases=True), f"{requirement.name}=={lock[name]} is outside {line!r}"


def test_installed_versions_are_the_locked_ones():
    """What `make setup` installed is what the lock says (after an upgrade on purpose: `make test`, then `make lock`)."""
    differ = {}
    for name, locked in _lock().items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:  # a dependency only another platform needs
            continue
        if installed != locked:
            differ[name] = f"{installed} installed, {locked} locked"
    assert differ == {}
