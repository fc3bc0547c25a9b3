"""The one exception users see as a single line: bad input, named precisely."""


class InputError(ValueError):
    """Bad user input (a path, key, gene, label). The CLI prints `error: <message>` and exits 2."""


def one_line(err: BaseException) -> str:
    """A library's (possibly multi-line) exception text squeezed onto one line for an `InputError`."""
    return " ".join(str(err).split()) or type(err).__name__
