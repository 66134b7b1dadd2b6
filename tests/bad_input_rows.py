"""What test_bad_inputs.py's rows are made of: the row type, the files rows start from, setups and checks.

The rows themselves are in bad_input_table.py and bad_input_commands.py, one `row(...)` each. Files are
built in the row's own folder when it starts (`materialise`): tiny configs (the TINY Llama and one small
config per model family sized by formula), plans made by the planner itself for them (then edited, as a
hand would), and measured profiles of the tiny pair. No weights anywhere: the engine's rows that run
build conftest's tiny random models from these configs.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import pytest

DROP = object()  # in an edit: remove the field


class WeightsLoaded(AssertionError):
    """Raised where weights would load: a refusal that comes after it is a late one."""


@dataclass(frozen=True)
class Row:
    cls: str  # the class of issue 18 it belongs to
    args: str  # the command line (shlex), run in the row's folder
    error: str | None = None  # regex of the one `Error:` line; None: the command succeeds
    code: int = 1  # exit status of the refusal: 1 a user error, 2 click's usage errors
    cli: str = "plan"  # "plan": specmemo-plan; "engine": python -m engine
    files: tuple = ()  # (name, content): bytes, JSON data, or a callable(tmp) returning either
    setup: Callable | None = None  # (tmp, monkeypatch): FIFOs, links, patches
    check: Callable | None = None  # (result, tmp): the right answer of a row that succeeds
    stdin: bytes | None = None
    loads: bool = False  # may build the tiny random models
    either: bool = False  # a clean outcome either way: success, or one `Error:` line
    refused_lines: int = 0  # `Error:` lines a run that goes on prints (chat refuses a line, keeps the session)
    umask: int | None = None
    or_note: str | None = None  # a silent answer may be fixed by a refusal, or by a note (regex) in the output


def row(id: str, cls: str, args: str, error: str | None = None, *, xfail: str | None = None, marks=(), **kw):
    marks = list(marks) + ([pytest.mark.xfail(strict=True, reason=xfail)] if xfail else [])
    return pytest.param(Row(cls, args, error, **kw), id=id, marks=marks)


def materialise(r: Row, tmp: Path) -> None:
    """Write the row's files, in order (a plan's builder reads the configs written before it)."""
    for name, content in r.files:
        if callable(content):
            content = content(tmp)
        path = tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else json.dumps(content).encode())


def edit(data, changes: dict):
    """A copy of JSON `data` with dotted paths replaced (list indices as digits; DROP removes)."""
    data = copy.deepcopy(data)
    for path, value in changes.items():
        *parents, last = path.split(".")
        node = data
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        key = int(last) if last.isdigit() else last
        if value is DROP:
            del node[key]
        else:
            node[key] = value
    return data


# ----------------------------------------------------------------------------- configs

TINY = dict(model_type="llama", vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, bos_token_id=1, eos_token_id=2,
            tie_word_embeddings=False)
DRAFT = dict(TINY, num_hidden_layers=1)
PAIR = (("target.json", TINY), ("draft.json", DRAFT))
# a draft whose vocabulary is no padding of the target's: the pair is refused
MISMATCHED = PAIR[:1] + (("draft.json", dict(DRAFT, vocab_size=1000)),)

_BASE = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
             vocab_size=128, max_position_embeddings=256)
_MLA = dict(kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8, n_routed_experts=4,
            num_experts_per_tok=2, moe_intermediate_size=32, first_k_dense_replace=1, n_shared_experts=1,
            n_group=1, topk_group=1, num_key_value_heads=4)
_GPT = dict(vocab_size=128, n_embd=64, n_layer=3, n_head=4, n_positions=256)
# one small config per model family sized by formula (specmemo_plan/architectures), each valid as it stands
FAMILY = {
    "llama": dict(_BASE, model_type="llama"),
    "mistral": dict(_BASE, model_type="mistral", sliding_window=8),
    "qwen2": dict(_BASE, model_type="qwen2", use_sliding_window=True, sliding_window=8, max_window_layers=2),
    "qwen3": dict(_BASE, model_type="qwen3", head_dim=32),
    "gemma": dict(_BASE, model_type="gemma", head_dim=32),
    "gemma2": dict(_BASE, model_type="gemma2", head_dim=16, sliding_window=8),
    "gemma3_text": dict(_BASE, model_type="gemma3_text", head_dim=16, sliding_window=8, sliding_window_pattern=2),
    "gemma3": dict(model_type="gemma3", text_config=dict(_BASE, head_dim=16, sliding_window=8)),
    "olmo2": dict(_BASE, model_type="olmo2"),
    "granite": dict(_BASE, model_type="granite"),
    "smollm3": dict(_BASE, model_type="smollm3", no_rope_layer_interval=2),
    "phi3": dict(_BASE, model_type="phi3", partial_rotary_factor=0.5),
    "gpt2": dict(_GPT, model_type="gpt2"),
    "gpt_bigcode": dict(_GPT, model_type="gpt_bigcode"),
    "gpt_neox": dict({k: v for k, v in _BASE.items() if k != "num_key_value_heads"}, model_type="gpt_neox"),
    "starcoder2": dict(_BASE, model_type="starcoder2", sliding_window=8),
    "mixtral": dict(_BASE, model_type="mixtral", num_local_experts=4, num_experts_per_tok=2),
    "qwen3_moe": dict(_BASE, model_type="qwen3_moe", num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                      head_dim=16, decoder_sparse_step=1),
    "gpt_oss": dict(_BASE, model_type="gpt_oss", num_local_experts=4, num_experts_per_tok=2, head_dim=16, sliding_window=8),
    "deepseek_v2": dict(_BASE, model_type="deepseek_v2", q_lora_rank=None, **_MLA),
    "deepseek_v3": dict(_BASE, model_type="deepseek_v3", q_lora_rank=24, **_MLA),
}
# a causal LM transformers knows and the formulas do not: sized by the generic meta-device build
OPT = dict(model_type="opt", vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, ffn_dim=96,
           max_position_embeddings=512, word_embed_proj_dim=64, bos_token_id=1, eos_token_id=2)


def config(base: dict, **changes) -> dict:
    return edit(base, changes)


def tokenizer(vocab: dict) -> dict:
    """The parts of a Hugging Face tokenizer.json the pair check reads."""
    return {"model": {"type": "BPE", "vocab": vocab, "merges": []}, "added_tokens": []}


def bundled_gguf_head(size: int = 4096) -> Callable:
    def build(tmp):
        from specmemo_plan.models import bundled_path

        with open(bundled_path("smollm2-135m-instruct"), "rb") as fh:
            return fh.read(size)

    return build


# ----------------------------------------------------------------------------- plans


def cpu_plan(changes: dict | None = None, target: str = "target.json", draft: str | None = "draft.json", **make):
    """A plan for this machine's CPU over configs already in the row's folder (conftest.make_test_plan:
    the planner's own make_plan), then `changes` as a hand would make them."""

    def build(tmp):
        from conftest import make_test_plan

        options = dict(batch_size=2, max_context=64, max_new_tokens=8, budget_bytes=2**30) | make
        plan = make_test_plan(str(tmp / target), str(tmp / draft) if draft else None, **options)
        return edit(plan.to_dict(), changes or {})

    return build


PLAN = PAIR + (("plan.json", cpu_plan()),)


@functools.lru_cache(maxsize=4)
def _gpu_plan(budget: int = 22 * 2**30) -> dict:
    from specmemo_plan.hardware import load_profile
    from specmemo_plan.memory import Knobs
    from specmemo_plan.models import load_shape
    from specmemo_plan.plan import DeviceSpec, Generation, make_plan

    profile = load_profile("rtx-4090")
    device = DeviceSpec(kind="cuda", name=profile.name, total_memory_bytes=profile.memory_bytes, profile="rtx-4090")
    return make_plan("llama-2-7b-chat", load_shape("llama-2-7b-chat"), "llama-68m", load_shape("llama-68m"),
                     Knobs(batch_size=2, max_context=2048, draft_length=3), device, budget,
                     Generation(max_new_tokens=128), device_overhead_bytes=profile.runtime_overhead_bytes).to_dict()


def gpu_plan(changes: dict | None = None, budget: int = 22 * 2**30):
    """A preset pair's plan for an RTX 4090 (what `export` reads), then `changes`. A smaller `budget` makes the plan
    anew (the planner's own, still valid): 15.5 GiB holds the plan's 15.44 GiB but not vLLM's peak (issue 16)."""
    return lambda tmp: edit(_gpu_plan(budget), changes or {})


# ----------------------------------------------------------------------------- measured profiles


def measured(change: Callable | dict | None = None):
    """A measured profile of the tiny pair in the row's folder on this CPU (what `profile` writes), then `change`."""

    def build(tmp):
        from specmemo_plan.autotune import LatencyFit, MeasuredProfile
        from specmemo_plan.hardware import this_device
        from specmemo_plan.models import load_shape

        refs = {role: str(tmp / f"{role}.json") for role in ("target", "draft")}
        shapes = {role: load_shape(ref) for role, ref in refs.items()}
        fit = asdict(LatencyFit((2.0, 0.05, 0.0, 0.0), 1.0, 2.0, 24))
        samples = [{"model": "target", "batch": b, "num_tokens": n, "context": c, "ms": 2.0 + 0.05 * n * b}
                   for b in (1, 2, 4) for n in (1, 4) for c in (0, 64)]
        samples += [{"model": "draft", "batch": b, "num_tokens": n, "context": c, "ms": 1.0}
                    for b in (1, 2, 4) for n in (1, 2) for c in (0, 64)]
        spec = this_device(torch_device="cpu").spec
        data = json.loads(json.dumps(asdict(MeasuredProfile(
            device=dict(asdict(spec), torch_device="cpu"),
            **{role: {"ref": refs[role], "dtype": "fp32", "fingerprint": shapes[role].fingerprint} for role in refs},
            samples=samples, target_fit=fit, draft_fit=dict(fit, coefficients=[1.0, 0.0, 0.0, 0.0]),
            acceptance_histogram=[2, 3, 5], acceptance_source="measured"))))
        if callable(change):
            change(data)
            return data
        return edit(data, change or {})

    return build


MEASURED = PAIR + (("m.json", measured()),)


# ----------------------------------------------------------------------------- checks of rows that succeed


def out_json(result) -> dict:
    return json.loads(result.stdout)


def plan_ok(name: str, expect: dict | None = None):
    """The plan file was written, reads, validates, and holds `expect` (dotted paths)."""

    def check(result, tmp):
        from specmemo_plan.plan import read_plan, validate

        path = tmp / name
        validate(read_plan(path))
        data = json.loads(path.read_text())
        for dotted, value in (expect or {}).items():
            node = data
            for part in dotted.split("."):
                node = node[part]
            assert node == value, (dotted, node, value)

    return check


def stdout_has(*needles: str, err: bool = False):
    def check(result, tmp):
        text = result.stderr if err else result.stdout
        for needle in needles:
            assert needle in text, (needle, text[-2000:])

    return check


def json_has(**expect):
    def check(result, tmp):
        data = out_json(result)
        for key, value in expect.items():
            assert data[key] == value, (key, data[key], value)

    return check


# ----------------------------------------------------------------------------- setups


def fifo(name):
    return lambda tmp, mp: os.mkfifo(tmp / name)


def link(name, target):
    return lambda tmp, mp: os.symlink(target, tmp / name)


def hardlink(name, target):
    return lambda tmp, mp: os.link(tmp / target, tmp / name)


def mkdir(name):
    return lambda tmp, mp: (tmp / name).mkdir()


def chmod(name, mode):
    return lambda tmp, mp: os.chmod(tmp / name, mode)


def dead_writers_temp(name):
    """The temp a writer killed with -9 left beside `name` (files.py names temps by host and pid)."""

    def setup(tmp, mp):
        from specmemo_plan import files

        gone = subprocess.Popen(["true"])
        gone.wait()
        (tmp / f".{name}{files.TEMP_MARK}{files._host_tag()}-{gone.pid}-0badf00d").write_bytes(b"half a plan")

    return setup


def os_error(code):
    def setup(tmp, mp):
        def failing(fd, data):
            raise OSError(code, os.strerror(code))

        mp.setattr(os, "write", failing)

    return setup


def read_only_folder(tmp, mp):
    """A read-only mount (root ignores mode bits, so the check's two probes say so instead)."""
    from specmemo_plan import files

    mp.setattr(os, "access", lambda path, mode: False)
    mp.setattr(files, "_read_only", lambda folder: True)


def cpu_only(tmp, mp):
    """This machine shows no GPU, whatever it has: `--devices 2` without --profile has nothing to split over."""
    from specmemo_plan.hardware import probe

    real = probe.probe_devices
    mp.setattr(probe, "probe_devices", lambda **kw: ([d for d in real(**kw)[0] if d.backend == "cpu"], []))


def threads_guard(tmp, mp):
    """torch.set_num_threads(10**9) makes libgomp abort the process (216 GB allocation): refuse before it."""
    import torch

    real = torch.set_num_threads

    def set_num_threads(n):
        if n > (os.cpu_count() or 1):
            raise WeightsLoaded(f"torch.set_num_threads({n}) was called: libgomp aborts the whole process")
        real(n)

    mp.setattr(torch, "set_num_threads", set_num_threads)


# ----------------------------------------------------------------------------- more checks


def chat_replied(replies, *errors):
    def check(result, tmp):
        assert result.stdout.count("assistant>") == replies, result.stdout
        for needle in errors:
            assert needle in result.stderr, result.stderr

    return check


def is_link_to(name, target):
    def check(result, tmp):
        assert os.path.islink(tmp / name) and os.readlink(tmp / name) == target
        plan_ok(target)(result, tmp)

    return check


def mode_is(name, mode):
    def check(result, tmp):
        assert oct(os.stat(tmp / name).st_mode & 0o777) == oct(mode)

    return check


def only_files(*names):
    def check(result, tmp):
        assert sorted(os.listdir(tmp)) == sorted(names)

    return check


def same_total_as_tiny(result, tmp):
    from click.testing import CliRunner

    from specmemo_plan.cli import cli

    (tmp / "tiny.json").write_text(json.dumps(TINY))
    plain = CliRunner().invoke(cli, ["estimate", "-t", "tiny.json", "-c", "64", "--json"])
    assert out_json(result)["total_bytes"] == out_json(plain)["total_bytes"]


def generated(count):
    def check(result, tmp):
        assert len(out_json(result)["outputs"][0]["token_ids"]) == count

    return check




# ----------------------------------------------------------------------------- draft methods (compare, measured)
# Issue 15's rows: compare with several --draft-method, and a measured profile's draft_method. Run by
# test_method_choice.py (test_method_rows) until test_bad_inputs.py adds METHOD_ROWS to its ROWS.


def methods_side_by_side(*methods):
    """compare's JSON with one row per method on every device, in the order given."""

    def check(result, tmp):
        for device in out_json(result)["devices"]:
            assert [m["draft_method"] for m in device["methods"]] == list(methods), device

    return check


def _method_rows():
    m7 = "compare -t llama-2-7b-chat --profiles rtx-4090 --draft-method ngram"
    mine = "compare --measured m.json"

    def bad(id, change, error):
        return row(f"measured-{id}", "measured", mine, error, files=PAIR + (("m.json", measured(change)),))

    ngram = {"draft_method": "ngram", "draft": None, "draft_fit": None,
             "samples": [{"model": "target", "batch": 1, "num_tokens": 1, "context": 0, "ms": 2.0}]}
    return [
        row("compare-methods-plot", "devices", f"{m7} --plot x.png", r"--plot draws one draft model per device"),
        row("compare-methods-engine", "devices", f"{m7} --engine vllm", r"--engine vllm weighs one draft model per device"),
        row("compare-methods-unknown", "devices", f"{m7} --draft-method nonsense", r"'nonsense' is not a draft method",
            code=2),
        row("compare-methods-no-target", "devices", "compare --profiles rtx-4090 --draft-method ngram",
            r"give --target \(or --measured FILE", code=2),
        row("compare-methods-no-method-for-profiles", "devices", f"{mine} --profiles rtx-4090",
            r"give --draft-method \(or --draft\) for the --profiles rows", code=2,
            files=PAIR + (("m.json", measured(ngram)),)),
        row("compare-methods-good", "devices", "compare -t target.json --draft-method draft-model=draft.json "
            "--draft-method ngram --profiles rtx-4090 -c 64 --json", files=PAIR,
            check=methods_side_by_side("draft-model", "ngram")),
        row("compare-measured-ngram-good", "measured", f"{mine} -c 64 --json", files=PAIR + (("m.json", measured(ngram)),),
            check=methods_side_by_side("ngram")),
        bad("method-unknown", {"draft_method": "nonsense"}, r"field draft_method is 'nonsense', not one of: draft-model"),
        bad("ngram-with-draft", {"draft_method": "ngram"}, r"field draft must be null for draft method ngram"),
        bad("head-without-draft", {"draft_method": "eagle3", "draft": None, "draft_fit": None},
            r"field draft is null, but draft method eagle3 times a drafter"),
        bad("ngram-draft-samples", {"draft_method": "ngram", "draft": None, "draft_fit": None},
            r"field samples\[12\]\.model is 'draft', but n-gram drafting has no draft forward"),
        bad("ngram-no-histogram", dict(ngram, acceptance_histogram=None),
            r"field acceptance_histogram must be given for draft method ngram"),
        bad("head-embedding-unknown", {"draft.head_embedding": "both"}, r"field draft\.head_embedding is 'both'"),
        bad("head-embedding-of-a-draft-model", {"draft.head_embedding": "copied"},
            r"field draft\.head_embedding is for an EAGLE or MTP head, not draft method draft-model"),
    ]


METHOD_ROWS = _method_rows()
