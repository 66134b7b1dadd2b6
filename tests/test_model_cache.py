"""The converted-model cache (engine.model_cache) with a fake converter: keyed by content, converted
once, written atomically, validated on use and rebuilt when damaged, one line where it cannot be."""

from __future__ import annotations

import json
import os
import struct

import pytest

from engine import model_cache
from specmemo_plan.errors import SpecMemoError


def fake_converter(calls: list):
    """Writes what a conversion writes: config.json, a tokenizer, one valid safetensors file."""

    def convert(gguf, out):
        calls.append(gguf)
        out.mkdir(exist_ok=True)
        (out / "config.json").write_text(json.dumps({"model_type": "llama"}))
        (out / "tokenizer.json").write_text("{}")
        header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()
        (out / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + bytes(16))

    return convert


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv(model_cache.CACHE_ENV, str(root))
    gguf = tmp_path / "clone1" / "model.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF" + bytes(range(256)) * 64)
    return root, gguf


def quiet(_message):
    pass


def test_keyed_by_content_so_copies_share_one_conversion(cache, tmp_path):
    root, gguf = cache
    calls = []
    first = model_cache.converted(gguf, fake_converter(calls), quiet)
    assert first.parent == root and first.name == f"model-{model_cache.file_sha256(gguf)[:16]}"
    assert (first / model_cache.MARKER).is_file()
    # another clone (another path, another mtime) of the same bytes: the same folder, no conversion
    copy = tmp_path / "clone2" / "model.gguf"
    copy.parent.mkdir()
    copy.write_bytes(gguf.read_bytes())
    os.utime(copy, (1, 1))
    assert model_cache.converted(copy, fake_converter(calls), quiet) == first
    assert calls == [gguf]
    assert [p.name for p in root.iterdir() if not p.name.startswith(".")] == sorted([first.name, "digests.json"])
    # other bytes: another folder
    copy.write_bytes(b"other")
    assert model_cache.converted(copy, fake_converter(calls), quiet) != first and len(calls) == 2


def test_digest_is_remembered_per_path_size_and_mtime(cache, monkeypatch):
    _, gguf = cache
    hashed = []
    real = model_cache.file_sha256
    monkeypatch.setattr(model_cache, "file_sha256", lambda p: hashed.append(p) or real(p))
    key = model_cache.content_key(gguf)
    assert model_cache.content_key(gguf) == key and hashed == [gguf]
    os.utime(gguf, ns=(0, gguf.stat().st_mtime_ns + 1))  # touched: hashed again
    assert model_cache.content_key(gguf) == key and len(hashed) == 2
    (gguf.parent.parent / "cache" / model_cache.DIGESTS).write_text("not json")  # a damaged side file
    assert model_cache.content_key(gguf) == key and len(hashed) == 3


@pytest.mark.parametrize("damage", ["truncate_weights", "drop_marker", "drop_config", "bad_header", "half_written"])
def test_damaged_conversion_is_rebuilt(cache, damage):
    root, gguf = cache
    calls = []
    folder = model_cache.converted(gguf, fake_converter(calls), quiet)
    weights = folder / "model.safetensors"
    if damage == "truncate_weights":
        weights.write_bytes(weights.read_bytes()[:-5])
    elif damage == "drop_marker":
        (folder / model_cache.MARKER).unlink()
    elif damage == "drop_config":
        (folder / "config.json").unlink()
    elif damage == "bad_header":
        raw = weights.read_bytes()
        weights.write_bytes(raw[:8] + b"!" + raw[9:])
    else:  # a conversion killed half-way under the old scheme: files without the marker, weights cut
        (folder / model_cache.MARKER).unlink()
        weights.write_bytes(weights.read_bytes()[:20])
    assert model_cache.problem(folder, model_cache.file_sha256(gguf)) is not None
    said = []
    assert model_cache.converted(gguf, fake_converter(calls), said.append) == folder
    assert len(calls) == 2 and "not whole" in said[0]
    assert model_cache.problem(folder, model_cache.file_sha256(gguf)) is None
    assert not [p for p in root.iterdir() if ".tmp-" in p.name]  # nothing left aside


def test_safetensors_header_against_file_size(tmp_path):
    path = tmp_path / "w.safetensors"
    header = json.dumps({"__metadata__": {"format": "pt"}, "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                         "b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(12))
    assert model_cache.safetensors_problem(path) is None
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(13))
    assert "header says" in model_cache.safetensors_problem(path)
    path.write_bytes(b"\x01\x02")
    assert "shorter than a safetensors header" in model_cache.safetensors_problem(path)
    path.write_bytes(struct.pack("<Q", 2**40) + b"{}")
    assert "does not fit" in model_cache.safetensors_problem(path)


def test_a_failed_conversion_leaves_nothing_and_a_killed_ones_folder_is_removed(cache):
    root, gguf = cache

    def broken(gguf, out):
        (out / "config.json").write_text("{}")
        raise OSError(28, "No space left on device")

    with pytest.raises(SpecMemoError) as err:
        model_cache.converted(gguf, broken, quiet)
    assert "No space left on device" in err.value.message and model_cache.CACHE_ENV in err.value.hint
    assert not [p for p in root.iterdir() if p.is_dir()]
    # a conversion killed with kill -9 left its temp folder; its process (pid 2**22 + 1 cannot exist) is gone
    dead = root / f".model-0.tmp-{model_cache.socket.gethostname()}-{2**22 + 1}"
    dead.mkdir()
    (dead / "model.safetensors").write_bytes(bytes(100))
    alive = root / f".model-1.tmp-{model_cache.socket.gethostname()}-{os.getpid()}"  # a conversion running now
    alive.mkdir()
    model_cache.converted(gguf, fake_converter([]), quiet)
    assert not dead.exists() and alive.exists()


def test_read_only_cache_says_what_to_do(cache, monkeypatch):
    root, gguf = cache
    root.mkdir()
    root.chmod(0o555)
    if os.geteuid() == 0:  # root writes into read-only folders: refuse as the kernel would for anyone else
        real_mkdir = os.mkdir

        def mkdir(path, *args, **kwargs):
            if str(path).startswith(str(root) + os.sep):
                raise PermissionError(13, "Permission denied")
            return real_mkdir(path, *args, **kwargs)

        monkeypatch.setattr(os, "mkdir", mkdir)
    calls = []
    try:
        with pytest.raises(SpecMemoError) as err:
            model_cache.converted(gguf, fake_converter(calls), quiet)
        assert err.value.message == f"cannot write the converted-model cache in {root}: Permission denied"
        assert err.value.hint == f"set SPECMEMO_CACHE to a writable folder (now {root})"
        assert calls == []  # refused before converting, not after
    finally:
        root.chmod(0o755)


def test_damaged_conversion_that_cannot_be_moved_names_the_folder(cache, monkeypatch):
    """Where the damaged folder cannot be replaced (a read-only cache; simulated, since root ignores
    permissions), the error names the folder to delete and SPECMEMO_CACHE."""
    root, gguf = cache
    folder = model_cache.converted(gguf, fake_converter([]), quiet)
    (folder / "config.json").unlink()
    real_rename = os.rename

    def refuse(src, dst):
        if str(src) == str(folder):
            raise PermissionError(13, "Permission denied")
        return real_rename(src, dst)

    monkeypatch.setattr(model_cache.os, "rename", refuse)
    with pytest.raises(SpecMemoError) as err:
        model_cache.converted(gguf, fake_converter([]), quiet)
    assert "config.json is missing" in err.value.message and "Permission denied" in err.value.message
    assert err.value.hint.startswith(f"delete {folder}") and model_cache.CACHE_ENV in err.value.hint


def test_read_only_cache_with_a_whole_conversion_is_used(cache, monkeypatch):
    root, gguf = cache
    folder = model_cache.converted(gguf, fake_converter([]), quiet)
    (root / model_cache.DIGESTS).unlink()
    monkeypatch.setattr(model_cache, "_write_digests", lambda digests: None)  # as if the folder were read-only
    assert model_cache.converted(gguf, fake_converter([]), quiet) == folder


def test_engine_loading_uses_the_cache(cache, monkeypatch):
    """engine.loading routes a .gguf through model_cache with its converter."""
    from engine import loading

    _, gguf = cache
    calls = []
    monkeypatch.setattr(loading, "convert_gguf", fake_converter(calls))
    folder = loading._converted_gguf(gguf)
    assert calls == [gguf] and (folder / "model.safetensors").is_file()


def test_a_damaged_model_folder_is_one_line(tmp_path):
    """A user's Hugging Face folder (not the cache) with a truncated safetensors: one line, no traceback."""
    from conftest import save_tiny_model
    from engine.loading import load_model

    save_tiny_model(tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(SpecMemoError) as err:
        load_model(str(tmp_path / "m"))
    # the planner's header reader sees it first (load_shape reads every safetensors header)
    assert err.value.message.startswith(f"{weights}: truncated: the header says the data ends at byte ")
    assert "incomplete" in err.value.hint
