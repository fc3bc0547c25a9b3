"""The one exception users see as a single line: bad input, named precisely."""


class InputError(ValueError):
    """Bad user input (a path, key, gene, label). The CLI prints `error: <message>` and exits 2."""
