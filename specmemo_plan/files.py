"""Writing files so that a reader never sees half of one."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from .errors import SpecMemoError


def write_json_atomic(data, path: str | os.PathLike, indent: int = 2) -> Path:
    """JSON to a temp file beside `path`, fsync, rename over it: the old file or the new, never half."""
    path = Path(path)
    if path.is_dir():
        raise SpecMemoError(f"{path} is a folder", "give a file name such as plan.json")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise SpecMemoError(f"folder {folder} does not exist", "create it first")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=indent)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
