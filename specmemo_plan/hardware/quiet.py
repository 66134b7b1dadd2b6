"""Keeping the GPU libraries' chatter off stdout, and their failures down to one line.

stdout belongs to the command's data (JSON, tables), yet `amdsmi` prints there at import on machines without
ROCm, and other bindings print from C. The probes run every library call inside `quiet_stdout`, and turn
whatever failed, with what it printed, into a one-line note.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys

NOTE_CHARS = 160  # a note fits one terminal line with its prefix, give or take
PRINTED_CHARS = 100  # how much of a library's own output a note quotes


@contextlib.contextmanager
def quiet_stdout(captured: list[str]):
    """Send everything written to stdout, by Python code or C code (file descriptor 1), to a buffer.

    The text lands in `captured` (so a note can quote it); nothing reaches the real stdout.
    """
    buf = io.StringIO()
    saved_fd = None
    sink = None
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    try:
        saved_fd = os.dup(1)
        sink = os.open(os.devnull, os.O_WRONLY)
        os.dup2(sink, 1)
    except OSError:
        saved_fd = None  # no usable fd 1 (embedded interpreter): Python-level redirection still applies
    try:
        with contextlib.redirect_stdout(buf):
            yield
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
        if saved_fd is not None:
            os.dup2(saved_fd, 1)
            os.close(saved_fd)
        if sink is not None:
            os.close(sink)
        captured.append(buf.getvalue())


def one_line(text: str, limit: int = NOTE_CHARS) -> str:
    """`text` with its whitespace folded to single spaces, cut to `limit` characters."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def reason(exc: BaseException, printed: list[str]) -> str:
    """'KeyError: amdsmi_status_t (it printed: ...)': the failure and what the library printed on the way."""
    msg = str(exc) or ""
    why = f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__
    said = one_line(" ".join(p for p in printed if p.strip()), PRINTED_CHARS)
    return one_line(why + (f" (it printed: {said})" if said else ""))


def try_call(module, fn_name: str, *args):
    """module.fn_name(*args), or None when the function is missing (older bindings) or fails."""
    try:
        return getattr(module, fn_name)(*args)
    except Exception:
        return None
