"""The memory share an exported vLLM or SGLang command takes, chosen by the engine's own accounting
(specmemo_plan/engines), and the check that refuses an export whose predicted peak passes the plan's budget.

vLLM's --gpu-memory-utilization and SGLang's --mem-fraction-static are shares of the GPU's total memory
(cudaMemGetInfo), and both engines hold more than their share: vLLM the CUDA context, the CUDA graphs
(captured after the KV cache) and the rejection sampler's excess over its profile run (engines/vllm.py);
SGLang the draft's weights and pool, the target pool's growth to match it, activations and CUDA graphs
(engines/sglang.py). So the share is not budget / device memory. It is the largest share, in steps of 0.0001
(the 4 decimals the command spells), at which the engine's predicted peak (EngineMemory.total_bytes, every
part the process holds on the GPU) stays within the plan's per-device budget, and at which vLLM's own
start-up check passes (the share must fit in the memory free beside the CUDA context). The peak grows with
the share (more KV blocks), so bisection finds it; the KV pool grows with it too, so if the pool at that
share holds fewer than the plan's batch of sequences at its context (max_concurrency), no share in the
budget does, and the export is refused with the bytes missing: the peak at the smallest share that holds
the batch, less the budget.

`EngineCheck` is the engine model an export is sized by (one GPU of a kind the engine runs, a plan with no
draft or a draft model); `with_startup` (startup.py) runs the same check on the settings as written, so
nothing is emitted whose predicted peak passes the budget, llama.cpp's included.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..engines import EngineMemory, EngineOptions, engine_fits, engine_memory, engine_version
from ..errors import SpecMemoError
from ..memory import Knobs, compute_dtype
from ..models import ModelShape, load_shape
from ..plan import Plan
from ..units import format_bytes
from .facts import SHARE_DIGITS, Fraction, _Facts

STEPS = 10**SHARE_DIGITS  # shares in steps of 0.0001
MODELLED = ("vllm", "sglang", "llama.cpp")  # exports whose engine has a memory model (engines/)
SHARES = {"vllm": ("gpu_memory_utilization", "--gpu-memory-utilization", "vLLM"),
          "sglang": ("mem_fraction_static", "--mem-fraction-static", "SGLang")}
KV_AUTO = "auto"  # vLLM's and SGLang's --kv-cache-dtype for "the model dtype"


@dataclass(frozen=True)
class EngineCheck:
    """The engine model an export is sized and checked by: the plan's models, knobs, GPU and budget."""

    engine: str  # engines registry name: vllm | sglang | llama.cpp
    version: str  # the memory model's version (engines.<engine>.VERSION)
    target: ModelShape
    draft: ModelShape | None
    knobs: Knobs
    device_total_bytes: int
    budget_bytes: int  # the plan's per-device budget
    cuda_context_bytes: int | None  # the plan's runtime overhead (the device profile's CUDA context)
    device_name: str

    def memory(self, settings: dict) -> EngineMemory:
        """The engine with the export's settings (the KV type as the export writes it)."""
        return engine_memory(self.engine, self.target, self.draft, engine_knobs(self.knobs, self.engine, settings),
                             settings_options(self.engine, settings, self.cuda_context_bytes, self.device_name),
                             device_total_bytes=self.device_total_bytes)


def plan_context(plan: Plan) -> int | None:
    """The CUDA context the engines are given: the plan's runtime overhead (None: the engine model's default)."""
    overhead = plan.per_device[0].memory.components["runtime_overhead"] if plan.per_device else 0
    return overhead or None


def engine_check(plan: Plan, export: str) -> EngineCheck | str | None:
    """The engine model that sizes an export of `plan` to `export`; None for an engine without one; a sentence
    saying why the model does not reach this plan otherwise."""
    if export not in MODELLED:
        return None
    version = engine_version(export)
    if plan.device.count > 1:
        return f"{plan.device.count} devices: the {version} model covers one GPU (no pipeline parallelism)"
    if plan.device.kind == "cpu":
        return "a CPU plan"
    if plan.draft is not None and plan.knobs.method(True) != "draft-model":
        return f"the draft method {plan.knobs.method(True)}: the model covers a draft model or none"
    return EngineCheck(export, version, load_shape(plan.target.ref), load_shape(plan.draft.ref) if plan.draft else None,
                       plan.knobs, plan.device.total_memory_bytes, plan.budget_bytes, plan_context(plan),
                       plan.device.name)


def engine_knobs(knobs: Knobs, engine: str, settings: dict) -> Knobs:
    """The plan's knobs with the KV type the engine gets: vLLM's and SGLang's 'auto' is the model dtype
    (the compute dtype of --dtype), fp8_e4m3 / fp8_e5m2 are one byte; llama.cpp's types are options."""
    kv = settings.get("kv_cache_dtype")
    if engine not in SHARES or kv is None:
        return knobs
    return replace(knobs, kv_dtype=compute_dtype(knobs.weight_dtype) if kv == KV_AUTO else "fp8")


def settings_options(engine: str, s: dict, cuda_context_bytes: int | None, device_name: str) -> EngineOptions:
    """An export's settings (the engine's own names) as the EngineOptions its memory model reads."""
    common = dict(cuda_context_bytes=cuda_context_bytes, device_name=device_name)
    if engine == "vllm":
        return EngineOptions(gpu_memory_utilization=s.get("gpu_memory_utilization"),
                             max_num_seqs=s.get("max_num_seqs"), max_model_len=s.get("max_model_len"),
                             max_num_batched_tokens=s.get("max_num_batched_tokens"),
                             enforce_eager=bool(s.get("enforce_eager")), **common)
    if engine == "sglang":
        return EngineOptions(mem_fraction_static=s.get("mem_fraction_static"),
                             max_running_requests=s.get("max_running_requests"),
                             chunked_prefill_size=s.get("chunked_prefill_size"),
                             speculative_algorithm=s.get("speculative_algorithm"),
                             speculative_num_steps=s.get("speculative_num_steps"),
                             speculative_eagle_topk=s.get("speculative_eagle_topk"),
                             speculative_num_draft_tokens=s.get("speculative_num_draft_tokens"),
                             disable_cuda_graph=bool(s.get("disable_cuda_graph")), **common)
    return EngineOptions(ctx_size=s.get("ctx_size"), ubatch_size=s.get("ubatch_size"), parallel=s.get("parallel"),
                         flash_attn=s.get("flash_attn"), cache_type_k=s.get("cache_type_k"),
                         cache_type_v=s.get("cache_type_v"), **common)


def peak_parts(m: EngineMemory) -> list[tuple[str, int]]:
    """vLLM's and SGLang's predicted peak, part by part (they sum to m.total_bytes): the activation part is the
    larger of the profile run's peak and the sampler's (vLLM's runtime rejection sampler, SGLang's logits)."""
    parts = [("CUDA context", m.cuda_context_bytes), ("weights", m.weights_bytes), ("KV cache", m.kv_cache_bytes),
             ("activations", max(m.activation_peak_bytes, m.sampler_bytes)), ("non-torch", m.non_torch_bytes),
             ("CUDA graphs", m.cuda_graph_bytes)]
    return [(name, b) for name, b in parts if b]


def _spelled(m: EngineMemory) -> str:
    return " + ".join(f"{name} {b:,}" for name, b in peak_parts(m)) + f" = {m.total_bytes:,} bytes"


def _last(pred, low: int, high: int) -> int:
    """The largest x in [low, high] with pred(x), pred monotone (True then False); low - 1 when none."""
    while low <= high:
        mid = (low + high) // 2
        low, high = (mid + 1, high) if pred(mid) else (low, mid - 1)
    return high


def choose_share(f: _Facts, engine: str, settings: dict) -> tuple[Fraction, list[str]] | str:
    """The share `settings` (everything the export writes but the share) take, by the engine's accounting,
    and the notes that say how it was chosen; a SpecMemoError when none fits the plan in its budget; the
    model's own refusal, as a sentence, when it cannot size these settings (the caller says so and falls back)."""
    setting, option, name = SHARES[engine]
    check: EngineCheck = f.check
    seen: dict[int, EngineMemory] = {}
    try:
        seen[STEPS] = check.memory({**settings, setting: 1.0})
    except SpecMemoError as exc:
        return exc.message

    def at(k: int) -> EngineMemory:
        if k not in seen:
            seen[k] = check.memory({**settings, setting: k / STEPS})
        return seen[k]

    def inside(k: int) -> bool:  # the peak within the budget, and (vLLM) its share within the free memory
        m = at(k)
        free = check.device_total_bytes - m.cuda_context_bytes
        return m.total_bytes <= check.budget_bytes and (engine != "vllm" or m.budget_bytes <= free)

    def short(k: int) -> bool:  # the pool holds fewer sequences than the batch
        return (at(k).max_concurrency or 0) < check.knobs.batch_size

    batch, context = check.knobs.batch_size, check.knobs.max_context
    fit = _last(inside, 1, STEPS)
    need = _last(short, 1, STEPS) + 1  # the smallest share that holds the batch; STEPS + 1: none does
    if need > STEPS:
        m = at(STEPS)
        raise SpecMemoError(f"{name}: even {option} 1.0000, the whole GPU, holds {m.max_concurrency or 0:.2f} "
                            f"sequences of {context} tokens by {check.version}'s accounting, fewer than the batch "
                            f"of {batch}", "lower --batch or --context, or plan for a GPU with more memory")
    if fit < need:
        m = at(need)
        missing = m.total_bytes - check.budget_bytes
        if missing <= 0:  # within the budget, but vLLM refuses to start (its share passes the free memory)
            raise SpecMemoError(f"{name}: {check.version} would not start the plan at {option} {need / STEPS:.4f}, "
                                f"the smallest that holds the batch of {batch}: {m.startup_error}",
                                "lower --batch or --context, or plan for a GPU with more memory")
        raise SpecMemoError(
            f"{name}: no {option} fits the plan in its budget by {check.version}'s accounting: the smallest that "
            f"holds the batch of {batch} sequences of {context} tokens, {need / STEPS:.4f}, peaks at {_spelled(m)}, "
            f"{missing:,} bytes ({format_bytes(missing)}) more than the budget of {check.budget_bytes:,}",
            _hint(engine, settings, m, missing))
    m = at(fit)
    why = engine_fits(m, check.knobs)
    if why is not None:
        raise SpecMemoError(f"{name}: {check.version} would not start the plan at {option} {fit / STEPS:.4f}: {why}",
                            "lower --batch or --context")
    share = Fraction(option, f"the largest share within the budget by {check.version}'s accounting", fit, STEPS,
                     SHARE_DIGITS)
    step = (f"; {(fit + 1) / STEPS:.4f} would peak at {at(fit + 1).total_bytes:,}" if fit < STEPS else "")
    notes = [f"{setting} = {share.text}: the largest share, in steps of 0.0001, at which {check.version}'s predicted "
             f"peak stays within the budget: {m.total_bytes:,} of {check.budget_bytes:,} bytes{step}",
             f"the peak by {check.version}: {_spelled(m)}; its KV pool holds {m.max_concurrency:.2f} sequences of "
             f"{context} tokens, the batch is {batch}"]
    return share, notes


def _hint(engine: str, settings: dict, m: EngineMemory, missing: int) -> str:
    """What frees the missing bytes: a larger budget, a smaller batch or context, a smaller prefill step (the
    engine's step token cap is batch x chunk), or no CUDA graphs."""
    if engine == "vllm":
        step = f"--max-num-batched-tokens = batch x chunk = {settings.get('max_num_batched_tokens')}"
    else:
        step = f"--chunked-prefill-size = batch x chunk = {settings.get('chunked_prefill_size')}"
    eager = (f", or export with --enforce-eager (no CUDA graphs: {format_bytes(m.cuda_graph_bytes)})"
             if m.cuda_graph_bytes else "")
    return (f"raise --budget by {format_bytes(missing)}, lower --batch or --context, plan a smaller --prefill-chunk "
            f"({step}){eager}")


def refuse_over_budget(export: str, m: EngineMemory, check: EngineCheck, settings: dict) -> None:
    """Refuse settings whose predicted peak passes the budget, or that the engine would not start."""
    if m.total_bytes > check.budget_bytes:
        missing = m.total_bytes - check.budget_bytes
        if export in SHARES:
            hint = _hint(export, settings, m, missing)
        else:
            hint = (f"raise --budget by {format_bytes(missing)}, lower --batch or --context, or plan a smaller "
                    f"--prefill-chunk (-ub = batch x chunk = {settings.get('ubatch_size')}: the compute buffer)")
        raise SpecMemoError(f"{export}: by {check.version}'s accounting these settings peak at {m.total_bytes:,} bytes "
                            f"on the GPU, {missing:,} bytes ({format_bytes(missing)}) more than the budget of "
                            f"{check.budget_bytes:,}", hint)
    why = engine_fits(m, check.knobs)
    if why is not None:
        raise SpecMemoError(f"{export}: {check.version} would not start these settings: {why}",
                            "lower --batch or --context")
