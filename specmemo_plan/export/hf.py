"""The plan as transformers assisted generation: from_pretrained arguments with the plan's device_map, the
assistant's generation_config, and a Python snippet that runs them."""

from __future__ import annotations

from ..memory import compute_dtype
from ..placement import engine_device_maps
from .facts import TORCH_DTYPE_NAMES, ExportResult, _Facts

# transformers 5.24 assisted generation (checked in its source, generation/utils.py and
# generation/candidate_generator.py): the draft length comes from the *assistant's* generation_config
# (num_assistant_tokens, num_assistant_tokens_schedule, assistant_confidence_threshold), and
# "assisted generate is only supported for batch_size = 1".
#   https://huggingface.co/docs/transformers/main/en/generation_strategies#speculative-decoding
HF_VERSION = "transformers 5.24"
HF_DOCS = ("https://huggingface.co/docs/transformers/main/en/generation_strategies#speculative-decoding",)


def _hf(f: _Facts) -> ExportResult:
    unsupported, notes = [], []
    target_map, draft_map, max_memory = engine_device_maps(f.placement, f.draft is not None)
    if f.kind == "cpu":  # transformers' device_map takes "cpu", not a GPU index
        target_map = {k: "cpu" for k in target_map}
        draft_map = {k: "cpu" for k in draft_map} if draft_map else None
        max_memory = None
    dtype = TORCH_DTYPE_NAMES.get(f.weight_dtype)
    draft_dtype = TORCH_DTYPE_NAMES.get(f.draft_dtype or f.weight_dtype)
    if dtype is None or (f.draft and draft_dtype is None):
        unsupported.append("int8/int4/fp8 weights: load with a quantization_config (bitsandbytes, GPTQ, AWQ or "
                           "FP8) or a quantised checkpoint; the plan's bytes assume its own scale layout")
        dtype, draft_dtype = dtype or "float16", draft_dtype or "float16"
    target_load = {"pretrained_model_name_or_path": f.target, "dtype": dtype, "device_map": target_map}
    if max_memory:
        target_load["max_memory"] = {int(k): v for k, v in max_memory.items()}
    settings = {"target": target_load}
    generate = {"max_new_tokens": f.max_new_tokens, "do_sample": not f.greedy}
    if not f.greedy:
        generate["temperature"] = f.temperature
    if f.draft:
        settings["draft"] = {"pretrained_model_name_or_path": f.draft, "dtype": draft_dtype, "device_map": draft_map}
        settings["assistant_generation_config"] = {
            "num_assistant_tokens": f.k,
            "num_assistant_tokens_schedule": "constant",
            "assistant_confidence_threshold": 0.0,
        }
        generate["assistant_model"] = "<the draft model>"
    settings["generate"] = generate
    settings["seed"] = f.seed
    if f.batch > 1:
        unsupported.append(f"batch {f.batch}: transformers' assisted generation runs one sequence at a time "
                           "(\"assisted generate is only supported for batch_size = 1\"); run requests one by one")
    unsupported.append("memory budget: generate has no memory cap; its DynamicCache grows with the sequence "
                       "instead of the plan's preallocated batch x (context + k) slots")
    unsupported.append(f"prefill chunk: generate runs the whole prompt in one forward (the plan's chunk is {f.chunk})")
    if f.kv_dtype != compute_dtype(f.weight_dtype):
        unsupported.append(f"{f.kv_dtype} KV cache: quantised caches are not combined with assisted generation; "
                           "the cache keeps the model dtype")
    notes.append("transformers 5.24 reads the draft length from the assistant's generation_config, not from "
                 "generate() keyword arguments; confidence threshold 0 keeps k constant (the default 0.4 stops "
                 "drafting early)")
    if len(set(target_map.values())) > 1:
        notes.append("device_map is the plan's layer split; max_memory reproduces it if you pass "
                     "device_map='sequential' instead")
    lines = ["import torch", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
             f"torch.manual_seed({f.seed})",
             f"target = AutoModelForCausalLM.from_pretrained({f.target!r}, dtype=torch.{dtype},",
             f"    device_map={target_map!r}" + (f", max_memory={target_load['max_memory']!r})" if max_memory else ")")]
    if f.draft:
        lines += [f"draft = AutoModelForCausalLM.from_pretrained({f.draft!r}, dtype=torch.{draft_dtype}, "
                  f"device_map={draft_map!r})",
                  f"draft.generation_config.num_assistant_tokens = {f.k}",
                  "draft.generation_config.num_assistant_tokens_schedule = \"constant\"",
                  "draft.generation_config.assistant_confidence_threshold = 0.0"]
    lines += [f"tokenizer = AutoTokenizer.from_pretrained({f.target!r})",
              "inputs = tokenizer(prompt, return_tensors=\"pt\").to(target.device)",
              "out = target.generate(**inputs" + (", assistant_model=draft" if f.draft else "")
              + f", max_new_tokens={f.max_new_tokens}, do_sample={not f.greedy}"
              + ("" if f.greedy else f", temperature={f.temperature}") + ")"]
    return ExportResult("hf", HF_VERSION, settings, "\n".join(lines), unsupported, notes, HF_DOCS)
