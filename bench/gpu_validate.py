"""Prove the memory model on a real GPU: predicted vs measured peak, per configuration.

For each target (random weights with the exact shapes of Llama-2-7B and Llama-3.1-8B, in fp16 and
bf16, each with a small draft), and a grid of batch x context x draft length, it plans the
configuration, runs the engine on it (prefill of a prompt that fills the context, then
speculative steps), and records the plan's components beside torch's peak allocated and
reserved bytes and the device's own view (NVML / amdsmi). It also times target and draft
forwards and compares the plan's predicted tokens/s (roofline of the matched profile) with the
engine's. One JSON file, and a table. Errors are measured relative to predicted
(specmemo_plan.quantities.error_percent: positive when the plan predicted too little).

    python bench/gpu_validate.py --out gpu_validate.json           # on a CUDA/ROCm machine (< 8 min on one H200)
    python bench/gpu_validate.py --dry-run --out /tmp/dry.json     # CPU, small shapes: the same code path

No weights are downloaded: the models are initialised randomly from the bundled preset configs.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from engine.loading import load_model  # noqa: E402
from engine.profiling import time_forward  # noqa: E402
from engine.runtime import Engine  # noqa: E402
from specmemo_plan.memory import Knobs  # noqa: E402
from specmemo_plan.models import load_preset_config  # noqa: E402
from specmemo_plan.plan import DeviceSpec, Generation, make_plan  # noqa: E402
from specmemo_plan.quantities import error_percent  # noqa: E402
from specmemo_plan.render.workflow import gpu_validate_table  # noqa: E402
from specmemo_plan.throughput import predict_speed, roofline_from_profile  # noqa: E402

# (target preset, draft preset): real shapes, random weights
PAIRS = [("llama-2-7b-chat", "llama-68m"), ("llama-3.1-8b-instruct", "llama-3.2-1b-instruct")]
DTYPES = ["fp16", "bf16"]
GRID = {"batch": [1, 4, 16], "context": [1024, 4096], "draft_length": [2, 5]}
DRY_GRID = {"batch": [1, 2], "context": [64], "draft_length": [2]}
DECODE_STEPS = 8  # speculative steps after the prefill: enough to reach the verify pass's peak


def shrunk_preset(name: str, folder: str, layers: int, hidden: int) -> str:
    """A config.json with a preset's vocabulary and family but tiny width and depth (--dry-run)."""
    cfg = {k: v for k, v in load_preset_config(name).items() if not k.startswith("_")}
    heads = 4
    cfg.update(num_hidden_layers=layers, hidden_size=hidden, intermediate_size=2 * hidden, num_attention_heads=heads,
               num_key_value_heads=2, head_dim=hidden // heads)
    path = os.path.join(folder, f"{name}-tiny.json")
    with open(path, "w") as fh:
        json.dump(cfg, fh)
    return path


def device_setup(dry_run: bool):
    if dry_run or not torch.cuda.is_available():
        if not dry_run:
            raise SystemExit("error: no CUDA/ROCm device visible to torch (use --dry-run for the CPU path)")
        from specmemo_plan.hardware import this_device

        return torch.device("cpu"), this_device(torch_device="cpu").spec, None
    from specmemo_plan.hardware import probe_devices, profile_for_device

    device = torch.device("cuda", 0)
    name = torch.cuda.get_device_name(device)
    total = torch.cuda.get_device_properties(device).total_memory
    kind = "rocm" if torch.version.hip else "cuda"
    devices, _ = probe_devices()
    probed = next((d for d in devices if d.backend == kind), None)
    profile = profile_for_device(probed) if probed is not None and probed.profile_key else None
    return device, DeviceSpec(kind=kind, name=name, total_memory_bytes=total, profile=profile.key if profile else None), profile


def run_config(target, draft, t_ref, d_ref, knobs: Knobs, spec: DeviceSpec, device, profile) -> dict:
    overhead = profile.runtime_overhead_bytes if profile else 0
    plan = make_plan(t_ref, target.shape, d_ref, draft.shape, knobs, spec, spec.total_memory_bytes,
                     generation=Generation(max_new_tokens=1 + DECODE_STEPS * (knobs.draft_length + 1)),
                     device_overhead_bytes=overhead)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    engine = Engine(plan, device=str(device), target=target, draft=draft, tokenizer=None)
    prompt_len = knobs.max_context - plan.generation.max_new_tokens
    prompts = [torch.randint(3, target.shape.vocab_size, (prompt_len,)).tolist() for _ in range(knobs.batch_size)]
    result = engine.generate(prompts, ignore_eos=True)
    report = engine.memory_report()
    predicted = report["predicted"]
    row = {
        "target": t_ref, "draft": d_ref, "dtype": knobs.weight_dtype, "batch": knobs.batch_size,
        "context": knobs.max_context, "draft_length": knobs.draft_length,
        "predicted": predicted, "measured_components": report["measured"]["components"],
        "stats": result.stats.as_dict(),
    }
    if device.type == "cuda":
        process = report["measured"]["process"]
        peak_alloc = process["peak_allocated_bytes"]
        without_overhead = predicted["total_bytes"] - predicted["components"]["runtime_overhead"]
        row.update(
            peak_allocated_bytes=peak_alloc, peak_reserved_bytes=process["peak_reserved_bytes"],
            device_view=process.get("device"),
            peak_error_percent=error_percent(peak_alloc, without_overhead),
            reserved_error_percent=error_percent(process["peak_reserved_bytes"], without_overhead),
        )
        used = (process.get("device") or {}).get("process_used_bytes") or (process.get("device") or {}).get("device_used_bytes")
        if used:
            row["device_used_bytes"] = used
            row["device_error_percent"] = error_percent(used, predicted["total_bytes"])
    else:
        static = ("target_weights", "draft_weights", "target_kv", "draft_kv", "candidate_buffers")
        row["static_error_percent"] = error_percent(sum(report["measured"]["components"][c] for c in static),
                                                    sum(predicted["components"][c] for c in static))
    # latency: the forwards the step is made of, and predicted vs measured tokens/s
    ctx = knobs.max_context // 2
    row["latency_ms"] = {
        "target_decode": time_forward(target, knobs.weight_dtype, knobs.batch_size, 1, ctx, repeats=3),
        "target_verify": time_forward(target, knobs.weight_dtype, knobs.batch_size, knobs.draft_length + 1, ctx, repeats=3),
        "draft_decode": time_forward(draft, knobs.weight_dtype, knobs.batch_size, 1, ctx, repeats=3),
    }
    if profile is not None:
        latency = roofline_from_profile(profile, knobs.weight_dtype)
        acceptance = row["stats"]["acceptance_rate"] or 0.0
        speed = predict_speed(target.shape, draft.shape, knobs, latency, acceptance=min(acceptance, 0.999), context=prompt_len)
        row["predicted_tokens_per_s"] = speed.tokens_per_s
        row["predicted_latency_ms"] = {
            "target_decode": latency.forward_ms(target.shape, knobs.weight_dtype, knobs.batch_size, 1, ctx),
            "target_verify": latency.forward_ms(target.shape, knobs.weight_dtype, knobs.batch_size, knobs.draft_length + 1, ctx),
            "draft_decode": latency.forward_ms(draft.shape, knobs.weight_dtype, knobs.batch_size, 1, ctx),
        }
    row["measured_tokens_per_s"] = row["stats"]["decode_tokens_per_s"]
    del engine
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="CPU, small shapes, a small grid: checks the script, not the model")
    ap.add_argument("--out", default="gpu_validate.json")
    ap.add_argument("--time-limit", type=float, default=450.0, help="stop starting new configurations after this many seconds")
    args = ap.parse_args(argv)
    device, spec, profile = device_setup(args.dry_run)
    grid = DRY_GRID if args.dry_run else GRID
    started = time.perf_counter()
    rows, skipped = [], []
    with tempfile.TemporaryDirectory() as tmp:
        pairs = PAIRS
        if args.dry_run:
            pairs = [(shrunk_preset(t, tmp, 2, 64), shrunk_preset(d, tmp, 1, 32)) for t, d in PAIRS]
        dtypes = ["fp32"] if args.dry_run else DTYPES  # bf16 matmuls crawl on most CPUs
        for (t_ref, d_ref), dtype in itertools.product(pairs, dtypes):
            target = load_model(t_ref, dtype, device, seed=0)
            draft = load_model(d_ref, dtype, device, seed=1)
            for batch, context, k in itertools.product(grid["batch"], grid["context"], grid["draft_length"]):
                if time.perf_counter() - started > args.time_limit:
                    skipped.append([t_ref, dtype, batch, context, k])
                    continue
                knobs = Knobs(batch_size=batch, max_context=context, draft_length=k, weight_dtype=dtype)
                try:
                    rows.append(run_config(target, draft, t_ref, d_ref, knobs, spec, device, profile))
                except Exception as exc:  # one configuration's OOM or refusal must not lose the others
                    rows.append({"target": t_ref, "dtype": dtype, "batch": batch, "context": context,
                                 "draft_length": k, "error": f"{type(exc).__name__}: {exc}"[:300]})
                print(f"[{time.perf_counter() - started:6.1f}s] {os.path.basename(t_ref)} {dtype} B={batch} C={context} k={k}",
                      file=sys.stderr, flush=True)
            del target, draft
            if device.type == "cuda":
                torch.cuda.empty_cache()
    out = {"device": spec.__dict__, "profile": profile.key if profile else None, "dry_run": args.dry_run,
           "torch": torch.__version__, "seconds": time.perf_counter() - started, "rows": rows, "skipped": skipped}
    with open(args.out, "w") as fh:
        json.dump(out, fh, indent=1, default=str)
    print(render(rows, device.type == "cuda"))
    print(f"{len(rows)} configurations in {out['seconds']:.0f} s; {len(skipped)} skipped for time; wrote {args.out}")
    return 0


def render(rows, on_gpu: bool) -> str:
    return gpu_validate_table(rows, on_gpu)


if __name__ == "__main__":
    sys.exit(main())
