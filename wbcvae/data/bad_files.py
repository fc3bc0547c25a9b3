"""What to do with input files that cannot be read: one policy for every reader, like unknown labels have.

`skip` (the default) leaves such a file out and records why, so one truncated JPEG among thirty thousand
crops, or one damaged sample table, does not stop a run; `fail` stops at the first, naming it.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from wbcvae.errors import InputError

BAD_FILE_POLICIES = ("skip", "fail")
NAMED_IN_WARNINGS = 3  # a warning names this many files by default, then counts the rest


@dataclass
class BadFiles:
    """The user's policy for unreadable files, and the files found so far (path → one-line reason)."""

    policy: str = "skip"
    files: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.policy not in BAD_FILE_POLICIES:
            raise InputError(f"bad-file policy must be one of {BAD_FILE_POLICIES}, got {self.policy!r}")

    def __len__(self) -> int:
        return len(self.files)

    def add(self, path: str | os.PathLike, reason: str) -> None:
        """Record an unreadable file, or under `fail` raise `reason` (a one-line message naming it)."""
        if self.policy == "fail":
            raise InputError(f"{reason}; pass --bad-files skip to leave such files out")
        self.files[str(path)] = reason

    def warning(self, what: str = "unreadable file", named: int = NAMED_IN_WARNINGS) -> str:
        """One line naming the first `named` files and counting the rest ("" when there are none)."""
        if not self.files:
            return ""
        names = [Path(p).name for p in self.files]
        more = len(names) - named
        listed = ", ".join(names[:named]) + (f" and {more} more" if more > 0 else "")
        return f"warning: skipped {len(names)} {what}{'s' if len(names) > 1 else ''}: {listed}"

    def report(self, what: str = "unreadable file", named: int = NAMED_IN_WARNINGS) -> None:
        """Print `warning()` to stderr, if there is anything to say."""
        if self.files:
            print(self.warning(what, named), file=sys.stderr)
