"""The exceptions users see as a single line: bad input, named precisely, and a result that could not be written."""


class InputError(ValueError):
    """Bad user input (a path, key, gene, label). The CLI prints `error: <message>` and exits 2."""


class WriteError(OSError):
    """A result could not be written (read-only folder, full disk, file-size limit): the message names the
    path and what to do. The CLI prints `error: <message>` and exits 1."""


def one_line(err: BaseException) -> str:
    """A library's (possibly multi-line) exception text squeezed onto one line for an `InputError`."""
    return " ".join(str(err).split()) or type(err).__name__
