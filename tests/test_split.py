"""Per-device plans: the layer split against accelerate's own placement, and the per-device sums."""

import functools
import json
import logging

import pytest

from specmemo_plan.errors import SpecMemoError
from specmemo_plan.memory import COMPONENTS, Knobs, breakdown, kv_cache_bytes, weight_bytes
from specmemo_plan.models import load_preset_config, load_shape
from specmemo_plan.budget import largest, min_budget
from specmemo_plan.placement import NO_SPLIT_CLASSES, accelerate_device_map, engine_device_maps, layout, resolve, split_layers
from specmemo_plan.placement import fits as fits_split
from specmemo_plan.throughput import BandwidthLatency, RooflineLatency, predict_speed

GiB = 2**30
MiB = 2**20
OVERHEAD = 512 * MiB


@functools.lru_cache(maxsize=None)
def meta_model(name: str, torch_dtype: str):
    """The preset built on the meta device with tied weights tied, as infer_auto_device_map expects."""
    torch = pytest.importorskip("torch")
    accelerate = pytest.importorskip("accelerate")
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = {k: v for k, v in load_preset_config(name).items() if not k.startswith("_")}
    config = AutoConfig.for_model(**cfg)
    with accelerate.init_empty_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, torch_dtype))
    model.tie_weights()
    return model


TORCH_DTYPES = {"fp16": "float16", "fp32": "float32", "bf16": "bfloat16"}


def infer(name: str, dtype: str, limits) -> dict:
    import torch
    from accelerate import infer_auto_device_map

    logging.getLogger("accelerate").setLevel(logging.ERROR)  # "Device i is not available" on a CPU machine
    model = meta_model(name, TORCH_DTYPES[dtype])
    shape = load_shape(name)
    return dict(infer_auto_device_map(
        model, max_memory={i: int(v) for i, v in enumerate(limits)},
        no_split_module_classes=[NO_SPLIT_CLASSES[shape.model_type]], dtype=getattr(torch, TORCH_DTYPES[dtype]),
    ))


def limit_sets(shape, dtype):
    """Per-device limits that exercise accelerate's walk: even and uneven shares, a first device too small
    for anything, exact fits at a layer boundary, one device holding everything."""
    units = layout(shape, dtype).units
    total = sum(u.accelerate_bytes for u in units)
    layer = max(u.accelerate_bytes for u in units if u.kind == "layer")
    biggest = max(u.accelerate_bytes for u in units)
    embed = units[0].accelerate_bytes
    return [
        [total // 3, total // 3, total],
        [total // 2 + total // 10, total // 2, total],
        [total // 4] * 3 + [total],
        [total // 8] * 7 + [total],
        [biggest // 2, total, total],  # nothing fits the first device beside its reservation
        [embed + 3 * layer + biggest, 2 * layer, total],  # exact fits
        [embed + 3 * layer + biggest - 1, 2 * layer - 1, total],  # one byte short of them
        [2 * total],  # everything on one device
        [total // 5, total // 7, total // 3, total],
    ]


ACCELERATE_CASES = [
    ("llama-68m", "fp16"), ("llama-68m", "fp32"), ("smollm2-135m-instruct", "fp16"),
    ("qwen2.5-0.5b-instruct", "bf16"), ("gpt2", "fp16"), ("pythia-160m", "fp16"), ("gemma-2b", "fp16"),
    ("tinyllama-1.1b-chat", "fp16"), ("llama-2-70b-chat", "fp16"),
]


@pytest.mark.parametrize("name,dtype", ACCELERATE_CASES)
def test_replayed_walk_is_infer_auto_device_map(name, dtype):
    shape = load_shape(name)
    for limits in limit_sets(shape, dtype):
        assert accelerate_device_map(shape, dtype, limits) == infer(name, dtype, limits), limits


def test_layout_sizes_match_accelerate_module_sizes():
    from accelerate.utils import compute_module_sizes
    import torch

    for name, dtype in ACCELERATE_CASES:
        sizes = compute_module_sizes(meta_model(name, TORCH_DTYPES[dtype]), dtype=getattr(torch, TORCH_DTYPES[dtype]))
        shape = load_shape(name)
        lay = layout(shape, dtype)
        for unit in lay.units:
            assert unit.accelerate_bytes == sizes[unit.name], (name, unit.name)
        assert sum(u.weight_bytes for u in lay.units) == weight_bytes(shape, dtype)


PAIRS = [
    ("llama-2-70b-chat", "llama-68m", Knobs(batch_size=10, max_context=4096, draft_length=4)),
    ("llama-2-7b-chat", "llama-68m", Knobs(batch_size=4, max_context=2048, draft_length=3)),
    ("smollm2-360m-instruct", "smollm2-135m-instruct", Knobs(batch_size=2, max_context=1024, draft_length=5)),
    ("qwen2.5-1.5b-instruct", "qwen2.5-0.5b-instruct", Knobs(batch_size=3, max_context=2048, draft_length=2)),
    ("llama-2-7b-chat", None, Knobs(batch_size=8, max_context=4096)),
    # n-gram: no draft; its candidate tokens (and a tree's parents) sit with the verify logits
    ("llama-2-7b-chat", None, Knobs(batch_size=4, max_context=2048, draft_length=3, draft_method="ngram")),
    ("qwen2.5-1.5b-instruct", None, Knobs(batch_size=2, max_context=2048, draft_length=8, draft_method="ngram",
                                           tree_depth=3, tree_topk=4)),
]


@functools.lru_cache(maxsize=None)
def _smallest_budget(target, draft, knobs, n):
    t, d = load_shape(target), load_shape(draft) if draft else None
    low, high = 1, breakdown(t, d, knobs, OVERHEAD).total_bytes
    while low < high:
        mid = (low + high) // 2
        low, high = (low, mid) if fits_split(t, d, knobs, [mid] * n, OVERHEAD) else (mid + 1, high)
    return low


def fitting_budgets(t, d, knobs, n, slack=1.05):
    """The smallest common per-device budget that fits n devices, with some slack."""
    return [int(_smallest_budget(t.name, d.name if d else None, knobs, n) * slack)] * n


@pytest.mark.parametrize("target,draft,knobs", PAIRS)
@pytest.mark.parametrize("policy", ["balanced", "sequential"])
def test_plan_max_memory_makes_accelerate_place_the_same(target, draft, knobs, policy):
    t, d = load_shape(target), load_shape(draft) if draft else None
    for n in (2, 3, 5, 8):
        split = split_layers(t, d, knobs, fitting_budgets(t, d, knobs, n), OVERHEAD, policy)
        assert split.placement.max_memory is not None
        limits = [split.placement.max_memory[i] for i in range(n)]
        assert infer(target, knobs.weight_dtype, limits) == split.placement.device_map


@pytest.mark.parametrize("target,draft,knobs", PAIRS)
def test_one_device_is_memory_breakdown(target, draft, knobs):
    t, d = load_shape(target), load_shape(draft) if draft else None
    single = breakdown(t, d, knobs, OVERHEAD)
    split = split_layers(t, d, knobs, [single.total_bytes], OVERHEAD)
    assert split.devices[0].memory.components == single.components
    assert split.placement.device_map == {"": 0} and split.placement.hops == 0 and split.used_devices == 1
    assert split.placement.draft_device == (0 if d else None)
    assert sum(split.placement.duplicates.values()) == 0
    assert split.fits and not split_layers(t, d, knobs, [single.total_bytes - 1], OVERHEAD).fits
    assert fits_split(t, d, knobs, [single.total_bytes], OVERHEAD)
    assert not fits_split(t, d, knobs, [single.total_bytes - 1], OVERHEAD)
    latency = RooflineLatency(bandwidth_gbps=936.0, peak_tflops=71.0)
    assert predict_speed(t, d, knobs, latency, split=split, interconnect_gbps=31.5) == \
        predict_speed(t, d, knobs, latency)


@pytest.mark.parametrize("target,draft,knobs", PAIRS)
@pytest.mark.parametrize("policy", ["balanced", "sequential"])
def test_per_device_totals_add_up(target, draft, knobs, policy):
    """Sum over devices = one-device total + (used - 1) * (runtime overhead + target activation peak)."""
    t, d = load_shape(target), load_shape(draft) if draft else None
    single = breakdown(t, d, knobs, OVERHEAD)
    for n in (2, 3, 4, 8):
        split = split_layers(t, d, knobs, fitting_budgets(t, d, knobs, n), OVERHEAD, policy)
        total = split.total
        for name in COMPONENTS:
            assert total.components[name] == single.components[name] + split.placement.duplicates.get(name, 0), name
        assert split.placement.duplicates["runtime_overhead"] == (split.used_devices - 1) * OVERHEAD
        for share in split.devices:
            assert share.memory.total_bytes <= share.budget_bytes
        if policy == "balanced":
            assert split.used_devices == n  # balanced spreads over every device
        # KV per device = its layers * kv_cache_bytes / num_layers
        per_layer = kv_cache_bytes(t, knobs.batch_size, knobs.max_context, knobs.draft_length, knobs.cache_dtype) \
            // t.num_layers
        assert all(s.memory.components["target_kv"] == s.num_layers * per_layer for s in split.devices)
        assert sum(s.num_layers for s in split.devices) == t.num_layers


def test_draft_sits_with_the_logits():
    t, d = load_shape("llama-2-70b-chat"), load_shape("llama-68m")
    knobs = PAIRS[0][2]
    split = split_layers(t, d, knobs, [64 * GiB] * 8, OVERHEAD)
    last = split.devices[-1]
    assert split.placement.draft_device == split.placement.head_device == 7 and last.holds_draft and last.holds_lm_head
    assert last.memory.components["draft_weights"] == weight_bytes(d, "fp16")
    assert split.devices[0].holds_embedding and split.devices[0].layers[0] == 0
    assert resolve(split.placement.device_map, "lm_head") == 7 and resolve(split.placement.device_map, "model.norm") == 7
    assert split.placement.hops == 7
    # tied output layer: logits (and the draft) on the embedding's device, the hidden state travels back
    t2, d2 = load_shape("smollm2-360m-instruct"), load_shape("smollm2-135m-instruct")
    k2 = PAIRS[2][2]
    tied = split_layers(t2, d2, k2, fitting_budgets(t2, d2, k2, 3), OVERHEAD)
    assert tied.placement.head_device == tied.placement.draft_device == 0
    assert resolve(tied.placement.device_map, "lm_head") == 0 and tied.placement.hops == 3


def test_seventy_b_on_eight_gcds_by_hand():
    """Llama-2-70B fp16 + llama-68m on 8 x 64 GiB, batch 10, context 4096, k = 4 (the paper's setting)."""
    t, d = load_shape("llama-2-70b-chat"), load_shape("llama-68m")
    knobs = PAIRS[0][2]
    split = split_layers(t, d, knobs, [64 * GiB] * 8, OVERHEAD)
    assert [s.num_layers for s in split.devices] == [10] * 8
    layer = (8192 * 8192 * 2 + 1024 * 8192 * 2 + 28672 * 8192 * 3 + 2 * 8192) * 2  # q,o; k,v; gate,up,down; norms
    kv_layer = 2 * 8 * 128 * 2 * 10 * (4096 + 4)  # K and V, 8 KV heads, head_dim 128, fp16, B, C + k
    first = split.devices[0].memory.components
    assert first["target_weights"] == 10 * layer + 32000 * 8192 * 2
    assert first["target_kv"] == 10 * kv_layer
    assert first["candidate_buffers"] == 10 * 5 * 4100 + 10 * 8  # verify mask and lengths
    last = split.devices[7].memory.components
    assert last["target_weights"] == 10 * layer + 8192 * 2 + 32000 * 8192 * 2  # final norm, lm_head
    assert last["candidate_buffers"] == 10 * 5 * 32000 * 2 + 10 * 4 * 8 + 10 * 4 * 32000 * 2 + 10 * 4100


def test_fits_and_largest_do_not_depend_on_policy():
    from dataclasses import replace

    t, d = load_shape("llama-2-70b-chat"), load_shape("llama-68m")
    knobs = replace(PAIRS[0][2], batch_size=4)
    budgets = [40 * GiB] * 4  # 4 x A100-40GB
    assert fits_split(t, d, knobs, budgets, OVERHEAD)
    batch = largest("batch_size", t, d, knobs, budgets[0], OVERHEAD, devices=len(budgets))
    assert batch == 9

    for policy in ("balanced", "sequential"):
        split_layers(t, d, replace(knobs, batch_size=batch), budgets, OVERHEAD, policy)
        with pytest.raises(SpecMemoError):
            split_layers(t, d, replace(knobs, batch_size=batch + 1), budgets, OVERHEAD, policy)
    assert not fits_split(t, d, knobs, [24 * GiB] * 2, OVERHEAD)


def test_split_throughput_sums_devices_and_hops():
    t, d = load_shape("llama-2-70b-chat"), load_shape("llama-68m")
    knobs = PAIRS[0][2]
    split = split_layers(t, d, knobs, [64 * GiB] * 8, OVERHEAD)
    latency = BandwidthLatency(1638.4)
    got = predict_speed(t, d, knobs, latency, split=split, interconnect_gbps=31.5)
    whole = latency.forward_ms(t, "fp16", 10, 5, 2048)  # bytes add up, so the sum is the one-device forward
    assert sum(got.verify_ms_per_device) == pytest.approx(whole, rel=1e-12)
    assert got.transfer_ms_per_step == pytest.approx(7 * 10 * 5 * 8192 * 2 / 31.5e9 * 1e3)
    assert got.step_ms == pytest.approx(4 * got.draft_ms + whole + got.transfer_ms_per_step)
    no_link = predict_speed(t, d, knobs, latency, split=split)
    assert no_link.tokens_per_s > got.tokens_per_s
    # a static batch waits for its slowest row on N devices as on one (the same predict_speed)
    waiting = predict_speed(t, d, knobs, latency, split=split, interconnect_gbps=31.5, new_tokens=256)
    assert waiting.tokens_per_s < got.tokens_per_s


def test_min_budget_split_is_a_boundary():
    t, d = load_shape("llama-2-7b-chat"), load_shape("llama-68m")
    knobs = Knobs(batch_size=1, max_context=2048, draft_length=1)
    latency = RooflineLatency(bandwidth_gbps=1008.0, peak_tflops=165.2)
    result = min_budget(t, d, knobs, latency, k_max=6, device_overhead_bytes=OVERHEAD, devices=2, interconnect_gbps=31.5)
    budget, k = result.total_bytes, result.draft_length
    from dataclasses import replace

    kk = replace(knobs, draft_length=k)
    assert result.speed.speedup > 1 and fits_split(t, d, kk, [budget] * 2, OVERHEAD)
    assert not fits_split(t, d, kk, [budget - 1] * 2, OVERHEAD)


def test_split_plan_round_trip(tmp_path):
    from specmemo_plan.plan import DeviceSpec, Generation, make_plan, read_plan, write_plan

    t, d = load_shape("llama-2-70b-chat"), load_shape("llama-68m")
    knobs = PAIRS[0][2]
    device = DeviceSpec(kind="rocm", name="AMD Instinct MI250 (one GCD)", total_memory_bytes=64 * GiB,
                        profile="mi250-gcd", count=8)
    plan = make_plan("llama-2-70b-chat", t, "llama-68m", d, knobs, device, 64 * GiB, Generation(max_new_tokens=256),
                     device_overhead_bytes=OVERHEAD)
    split = split_layers(t, d, knobs, [64 * GiB] * 8, OVERHEAD)
    path = write_plan(plan, tmp_path / "plan.json")
    back = read_plan(path)
    assert back.device.count == 8 and len(back.per_device) == 8
    assert back.prediction.memory["total_bytes"] == split.total.total_bytes
    assert back.per_device == split.devices and back.placement == split.placement
    assert all(entry.memory.total_bytes <= entry.budget_bytes for entry in back.per_device)
    target_map, draft_map, max_memory = engine_device_maps(back.placement, True)
    assert target_map == split.placement.device_map and draft_map == {"": 7}
    assert max_memory == split.placement.max_memory
    json.dumps(split.as_dict())  # serialisable


# ----------------------------------------------------------------------------- CLI: --devices


def cli_run(*args):
    from click.testing import CliRunner

    from specmemo_plan.cli import cli

    return CliRunner().invoke(cli, list(args))


SEVENTY = ["-t", "llama-2-70b-chat", "-d", "llama-68m"]


def test_cli_estimate_and_fit_with_devices():
    result = cli_run("estimate", *SEVENTY, "--devices", "8", "--profile", "mi250-gcd", "-b", "10", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["split"]["num_devices"] == 8 and len(data["split"]["devices"]) == 8
    assert data["total_bytes"] == data["single_device_total_bytes"] + sum(data["split"]["duplicates"].values())
    assert "layers" in cli_run("estimate", *SEVENTY, "--devices", "8", "--profile", "mi250-gcd").output
    fit = json.loads(cli_run("fit", *SEVENTY, "--devices", "4", "--profile", "a100-40gb", "--budget", "40GiB",
                             "-b", "4", "--json").stdout)
    assert fit["fits"] and fit["largest_batch"] == 9 and fit["num_devices"] == 4
    # one device: the command as it was
    single = json.loads(cli_run("estimate", "-t", "llama-2-7b-chat", "-d", "llama-68m", "--json").stdout)
    assert "split" not in single


def test_cli_plan_and_min_budget_with_devices(tmp_path):
    from specmemo_plan.plan import read_plan

    out = tmp_path / "p.json"
    result = cli_run("plan", *SEVENTY, "--devices", "8", "--profile", "mi250-gcd", "-b", "10", "-k", "4", "-o", str(out))
    assert result.exit_code == 0, result.output
    plan = read_plan(out)
    assert plan.device.count == 8 and [e.num_layers for e in plan.per_device] == [10] * 8
    assert plan.prediction.tokens_per_s > plan.prediction.plain_tokens_per_s
    mb = json.loads(cli_run("min-budget", *SEVENTY, "--devices", "2", "--profile", "rtx-4090", "--dtype", "int4",
                            "-c", "2048", "--json").stdout)
    assert mb["num_devices"] == 2 and mb["predicted_speedup"] > 1
    assert all(e["total_bytes"] <= mb["min_budget_bytes_per_device"] for e in mb["split"]["devices"])


def test_cli_devices_without_profile_uses_the_probe(monkeypatch):
    import specmemo_plan.hardware as hardware
    import specmemo_plan.hardware.probe as probe

    cpu_only = hardware.ProbedDevice(index=0, backend="cpu", name="cpu", total_memory_bytes=64 * GiB,
                                     free_memory_bytes=None, details={}, source="procfs")
    monkeypatch.setattr(probe, "probe_devices", lambda **kw: ([cpu_only], []))
    result = cli_run("estimate", *SEVENTY, "--devices", "2")
    assert result.exit_code == 1 and "needs 2 GPUs" in result.output and "--profile" in result.output
    gpu = hardware.ProbedDevice(index=0, backend="cuda", name="NVIDIA A100-SXM4-40GB",
                                total_memory_bytes=42949672960, free_memory_bytes=None, details={}, source="nvml",
                                profile_key="a100-40gb")
    monkeypatch.setattr(probe, "probe_devices", lambda **kw: ([gpu] * 4 + [cpu_only], []))
    data = json.loads(cli_run("estimate", *SEVENTY, "--devices", "4", "-b", "2", "--json").stdout)
    assert data["profile"] == "a100-40gb" and data["split"]["used_devices"] == 4
