"""Plan -> the settings that reproduce it in another engine: vLLM, SGLang, llama.cpp, TensorRT-LLM, HF generate.

Each exporter names the engine version whose documentation its option names were checked against (the
`*_VERSION` and `*_DOCS` constants in its module) and lists, in `unsupported`, every part of the plan that
engine cannot express. Nothing here imports an engine: the output is settings and a command line.

Every export starts with plan.validate (the prediction recomputed from the knobs): a hand-edited plan is
refused before a single option is written, and every option value is the one its note states.

- `facts.py`: what the exporters share: the plan's facts read once (after validate), the model references
  as the user gave them (`ModelSource`: no local site-packages path), the memory fractions (`Fraction`:
  computed and spelled once, refused at 0 or over 1), `ExportResult`, the flag formatting;
- `gguf_files.py`: the GGUF files llama.cpp loads, and the lines that make the missing ones;
- `engine_share.py`: vLLM's and SGLang's memory share chosen by the engine's own accounting (engines/), and
  the check that refuses settings whose predicted peak passes the budget; `startup.py`: the engine's
  predicted startup lines, after that check;
- `vllm.py`, `sglang.py`, `llamacpp.py`, `trtllm.py`, `hf.py`: one exporter per engine, with its version.

Pure Python: no torch at import.
"""

from __future__ import annotations

from dataclasses import replace

from ..errors import SpecMemoError, close_names
from ..plan import Plan
from .facts import ExportResult, _facts, floor3, model_id
from .hf import HF_DOCS, HF_VERSION, _hf
from .llamacpp import LLAMACPP_DOCS, LLAMACPP_VERSION, _llamacpp
from .sglang import SGLANG_DOCS, SGLANG_VERSION, _sglang
from .trtllm import TRTLLM_DOCS, TRTLLM_VERSION, _trtllm
from .vllm import VLLM_DOCS, VLLM_VERSION, _vllm

ENGINES = ("vllm", "sglang", "llama.cpp", "trtllm", "hf")
EAGER_ENGINES = ("vllm", "sglang")  # exports that can drop CUDA graphs (--enforce-eager)
_EXPORTERS = {"vllm": _vllm, "sglang": _sglang, "llama.cpp": _llamacpp, "trtllm": _trtllm, "hf": _hf}
# other spellings people type for the same engines
_ALIASES = {"llamacpp": "llama.cpp", "llama-cpp": "llama.cpp", "tensorrt-llm": "trtllm", "transformers": "hf",
            "tensorrt_llm": "trtllm"}

__all__ = [
    "ENGINES", "ExportResult", "export_plan", "floor3", "model_id",
    "HF_DOCS", "HF_VERSION", "LLAMACPP_DOCS", "LLAMACPP_VERSION", "SGLANG_DOCS", "SGLANG_VERSION",
    "TRTLLM_DOCS", "TRTLLM_VERSION", "VLLM_DOCS", "VLLM_VERSION",
]


def export_plan(plan: Plan, engine: str, enforce_eager: bool = False) -> ExportResult:
    """The settings that reproduce `plan` in `engine` (one of ENGINES; "llamacpp" and "llama-cpp" also work);
    `enforce_eager`: without CUDA graphs (vLLM --enforce-eager, SGLang --disable-cuda-graph).

    vLLM's and SGLang's memory share is chosen, and every modelled engine's settings checked, by the engine's
    own accounting (engine_share.py): what would pass the plan's budget is refused, not written."""
    key = engine.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in ENGINES:
        raise SpecMemoError(f"unknown engine '{engine}'", close_names(key, ENGINES))
    if enforce_eager and key not in EAGER_ENGINES:
        raise SpecMemoError(f"--enforce-eager applies to the vllm and sglang exports, not {key}",
                            "drop --enforce-eager")
    from .engine_share import engine_check
    from .startup import with_startup

    facts = _facts(plan)
    check = engine_check(plan, key)
    facts = replace(facts, check=check, enforce_eager=enforce_eager)
    return with_startup(_EXPORTERS[key](facts), plan, check)
