"""The plan as transformers assisted generation: from_pretrained arguments with the plan's device_map, the
assistant's generation_config, and a Python script that runs them (`python script.py "a prompt"`).

The script runs as written: a GGUF model loads through `gguf_file=` (transformers 5.24 keeps its weights
packed and computes in the plan's dtype), a bundled model is found by specmemo_plan.models.bundled_path,
a tokenizer with a chat template gets the prompt as one user turn (an instruct model given bare text may
answer with its end-of-turn token at once), a model without a tokenizer takes and prints token ids, a
config.json without weights gets random weights."""

from __future__ import annotations

from pathlib import Path

from ..memory import compute_dtype
from ..placement import engine_device_maps
from .facts import TORCH_DTYPE_NAMES, ExportResult, ModelSource, _Facts, pretrained_args, python_lines
from .methods import hf_spec

DEFAULT_PROMPT = "Write one sentence about the sea."
PROMPT_IDS = 8  # token ids of the prompt for a model without a tokenizer: 1..8 (mod the vocabulary)

# transformers 5.24 assisted generation (checked in its source, generation/utils.py and
# generation/candidate_generator.py): the draft length comes from the *assistant's* generation_config
# (num_assistant_tokens, num_assistant_tokens_schedule, assistant_confidence_threshold), and
# "assisted generate is only supported for batch_size = 1".
#   https://huggingface.co/docs/transformers/main/en/generation_strategies#speculative-decoding
HF_VERSION = "transformers 5.24"
HF_DOCS = ("https://huggingface.co/docs/transformers/main/en/generation_strategies#speculative-decoding",)


def _load_settings(src: ModelSource, dtype: str, device_map: dict | None) -> dict:
    """from_pretrained's keyword arguments for one model, as the settings show them."""
    if src.form == "gguf":
        where = src.ref if src.kind == "bundled" else str(Path(src.location).parent)
        load = {"pretrained_model_name_or_path": where, "gguf_file": src.local_name}
    else:
        load = {"pretrained_model_name_or_path": src.ref if src.kind == "bundled" else src.location}
    return {**load, "dtype": dtype, "device_map": device_map}


def _legacy(f: _Facts) -> bool:
    """A plan drafting with a separate model (or an older plan without a method): assisted generation."""
    return f.drafting is None or f.drafting.method == "draft-model"


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
    t, d = f.target_source, f.draft_source
    target_load = _load_settings(t, dtype, target_map)
    if max_memory:
        target_load["max_memory"] = {int(k): v for k, v in max_memory.items()}
    settings = {"target": target_load}
    generate = {"max_new_tokens": f.max_new_tokens, "do_sample": not f.greedy}
    if not f.greedy:
        generate["temperature"] = f.temperature
    if f.draft and _legacy(f):
        settings["draft"] = _load_settings(d, draft_dtype, draft_map)
        settings["assistant_generation_config"] = {
            "num_assistant_tokens": f.k,
            "num_assistant_tokens_schedule": "constant",
            "assistant_confidence_threshold": 0.0,
        }
        generate["assistant_model"] = "<the draft model>"
    if f.drafting is not None and f.drafting.method not in ("draft-model", "none"):
        method_generate, method_lines = hf_spec(f.drafting)
        unsupported += method_lines
        generate.update(method_generate)
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
    for src in (t, d):
        if src is not None and src.form == "gguf":
            unsupported.append(f"{src.role} weights: {src.ref} is a GGUF file; transformers loads it through gguf_file= "
                               "and keeps its weights packed in the file's types (its load warning says so), computing "
                               f"in {dtype if src is t else draft_dtype}: the plan sized them as "
                               f"{f.weight_dtype if src is t else f.draft_dtype or f.weight_dtype}")
        if src is not None and src.form == "config":
            unsupported.append(f"{src.ref} is a config.json without weights: the script gives it random weights "
                               "(from_config), not the engine's seeded ones")
    notes.append("transformers 5.24 reads the draft length from the assistant's generation_config, not from "
                 "generate() keyword arguments; confidence threshold 0 keeps k constant (the default 0.4 stops "
                 "drafting early)")
    if any(src is not None and src.kind == "bundled" for src in (t, d)):
        notes.append("bundled models: the script finds their local files with specmemo_plan.models.bundled_path "
                     "(run it with the Python that has specmemo-plan installed)")
    if len(set(target_map.values())) > 1:
        notes.append("device_map is the plan's layer split; max_memory reproduces it if you pass "
                     "device_map='sequential' instead")
    script = _script(f, dtype, draft_dtype, target_map, draft_map, target_load.get("max_memory"))
    return ExportResult("hf", HF_VERSION, settings, script, unsupported, notes, HF_DOCS)


def _model_line(name: str, src: ModelSource, dtype: str, device_map: dict, max_memory: dict | None) -> list[str]:
    if src.form == "config":  # no weights to load: random ones, placed on the plan's first device
        first = next(iter(device_map.values()))
        return [f"{name} = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained({src.var}), "
                f"dtype=torch.{dtype}).to({first!r})"]
    extra = f", max_memory={max_memory!r}" if max_memory else ""
    return [f"{name} = AutoModelForCausalLM.from_pretrained({pretrained_args(src)}, dtype=torch.{dtype},",
            f"    device_map={device_map!r}{extra})"]


def _script(f: _Facts, dtype, draft_dtype, target_map, draft_map, max_memory) -> str:
    """A Python script that runs the plan's generation with assisted generation (one prompt)."""
    t, d = f.target_source, f.draft_source
    sources = [s for s in (t, d) if s is not None]
    auto = ["AutoConfig"] * any(s.form == "config" for s in sources) + ["AutoModelForCausalLM"] + (
        ["AutoTokenizer"] * t.has_tokenizer)
    lines = ["import sys"] * t.has_tokenizer + ["from pathlib import Path"] * any(s.kind == "path" for s in sources)
    lines += [""] * bool(lines) + ["import torch", f"from transformers import {', '.join(auto)}"]
    if any(s.kind == "bundled" for s in sources):
        lines.append("from specmemo_plan.models import bundled_path")
    lines.append("")
    for src in sources:
        lines += python_lines(src)
    lines += ["", f"torch.manual_seed({f.seed})"] + _model_line("target", t, dtype, target_map, max_memory)
    assist = ""
    if d is not None and _legacy(f):
        lines += _model_line("draft", d, draft_dtype, draft_map, None)
        lines += [f"draft.generation_config.num_assistant_tokens = {f.k}",
                  "draft.generation_config.num_assistant_tokens_schedule = \"constant\"",
                  "draft.generation_config.assistant_confidence_threshold = 0.0"]
        assist = ", assistant_model=draft"
    if f.drafting is not None and f.drafting.method == "ngram":  # prompt lookup: no draft model
        assist = "".join(f", {k}={v}" for k, v in hf_spec(f.drafting)[0].items())
    sampling = f", max_new_tokens={f.max_new_tokens}, do_sample={not f.greedy}" + (
        "" if f.greedy else f", temperature={f.temperature}")
    if t.has_tokenizer:
        lines += [f"tokenizer = AutoTokenizer.from_pretrained({pretrained_args(t)})",
                  f"prompt = sys.argv[1] if len(sys.argv) > 1 else {DEFAULT_PROMPT!r}",
                  "if tokenizer.chat_template:  # an instruct model answers in its chat format (bare text: it may stop at once)",
                  "    inputs = tokenizer.apply_chat_template([{\"role\": \"user\", \"content\": prompt}], "
                  "add_generation_prompt=True,",
                  "                                           return_tensors=\"pt\", return_dict=True).to(target.device)",
                  "else:",
                  "    inputs = tokenizer(prompt, return_tensors=\"pt\").to(target.device)",
                  f"out = target.generate(**inputs{assist}{sampling})",
                  "print(tokenizer.decode(out[0, inputs[\"input_ids\"].shape[1]:], skip_special_tokens=True))"]
    else:
        ids = [i % f.vocab_size for i in range(1, PROMPT_IDS + 1)]
        lines += [f"# {t.ref} has no tokenizer: the prompt is token ids, and so is the output",
                  f"input_ids = torch.tensor([{ids}], device=target.device)",
                  f"out = target.generate(input_ids, attention_mask=torch.ones_like(input_ids){assist}{sampling})",
                  "print(out[0, input_ids.shape[1]:].tolist())"]
    return "\n".join(lines)
