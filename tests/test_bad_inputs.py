"""Issue 18's table of bad inputs, rerun: every command of `specmemo-plan` and `python -m engine` fed what
a new user or a reliability engineer would feed it, one row each.

A row is a command line, the files it finds in its own folder (the working directory), and what must
happen (`judge`):
- a refusal: the exit status (1: a user error; 2: click's usage errors), exactly one `Error:` line on
  stderr matching the row's regex (with exit 1, nothing else but `note:` lines), no traceback, and the
  folder exactly as before, byte for byte (nothing written, nothing clobbered, no temp left);
- a valid but odd input: success, and the right answer asserted by the row's `check`.
Weights never load here: the engine's loaders are replaced by one that reads the model's shape (the real
loader's first, cheap step) and then fails the row, so a refusal that only comes after loading the
weights fails as "late" (rows marked `loads` run the tiny random models of conftest.py). Every rename
is checked to stay inside the row's folder, so a regression cannot replace /dev/null on a root CI box.

Rows that fail today are marked xfail(strict=True) with what is wrong: the fix turns them into passes,
and strict makes the suite say so, so the mark goes when the bug does.

The rows are in bad_input_table.py (encodings, model families and types, pairs, devices) and
bad_input_commands.py (options, files, plans, the on-device commands, the engine, measured profiles,
export); their files and checks in bad_input_rows.py. The rows that need a real process (bytes on argv,
a FIFO nobody writes, /dev/zero) are here, at the end.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import stat
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
from click.testing import CliRunner

from bad_input_rows import TINY, WeightsLoaded, materialise
from bad_input_commands import ROWS as COMMAND_ROWS
from bad_input_table import ROWS as INPUT_ROWS

ROWS = INPUT_ROWS + COMMAND_ROWS


# ----------------------------------------------------------------------------- guards


def guard_loaders(monkeypatch) -> None:
    """Loading weights (or converting a GGUF) fails the row: what can be refused must be refused before."""
    import engine.loading
    import engine.model_cache
    import engine.runtime
    import engine.workflow
    from specmemo_plan.models import load_shape

    def load_model(ref, *args, **kwargs):
        load_shape(ref)  # the real loader reads the shape first: a refusal there is still an early one
        raise WeightsLoaded(f"the weights of {ref} were loaded before the refusal")

    def load_split(plan, role, *args, **kwargs):
        raise WeightsLoaded(f"the {role}'s weights were loaded over several devices before the refusal")

    def converted(gguf, *args, **kwargs):
        raise WeightsLoaded(f"{gguf} was converted (about 20 s) before the refusal")

    for module in (engine.loading, engine.runtime, engine.workflow):
        monkeypatch.setattr(module, "load_model", load_model)
    monkeypatch.setattr(engine.runtime, "load_split", load_split)
    monkeypatch.setattr(engine.model_cache, "converted", converted)


def guard_renames(monkeypatch, root: Path) -> None:
    """Every rename lands inside the row's folder (files.py writes by rename)."""
    real, inside = os.replace, os.path.realpath(root)

    def replace(src, dst, *args, **kwargs):
        target = os.path.realpath(dst)
        assert os.path.commonpath([inside, target]) == inside, f"a write reached {target}, outside the row's folder"
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)


def snapshot(root: Path) -> dict:
    """Every entry under `root`: a file's bytes and mode, a link's target, a folder, or another kind."""
    seen = {}
    for folder, dirs, names in os.walk(root):
        for name in dirs + names:
            path = os.path.join(folder, name)
            info = os.lstat(path)
            key = os.path.relpath(path, root)
            if stat.S_ISLNK(info.st_mode):
                seen[key] = ("link", os.readlink(path))
            elif stat.S_ISREG(info.st_mode):
                seen[key] = ("file", Path(path).read_bytes(), stat.S_IMODE(info.st_mode))
            else:
                seen[key] = ("kind", stat.S_IFMT(info.st_mode))
    return seen


# ----------------------------------------------------------------------------- the table


def judge(row, result, before: dict, after: dict, tmp: Path) -> None:
    exc = result.exception
    if isinstance(exc, WeightsLoaded):
        pytest.fail(f"late: {exc}")
    if exc is not None and not isinstance(exc, SystemExit):
        pytest.fail("traceback:\n" + "".join(traceback.format_exception(exc))[-3000:])
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error")]
    if row.or_note and result.exit_code == 0:  # fixed by stating the assumption instead of refusing
        assert re.search(row.or_note, result.output), result.output
        return
    refused = row.error is not None or (row.either and result.exit_code != 0)
    if not refused:
        assert result.exit_code == 0, result.output
        assert len(errors) == row.refused_lines, errors
        if row.check:
            row.check(result, tmp)
        return
    assert result.exit_code == (1 if row.either else row.code), result.output
    assert len(errors) == 1, lines
    if row.error is not None:
        assert re.search(row.error, errors[0]), errors[0]
    if result.exit_code == 1:  # a user error is that one line (and the notes before it)
        assert [line for line in lines if not line.startswith("note:")] == errors, lines
    assert after == before, "a refusal changed the folder"


@pytest.mark.parametrize("row", ROWS)
def test_bad_input(row, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    materialise(row, tmp_path)
    if row.setup:
        row.setup(tmp_path, monkeypatch)
    if not row.loads:
        guard_loaders(monkeypatch)
    guard_renames(monkeypatch, tmp_path)
    if row.cli == "engine":
        from engine.cli import main as command
    else:
        from specmemo_plan.cli import cli as command
    args = shlex.split(row.args)
    before = snapshot(tmp_path)
    old_umask = os.umask(row.umask) if row.umask is not None else None
    try:
        result = CliRunner().invoke(command, args, input=row.stdin)
    finally:
        if old_umask is not None:
            os.umask(old_umask)
    judge(row, result, before, snapshot(tmp_path), tmp_path)


def test_the_table_covers_every_command_and_class():
    """At least 120 rows, every command of both CLIs, several rows per class."""
    from collections import Counter

    from specmemo_plan.cli import COMMANDS

    rows = [p.values[0] for p in ROWS + ARGV_ROWS]
    assert len(rows) >= 120, len(rows)
    firsts = {shlex.split(r.args)[0] for r in rows if r.cli == "plan"}
    assert set(COMMANDS) <= firsts, set(COMMANDS) - firsts
    engine_rows = [r.args for r in rows if r.cli == "engine"]
    assert any(a.startswith("chat") for a in engine_rows) and any(a.startswith("--plan") for a in engine_rows)
    classes = Counter(r.cls for r in rows)
    assert min(classes.values()) >= 3, classes


# ----------------------------------------------------------------------------- real processes


class ArgvRow:
    """A row run as a real process: bytes that are not UTF-8 reach argv only from outside Python; a FIFO that
    nobody writes, or /dev/zero, can hang or exhaust a process, so those run under a timeout and a memory cap.
    stdout is strict UTF-8, as in a desktop's en_US.UTF-8 locale (the C locale's surrogateescape would hide a crash)."""

    def __init__(self, cls, cli, argv, error, code=1, stdout=None, fifo=False, timeout=120, memory_cap=False):
        self.cls, self.cli, self.argv, self.error, self.code, self.stdout = cls, cli, argv, error, code, stdout
        self.fifo, self.timeout, self.memory_cap = fifo, timeout, memory_cap
        self.args = " ".join(a if isinstance(a, str) else a.decode("latin-1") for a in argv)


def argv_row(*args, xfail=None, **kw):
    r = ArgvRow(*args, **kw)
    return pytest.param(r, id=r.args, marks=[pytest.mark.xfail(strict=True, reason=xfail)] if xfail else [])


def _cap_memory():
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (2**30, 2**30))  # reading /dev/zero fails fast instead of eating the machine


HANG = "hang: {} opens a FIFO nobody writes and waits forever; refuse non-regular inputs as -o refuses them ({})"
ARGV_ROWS = [
    argv_row("encoding", "plan", ["estimate", "-t", b"caf\xe9.json", "-c", "64"], None, 0, stdout=b"caf"),
    argv_row("encoding", "plan", ["plan", "-t", "llama-68m", "-c", "512", "--profile", "rtx-4090", "-o", b"p\xff.json"],
             None, 0, stdout=b"wrote p"),
    argv_row("encoding", "plan", ["estimate", "-t", b"missing\xe9.json"], r"no such file or folder: missing\\udce9\.json"),
    argv_row("encoding", "plan", ["export", "plan.json", "--to", b"v\xffllm"], r"no plan file at plan\.json"),
    argv_row("encoding", "plan", ["fit", "-t", "llama-68m", "--budget", b"24\xffGiB"], r"cannot read budget '24\\udcffGiB'",
             2),
    argv_row("encoding", "engine", ["--plan", b"missing\xff.json", "--prompt", "x"], r"no plan file at missing\\udcff\.json"),
    argv_row("io", "plan", ["estimate", "-t", "pipe"], r"pipe is a FIFO", fifo=True, timeout=4),
    argv_row("io", "plan", ["export", "pipe", "--to", "vllm"], r"pipe: it is not a regular file", fifo=True, timeout=4),
    argv_row("io", "plan", ["tune", "--measured", "pipe", "-o", "out.json"], r"pipe is a FIFO", fifo=True, timeout=4),
    argv_row("io", "engine", ["--plan", "pipe", "--prompt", "x"], r"pipe: it is not a regular file", fifo=True, timeout=4),
    argv_row("io", "plan", ["estimate", "-t", "/dev/zero"], r"/dev/zero", memory_cap=True, timeout=20),
]


@pytest.mark.parametrize("row", ARGV_ROWS)
def test_in_a_real_process(row, tmp_path):
    (tmp_path / os.fsdecode(b"caf\xe9.json")).write_text(json.dumps(TINY))
    if row.fifo:
        os.mkfifo(tmp_path / "pipe")
    before = snapshot(tmp_path)
    head = ["-m", "engine"] if row.cli == "engine" else ["-c", "from specmemo_plan.cli import main; main()"]
    env = dict(os.environ, PYTHONIOENCODING="utf-8")
    try:
        run = subprocess.run([sys.executable, *head, *row.argv], cwd=tmp_path, capture_output=True, env=env,
                             timeout=row.timeout, preexec_fn=_cap_memory if row.memory_cap else None)
    except subprocess.TimeoutExpired:
        pytest.fail(f"hang: no answer in {row.timeout} s")
    err = run.stderr.decode("utf-8", "backslashreplace")
    assert b"Traceback" not in run.stderr and run.returncode == row.code, err
    if row.error is None:
        assert row.stdout in run.stdout
        return
    errors = [line for line in err.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and re.search(row.error, errors[0]), err
    assert snapshot(tmp_path) == before
