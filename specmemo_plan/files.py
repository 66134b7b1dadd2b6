"""Reading and writing the project's files: every failure one line, nothing clobbered, never half a file.

Writing (`write_json_atomic`, `write_bytes_atomic`): the bytes go to a temp file beside the target,
`fsync`, rename over it, `fsync` the folder: a reader sees the old file or the new, never half.
- The target must be a regular file or not exist: `-o /dev/null`, a FIFO or a folder are refused
  (a rename would replace the device node or the pipe with a regular file).
- A symlink is written THROUGH: its target is replaced, the link stays (as `>` in a shell does).
- A path equal to one of `inputs` (the same file by realpath or inode) is refused: `tune --measured
  m.json -o m.json` would destroy the measurement it reads.
- Mode: a replaced file keeps its mode; a new one gets 0o666 minus the umask (what `open` gives),
  not mkstemp's 0600.
- Temp names are `.{name}.specmemo-tmp-{host}-{pid}-{random}`: a write removes the temps left in its
  folder by writers of this host whose process is gone (kill -9), never a live writer's.
- ENOSPC, EROFS, EACCES and other OS errors become one SpecMemoError naming the path.
`check_output_path` runs the same checks without writing, so a command can refuse a bad `-o` before
minutes of work.

Reading (`read_json_file`): missing file, folder, unreadable, non-UTF-8 or binary content, invalid
JSON, NaN or infinity (not JSON), the wrong top-level type: each one SpecMemoError naming the file.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import re
import secrets
import socket
import stat
from pathlib import Path
from typing import Iterable

from .errors import SpecMemoError

TEMP_MARK = ".specmemo-tmp-"
# .{name}.specmemo-tmp-{host}-{pid}-{random}: host is 8 hex digits, so a folder shared between
# machines (NFS) never sees one host's writer judge another host's pid.
_TEMP = re.compile(r"^\..*\.specmemo-tmp-(?P<host>[0-9a-f]{8})-(?P<pid>[0-9]+)-[0-9a-f]+$")
MAX_JSON_BYTES = 64 * 2**20  # plans, profiles and configs are kilobytes; this stops /dev/zero and friends
_KINDS = ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO"),
          (stat.S_ISSOCK, "a socket"))
_WRITE_HINTS = {
    errno.ENOSPC: "the filesystem is full: free some space or write elsewhere",
    errno.EDQUOT: "the disk quota is exhausted: free some space or write elsewhere",
    errno.EROFS: "the filesystem is read-only: write elsewhere",
    errno.EACCES: "no permission: write elsewhere, or fix the folder's permissions",
    errno.EPERM: "not permitted: write elsewhere, or fix the folder's permissions",
}


def _host_tag() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def _same_file(a: Path, b: Path) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)  # hard links
    except OSError:
        return False


def _read_only(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False


def check_output_path(path: str | os.PathLike, inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """The real file a write to `path` would replace (symlinks followed), or a SpecMemoError saying
    why it cannot be written: a folder or non-regular target, a missing or unwritable folder, or
    the same file as one of `inputs`. Cheap: call it before long work."""
    given = Path(path)
    if not str(path).strip():
        raise SpecMemoError("empty output path", "give a file name such as plan.json")
    target = Path(os.path.realpath(given))
    if target.is_symlink():
        raise SpecMemoError(f"{given} is a symlink loop", "give a regular file name")
    shown = str(given) if target == Path(os.path.abspath(given)) else f"{given} (a link to {target})"
    if os.path.lexists(target):
        mode = os.stat(target).st_mode
        if stat.S_ISDIR(mode):
            raise SpecMemoError(f"{shown} is a folder", "give a file name such as plan.json")
        if not stat.S_ISREG(mode):
            raise SpecMemoError(f"{shown} is {_kind(mode)}, not a regular file: writing would replace it",
                                "give a regular file name such as plan.json")
    folder = target.parent
    if not folder.is_dir():
        if folder.exists():
            raise SpecMemoError(f"{given.parent} is not a folder (it is a file): {shown} cannot be written",
                                "give a path in an existing folder")
        raise SpecMemoError(f"folder {given.parent} of {shown} does not exist", f"create it first (mkdir -p {given.parent})")
    if not os.access(folder, os.W_OK | os.X_OK):
        why = "it is on a read-only filesystem" if _read_only(folder) else "permission denied"
        raise SpecMemoError(f"cannot write into folder {folder}: {why}", "write elsewhere")
    for source in inputs:
        if source is not None and os.path.lexists(source) and _same_file(target, Path(source)):
            raise SpecMemoError(f"{shown} is also an input ({source}): writing would destroy it",
                                "give the output another name")
    return target


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temps(folder: Path) -> list[str]:
    """Remove the temp files this host's dead writers left in `folder` (a kill -9 between create
    and rename); a live writer's temp, and any other host's, stay. Returns the names removed."""
    removed, host = [], _host_tag()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP.match(entry.name)
        if not match or match["host"] != host or _pid_alive(int(match["pid"])):
            continue
        try:
            if entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
                removed.append(entry.name)
        except OSError:  # another writer removed it first, or no permission: not ours to insist
            pass
    return removed


def _write_error(exc: OSError, path) -> SpecMemoError:
    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    return SpecMemoError(f"cannot write {path}: {reason}", _WRITE_HINTS.get(exc.errno, "write elsewhere"))


def _fsync_folder(folder: Path) -> None:
    """The rename is durable once the folder is synced; filesystems that cannot sync a folder say EINVAL."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # a folder we may write but not read: the rename stands, unsynced
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def _create_temp(folder: Path, name: str) -> tuple[int, Path]:
    """A new temp file beside the target, mode 0o666 less the umask (the kernel applies it)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    prefix = f".{name[:100]}{TEMP_MARK}{_host_tag()}-{os.getpid()}-"
    for _ in range(100):
        tmp = folder / (prefix + secrets.token_hex(4))
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise SpecMemoError(f"cannot create a temp file in {folder}", "remove the .specmemo-tmp- files there")


def write_bytes_atomic(data: bytes, path: str | os.PathLike, inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """`data` to `path` atomically (see the module docstring); returns `path` as given."""
    target = check_output_path(path, inputs)
    folder = target.parent
    remove_stale_temps(folder)
    try:
        old_mode = stat.S_IMODE(os.stat(target).st_mode) if target.exists() else None
        fd, tmp = _create_temp(folder, target.name)
    except OSError as exc:
        raise _write_error(exc, path) from None
    try:
        try:
            if old_mode is not None:
                os.fchmod(fd, old_mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
        _fsync_folder(folder)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno:
            raise _write_error(exc, path) from None
        raise
    return Path(path)


def write_json_atomic(data, path: str | os.PathLike, inputs: Iterable[str | os.PathLike] = (), indent: int = 2) -> Path:
    """`data` as JSON (strict: NaN and infinity are refused, JSON cannot hold them) to `path` atomically."""
    try:
        text = json.dumps(data, indent=indent, allow_nan=False)
    except ValueError:
        raise SpecMemoError(f"refusing to write {path}: it would hold NaN or infinity, which JSON cannot",
                            "a number was not finite: check the options given") from None
    return write_bytes_atomic((text + "\n").encode(), path, inputs)


def _not_json(constant: str):
    raise SpecMemoError(f"{constant} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise SpecMemoError(f"{text} is out of range for a number")
    return value


def read_json_file(path: str | os.PathLike, what: str, hint: str | None = None, expect: type | None = dict):
    """The JSON in `path`, or a one-line SpecMemoError naming the file and `what` it should be
    (e.g. "a measured profile"); `expect` is the top-level type (None: any)."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
        if stat.S_ISDIR(mode):
            raise SpecMemoError(f"cannot read {what} from {path}: it is a folder", hint)
        if not stat.S_ISREG(mode):  # a FIFO would block, a device never end: inputs are regular files
            raise SpecMemoError(f"cannot read {what} from {path}: {path} is {_kind(mode)}, not a regular file", hint)
        with open(path, "rb") as fh:
            raw = fh.read(MAX_JSON_BYTES + 1)
    except (FileNotFoundError, NotADirectoryError):
        raise SpecMemoError(f"cannot read {what} from {path}: no such file", hint) from None
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise SpecMemoError(f"cannot read {what} from {path}: {reason}", hint) from None
    if len(raw) > MAX_JSON_BYTES:
        raise SpecMemoError(f"{path} is over {MAX_JSON_BYTES // 2**20} MiB: not {what}", hint)
    raw = raw.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark, as some editors write
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecMemoError(f"{path} is not UTF-8 text (byte {exc.start} is 0x{raw[exc.start]:02x}): not {what}",
                            hint) from None
    try:
        data = json.loads(text, parse_constant=_not_json, parse_float=_finite_float)
    except json.JSONDecodeError as exc:
        raise SpecMemoError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}): "
                            f"not {what}", hint) from None
    except SpecMemoError as exc:
        raise SpecMemoError(f"{path}: {exc.message}: not {what}", hint) from None
    except RecursionError:
        raise SpecMemoError(f"{path} is nested too deeply: not {what}", hint) from None
    if expect is not None and not isinstance(data, expect):
        raise SpecMemoError(f"{path} holds {_json_kind(data)}, not {what} (a JSON {_JSON_NAMES.get(expect, 'value')})",
                            hint)
    return data


_JSON_NAMES = {dict: "object", list: "list", str: "string", int: "number", float: "number", bool: "boolean"}


def _json_kind(value) -> str:
    if value is None:
        return "null"
    name = _JSON_NAMES.get(type(value), type(value).__name__)
    return ("an " if name[0] in "aeiou" else "a ") + name
