"""Third-party messages a normal run should not print, silenced one by one (never all warnings)."""

from __future__ import annotations

import logging
import warnings


class _DropTips(logging.Filter):
    """Lightning's advertising tips ("💡 Tip: For seamless cloud …") on its rank-zero logger."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


def silence_third_party_noise() -> None:
    """Drop the known harmless messages of Lightning and torch; idempotent."""
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropTips) for f in rank_zero.filters):
        rank_zero.addFilter(_DropTips())
    # Lightning's own pytree helper still uses torch's deprecated `LeafSpec`: nothing a user can act on.
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning)
    # `wbcvae train …` hands LightningCLI its own argv tail on purpose; Lightning warns that sys.argv differs.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    # The image plan's perceptual network stays in eval mode on purpose (frozen batch norm, `PerceptualNetwork`).
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")
