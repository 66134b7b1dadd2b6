"""Tables of the calculator commands: presets, estimate, min-budget, fit, plan, devices, compare, export.

Each function takes numbers a command already gathered and returns text; nothing here computes a result.
"""

from __future__ import annotations

from ..drafting.trees import TreeShape
from ..units import format_bytes
from . import breakdown_table, describe_bytes, gib, key_values, table


# How to replace an assumed acceptance, in the words of the calculator commands
MEASURE_HINT = "give --acceptance, or measure it with `specmemo-plan profile`"


def latency_words(source: str) -> str:
    """Where a prediction's forward latencies come from (a LatencyModel.source), for people."""
    kind, _, rest = source.partition(":")
    if kind == "bandwidth":
        return f"a bandwidth-only model at {rest.replace('GB/s', ' GB/s')} (assumed: no --profile; set --bandwidth)"
    if kind == "roofline":
        return f"the {rest} profile's roofline (spec-sheet peaks and assumed efficiencies, not measured)"
    if kind == "measured":
        return f"curves fitted to latencies measured on {rest}"
    return source


def acceptance_words(acceptance: float, source: str, hint: str = MEASURE_HINT) -> str:
    """How a prediction's acceptance was obtained: assumed (with what to do about it), given, or measured."""
    if source == "assumed":
        return f"an assumed acceptance {acceptance:g} (no measurement; {hint})"
    if source == "given":
        return f"the given acceptance {acceptance:g} (not measured)"
    return f"the {source} acceptance {acceptance:.3f}"


def limit_note(value, limit: int) -> str:
    """A searched value, marked when it sits at the search limit (then the optimum may lie past it)."""
    if value is None:
        return "none"
    return f"{value} (the search limit)" if value >= limit else str(value)


def split_rows(split) -> str:
    """One row per device of a placement.DeviceSplit."""
    rows = []
    for s in split.devices:
        c = s.memory.components
        rows.append([s.index, f"{s.layers[0]}-{s.layers[1]}" if s.layers else "-",
                     gib(c["target_weights"] + c["draft_weights"]), gib(c["target_kv"] + c["draft_kv"]),
                     gib(c["candidate_buffers"]), gib(c["activations"]), gib(c["runtime_overhead"]),
                     gib(s.memory.total_bytes), gib(s.budget_bytes), ", ".join(s.holds) or "-"])
    return table(rows, ["device", "layers", "weights GiB", "KV GiB", "buffers GiB", "activations GiB",
                        "overhead GiB", "total GiB", "budget GiB", "holds"])


def split_summary(split, single_total: int) -> str:
    d = split.placement.duplicates
    return (f"{split.used_devices} of {len(split.devices)} devices used ({split.placement.policy}); all devices "
            f"together {format_bytes(split.total.total_bytes)} = one-device {format_bytes(single_total)} + per-device "
            f"duplicates (runtime overhead {format_bytes(d['runtime_overhead'])}, activations "
            f"{format_bytes(d['activations'])}); {split.placement.hops} hop(s) per forward")


def with_split(lines: list[str], split, single_total: int | None = None) -> str:
    """The command's lines, then the per-device table (and summary) when the plan spans several devices."""
    if len(split.devices) > 1:
        lines = lines + [split_rows(split)] + ([split_summary(split, single_total)] if single_total else [])
    return "\n".join(lines)


def presets(rows: list[dict]) -> str:
    def row(r):
        if "model_type" not in r:  # a bundled model whose package is missing
            return [r["name"], r["weights"], *["-"] * 6, r["note"]]
        return [r["name"], r["weights"], r["model_type"], f"{r['num_params'] / 1e6:,.1f}M", r["num_layers"],
                r["num_kv_heads"], r["head_dim"], r["vocab_size"], f"{r['kv_bytes_per_token_fp16'] / 1024:g}"]

    return table([row(r) for r in rows], ["model (--target/--draft)", "weights", "type", "params", "layers", "KV heads",
                                          "head_dim", "vocab", "KV KiB/token (fp16)"])


def estimate(head: str, memory, split, single_total: int, profile=None, fits: bool | None = None,
             models=()) -> str:
    lines = [head, breakdown_table(memory)]
    for role, facts in zip(("target", "draft"), models):
        if facts is not None:
            stored = f"; stored {format_bytes(facts['stored_bytes'])} ({facts['stored_source']}, --dtype stored)" \
                if facts["stored_bytes"] is not None and not facts["weight_source"].startswith(facts["stored_source"]) else ""
            lines.append(f"{role} weights from: {facts['weight_source']}{stored}")
    if profile is not None and len(split.devices) == 1:
        lines.append(f"{'fits' if fits else 'does NOT fit'} {profile.name} ({format_bytes(profile.memory_bytes)})")
    if len(split.devices) > 1:
        lines = [head, split_rows(split), split_summary(split, single_total)]
    return "\n".join(lines)


def min_budget(result, latency_source: str, acceptance: float, acceptance_source: str, devices: int,
               k_source: str) -> str:
    s = result.speed
    budget = describe_bytes(result.total_bytes) + (f" x {devices} devices" if devices > 1 else "")
    pairs = [
        ["minimum budget" + (" per device" if devices > 1 else ""), budget],
        ["at draft length k", f"{result.draft_length} ({k_source})"],
        ["predicted speedup", f"{s.speedup:.2f}x at {acceptance_words(acceptance, acceptance_source)}"],
        ["predicted tokens/s", f"{s.tokens_per_s:,.1f} (plain {s.plain_tokens_per_s:,.1f})"],
        ["latency from", latency_words(latency_source)],
        ["plain decoding needs", describe_bytes(result.plain_total_bytes)],
    ]
    body = split_rows(result.split) if devices > 1 else breakdown_table(result.memory)
    return "\n".join([key_values(pairs), body])


def fit(data: dict, knobs, has_draft: bool, devices: int, k_limit: int, split) -> str:
    budget = describe_bytes(data["budget_bytes"]) + (f" per device x {devices}" if devices > 1 else "")
    verdict = "fits" if data["fits"] else "does NOT fit"
    need = f"{describe_bytes(data['total_bytes'])}: {verdict}" if data["total_bytes"] is not None else verdict
    lines = [key_values([
        ["budget", budget],
        ["these knobs need", need],
        [f"largest batch (context {knobs.max_context}, k={knobs.draft_length})",
         limit_note(data["largest_batch"], data["batch_search_limit"])],
        [f"largest context (batch {knobs.batch_size}, k={knobs.draft_length})",
         f"{data['largest_context'] or 'none'} (models' limit {data['model_max_context']})"],
        [f"largest k (batch {knobs.batch_size}, context {knobs.max_context}, searched to {k_limit})",
         limit_note(data["largest_draft_length"], k_limit) if has_draft else "- (no draft)"],
    ])] + [f"note: {n}" for n in data.get("notes", [])]
    return with_split(lines, split) if split is not None else "\n".join(lines)


def plan(path, p, split, single_total: int, speed, latency_source: str, acceptance_source: str, link,
         hint: str = MEASURE_HINT) -> str:
    n = p.device.count
    device = f"{p.device.name} ({p.device.kind}, {format_bytes(p.device.total_memory_bytes)}" + (" each)" if n > 1 else ")")
    speed_text = f"{speed.tokens_per_s:,.1f} (plain decoding)"
    if p.draft is not None or p.knobs.draft_length:
        speed_text = (f"{speed.tokens_per_s:,.1f} ({speed.speedup:.2f}x plain) at "
                      + acceptance_words(speed.acceptance_rate, acceptance_source, hint))
    latency_text = latency_words(latency_source) + (f", {link:g} GB/s between devices" if n > 1 and link else "")
    pairs = [
        ["devices" if n > 1 else "device", (f"{n} x " if n > 1 else "") + device],
        ["budget per device" if n > 1 else "budget", describe_bytes(p.budget_bytes)],
        ["predicted total, all devices" if n > 1 else "predicted total", describe_bytes(p.prediction.memory["total_bytes"])],
        ["predicted tokens/s", speed_text],
        ["latency from", latency_text],
    ]
    return with_split([f"wrote {path}", key_values(pairs)], split, single_total)


def profiles(rows: list[dict]) -> str:
    return table(
        [[r["key"], r["name"], r["backend"], gib(r["memory_bytes"]), r["memory_bandwidth_gbps"],
          r["peak_fp16_tflops"], r["peak_bf16_tflops"] or "-", r["peak_int8_tops"] or "-"] for r in rows],
        ["profile", "name", "backend", "GiB", "GB/s", "fp16 TFLOPS", "bf16 TFLOPS", "int8 TOPS"])


def probed(rows: list[dict]) -> str:
    return table(
        [[r["backend"], r["index"], r["name"], gib(r["total_memory_bytes"]),
          gib(r["free_memory_bytes"]) if r["free_memory_bytes"] is not None else "-",
          r["profile"] or "-", r["source"]] for r in rows],
        ["backend", "#", "name", "GiB", "free GiB", "profile", "source"])


def compare(verdicts, sources: list[str] = ()) -> str:
    def speed(v):
        return "-" if v is None else f"{v:,.1f}"

    rows = [[v.profile, gib(v.memory_bytes), "yes" if v.plain_fits else "no", "yes" if v.sd_fits else "no",
             gib(v.min_budget_bytes) if v.min_budget_bytes else "-",
             "-" if v.best_draft_length is None else limit_note(v.best_draft_length, v.draft_length_limit), v.best_batch or "-",
             speed(v.plain_tokens_per_s), speed(v.sd_tokens_per_s), "-" if v.speedup is None else f"{v.speedup:.2f}x",
             gib(v.headroom_bytes) if v.headroom_bytes is not None else "-", v.note] for v in verdicts]
    text = table(rows, ["device", "GiB", "plain fits", "SD fits", "SD min budget GiB", "best k", "best batch",
                        "plain tok/s", "best tok/s", "speedup", "headroom GiB", "note"])
    return "\n".join([text, *sources])


def export(result) -> str:
    lines = [f"# {result.engine_version} (option names from {', '.join(result.docs)})", result.command]
    if result.unsupported:
        lines += ["", f"not expressible in {result.engine}:"] + [f"  - {u}" for u in result.unsupported]
    if result.notes:
        lines += ["", "notes:"] + [f"  - {n}" for n in result.notes]
    return "\n".join(lines)


def methods(rows: list[dict], budget: int | None) -> str:
    """The draft methods side by side (min-budget / fit with several --draft-method)."""
    def shape(t):
        return TreeShape(**t).label

    out, notes = [], []
    for r in rows:
        if "error" in r:
            out.append([r["draft_method"] or "-", "-", "-", "-", "-", "-", "-", "-"])
            notes.append(f"{r['draft_method']}: {r['error']}")
            continue
        mb = gib(r["min_budget_bytes"]) if r["min_budget_bytes"] else "does not pay"
        at = f" ({shape(r['min_budget_tree'])}, {r['min_budget_speedup']:.2f}x)" if r["min_budget_bytes"] else ""
        fits = ("yes" if r["fits"] else "no") if "fits" in r else "-"
        out.append([r["draft_method"], shape(r["tree"]), gib(r["total_bytes"]), gib(r["draft_weights_bytes"] + r["draft_kv_bytes"]),
                    fits, f"{r['tokens_per_s']:,.1f}", f"{r['speedup']:.2f}x", mb + at])
        ref = "given" if r["acceptance_source"] == "given" else r["acceptance_reference"]
        notes.append(f"{r['draft_method']}: acceptance {r['acceptance']:g} ({ref})")
        if r.get("min_budget_note"):
            notes.append(f"{r['draft_method']}: {r['min_budget_note']}")
    head = ["method", "shape", "total GiB", "draft weights+KV GiB", "fits" if budget else "fits (no --budget)",
            "tokens/s", "speedup", "cheapest budget that pays GiB"]
    return "\n".join([table(out, head), *notes])


def engine_block(report: dict) -> str:
    """--engine: the engine's own parts per GPU, its startup lines as it would print them, its assumptions."""
    e = report["engine"]
    names = ("weights_bytes", "kv_cache_bytes", "activation_peak_bytes", "compute_buffer_bytes", "non_torch_bytes",
             "cuda_graph_bytes", "sampler_bytes", "cuda_context_bytes", "total_bytes")
    rows = [[n, gib(e[n])] for n in names if e.get(n)]
    lines = ["", f"as {e['engine']} ({e['version']}) allocates it, per GPU:", table(rows, ["part", "GiB"])]
    if e.get("kv_cache_tokens") is not None:
        lines.append(f"KV cache tokens {e['kv_cache_tokens']:,}; max concurrency {e['max_concurrency']:.2f}x")
    lines += [f"startup: {line}" for line in report["startup_log"]]
    if report["refusal"]:
        lines.append(f"would NOT start: {report['refusal']}")
    lines += [f"assumed: {a}" for a in e["assumptions"]]
    return "\n" + "\n".join(lines)


def engine_min_budget(info: dict | None) -> str:
    """min-budget --engine: the smallest GPU the engine starts the plan on, what was bisected, its startup."""
    if not info:
        return ""
    e = info["engine_memory"]
    pairs = [[f"smallest GPU for {info['engine']}", describe_bytes(info["min_device_memory_bytes"])]]
    if info["engine_budget_bytes"] is not None:
        pairs.append([f"{info['engine']}'s budget there", describe_bytes(info["engine_budget_bytes"])])
    if e.get("kv_cache_tokens") is not None:
        pairs.append(["KV cache tokens", f"{e['kv_cache_tokens']:,} (max concurrency {e['max_concurrency']:.2f}x)"])
    step = "1 MiB" if info["step_bytes"] == 2**20 else f"{info['step_bytes']:,} B"
    pairs += [["bisected", info["bisected"]], [f"{step} less", info["one_step_less"] or "-"]]
    lines = ["", f"as {info['version']} starts it, per GPU:", key_values(pairs)]
    lines += [f"startup: {line}" for line in info["startup_log"]] + [f"assumed: {a}" for a in e["assumptions"]]
    return "\n" + "\n".join(lines)


def engine_prediction(e: dict | None) -> str:
    """plan --engine: the engine's prediction the plan records (provenance.engine_prediction)."""
    if not e:
        return ""
    parts = [f"peak {gib(e['total_bytes'])} GiB per GPU"]
    if e.get("kv_cache_tokens") is not None:
        parts.append(f"KV cache tokens {e['kv_cache_tokens']:,}, max concurrency {e['max_concurrency']:.2f}x")
    return f"\n{e['version']} starts this plan: " + "; ".join(parts) + " (in the plan's provenance.engine_prediction)"


def compare_engine(verdicts) -> str:
    """compare --engine: whether each device's best configuration starts on the engine, and its pool."""
    rows = [[v.profile, "-" if v.engine_starts is None else "yes" if v.engine_starts else "no",
             f"{v.engine_kv_cache_tokens:,}" if v.engine_kv_cache_tokens is not None else "-",
             f"{v.engine_max_concurrency:.2f}x" if v.engine_max_concurrency is not None else "-",
             v.engine_refusal or ""] for v in verdicts if v.engine]
    if not rows:
        return ""
    head = next(v.engine for v in verdicts if v.engine)
    return "\n\n" + table(rows, ["device", f"{head} starts", "KV cache tokens", "max concurrency", "why not"])


def _shape_note(m) -> str:
    """A method's best draft, chain or tree, marked when its depth sits at the search limit."""
    if not m.draft_length or m.tree is None or m.tree["topk"] == 1:
        return limit_note(m.draft_length, m.draft_length_limit)
    tree = TreeShape(**m.tree)
    return tree.label + (" (the depth limit)" if tree.depth >= m.draft_length_limit else "")


def compare_methods(devices, sources: list[str] = ()) -> str:
    """compare with several draft methods: one row per device and method, side by side (compare.DeviceMethods)."""
    def speed(v):
        return "-" if v is None else f"{v:,.1f}"

    rows = []
    for d in devices:
        if not d.methods:
            rows.append([d.profile, gib(d.memory_bytes), "-", "-", "-", "-", "-", "-", "-", "-", d.note])
        for m in d.methods:
            k = "-" if m.draft_length is None else _shape_note(m)
            best = "*" if d.best_method == m.draft_method and m.pays else ""
            rows.append([d.profile, gib(d.memory_bytes), m.draft_method + best, k, m.batch or "-",
                         gib(m.total_bytes) if m.total_bytes is not None else "-", speed(m.plain_tokens_per_s),
                         speed(m.tokens_per_s), "-" if m.speedup is None else f"{m.speedup:.2f}x",
                         gib(m.min_budget_bytes) if m.min_budget_bytes else "-", m.note])
    # the profiles' rows share one acceptance per method (given, or the method's default)
    roofline = next((d for d in devices if d.methods and not d.profile.startswith("measured:")), None)
    notes = [f"{m.draft_method}: acceptance {m.acceptance:g} ({m.acceptance_source})"
             for m in (roofline.methods if roofline else ()) if m.acceptance is not None]
    siblings = {f"{m.draft_method} trees: siblings {m.siblings_source}" for d in devices for m in d.methods
                if m.siblings_source}
    notes += sorted(siblings)
    text = table(rows, ["device", "GiB", "method", "best draft", "batch", "memory GiB", "plain tok/s", "tok/s", "speedup",
                        "cheapest budget that pays GiB", "note"])
    return "\n".join([text, "* the fastest method that pays on that device", *notes, *sources])
