import json
import os
import re

import pytest

from specmemo_plan.errors import SpecMemoError
from specmemo_plan.memory import Knobs
from specmemo_plan.models import load_shape
from specmemo_plan.plan import DeviceSpec, Generation, Plan, make_plan, read_plan, write_plan

TARGET = load_shape("llama-2-7b-chat")
DRAFT = load_shape("llama-68m")
DEVICE = DeviceSpec(kind="cuda", name="NVIDIA TITAN RTX", total_memory_bytes=25396510720, profile="titan-rtx")


def sample_plan():
    knobs = Knobs(batch_size=2, max_context=4096, draft_length=4)
    return make_plan("llama-2-7b-chat", TARGET, "llama-68m", DRAFT, knobs, DEVICE, 24 * 2**30,
                     generation=Generation(max_new_tokens=128))


def test_roundtrip(tmp_path):
    plan = sample_plan()
    path = write_plan(plan, tmp_path / "plan.json")
    assert read_plan(path) == plan
    data = json.loads(path.read_text())
    assert data["schema_version"] == 2
    assert data["prediction"]["memory"]["components"]["target_kv"] == 2 * 524_288 * 4100
    assert sorted(os.listdir(tmp_path)) == ["plan.json"]  # no temp file left behind


def test_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "plan.json"
    path.write_text("previous")

    def broken_replace(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        write_plan(sample_plan(), path)
    assert path.read_text() == "previous"
    assert sorted(os.listdir(tmp_path)) == ["plan.json"]


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda d: d["knobs"].update(batch_size=-1), "knobs.batch_size"),
        (lambda d: d.update(schema_version=1), "schema_version"),
        (lambda d: d["per_device"].append(d["per_device"][0]), "per_device"),
        (lambda d: d["per_device"][0]["components"].pop("target_kv"), "per_device[0].components.target_kv"),
        (lambda d: d["placement"].update(policy="random"), "placement.policy"),
        (lambda d: d["target"].pop("fingerprint"), "target.fingerprint"),
        (lambda d: d["device"].update(kind="tpu"), "device.kind"),
        (lambda d: d["generation"].update(sampling="beam"), "generation.sampling"),
        (lambda d: d["prediction"]["memory"]["components"].pop("draft_kv"), "prediction.memory.components.draft_kv"),
        (lambda d: d["knobs"].update(batch_size=True), "knobs.batch_size"),
    ],
)
def test_validation_names_the_field(mutate, field):
    data = sample_plan().to_dict()
    mutate(data)
    with pytest.raises(SpecMemoError, match=re.escape(field)):
        Plan.from_dict(data)


def test_knob_conflict_and_bad_files(tmp_path):
    data = sample_plan().to_dict()
    data["knobs"]["draft_length"] = 0
    with pytest.raises(SpecMemoError, match="draft_length is 0"):
        Plan.from_dict(data)
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(SpecMemoError, match="not valid JSON"):
        read_plan(tmp_path / "bad.json")
    with pytest.raises(SpecMemoError, match="no plan file"):
        read_plan(tmp_path / "missing.json")


def test_make_plan_refuses_over_budget():
    with pytest.raises(SpecMemoError, match="over the budget"):
        make_plan("llama-2-7b-chat", TARGET, None, None, Knobs(batch_size=1, max_context=4096), DEVICE, 13 * 2**30)
