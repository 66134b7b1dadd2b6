"""The smallest GPU on which an engine starts a plan by its own accounting (`min-budget --engine`), whether it
starts on each compared device (`compare --engine`), and the prediction a plan records (`plan --engine`).

"Starts" is `engines.engine_fits` (the engine's own refusal, or a paged pool too small for the plan's batch)
and the process's peak within the device, as `fit --engine` decides it.

vLLM and SGLang size their KV pool from the GPU's total (cudaMemGetInfo): vLLM reserves
--gpu-memory-utilization x total, SGLang --mem-fraction-static x total. Their minimum is found by bisecting
that total over whole MiB between the weights and TOP. Both also pick defaults by the GPU's size (vLLM's
batch defaults, SGLang's buckets and its 10 GiB floor over 60 GiB), so starting is monotone in the total only
between those steps: the range is cut where the defaults change and each piece is bisected, lowest first.
The other engines' memory does not depend on the GPU's size: their minimum is their peak, to the byte.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .engines import EngineMemory, EngineOptions, engine_fits, engine_memory, engine_name, sglang, vllm
from .engines.base import MIB
from .errors import SpecMemoError
from .memory import Knobs

TOP = 2**40  # the bisection's ceiling (1 TiB): past any single GPU made
POOLED = ("vllm", "sglang")  # engines that size their KV pool as a share of the GPU's total


@dataclass(frozen=True)
class EngineMinimum:
    """The smallest device on which `engine` starts the plan, and the engine at that size."""

    engine: str
    version: str
    device_total_bytes: int  # the smallest GPU total (cudaMemGetInfo) that starts the plan
    budget_bytes: int | None  # the engine's own share of it (vLLM: total x utilization), None: no such share
    bisected: str  # what was searched, over what, in what steps
    memory: EngineMemory  # the engine at device_total_bytes
    below: str  # why one step less does not start
    step_bytes: int = MIB  # the bisection's step: 1 MiB (vLLM, SGLang), else 1 byte

    def as_dict(self) -> dict:
        return {"engine": self.engine, "version": self.version, "min_device_memory_bytes": self.device_total_bytes,
                "engine_budget_bytes": self.budget_bytes, "bisected": self.bisected,
                "step_bytes": self.step_bytes, "one_step_less": self.below, "engine_memory": self.memory.as_dict()}


def refusal(engine: str, target, draft, knobs: Knobs, options: EngineOptions, total: int,
            tp: int = 1) -> tuple[EngineMemory, str | None]:
    """The engine on a GPU of `total` bytes, and why it would not start the plan there (None: it starts);
    total 0 (llama.cpp, transformers, this engine): no device, the engine's own refusals only."""
    memory = engine_memory(engine, target, draft, knobs, options, device_total_bytes=total, tensor_parallel=tp)
    why = engine_fits(memory, knobs)
    if why is None and total and memory.total_bytes > total:  # total 0: no device named
        why = f"its peak of {memory.total_bytes:,} bytes exceeds the device's {total:,}"
    return memory, why


def size_defaults(engine: str, total: int, options: EngineOptions, tp: int):
    """The defaults the engine picks by the GPU's size (module docstring): vllm.batch_defaults; SGLang's
    sglang.bucket_defaults and the 10 GiB reserve floor of sglang.default_mem_fraction over 60 GiB."""
    if engine == "vllm":
        return vllm.batch_defaults(total, options.device_name)
    return sglang.bucket_defaults(total / MIB, tp), total / MIB > 60 * 1024


def _first(pred, low: int, high: int) -> int:
    """The smallest x in [low, high] with pred(x), pred monotone (False then True) and pred(high) True."""
    while low < high:
        mid = (low + high) // 2
        low, high = (low, mid) if pred(mid) else (mid + 1, high)
    return low


def _pieces(signature, low: int, high: int) -> list[tuple[int, int]]:
    """[low, high] cut where `signature` (a step function of the size) changes, lowest piece first."""
    out = []
    while signature(low) != signature(high):
        start = signature(low)
        cut = _first(lambda x: signature(x) != start, low, high)
        out.append((low, cut - 1))
        low = cut
    return out + [(low, high)]


def min_device_memory(engine: str, target, draft, knobs: Knobs, options: EngineOptions,
                      tp: int = 1) -> EngineMinimum:
    """The smallest GPU that starts the plan on `engine` (module docstring); one step less does not."""
    name = engine_name(engine)
    if name not in POOLED:
        memory, why = refusal(name, target, draft, knobs, options, 0, tp)
        if why is not None:
            raise SpecMemoError(f"{memory.version} does not start this plan: {why}")
        total = memory.total_bytes
        _, below = refusal(name, target, draft, knobs, options, total - 1, tp)
        return EngineMinimum(name, memory.version, total, None, "nothing: this engine's memory does not depend on "
                             "the GPU's size, so the smallest GPU is its peak, to the byte", memory, below or "", 1)
    weights = engine_memory(name, target, draft, knobs, options, device_total_bytes=TOP,
                            tensor_parallel=tp).weights_bytes
    low, high = max(1, weights // MIB), TOP // MIB
    top, why = refusal(name, target, draft, knobs, options, TOP, tp)
    if why is not None:
        raise SpecMemoError(f"{top.version} does not start this plan on any GPU up to {TOP // 2**30:,} GiB: {why}",
                            "lower --batch or --context, or give the engine more of the GPU")

    def starts(mib: int) -> bool:
        return refusal(name, target, draft, knobs, options, mib * MIB, tp)[1] is None

    for a, b in _pieces(lambda mib: size_defaults(name, mib * MIB, options, tp), low, high):
        if starts(b):
            mib = _first(starts, a, b)
            break
    memory, _ = refusal(name, target, draft, knobs, options, mib * MIB, tp)
    _, below = refusal(name, target, draft, knobs, options, (mib - 1) * MIB, tp)
    share = "--gpu-memory-utilization" if name == "vllm" else "--mem-fraction-static"
    how = (f"the GPU's total memory (cudaMemGetInfo) over whole MiB in [{low:,}, {high:,}] MiB (the weights to "
           f"1 TiB), cut where {name} changes its size-based defaults; {name}'s budget is total x {share}")
    return EngineMinimum(name, memory.version, mib * MIB, memory.budget_bytes, how, memory, below or "")


def with_engine_knobs(knobs: Knobs, batch: int | None, draft_length: int | None) -> Knobs:
    """A verdict's configuration for the engine: its best batch and k (k = 1 where plain decoding wins or
    nothing fits: the question is whether the engine starts SD)."""
    return replace(knobs, batch_size=batch or knobs.batch_size, draft_length=draft_length or 1)
