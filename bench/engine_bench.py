"""Engine vs transformers, same pair, same k, same prompts, one process, batch 1, greedy.

    .venv/bin/python bench/engine_bench.py [--target REF] [--draft REF|noisy:SIGMA] [-k 4]
        [--num-prompts 8] [--max-new-tokens 64] [--threads N] [--repeats 2] [--json]

Rows: this engine (speculative decoding inside a plan), the same engine with k=0 (plain decoding: what
of the gain is the runtime itself), transformers `generate` (plain greedy), and
transformers `generate(assistant_model=draft)` with the same k held constant (set on the assistant's
generation config, where transformers reads it: num_assistant_tokens=k, schedule "constant",
assistant_confidence_threshold=0, so it always drafts k).

Default pair: bundled:smollm2-135m-instruct with the trained draft bundled:smollm2-135m-draft when
that folder exists; otherwise a noisy copy of the target (noise on its tied embedding), which says
nothing about speed-up over plain decoding (the draft costs as much as the target) but compares the
two speculative implementations on equal work. Prompts: the first turn of the held-out calibration
prompts (specmemo_plan/data), one per category, in the chat template.

Measured per method:
- tokens/s: new tokens of all prompts / wall time of their generate calls (prefill included); the
  methods run interleaved prompt by prompt (order rotated), best of --repeats passes;
- peak generation memory = peak memory during generation minus the weights (docs/memory-model.md). On CPU it is
  the process's peak RSS during a generate call (VmHWM, reset through /proc/self/clear_refs after
  malloc_trim) minus the RSS before it, the largest over the prompts; for the engine, whose KV caches and step buffers are
  allocated once beforehand, their exact bytes are added. On CUDA: torch's peak allocated bytes
  minus the bytes allocated before the calls (plus the engine's static caches).
- acceptance rate: the engine's, per token (specmemo_plan.quantities.acceptance_rate, the planner's
  definition; greedy, same pair and k: transformers' assisted generation accepts the same drafts).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from engine import memory_probe  # noqa: E402
from engine.loading import LoadedModel, load_model, load_tokenizer  # noqa: E402
from engine.results import Stats  # noqa: E402
from engine.runtime import Engine  # noqa: E402
from engine.tokens import template_ids  # noqa: E402
from specmemo_plan.errors import SpecMemoError  # noqa: E402
from specmemo_plan.memory import Knobs  # noqa: E402
from specmemo_plan.models import load_shape  # noqa: E402
from specmemo_plan.hardware import this_device  # noqa: E402
from specmemo_plan.plan import Generation, make_plan  # noqa: E402

DEFAULT_TARGET = "bundled:smollm2-135m-instruct"
DEFAULT_DRAFT = "bundled:smollm2-135m-draft"
CALIBRATION = Path(__file__).resolve().parents[1] / "specmemo_plan" / "data" / "calibration_prompts.json"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def load_pair(target_ref: str, draft_ref: str | None, dtype: str, device):
    target = load_model(target_ref, dtype, device)
    note = None
    if draft_ref is None:
        try:
            load_shape(DEFAULT_DRAFT)
            draft_ref = DEFAULT_DRAFT
        except SpecMemoError:
            draft_ref = "noisy:0.15"
            note = f"{DEFAULT_DRAFT} is not there yet: the draft is a noisy copy of the target (same size)"
    if draft_ref.startswith("noisy:"):
        sigma = float(draft_ref.split(":", 1)[1])
        model = copy.deepcopy(target.model)
        gen = torch.Generator(device="cpu").manual_seed(0)
        with torch.no_grad():
            emb = model.get_input_embeddings().weight
            emb.add_((sigma * emb.std().item() * torch.randn(emb.shape, generator=gen)).to(emb))
        draft = LoadedModel(model, target.shape, random_weights=False)
        draft_plan_ref = target_ref  # same shape and fingerprint as the target
    else:
        draft = load_model(draft_ref, dtype, device)
        draft_plan_ref = draft_ref
    return target, draft, draft_ref, draft_plan_ref, note


def pad_token(model) -> int:
    """The pad id transformers' generate is given: the model's, else its (first) EOS."""
    pad, eos = model.generation_config.pad_token_id, model.generation_config.eos_token_id
    return pad if pad is not None else (eos[0] if isinstance(eos, list) else eos)


def constant_assistant(draft_model, k: int) -> None:
    """Assisted generation drafting exactly k tokens a step, as the engine: transformers reads the draft
    length from the assistant's own generation config; constant schedule, no confidence early stop."""
    config = draft_model.generation_config
    config.num_assistant_tokens = k
    config.num_assistant_tokens_schedule = "constant"
    config.assistant_confidence_threshold = 0.0


def bench_prompts(tokenizer, n: int, path: str | None) -> list[list[int]]:
    if path:
        texts = [line for line in Path(path).read_text().splitlines() if line.strip()]
    else:
        data = json.loads(CALIBRATION.read_text())["prompts"]
        by_category = {}
        for p in data:
            by_category.setdefault(p["category"], []).append(p["turns"][0])
        texts = [t for i in range(12) for c in by_category for t in by_category[c][i : i + 1]]
    texts = texts[:n]
    if tokenizer is None:
        return [[(b % 250) + 3 for b in t.encode()] for t in texts]
    return [template_ids(tokenizer, [{"role": "user", "content": t}]) for t in texts]


class Measure:
    """Wall time, new tokens and the peak generation memory of a block of generate calls."""

    def __init__(self, device):
        self.device = device

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            memory_probe.trim_heap()
            self.start = memory_probe._proc_status().get("VmRSS", 0)
            memory_probe.reset_peak_rss()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.seconds = time.perf_counter() - self.t0
            self.peak = torch.cuda.max_memory_allocated(self.device) - self.start
        else:
            self.seconds = time.perf_counter() - self.t0
            self.peak = memory_probe._proc_status().get("VmHWM", 0) - self.start
        return False


def run(args) -> dict:
    device = torch.device(args.device)
    target, draft, draft_ref, draft_plan_ref, note = load_pair(args.target, args.draft, args.dtype, device)
    if note:
        log(f"note: {note}")
    tokenizer = load_tokenizer(args.target)
    prompts = bench_prompts(tokenizer, args.num_prompts, args.prompts_file)
    k, max_new = args.k, args.max_new_tokens
    pad = pad_token(target.model)

    context = max(len(p) for p in prompts) + max_new
    knobs = Knobs(batch_size=1, max_context=context, draft_length=k, weight_dtype=args.dtype)
    spec = this_device(torch_device=str(device), use_torch=True).spec
    # the whole device as the budget: the bench measures memory, it does not cap it
    plan = make_plan(args.target, target.shape, draft_plan_ref, draft.shape, knobs, spec, spec.total_memory_bytes,
                     generation=Generation(max_new_tokens=max_new))
    engine = Engine(plan, device=str(device), target=target, draft=draft, tokenizer=tokenizer)
    # the same engine without a draft (k=0): what of the gain is the runtime, what is speculation
    plain_plan = make_plan(args.target, target.shape, None, None, replace(knobs, draft_length=0), plan.device,
                           spec.total_memory_bytes,
                           generation=Generation(max_new_tokens=max_new))
    engine_plain = Engine(plain_plan, device=str(device), target=target, tokenizer=tokenizer)

    def static_of(e):
        static = e.static_bytes()
        return static["target_kv"] + static["draft_kv"] + static["candidate_buffers"]

    engine_static = {"engine (speculative)": static_of(engine), "engine (plain, k=0)": static_of(engine_plain)}

    def hf_plain(ids):
        with torch.inference_mode():
            out = target.model.generate(torch.tensor([ids], device=device), do_sample=False, max_new_tokens=max_new,
                                        pad_token_id=pad)
        return out[0, len(ids):].tolist()

    constant_assistant(draft.model, k)

    def hf_assisted(ids):
        with torch.inference_mode():
            out = target.model.generate(torch.tensor([ids], device=device), assistant_model=draft.model,
                                        do_sample=False, max_new_tokens=max_new, pad_token_id=pad)
        return out[0, len(ids):].tolist()

    pair_stats, collect = Stats(k), [False]

    def ours(ids):
        result = engine.generate([ids], max_new_tokens=max_new)
        if collect[0]:
            pair_stats.merge(result.stats)
        return result.outputs[0].token_ids

    def ours_plain(ids):
        return engine_plain.generate([ids], max_new_tokens=max_new).outputs[0].token_ids

    methods = {"engine (speculative)": ours, "engine (plain, k=0)": ours_plain,
               "transformers generate (plain)": hf_plain, "transformers generate (assisted)": hf_assisted}
    log("warming up")
    for fn in methods.values():
        fn(prompts[0][:16])
    names = list(methods)
    results, outputs = {}, {}
    for rep in range(args.repeats):
        seconds = dict.fromkeys(names, 0.0)
        peaks = dict.fromkeys(names, 0)
        outs = {name: [] for name in names}
        log(f"repeat {rep + 1}/{args.repeats}")
        collect[0] = rep == 0
        for i, prompt in enumerate(prompts):
            # interleaved per prompt, order rotated: background load hits every method alike
            for name in names[i % len(names):] + names[: i % len(names)]:
                with Measure(device) as m:
                    outs[name].append(methods[name](prompt))
                seconds[name] += m.seconds
                peaks[name] = max(peaks[name], m.peak + engine_static.get(name, 0))
        for name in names:
            tokens = sum(len(o) for o in outs[name])
            best = results.get(name)
            results[name] = {
                "tokens": tokens,
                "seconds": min(seconds[name], best["seconds"]) if best else seconds[name],
                "tokens_per_s": max(tokens / seconds[name], best["tokens_per_s"]) if best else tokens / seconds[name],
                "peak_generation_bytes": max(peaks[name], best["peak_generation_bytes"]) if best else peaks[name],
            }
            outputs[name] = outs[name]
    acceptance = pair_stats.as_dict()  # the engine's own statistics, first pass
    ref = outputs["transformers generate (plain)"]
    identical = {name: outs == ref for name, outs in outputs.items()}
    return {
        "target": args.target, "draft": draft_ref, "draft_note": note, "k": k, "dtype": args.dtype,
        "device": str(device), "threads": torch.get_num_threads(), "prompts": len(prompts),
        "max_new_tokens": max_new, "plan_context": context,
        "acceptance_rate": acceptance["acceptance_rate"], "tokens_per_step": acceptance["tokens_per_step"],
        "accepted_histogram": acceptance["accepted_histogram"],
        "predicted_generation_bytes": plan.prediction.memory["generation_bytes"],
        "engine_static_generation_bytes": engine_static["engine (speculative)"],
        "memory_method": ("torch.cuda peak allocated minus allocated before" if device.type == "cuda" else
                          "peak RSS (VmHWM reset via /proc/self/clear_refs after malloc_trim) minus RSS before") +
                         "; engine: plus its preallocated KV caches and step buffers",
        "identical_to_plain_greedy": identical,
        "methods": results,
    }


def render(report: dict) -> str:
    from specmemo_plan.render.workflow import engine_bench_table
    from specmemo_plan.units import format_bytes

    methods = report["methods"]
    engine = methods["engine (speculative)"]
    assisted = methods["transformers generate (assisted)"]
    plain = methods["transformers generate (plain)"]
    table = engine_bench_table(methods, report["identical_to_plain_greedy"])
    lines = [
        f"pair: {report['target']} + draft {report['draft']}, k={report['k']}, {report['dtype']}, {report['device']}, "
        f"{report['threads']} threads, {report['prompts']} prompts x {report['max_new_tokens']} new tokens, batch 1, greedy",
    ]
    if report["draft_note"]:
        lines.append(f"note: {report['draft_note']}")
    lines += [
        "", table, "",
        f"acceptance rate {report['acceptance_rate']:.3f}, {report['tokens_per_step']:.2f} tokens per step",
        f"engine vs assisted: {engine['tokens_per_s'] / assisted['tokens_per_s']:.2f}x tokens/s, "
        f"{engine['peak_generation_bytes'] / assisted['peak_generation_bytes']:.2f}x generation memory",
        f"engine vs plain: {engine['tokens_per_s'] / plain['tokens_per_s']:.2f}x tokens/s; "
        f"vs its own plain decoding (k=0): {engine['tokens_per_s'] / methods['engine (plain, k=0)']['tokens_per_s']:.2f}x",
        f"plan's predicted generation memory: {format_bytes(report['predicted_generation_bytes'])} "
        f"(static part {format_bytes(report['engine_static_generation_bytes'])})",
        f"memory: {report['memory_method']}",
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    ap = bench_parser(__doc__)
    ap.add_argument("--target", default=DEFAULT_TARGET)
    ap.add_argument("--draft", default=None, help=f"a model reference, or noisy:SIGMA (default: {DEFAULT_DRAFT} when present)")
    ap.add_argument("-k", "--draft-length", dest="k", type=int, default=4)
    ap.add_argument("--num-prompts", type=int, default=8)
    ap.add_argument("--prompts-file", help="one prompt per line instead of the calibration prompts")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--dtype", default="fp32", choices=("fp32", "fp16", "bf16"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=2, help="timed passes per method, best kept")
    return ap


def bench_parser(doc: str) -> argparse.ArgumentParser:
    """The benches' parser: their docstring as help, and the options every bench takes (--threads, --json)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--json", action="store_true")
    return ap


def bench_main(parser: argparse.ArgumentParser, run_fn, render_fn, argv=None) -> None:
    """Parse, set the torch threads, run, print the table (or --json); a SpecMemoError is one line and exit 2
    (the benches' CLI)."""
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        report = run_fn(args)
    except SpecMemoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(report, indent=2) if args.json else render_fn(report))


def main(argv=None) -> None:
    bench_main(build_parser(), run, render, argv)


if __name__ == "__main__":
    main()
