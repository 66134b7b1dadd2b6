"""The memory of the engine the user runs: vLLM, SGLang, llama.cpp, transformers and this project's own.

Each engine module models one engine at a named version as that engine sizes its memory, one small
function per part with its source; `engine_memory` picks the module. Pure Python: the planner models
the engines and never imports them. Calibrated on public measurements (calibration.json,
tests/test_calibration.py).
"""

from __future__ import annotations

from ..errors import SpecMemoError, close_names
from ..memory import Knobs
from ..models import ModelShape
from . import llamacpp, sglang, specmemo, transformers, vllm
from .base import EngineMemory, EngineOptions

# --engine NAME -> the module that models it (each has VERSION and memory(...))
ENGINES = {
    "specmemo": specmemo,
    "vllm": vllm,
    "sglang": sglang,
    "llama.cpp": llamacpp,
    "transformers": transformers,
}
DEFAULT_ENGINE = "specmemo"
ALIASES = {"llamacpp": "llama.cpp", "llama-cpp": "llama.cpp", "hf": "transformers", "ours": "specmemo"}

__all__ = ["DEFAULT_ENGINE", "ENGINES", "EngineMemory", "EngineOptions", "engine_fits", "engine_memory",
           "engine_name", "engine_version", "startup_log"]


def engine_name(engine: str) -> str:
    """The registry's name for `engine` (case-insensitive, a few aliases); one line listing them otherwise."""
    key = str(engine).strip().lower()
    key = ALIASES.get(key, key)
    if key not in ENGINES:
        raise SpecMemoError(f"unknown engine {engine!r}", close_names(key, ENGINES))
    return key


def engine_version(engine: str) -> str:
    """The engine version whose memory policy the module models."""
    return ENGINES[engine_name(engine)].VERSION


def engine_memory(engine: str, target: ModelShape, draft: ModelShape | None, knobs: Knobs,
                  options: EngineOptions | None = None, device_total_bytes: int = 0,
                  tensor_parallel: int = 1) -> EngineMemory:
    """Per-GPU memory of `engine` running `target` (and `draft`) with the plan's `knobs` and the engine's own
    `options`, on a GPU of `device_total_bytes` (what cudaMemGetInfo calls total), over `tensor_parallel` GPUs.

    The knobs give what the engine flags leave open: batch (max_num_seqs / -np), context (max_model_len /
    ctx-size per sequence), draft length, dtypes. Raises SpecMemoError for settings the engine refuses outright;
    settings it accepts but cannot start with come back as `startup_error`.
    """
    name = engine_name(engine)
    options = (options or EngineOptions()).validate()
    knobs.validate(has_draft=draft is not None)
    if not isinstance(device_total_bytes, int) or device_total_bytes < 0:
        raise SpecMemoError(f"device memory must be a non-negative number of bytes, got {device_total_bytes!r}")
    if name in ("vllm", "sglang") and device_total_bytes <= 0:
        raise SpecMemoError(f"{name} sizes its KV cache from the GPU's total memory",
                            "give the device (--profile, or a memory budget)")
    return ENGINES[name].memory(target, draft, knobs, options, device_total_bytes, tensor_parallel)


def engine_fits(result: EngineMemory, knobs: Knobs) -> str | None:
    """Why the plan does not run on this engine, or None: the engine's own startup refusal, a peak over the
    device, or (paged engines) a pool smaller than the plan's batch at its context."""
    if result.startup_error:
        return result.startup_error
    if result.engine in ("vllm", "sglang") and result.max_concurrency is not None \
            and result.max_concurrency < knobs.batch_size:
        return (f"the KV pool holds {result.kv_cache_tokens:,} tokens: {result.max_concurrency:.2f} sequences of "
                f"{knobs.max_context} tokens, fewer than the batch of {knobs.batch_size}")
    return None


def startup_log(result: EngineMemory) -> tuple[str, ...]:
    """The lines the engine prints at startup about its memory, as this model predicts them (the engine's own
    wording and units: vLLM and SGLang write GiB, SGLang calls them GB; llama.cpp writes MiB)."""
    return ENGINES[result.engine].startup_lines(result)
