"""A plan file read, written and validated: each bad input one line naming its field, no silent number.

Classes (issue 18): bad encodings and non-JSON files, JSON that is not a plan object, missing and ill-typed
fields, NaN / Infinity (read and write), sizes that are zero or negative, a schema version this code does
not read; and a plan whose stored prediction differs from the one its knobs give (plan.validate).
"""

import dataclasses
import json
import math

import pytest

from specmemo_plan.errors import SpecMemoError
from specmemo_plan.memory import Knobs, breakdown
from specmemo_plan.models import load_shape
from specmemo_plan.plan import DeviceSpec, Generation, Plan, make_plan, read_plan, validate, write_plan

TARGET = load_shape("llama-2-7b-chat")
DRAFT = load_shape("llama-68m")
CPU = DeviceSpec(kind="cpu", name="cpu", total_memory_bytes=64 * 2**30)
GPU = DeviceSpec(kind="cuda", name="NVIDIA GeForce RTX 4090", total_memory_bytes=25757220864, profile="rtx-4090")
OVERHEAD = 512 * 2**20  # the rtx-4090 profile's runtime_overhead_bytes


def sample_plan(**generation):
    knobs = Knobs(batch_size=2, max_context=2048, draft_length=3)
    return make_plan("llama-2-7b-chat", TARGET, "llama-68m", DRAFT, knobs, GPU, 22 * 2**30,
                     Generation(max_new_tokens=128, **generation), device_overhead_bytes=OVERHEAD)


def refused(call) -> str:
    """The one-line message of the SpecMemoError `call` raises."""
    with pytest.raises(SpecMemoError) as info:
        call()
    text = str(info.value)
    assert "\n" not in text
    return info.value.message


def edited(**paths):
    """The sample plan's dict with fields replaced: edited(**{"knobs.batch_size": 0})."""
    data = sample_plan().to_dict()
    for path, value in paths.items():
        *parents, last = path.split(".")
        node = data
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        node[int(last) if last.isdigit() else last] = value
    return data


# ----------------------------------------------------------------------------- files that are not plans


@pytest.mark.parametrize("content, message", [
    (b"\xff\xfe\x00p\x00l\x00a\x00n", "is not a plan: byte 0 is not UTF-8 text"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "is not a plan: byte 0 is not UTF-8 text"),
    (b'{"schema_version": 2, "note": "caf\xe9"}', "is not a plan: byte 34 is not UTF-8 text"),
    (b"{", "is not valid JSON: Expecting property name enclosed in double quotes at line 1"),
    (b"", "is not valid JSON: Expecting value at line 1"),
    (b"[1, 2]", "the plan must be a JSON object, got a list"),
    (b'"plan"', "the plan must be a JSON object, got a string"),
    (b"null", "the plan must be a JSON object, got null"),
    (b"[" * 100_000, "is not a plan: maximum recursion depth exceeded"),
    (b"1" * 5000, "is not a plan: Exceeds the limit (4300 digits)"),
])
def test_files_that_are_not_plans(tmp_path, content, message):
    path = tmp_path / "plan.json"
    path.write_bytes(content)
    assert message in refused(lambda: read_plan(path))


def test_a_folder_and_a_missing_file(tmp_path):
    assert refused(lambda: read_plan(tmp_path)).startswith(f"cannot read the plan {tmp_path}: ")
    assert refused(lambda: read_plan(tmp_path / "none.json")) == f"no plan file at {tmp_path / 'none.json'}"


# ----------------------------------------------------------------------------- fields


@pytest.mark.parametrize("path, value, message", [
    ("schema_version", 1, "field schema_version is 1; this version reads 2"),
    ("knobs.batch_size", "8", "field knobs.batch_size has the wrong type (str: '8')"),
    ("knobs.batch_size", 0, "field knobs.batch_size must be positive, got 0"),
    ("knobs.max_context", -4096, "field knobs.max_context must be positive, got -4096"),
    ("knobs.max_context", 2048.0, "field knobs.max_context has the wrong type (float: 2048.0)"),
    ("knobs.draft_length", True, "field knobs.draft_length must be int, got True"),
    ("budget_bytes", 0, "field budget_bytes must be positive, got 0"),
    ("budget_bytes", -1, "field budget_bytes must be positive, got -1"),
    ("device.total_memory_bytes", [1], "field device.total_memory_bytes has the wrong type (list: [1])"),
    ("device.count", 0, "field device.count must be positive, got 0"),
    ("device.name", " ", "field device.name is empty"),
    ("target.ref", "", "field target.ref is empty"),
    ("target", [], "field target must be a JSON object, got a list"),
    ("generation.temperature", "hot", "field generation.temperature has the wrong type (str: 'hot')"),
    ("generation.temperature", 0, "field generation.temperature must be in (0, inf], got 0"),
    ("generation.seed", 2**64, f"field generation.seed must be in [{-(2**63)}, {2**64 - 1}]"),
    ("generation.max_new_tokens", 2048, "field generation.max_new_tokens (2048) leaves no room for a prompt"),
    ("prediction.acceptance_rate", 1.5, "field prediction.acceptance_rate must be in [0, 1], got 1.5"),
    ("prediction.tokens_per_s", -3, "field prediction.tokens_per_s must be in [0, inf], got -3"),
    ("prediction.memory.components.target_kv", -1, "field prediction.memory.components.target_kv must be >= 0"),
    ("prediction.memory.components.kv", 1, "field prediction.memory.components.kv is not a memory component"),
    ("per_device.0.layers", [3, 1], "field per_device[0].layers must be [first, last] decoder layers"),
    ("per_device.0.holds", ["moon"], "field per_device[0].holds must be a list of names among embedding, lm_head"),
    ("per_device.0.index", 1, "field per_device[0].index is 1, the entry's position is 0"),
    ("per_device.0.total_bytes", 5, "field per_device[0].total_bytes 5 != "),
    ("placement.device_map", {"": "gpu"}, "field placement.device_map. must be an integer >= 0, got 'gpu'"),
    ("placement.max_memory", {"x": 1}, "field placement.max_memory has the key 'x': device indices are integers"),
    ("placement.head_device", 3, "field placement.head_device is 3, past the plan's 1 device(s)"),
    ("placement.draft_device", None, "field placement.draft_device must name a device when the plan has a draft"),
])
def test_each_bad_field_is_named(path, value, message):
    assert message in refused(lambda: Plan.from_dict(edited(**{path: value})))


@pytest.mark.parametrize("drop", ["knobs", "knobs.batch_size", "generation.sampling", "per_device", "placement.policy"])
def test_missing_fields_are_named(drop):
    data = sample_plan().to_dict()
    *parents, last = drop.split(".")
    node = data
    for part in parents:
        node = node[part]
    del node[last]
    assert refused(lambda: Plan.from_dict(data)) == f"plan: field {drop} is missing"


# ----------------------------------------------------------------------------- NaN and Infinity


@pytest.mark.parametrize("constant, field", [
    ("NaN", "generation.temperature"), ("Infinity", "prediction.tokens_per_s"), ("-Infinity", "provenance.x"),
])
def test_nan_and_infinity_are_refused_by_field(tmp_path, constant, field):
    """Python's json reads NaN and Infinity (JSON has neither): the reader refuses them and says where."""
    data = sample_plan().to_dict()
    text = json.dumps({**data, "provenance": {"x": "@X@"}} if field == "provenance.x" else data)
    section, key = field.split(".")
    if section == "provenance":
        text = text.replace('"@X@"', constant)
    else:
        data[section][key] = "@X@"
        text = json.dumps(data).replace('"@X@"', constant)
    path = tmp_path / "plan.json"
    path.write_text(text)
    assert refused(lambda: read_plan(path)) == f"{path}: field {field} is {constant}: JSON has no NaN or Infinity"


@pytest.mark.parametrize("temperature", [math.nan, math.inf, 0.0, -1.0])
def test_make_plan_refuses_a_temperature_the_sampler_cannot_take(temperature):
    message = refused(lambda: sample_plan(temperature=temperature, sampling="sample"))
    assert message == f"temperature must be a finite number > 0, got {temperature!r}"


def test_nothing_non_finite_is_written(tmp_path):
    with pytest.raises(SpecMemoError, match=r"the new plan: field prediction.tokens_per_s is nan: JSON has no NaN"):
        make_plan("llama-2-7b-chat", TARGET, None, None, Knobs(batch_size=1, max_context=2048), GPU, 22 * 2**30,
                  device_overhead_bytes=OVERHEAD, throughput={"tokens_per_s": math.nan})
    plan = dataclasses.replace(sample_plan(), provenance={"ratio": math.inf})
    path = tmp_path / "plan.json"
    assert refused(lambda: write_plan(plan, path)) == "plan field provenance.ratio is inf: JSON has no NaN or Infinity"
    assert not path.exists()


def test_cli_plan_refuses_a_nan_temperature(tmp_path):
    from click.testing import CliRunner

    from specmemo_plan.cli import cli

    out = tmp_path / "p.json"
    result = CliRunner().invoke(cli, ["plan", "-t", "llama-68m", "-c", "512", "--max-new-tokens", "64",
                                      "--sampling", "sample", "--temperature", "nan", "-o", str(out)])
    assert result.exit_code != 0 and not out.exists()
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "nan" in result.output.lower() and "Traceback" not in result.output


# ----------------------------------------------------------------------------- validate: the prediction recomputed


def test_a_plan_as_made_validates():
    plan = sample_plan()
    checked = validate(plan)
    assert checked.target.fingerprint == TARGET.fingerprint and checked.draft.fingerprint == DRAFT.fingerprint
    assert checked.overhead_bytes == OVERHEAD
    assert checked.split.total.as_dict() == plan.prediction.memory


def components():
    return breakdown(TARGET, DRAFT, Knobs(batch_size=2, max_context=2048, draft_length=3), OVERHEAD).components


@pytest.mark.parametrize("path, value, message", [
    ("prediction.memory.components.target_kv", 123,
     f"prediction.memory.components.target_kv 123 != {components()['target_kv']} recomputed from the knobs: "
     "remake the plan"),
    ("prediction.memory.total_bytes", 1,
     f"prediction.memory.total_bytes 1 != {sum(components().values())} recomputed from the knobs: remake the plan"),
    ("per_device.0.layers", [0, 5], "per_device[0].layers[1] 5 != 31 recomputed from the knobs: remake the plan"),
    ("placement.device_map", {"": 1}, 'placement.device_map. 1 != 0 recomputed from the knobs: remake the plan'),
    ("knobs.batch_size", 3,
     f"prediction.memory.components.target_kv {components()['target_kv']} != {components()['target_kv'] // 2 * 3} "
     "recomputed from the knobs: remake the plan"),
    ("budget_bytes", 1000,
     f"budget_bytes 1000 is below the predicted total of {sum(components().values())} bytes"),
    ("knobs.max_context", 10**9 + 1,
     "knobs.max_context 1000000001 exceeds the target's 4096 positions (max_position_embeddings of llama-2-7b-chat)"),
    ("target.fingerprint", "0123456789abcdef",
     f"target.fingerprint: llama-2-7b-chat has fingerprint {TARGET.fingerprint}, the plan was made for 0123456789abcdef"),
    ("target.num_params", 7, f"target.num_params 7 != {TARGET.num_params} counted from llama-2-7b-chat's config"),
    ("target.dtype", "bf16", "target.dtype bf16 != fp16 from knobs.weight_dtype: remake the plan"),
    ("target.ref", "/no/such/model", "target.ref: no such file or folder: /no/such/model"),
    ("draft.ref", "gpt2", "draft.fingerprint: gpt2 has fingerprint"),
    ("per_device.0.components.runtime_overhead", 5, "per_device[0].components.runtime_overhead 5 != 536870912, the "
     "runtime_overhead_bytes of the hardware profile rtx-4090: remake the plan"),
])
def test_a_hand_edited_plan_is_refused_at_the_first_field_that_differs(path, value, message):
    data = edited(**{path: value})
    if path == "per_device.0.components.runtime_overhead":  # keep the file's own totals consistent
        share = data["per_device"][0]
        share["total_bytes"] = sum(share["components"].values())
        share["headroom_bytes"] = share["budget_bytes"] - share["total_bytes"]
    if path == "per_device.0.layers":
        data["per_device"][0]["num_layers"] = 6
    plan = Plan.from_dict(data)
    assert message in refused(lambda: validate(plan))


def test_a_cpu_plan_has_no_runtime_overhead():
    plan = make_plan("llama-68m", DRAFT, None, None, Knobs(batch_size=1, max_context=512), CPU, 2**30,
                     Generation(max_new_tokens=64))
    data = plan.to_dict()
    for where in (data["prediction"]["memory"], data["per_device"][0]):
        where["components"]["runtime_overhead"] = 7
        where["total_bytes"] += 7
    data["per_device"][0]["headroom_bytes"] -= 7
    data["prediction"]["memory"]["generation_bytes"] += 7
    assert refused(lambda: validate(Plan.from_dict(data))) == (
        "per_device[0].components.runtime_overhead 7 != 0: a CPU plan has no runtime overhead "
        "(hardware profiles state 0 on cpu)")


def test_validate_takes_the_shapes_in_hand():
    """The engine passes the shapes of models it was given: validate reads no config then."""
    plan = dataclasses.replace(sample_plan(), target=dataclasses.replace(sample_plan().target, ref="/elsewhere/llama"))
    assert "target.ref: no such file or folder" in refused(lambda: validate(plan))
    assert validate(plan, target=TARGET, draft=DRAFT).target is TARGET
