"""engine.checks: a CPU plan is checked like a GPU plan (the device's identity, its memory, the
prediction recomputed from the knobs), before anything loads; the memory report compares against
the recomputed prediction; a bad --device is one line."""

from __future__ import annotations

import dataclasses
import json

import pytest

from engine import checks
from engine.runtime import Engine
from specmemo_plan.errors import SpecMemoError
from specmemo_plan.hardware import probe, this_device
from specmemo_plan.plan import validate

from conftest import make_test_plan

GiB = 2**30
THIS_CPU = this_device(torch_device="cpu").spec

pytestmark = pytest.mark.usefixtures("one_thread")


def cpu_plan(pair, **kwargs):
    kwargs.setdefault("device_name", THIS_CPU.name)
    kwargs.setdefault("budget_bytes", min(GiB, THIS_CPU.total_memory_bytes))
    return make_test_plan(pair[0], pair[1], **kwargs)


def fake_cpu(monkeypatch, name=THIS_CPU.name, total=64 * GiB, free=32 * GiB):
    """The probe reports this CPU (by default this machine's name) with the given RAM."""
    cpu = probe.ProbedDevice(index=0, backend="cpu", name=name, total_memory_bytes=total, free_memory_bytes=free, details={},
                             profile_key="cpu")
    monkeypatch.setattr(probe, "probe_devices", lambda use_torch=True: ([cpu], []))


def test_cpu_plan_made_for_another_machine_is_refused(tiny_pair, monkeypatch):
    """The issue's case: a plan made on a 192 GiB Apple M2 Ultra ran on this machine."""
    fake_cpu(monkeypatch, name="AMD EPYC 7B13", total=24 * GiB)
    plan = cpu_plan(tiny_pair, device_name="Apple M2 Ultra", budget_bytes=192 * GiB)
    with pytest.raises(SpecMemoError) as err:
        Engine(plan, tokenizer=None)
    assert err.value.message == "device.name: the plan was made for 'Apple M2 Ultra', this CPU is 'AMD EPYC 7B13'"
    # names compare without case and runs of spaces
    fake_cpu(monkeypatch, name="amd  epyc 7b13")
    assert Engine(cpu_plan(tiny_pair, device_name="AMD EPYC 7B13"), tokenizer=None).device.type == "cpu"


def test_cpu_budget_over_this_machines_ram_is_refused(tiny_pair, monkeypatch):
    fake_cpu(monkeypatch, total=24 * GiB)
    plan = cpu_plan(tiny_pair, budget_bytes=192 * GiB)
    with pytest.raises(SpecMemoError) as err:
        Engine(plan, tokenizer=None)
    assert err.value.message == "budget_bytes: the plan's budget of 192.00 GiB exceeds this machine's RAM of 24.00 GiB"


def test_cpu_memory_free_now_against_what_is_to_be_allocated(tiny_pair, monkeypatch):
    plan = cpu_plan(tiny_pair)
    total = validate(plan).split.total.total_bytes
    fake_cpu(monkeypatch, free=total - 1)
    with pytest.raises(SpecMemoError, match=r"^prediction\.memory\.total_bytes: the plan needs .* free now"):
        Engine(plan, tokenizer=None)
    fake_cpu(monkeypatch, free=total)
    Engine(plan, tokenizer=None)


def test_models_already_loaded_do_not_count_twice(tiny_pair, monkeypatch):
    from engine.loading import load_model
    from engine.memory_probe import parameter_bytes

    plan = cpu_plan(tiny_pair)
    target, draft = load_model(tiny_pair[0]), load_model(tiny_pair[1])
    held = parameter_bytes(target.model) + parameter_bytes(draft.model)
    fake_cpu(monkeypatch, free=validate(plan).split.total.total_bytes - held)
    Engine(plan, target=target, draft=draft, tokenizer=None)


def test_generic_cpu_profile_names_no_machine(tiny_pair, monkeypatch):
    """A plan made `--profile cpu` (the profile every CPU matches) is checked by its memory alone."""
    from specmemo_plan.hardware import load_profile

    fake_cpu(monkeypatch, name="Some Other CPU")
    plan = cpu_plan(tiny_pair, device_name=load_profile("cpu").name)
    plan = dataclasses.replace(plan, device=dataclasses.replace(plan.device, profile="cpu"))
    assert Engine(plan, tokenizer=None).device.type == "cpu"
    # the profile key alone does not do: every CPU's own plan carries it, with its own name
    mine = dataclasses.replace(plan, device=dataclasses.replace(plan.device, name="Apple M2 Ultra"))
    with pytest.raises(SpecMemoError, match=r"^device\.name"):
        Engine(mine, tokenizer=None)


def test_memory_report_compares_against_the_recomputed_prediction(tiny_pair):
    plan = cpu_plan(tiny_pair, batch_size=2, draft_length=3)
    engine = Engine(plan, tokenizer=None)
    engine.generate([[5, 6, 7], [8, 9]], max_new_tokens=8)
    assert engine.memory_report()["predicted"] == validate(plan).split.total.as_dict()
    # a hand-edited prediction is refused before anything loads, not reported against
    for edit in (("components", "activations"), ("total_bytes",)):
        memory = json.loads(json.dumps(plan.prediction.memory))
        where = memory
        for key in edit[:-1]:
            where = where[key]
        where[edit[-1]] //= 2
        edited = dataclasses.replace(plan, prediction=dataclasses.replace(plan.prediction, memory=memory))
        with pytest.raises(SpecMemoError, match="prediction.memory." + ".".join(edit)):
            Engine(edited, tokenizer=None)


@pytest.mark.parametrize("device,message", [
    ("foo", "--device 'foo' is not a torch device"),
    ("meta", "--device meta: the engine runs on cpu or cuda (ROCm included)"),
])
def test_bad_device_is_one_line(tiny_pair, device, message):
    with pytest.raises(SpecMemoError) as err:
        Engine(cpu_plan(tiny_pair), device=device, tokenizer=None)
    assert err.value.message == message and err.value.hint == "give cpu, cuda or cuda:N"


def test_engine_cli_bad_device(tiny_pair, tmp_path):
    from click.testing import CliRunner

    from engine.cli import main
    from specmemo_plan.plan import write_plan

    path = write_plan(cpu_plan(tiny_pair), tmp_path / "plan.json")
    result = CliRunner().invoke(main, ["--plan", str(path), "--prompt", "hi", "--device", "foo"])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "--device 'foo' is not a torch device" in result.output


def test_checks_live_in_engine_checks():
    """runtime.py keeps the loop; the plan checks are engine.checks (and runtime re-exports what others import)."""
    from engine import runtime

    for name in ("check_supported", "check_prediction", "resolve_device", "check_model_type"):
        assert getattr(runtime, name) is getattr(checks, name)
    assert runtime.STATIC_COMPONENTS is checks.STATIC_COMPONENTS


def test_the_plain_baseline_of_a_verified_plan_passes_the_engines_checks(tiny_pair):
    """verify runs the plan, then plain decoding at the same knobs: that plan is made by make_plan, so its
    per-device shares are the plain ones (it reused the SD plan's shares, and the engine refused it)."""
    from engine.workflow import _plain_plan

    target, draft = tiny_pair
    plan = make_test_plan(target, draft, draft_length=2, max_context=128)
    plain = _plain_plan(plan)
    assert plain.draft is None and plain.knobs.draft_length == 0
    checked = validate(plain)
    assert plain.per_device[0].memory.components["draft_weights"] == 0
    assert checked.split.total.total_bytes == plain.prediction.memory["total_bytes"]
