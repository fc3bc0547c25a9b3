"""YAML run configs with `section.key=value` overrides, shared by `wbcvae segment` and `wbcvae pipeline`."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from wbcvae.errors import InputError, one_line


def resolve_config(path: str | os.PathLike) -> Path:
    """`path` as given when it exists (or is absolute); else the same relative path under the package or
    the checkout it is installed from, so `--config experiments/…` works from any working folder."""
    path = Path(path)
    if path.exists() or path.is_absolute():
        return path
    package = Path(__file__).resolve().parents[1]
    for root in (package, package.parent):
        if (root / path).exists():
            return root / path
    return path


def load_yaml_config(path: str | os.PathLike, overrides: Iterable[str] = (), known: Iterable[str] | None = None) -> dict[str, Any]:
    """The mapping in the YAML at `path` (see `resolve_config`), overrides applied (values parsed as YAML), top-level keys checked."""
    path = resolve_config(path)
    if not path.is_file():
        raise InputError(f"config {path} does not exist")
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise InputError(f"{path}: not valid YAML ({one_line(err)})") from None
    if not isinstance(config, dict):
        raise InputError(f"{path}: a config must be a mapping of sections")
    apply_overrides(config, overrides)
    if known is not None:
        unknown = sorted(set(config) - set(known))
        if unknown:
            raise InputError(f"{path}: unknown config key {unknown[0]!r} (known: {', '.join(known)})")
    return config


def apply_overrides(config: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Set each `a.b.c=value` in `config` (nested sections created as needed)."""
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InputError(f"override {item!r}: expected section.key=value")
        *parents, leaf = key.split(".")
        node = config
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise InputError(f"override {item!r}: {part!r} is not a section")
        node[leaf] = yaml.safe_load(value)
    return config
