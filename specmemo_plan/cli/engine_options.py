"""`--engine` and the engines' own launch flags, spelled as each engine spells them, so a user can paste the
values of their launch command (vLLM `vllm serve`, SGLang `sglang.launch_server`, llama.cpp `llama-server`).

The flags fill `engines.EngineOptions`; `engine_report` runs `engines.engine_memory` and gathers what the
commands print: every part in bytes per GPU, the engine's startup lines, and why it would not start.
"""

from __future__ import annotations


import click

from ..engines import DEFAULT_ENGINE, ENGINES, EngineOptions, engine_fits, engine_memory, engine_name, startup_log
from ..errors import SpecMemoError
from .options import SHARE_ABOVE_ZERO, apply

# click option -> EngineOptions field (ints), each the engine's own flag name
_INT_FLAGS = {
    "--max-num-batched-tokens": "max_num_batched_tokens", "--max-num-seqs": "max_num_seqs",
    "--max-model-len": "max_model_len", "--block-size": "block_size", "--cuda-graph-max-bs": "cuda_graph_max_bs",
    "--ctx-size": "ctx_size", "--ubatch-size": "ubatch_size", "--parallel": "parallel",
    "--non-torch-bytes": "non_torch_bytes",
}
_HELP = {
    "--max-num-batched-tokens": "vLLM: tokens per scheduler step (the profile run's size).",
    "--max-num-seqs": "vLLM: sequences per step.",
    "--max-model-len": "vLLM: the longest request (default: --context).",
    "--block-size": "vLLM: tokens per KV block.",
    "--cuda-graph-max-bs": "SGLang: the largest batch captured in a CUDA graph.",
    "--ctx-size": "llama.cpp -c: KV cells of all slots together (default: batch x context).",
    "--ubatch-size": "llama.cpp -ub: the physical batch (the compute buffer's size).",
    "--parallel": "llama.cpp -np: sequences sharing --ctx-size.",
    "--non-torch-bytes": "vLLM: 'non-torch forward increase memory' from your own log (replaces the assumption).",
}


def engine_options(func):
    """--engine and the engines' flags (every calculator command that predicts memory)."""
    opts = [
        click.option("--engine", "engine", default=DEFAULT_ENGINE, show_default=True,
                     help="Whose memory to predict: " + ", ".join(ENGINES) + " (this project's engine is specmemo)."),
        click.option("--gpu-memory-utilization", type=SHARE_ABOVE_ZERO, default=None,
                     help="vLLM: share of the GPU it may take (default 0.9)."),
        click.option("--mem-fraction-static", type=SHARE_ABOVE_ZERO, default=None,
                     help="SGLang: share for weights + KV pool (default: SGLang's own)."),
        click.option("--enforce-eager", is_flag=True, help="vLLM: no CUDA graphs."),
        click.option("--tensor-parallel-size", type=click.IntRange(min=1), default=1, show_default=True,
                     help="vLLM / SGLang: GPUs sharding weights and KV heads (numbers are per GPU)."),
        click.option("--flash-attn", type=click.Choice(["on", "off", "auto"]), default=None,
                     help="llama.cpp -fa: flash attention (the compute buffer)."),
        click.option("--cache-type-k", default=None, help="llama.cpp -ctk (default: from --kv-dtype)."),
        click.option("--cache-type-v", default=None, help="llama.cpp -ctv (default: from --kv-dtype)."),
    ]
    opts += [click.option(flag, field, type=click.IntRange(min=1), default=None, help=_HELP[flag])
             for flag, field in _INT_FLAGS.items()]
    return apply(opts, func)


ENGINE_PARAMS = ("engine", "gpu_memory_utilization", "mem_fraction_static", "enforce_eager", "tensor_parallel_size",
                 "flash_attn", "cache_type_k", "cache_type_v", *_INT_FLAGS.values())


def pop_engine_args(kwargs: dict) -> dict:
    """The engine flags out of a command's keyword arguments (the rest go to the calculator as before)."""
    return {name: kwargs.pop(name) for name in ENGINE_PARAMS}


def engine_report(args: dict, setup) -> dict | None:
    """engine_memory for --engine (None for this project's engine, whose memory is the breakdown itself):
    {"engine": parts in bytes, "startup_log": lines, "refusal": why it would not start, or None}."""
    name = engine_name(args["engine"])
    if name == DEFAULT_ENGINE:
        return None
    profile = setup.profile
    if profile is None and name in ("vllm", "sglang"):
        raise SpecMemoError(f"--engine {name} sizes its KV pool from the GPU's memory",
                            "name the GPU with --profile (e.g. --profile rtx-4090)")
    options = engine_flags(args, profile.runtime_overhead_bytes if profile else None, profile.name if profile else "")
    result = engine_memory(name, setup.target, setup.draft, setup.knobs, options,
                           device_total_bytes=profile.memory_bytes if profile else 0,
                           tensor_parallel=args["tensor_parallel_size"])
    return {"engine": result.as_dict(), "startup_log": list(startup_log(result)),
            "refusal": engine_fits(result, setup.knobs), "result": result}


def engine_flags(args: dict, cuda_context_bytes: int | None = None, device_name: str = "") -> EngineOptions:
    """The EngineOptions the command's engine flags give, on a device with this context and name."""
    return EngineOptions(
        gpu_memory_utilization=args["gpu_memory_utilization"], mem_fraction_static=args["mem_fraction_static"],
        enforce_eager=args["enforce_eager"], flash_attn=args["flash_attn"], cache_type_k=args["cache_type_k"],
        cache_type_v=args["cache_type_v"], cuda_context_bytes=cuda_context_bytes, device_name=device_name,
        **{field: args[field] for field in _INT_FLAGS.values()},
    )


def given_flags(args: dict) -> list[str]:
    """The engine flags (other than --engine) the user set, as spelled on the command line."""
    defaults = {"enforce_eager": False, "tensor_parallel_size": 1}
    return ["--" + n.replace("_", "-") for n in ENGINE_PARAMS[1:] if args[n] != defaults.get(n)]


def check_one_gpu_path(args: dict, devices: int, several_methods: bool = False) -> str | None:
    """The engine named by --engine, or None for this project's (the command's own path). The engines shard
    with tensor parallelism, not this project's layer split; several methods compare on this engine only."""
    name = engine_name(args["engine"])
    if name == DEFAULT_ENGINE:
        return None
    if devices > 1:
        raise SpecMemoError(f"--engine {name} models one GPU per tensor-parallel rank, not --devices {devices}",
                            f"use --tensor-parallel-size {devices}; the numbers are per GPU")
    if several_methods:
        raise SpecMemoError(f"--engine {name} takes one draft method", "give one --draft-method")
    return name


def engine_min_budget(args: dict, s, result) -> dict | None:
    """min-budget --engine: the smallest GPU on which the engine starts the plan at the k min-budget chose
    (the smallest that pays: the engine's memory grows with k too); None for this project's engine."""
    from ..engine_budget import min_device_memory

    name = check_one_gpu_path(args, s.devices)
    if name is None:
        return None
    knobs = s.knobs.with_tree(result.tree)
    profile = s.profile
    options = engine_flags(args, profile.runtime_overhead_bytes if profile else None, profile.name if profile else "")
    found = min_device_memory(name, s.target, s.draft, knobs, options, args["tensor_parallel_size"])
    return dict(found.as_dict(), startup_log=list(startup_log(found.memory)))


def plan_engine_prediction(args: dict, s, p) -> dict | None:
    """plan --engine: the engine's prediction for the plan `p` (EngineMemory.as_dict()), recorded in
    p.provenance["engine_prediction"] and returned; one line refuses a plan the engine would not start.
    vLLM and llama.cpp run with the settings `export` writes for the plan (so export prints the same numbers),
    SGLang and transformers with the flags given, on the plan's device."""
    from ..engine_budget import refusal

    name = check_one_gpu_path(args, s.devices)
    if name is None:
        return None
    total = p.device.total_memory_bytes
    if name in ("vllm", "llama.cpp"):
        from ..export import export_plan
        from ..export.startup import engine_options_for  # the settings -> EngineOptions mapping export's prediction uses

        extra = given_flags(args)
        if extra:
            raise SpecMemoError(f"plan --engine {name} predicts with the settings `export --to {name}` writes for "
                                f"the plan, not {', '.join(extra)}", f"drop {', '.join(extra)}")
        options = engine_options_for(export_plan(p, name), p)
    else:
        profile = s.profile
        options = engine_flags(args, profile.runtime_overhead_bytes if profile else None, p.device.name)
    memory, why = refusal(name, s.target, s.draft, p.knobs, options, total, args["tensor_parallel_size"])
    if why is not None:
        raise SpecMemoError(f"{memory.version} would not start this plan: {why}",
                            "lower --budget, --batch or --context, or see `specmemo-plan fit --engine`")
    p.provenance["engine_prediction"] = memory.as_dict()
    return p.provenance["engine_prediction"]
