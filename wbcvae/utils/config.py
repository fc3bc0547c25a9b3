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


_TYPES = {"float": (int, float), "int": (int,), "str": (str,), "bool": (bool,), "None": (type(None),), "Path": (str, Path)}


def check_types(values: dict[str, Any], annotations: dict[str, str], where: str | os.PathLike) -> None:
    """Each value against its field's annotation (a string such as `float`, `int | None`, `list[str]`);
    the first mismatch as one line naming `where`, the key and the expected type. Annotations beyond
    these plain forms are left to the code that uses the value."""
    for key, value in values.items():
        annotation = str(annotations.get(key, ""))
        allowed: list[type] = []
        for name in (part.strip() for part in annotation.split("|")):
            base = name.split("[", 1)[0]
            if base in _TYPES:
                allowed += _TYPES[base]
            elif base in ("list", "tuple", "Sequence"):
                allowed += [list, tuple]
            elif base in ("dict", "Mapping"):
                allowed.append(dict)
            else:
                allowed = []  # something richer: not checked here
                break
        wrong_bool = isinstance(value, bool) and bool not in allowed  # YAML `true` is no number
        if allowed and (wrong_bool or not isinstance(value, tuple(allowed))):
            raise InputError(f"{where}: key {key}: expected {annotation}, got {value!r}")
