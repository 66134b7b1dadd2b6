"""files.py: atomic writes that refuse what they would clobber, honour the umask, clean up after
kill -9 and turn OS errors into one line; JSON reads that turn every bad file into one line."""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys

import pytest

from specmemo_plan import files
from specmemo_plan.errors import SpecMemoError
from specmemo_plan.files import check_output_path, read_json_file, remove_stale_temps, write_json_atomic


def names(folder) -> list[str]:
    return sorted(os.listdir(folder))


@pytest.fixture
def umask():
    """Set a umask for one test and restore the old one."""
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


# ----------------------------------------------------------------------------- writing


def test_write_returns_the_path_and_the_exact_bytes(tmp_path):
    path = tmp_path / "plan.json"
    assert write_json_atomic({"a": [1, 2]}, path) == path
    assert path.read_bytes() == b'{\n  "a": [\n    1,\n    2\n  ]\n}\n'
    assert names(tmp_path) == ["plan.json"]


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_a_new_file_gets_0666_minus_the_umask(tmp_path, umask, mask, mode):
    umask(mask)
    write_json_atomic({}, tmp_path / "p.json")
    assert stat.S_IMODE(os.stat(tmp_path / "p.json").st_mode) == mode


def test_a_replaced_file_keeps_its_mode(tmp_path, umask):
    path = tmp_path / "p.json"
    path.write_text("old")
    os.chmod(path, 0o640)
    umask(0o077)
    write_json_atomic({"new": 1}, path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640 and json.loads(path.read_text()) == {"new": 1}


def test_non_regular_targets_are_refused(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(SpecMemoError, match="is a FIFO, not a regular file"):
        write_json_atomic({}, fifo)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    with pytest.raises(SpecMemoError, match="is a character device"):
        check_output_path("/dev/null")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    with pytest.raises(SpecMemoError, match="is a folder"):
        write_json_atomic({}, tmp_path)
    with pytest.raises(SpecMemoError, match="does not exist"):
        write_json_atomic({}, tmp_path / "missing" / "p.json")
    with pytest.raises(SpecMemoError, match="empty output path"):
        check_output_path("")
    assert names(tmp_path) == ["pipe"]


def test_a_symlink_is_written_through(tmp_path):
    real = tmp_path / "real.json"
    real.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(real)
    write_json_atomic({"x": 1}, link)
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert json.loads(real.read_text()) == {"x": 1}
    # a dangling link creates its target
    dangling = tmp_path / "dangling.json"
    dangling.symlink_to(tmp_path / "new.json")
    write_json_atomic({"y": 2}, dangling)
    assert dangling.is_symlink() and json.loads((tmp_path / "new.json").read_text()) == {"y": 2}
    assert names(tmp_path) == ["dangling.json", "link.json", "new.json", "real.json"]


def test_writing_over_an_input_is_refused(tmp_path):
    measured = tmp_path / "m.json"
    measured.write_text('{"measured": true}')
    link = tmp_path / "alias.json"
    link.symlink_to(measured)
    hard = tmp_path / "hard.json"
    os.link(measured, hard)
    for out in (measured, link, hard, tmp_path / "." / "m.json"):
        with pytest.raises(SpecMemoError, match="is also an input .*writing would destroy it"):
            write_json_atomic({}, out, inputs=[str(measured)])
    assert measured.read_text() == '{"measured": true}'
    write_json_atomic({}, tmp_path / "plan.json", inputs=[measured, None, tmp_path / "absent.json"])
    assert names(tmp_path) == ["alias.json", "hard.json", "m.json", "plan.json"]


def test_nan_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(SpecMemoError, match="NaN or infinity"):
        write_json_atomic({"temperature": float("nan")}, tmp_path / "p.json")
    assert names(tmp_path) == []


@pytest.mark.parametrize("code, words", [(errno.ENOSPC, "No space left on device"),
                                         (errno.EROFS, "Read-only file system"),
                                         (errno.EACCES, "Permission denied"),
                                         (errno.EDQUOT, "quota exceeded")])
def test_os_errors_are_one_line_and_leave_the_old_file(tmp_path, monkeypatch, code, words):
    path = tmp_path / "p.json"
    path.write_text("previous")

    def failing(fd, data):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "write", failing)
    with pytest.raises(SpecMemoError) as info:
        write_json_atomic({"x": 1}, path)
    assert info.value.message == f"cannot write {path}: {os.strerror(code)}" and words in info.value.message
    assert "\n" not in str(info.value)
    assert path.read_text() == "previous" and names(tmp_path) == ["p.json"]


def test_an_unwritable_folder_is_refused_before_the_write(tmp_path, monkeypatch):
    # root ignores permission bits, so the check's answer is forced here
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(SpecMemoError, match="cannot write into folder .*: permission denied"):
        check_output_path(tmp_path / "p.json")
    monkeypatch.setattr(files, "_read_only", lambda folder: True)
    with pytest.raises(SpecMemoError, match="read-only filesystem"):
        write_json_atomic({}, tmp_path / "p.json")
    assert names(tmp_path) == []


def test_the_folder_is_synced_after_the_rename(tmp_path, monkeypatch):
    synced, real_fsync, real_replace = [], os.fsync, os.replace
    events = []
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(stat.S_ISDIR(os.fstat(fd).st_mode)),
                                                 events.append("fsync"), real_fsync(fd)))
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b)))
    write_json_atomic({}, tmp_path / "p.json")
    assert synced == [False, True]  # the file before the rename, the folder after it
    assert events == ["fsync", "replace", "fsync"]


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_temps_of_killed_writers_are_removed_on_the_next_write(tmp_path):
    # a writer killed between create and rename: a child process that creates its temp and exits at once
    code = ("import os, sys; from pathlib import Path; from specmemo_plan import files; "
            "files._create_temp(Path(sys.argv[1]), 'plan.json'); os._exit(9)")
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=False)
    (left,) = names(tmp_path)
    assert left.startswith(".plan.json.specmemo-tmp-")
    host = files._host_tag()
    live = f".other.json.specmemo-tmp-{host}-{os.getpid()}-abcd"  # a concurrent writer in this process
    other_host = f".x.json.specmemo-tmp-{'0' * 8 if host != '0' * 8 else '1' * 8}-{_dead_pid()}-abcd"
    dead = f".y.json.specmemo-tmp-{host}-{_dead_pid()}-ef01"
    unrelated = ".y.json.tmp"
    for name in (live, other_host, dead, unrelated):
        (tmp_path / name).write_text("partial")
    write_json_atomic({}, tmp_path / "plan.json")
    assert names(tmp_path) == sorted([live, other_host, unrelated, "plan.json"])
    assert remove_stale_temps(tmp_path) == []


# ----------------------------------------------------------------------------- reading


@pytest.mark.parametrize("content, message", [
    (b"\x89PNG\r\n\x1a\n\x00\x00", "is not UTF-8 text (byte 0 is 0x89): not a plan"),
    (b'{"a": "caf\xe9"}', "is not UTF-8 text (byte 10 is 0xe9): not a plan"),
    (b'{\n"a" 1}', "is not valid JSON (Expecting ':' delimiter at line 2 column 5): not a plan"),
    (b"", "is not valid JSON (Expecting value at line 1 column 1): not a plan"),
    (b'{"a": NaN}', ": NaN is not a JSON number: not a plan"),
    (b'{"a": -Infinity}', ": -Infinity is not a JSON number: not a plan"),
    (b'{"a": 1e400}', ": 1e400 is out of range for a number: not a plan"),
    (b"[1, 2]", "holds a list, not a plan (a JSON object)"),
    (b'"text"', "holds a string, not a plan (a JSON object)"),
    (b"null", "holds null, not a plan (a JSON object)"),
    (b"[" * 100_000, "is nested too deeply: not a plan"),
])
def test_bad_json_files_are_one_line(tmp_path, content, message):
    path = tmp_path / "p.json"
    path.write_bytes(content)
    with pytest.raises(SpecMemoError) as info:
        read_json_file(path, "a plan", "write one with `specmemo-plan plan`")
    assert info.value.message == f"{path}{'' if message.startswith(':') else ' '}{message}"
    assert info.value.hint == "write one with `specmemo-plan plan`"


def test_missing_folder_and_good_files(tmp_path):
    with pytest.raises(SpecMemoError, match=f"^cannot read a plan from {tmp_path / 'absent.json'}: no such file$"):
        read_json_file(tmp_path / "absent.json", "a plan")
    with pytest.raises(SpecMemoError, match="cannot read a plan from .*: it is a folder"):
        read_json_file(tmp_path, "a plan")
    (tmp_path / "bom.json").write_bytes(b'\xef\xbb\xbf{"a": 1.5}')
    assert read_json_file(tmp_path / "bom.json", "a plan") == {"a": 1.5}
    (tmp_path / "list.json").write_text("[1]")
    assert read_json_file(tmp_path / "list.json", "prompts", expect=list) == [1]
