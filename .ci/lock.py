"""Print requirements.lock: the exact installed version of everything `pip install -e '.[EXTRAS]'` pulls in.

`make lock` runs it with .venv's Python once the tests pass there, so the lock records the versions the
tests passed with (not whatever an index offers today). `make setup` and docker/Dockerfile install with
`pip install -c requirements.lock`; pyproject.toml keeps its open ranges for people who install wbcvae
into their own environment. Usage: `python .ci/lock.py [EXTRA ...] > requirements.lock`.
"""

from __future__ import annotations

import platform
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def locked(extras: list[str]) -> dict[str, str]:
    """Canonical name → `Name==version` for the dependencies of pyproject.toml (and `extras`), transitively."""
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    todo = [Requirement(r) for r in project["dependencies"]]
    for extra in extras:
        todo += [Requirement(r) for r in project["optional-dependencies"][extra]]
    pins: dict[str, str] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        requirement = todo.pop()
        key = (canonicalize_name(requirement.name), frozenset(requirement.extras))
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = metadata.distribution(requirement.name)
        except metadata.PackageNotFoundError:
            sys.exit(f"error: {requirement.name} is required but not installed here; run `make setup` first")
        pins[key[0]] = f"{dist.metadata['Name']}=={dist.version}"
        for line in dist.requires or []:
            child = Requirement(line)
            if child.marker is None or any(child.marker.evaluate({"extra": e}) for e in ("", *requirement.extras)):
                todo.append(child)
    return pins


def main() -> None:
    extras = sys.argv[1:]
    print(
        f"# Exact versions of everything pyproject.toml's dependencies{''.join(f' and its {e} extra' for e in extras)} pull in,\n"
        f"# as installed when the tests passed (Python {platform.python_version()}, {platform.system()} {platform.machine()}).\n"
        "# Written by `make lock` (.ci/lock.py); used by `make setup` and docker/Dockerfile as pip constraints\n"
        "# (`pip install -c requirements.lock`). Rerun `make lock` after changing pyproject.toml's dependencies."
    )
    for _, pin in sorted(locked(extras).items()):
        print(pin)


if __name__ == "__main__":
    main()
