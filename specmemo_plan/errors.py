"""One exception type for every mistake a user can make.

The CLI turns it into a one-line message and a non-zero exit; library callers can catch it.
"""


class SpecMemoError(ValueError):
    """A user-facing error: `message` says what is wrong, `hint` what to do about it."""

    def __init__(self, message: str, hint: str | None = None):
        self.message = message
        self.hint = hint
        super().__init__(f"{message} ({hint})" if hint else message)


def close_names(name: str, candidates, n: int = 4) -> str:
    """'close names: a, b' for an unknown name, or the full list when nothing is close."""
    import difflib

    candidates = sorted(candidates)
    close = difflib.get_close_matches(name.lower(), candidates, n=n, cutoff=0.4)
    if close:
        return "close names: " + ", ".join(close)
    return "known names: " + ", ".join(candidates)
