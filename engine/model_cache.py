"""The converted-model cache: a GGUF's dequantised weights as a Hugging Face folder, made once per content.

Under `cache_root()` ($SPECMEMO_CACHE, default ~/.cache/specmemo-plan):
- `<stem>-<sha256[:16]>/`: one conversion, keyed by the sha256 of the GGUF's bytes, so every clone, venv
  or copy of the same file shares it; its `COMPLETE` file, written last, records the full digest and
  the size of every file beside it;
- `digests.json`: each GGUF's digest by (resolved path, size, mtime_ns), so the file is hashed again
  only when it changes;
- `.<folder>.tmp-<host>-<pid>/`: a conversion in progress, renamed into place only when whole (a killed
  conversion's folder is removed by the next one, once its process is gone).

A conversion is validated on every use (the marker, every file's size, each safetensors header against
its file's size) and rebuilt when it is not whole; where the cache cannot be written, one line says which
folder to delete or that SPECMEMO_CACHE must name a writable one. Nothing here imports torch: the
converter is passed in (engine.loading), so tests stand in a fake one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import struct
import sys
from pathlib import Path
from typing import Callable

from specmemo_plan.errors import SpecMemoError

CACHE_ENV = "SPECMEMO_CACHE"
MARKER = "COMPLETE"  # written last: a folder without it is not a conversion
DIGESTS = "digests.json"
MARKER_VERSION = 1
HASH_CHUNK = 1 << 20  # bytes read per update: streamed, never the whole file in memory
# safetensors: an 8-byte little-endian header length, the JSON header, then the tensor bytes
# (https://github.com/huggingface/safetensors#format)
SAFETENSORS_LENGTH_BYTES = 8
SAFETENSORS_MAX_HEADER = 100 * 2**20  # the format's own limit on the header (100 MB)
KEY_CHARS = 16  # hex digits of the digest in a folder's name; the marker holds all 64


def cache_root() -> Path:
    """$SPECMEMO_CACHE, else ~/.cache/specmemo-plan (read on every call: tests and users may set it late)."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "specmemo-plan")


def _cache_hint() -> str:
    return f"set {CACHE_ENV} to a writable folder (now {cache_root()})"


# ----------------------------------------------------------------------------- the key


def file_sha256(path: Path) -> str:
    """sha256 of the file's bytes, read in HASH_CHUNK pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def content_key(path: Path) -> str:
    """The file's sha256, from digests.json while its (path, size, mtime_ns) are unchanged, else hashed
    (and remembered when the cache folder can be written)."""
    stat = path.stat()
    name, stamp = str(path.resolve()), {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    digests = _read_digests()
    entry = digests.get(name)
    if isinstance(entry, dict) and {k: entry.get(k) for k in stamp} == stamp and isinstance(entry.get("sha256"), str):
        return entry["sha256"]
    sha = file_sha256(path)
    digests[name] = dict(stamp, sha256=sha)
    _write_digests(digests)
    return sha


def _read_digests() -> dict:
    try:
        data = json.loads((cache_root() / DIGESTS).read_text(encoding="utf-8"))
    except (OSError, ValueError):  # absent, unreadable or damaged: hash again
        return {}
    return data if isinstance(data, dict) else {}


def _write_digests(digests: dict) -> None:
    """Best effort: a cache that cannot be written only costs a hash per run."""
    root = cache_root()
    tmp = root / f".{DIGESTS}.tmp-{_owner()}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(digests, indent=1), encoding="utf-8")
        os.replace(tmp, root / DIGESTS)
    except OSError:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass


# ----------------------------------------------------------------------------- validation


def safetensors_problem(path: Path) -> str | None:
    """Why a .safetensors file is not whole (its header does not parse, or its tensors do not end where
    the file does), or None."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as fh:
            raw = fh.read(SAFETENSORS_LENGTH_BYTES)
            if len(raw) < SAFETENSORS_LENGTH_BYTES:
                return f"{path.name} is {size} bytes, shorter than a safetensors header"
            (length,) = struct.unpack("<Q", raw)
            if length > min(SAFETENSORS_MAX_HEADER, size - SAFETENSORS_LENGTH_BYTES):
                return f"{path.name}: header length {length} does not fit in its {size} bytes"
            header = json.loads(fh.read(length).decode("utf-8"))
    except (OSError, ValueError) as exc:
        return f"{path.name}: the header does not parse ({type(exc).__name__})"
    if not isinstance(header, dict):
        return f"{path.name}: the header is not a JSON object"
    ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__" and isinstance(t, dict)
            and isinstance(t.get("data_offsets"), list) and len(t["data_offsets"]) == 2]
    expected = SAFETENSORS_LENGTH_BYTES + length + max(ends, default=0)
    if expected != size:
        return f"{path.name} is {size} bytes, its header says {expected}"
    return None


def problem(folder: Path, sha256: str) -> str | None:
    """Why `folder` is not a whole conversion of the file with this digest, or None."""
    try:
        marker = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return f"no readable {MARKER} file (a conversion that did not finish)"
    if not isinstance(marker, dict):
        return f"its {MARKER} file is damaged"
    files = marker.get("files")
    if marker.get("sha256") != sha256 or not isinstance(files, dict) or "config.json" not in files:
        return f"its {MARKER} file is not for this GGUF"
    for name, size in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if not isinstance(size, int) or path.stat().st_size != size:
            return f"{name} is {path.stat().st_size} bytes, {size} when written"
        if name.endswith(".safetensors") and (why := safetensors_problem(path)):
            return why
    if not any(name.endswith(".safetensors") for name in files):
        return "it holds no weights"
    return None


# ----------------------------------------------------------------------------- conversion


def _owner() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def _remove_abandoned(root: Path) -> None:
    """Temp folders of conversions whose process (on this host) is gone."""
    host = socket.gethostname()
    for tmp in root.glob(".*.tmp-*"):
        owner = tmp.name.rsplit(".tmp-", 1)[1]
        tmp_host, _, pid = owner.rpartition("-")
        if tmp_host != host or not pid.isdigit() or _alive(int(pid)):
            continue
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_marker(folder: Path, sha256: str, source: Path) -> None:
    """The files on disk first, then the marker that says they are whole."""
    files = {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file() and p.name != MARKER}
    for name in files:
        _fsync(folder / name)
    marker = {"version": MARKER_VERSION, "sha256": sha256, "source": source.name, "files": files}
    with open(folder / MARKER, "w", encoding="utf-8") as fh:
        json.dump(marker, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())


def converted(gguf: Path, convert: Callable[[Path, Path], None], log=None) -> Path:
    """The folder holding the conversion of `gguf`: this content's, validated; converted (by
    `convert(gguf, out_folder)`) when absent, rebuilt when not whole."""
    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    sha = content_key(gguf)
    root = cache_root()
    folder = root / f"{gguf.stem}-{sha[:KEY_CHARS]}"
    if folder.exists():
        why = problem(folder, sha)
        if why is None:
            return folder
        log(f"the converted model in {folder} is not whole ({why}): converting again")
        _discard(folder, why)
    tmp = root / f".{folder.name}.tmp-{_owner()}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        _remove_abandoned(root)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()  # fails now, not after the conversion, where the cache cannot be written
        log(f"converting {gguf.name} to safetensors in {folder} (once for this file's content)")
        convert(gguf, tmp)
        _write_marker(tmp, sha, gguf)
        try:
            os.rename(tmp, folder)  # atomic: the folder appears whole or not at all
            _fsync(root)  # and the rename itself reaches the disk
        except OSError:
            if problem(folder, sha) is not None:  # not another process's whole conversion: ours failed
                raise
    except OSError as exc:
        raise SpecMemoError(f"cannot write the converted-model cache in {root}: {exc.strerror or exc}",
                            _cache_hint()) from None
    finally:  # a failed or interrupted conversion leaves nothing behind (a kill -9: the next run removes it)
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _discard(folder: Path, why: str) -> None:
    """Move a damaged conversion out of the way (then delete it), or say exactly what to delete."""
    aside = folder.with_name(f".{folder.name}.stale.tmp-{_owner()}")
    try:
        os.rename(folder, aside)
    except FileNotFoundError:  # another process moved it first
        return
    except OSError as exc:
        raise SpecMemoError(f"the converted model in {folder} is not whole ({why}) and cannot be rebuilt: "
                            f"{exc.strerror or exc}", f"delete {folder}, or {_cache_hint()}") from None
    shutil.rmtree(aside, ignore_errors=True)
