"""The table test_bad_inputs.py runs: one row per bad (or valid but odd) input, grouped by issue 18's classes.

`row(id, class, command line, error regex, ...)`: see bad_input_rows.Row. Machine-dependent values are
avoided (`--devices 64` stands for "more GPUs than this machine has"). xfail rows say what is wrong today.
"""

from __future__ import annotations

import json

from bad_input_rows import (DRAFT, DROP, FAMILY, MISMATCHED, OPT, PLAN, TINY, bundled_gguf_head, chat_replied, config,
                            cpu_only, cpu_plan, gpu_plan, out_json, row, same_total_as_tiny, stdout_has, tokenizer)
from conftest import needs_smollm2

P = "-t llama-2-7b-chat -d llama-68m"  # a preset pair (configs only)
GPU = f"{P} --profile rtx-4090"
EST = "estimate -t c.json -c 64"  # the family rows size c.json


def fam(id, family, field, value, error, **kw):
    """A family's small config with one field broken, sized by `estimate`."""
    return row(f"family-{id}", "family", EST, r"config of .*c\.json: " + error,
               files=(("c.json", config(FAMILY[family], **{field: value})),), **kw)


def json_rows(key, count=None, prefix=""):
    """The JSON output lists rows under `key` (`count` of them; some whose name starts with `prefix`)."""

    def check(result, tmp):
        rows = out_json(result)[key]
        assert rows and (count is None or len(rows) == count), rows
        assert any(r.get("name", "").startswith(prefix) for r in rows), rows

    return check


TOK = (("a/config.json", TINY), ("a/tokenizer.json", tokenizer({"a": 0, "b": 1})))

ROWS = [
    # ------------------------------------------------------------------ bad encodings
    row("config-binary", "encoding", "estimate -t c.json", r"c\.json is not UTF-8 text \(byte 0 is 0x89\)",
        files=(("c.json", b"\x89PNG\r\n\x1a\n\0\0"),)),
    row("config-latin1", "encoding", "estimate -t c.json", r"c\.json is not UTF-8 text \(byte 19 is 0xe9\)",
        files=(("c.json", '{"model_type": "caf\xe9"}'.encode("latin-1")),)),
    # a byte-order mark is skipped, as for plans (files.read_json_file): the config is read
    row("config-bom", "encoding", "estimate -t c.json", r"exceeds the target's 512 positions",
        files=(("c.json", b"\xef\xbb\xbf" + json.dumps(TINY).encode()),)),
    row("config-empty", "encoding", "estimate -t c.json", r"c\.json is not valid JSON \(Expecting value",
        files=(("c.json", b""),)),
    row("config-list", "encoding", "estimate -t c.json", r"c\.json holds a list, not a model config", files=(("c.json", [1, 2]),)),
    row("config-null", "encoding", "estimate -t c.json", r"c\.json holds null, not a model config", files=(("c.json", None),)),
    row("folder-config-binary", "encoding", "estimate -t model", r"model/config\.json is not UTF-8 text",
        files=(("model/config.json", b"\xff\xfe{"),)),
    row("gguf-zeros", "encoding", "estimate -t m.gguf", r"m\.gguf: not a GGUF file", files=(("m.gguf", b"\0" * 64),)),
    row("gguf-version", "encoding", "estimate -t m.gguf", r"m\.gguf: GGUF version \d+ is not supported",
        files=(("m.gguf", b"GGUFgarbage!"),)),
    row("gguf-truncated", "encoding", "estimate -t m.gguf", r"m\.gguf: truncated GGUF header",
        files=(("m.gguf", bundled_gguf_head()),), marks=[needs_smollm2]),
    row("safetensors-header-length", "encoding", "estimate -t model -c 64", r"model\.safetensors: header length \d+ is over",
        files=(("model/config.json", TINY), ("model/model.safetensors", b"\xff" * 8))),
    row("safetensors-truncated", "encoding", "estimate -t model -c 64",
        r"model\.safetensors: truncated: the header needs 24 bytes, the file has 17",
        files=(("model/config.json", TINY), ("model/model.safetensors", b"\x10" + b"\0" * 7 + b"{not json"))),
    row("tokenizer-binary", "encoding", "estimate -t a -d b -c 64", r"cannot read the tokenizer b/tokenizer\.json",
        files=TOK + (("b/config.json", TINY), ("b/tokenizer.json", b"\xff\xfe garbage"))),
    row("plan-binary", "encoding", "export plan.json --to vllm", r"plan\.json is not a plan: byte 0 is not UTF-8",
        files=(("plan.json", b"\xff\0\x01"),)),
    row("plan-truncated", "encoding", "export plan.json --to vllm", r"plan\.json is not valid JSON",
        files=(("plan.json", lambda tmp: json.dumps(gpu_plan()(tmp))[:100].encode()),)),
    row("plan-latin1-engine", "encoding", "--plan plan.json --prompt x", r"plan\.json is not a plan: byte \d+ is not UTF-8",
        cli="engine", files=(("plan.json", b'{"schema_version": 2, "note": "caf\xe9"}'),)),
    row("measured-utf16", "encoding", "compare --measured m.json", r"m\.json is not UTF-8 text \(byte 0 is 0xff\)",
        files=(("m.json", '{"version": 1}'.encode("utf-16")),)),
    row("measured-binary", "encoding", "tune --measured m.json -o out.json", r"m\.json is not UTF-8 text \(byte 1 is 0xff\)",
        files=(("m.json", b"\0\xff"),)),
    row("prompts-latin1", "encoding", "--plan plan.json --prompts-file p.txt",
        r"p\.txt is not UTF-8 text: byte 0xe9 at offset 3 \(line 1\)", cli="engine",
        files=PLAN + (("p.txt", "caf\xe9\n".encode("latin-1")),)),
    row("prompts-nul", "encoding", "--plan plan.json --prompts-file p.txt", r"p\.txt holds a NUL byte \(line 2\)",
        cli="engine", files=PLAN + (("p.txt", b"ok\nab\0cd\n"),)),
    row("prompts-json-surrogate", "encoding", "--plan plan.json --prompts-file p.json",
        r"prompt 2 \(p\.json item 2\) is not UTF-8 text: an unpaired surrogate U\+D800", cli="engine",
        files=PLAN + (("p.json", b'["ok", "\\ud800"]'),)),
    row("prompt-argv-bytes", "encoding", "--plan plan.json --prompt ab\udcff",
        r"--prompt 1 is not UTF-8 text: byte 0xff at character 2", cli="engine", files=PLAN),
    row("system-argv-bytes", "encoding", "chat --plan plan.json --system ab\udcfe",
        r"--system is not UTF-8 text: byte 0xfe at character 2", cli="engine", files=PLAN, stdin=b""),
    row("chat-line-not-utf8", "encoding", "chat --plan plan.json --max-new-tokens 2", cli="engine", files=PLAN,
        loads=True, stdin=b"\xff\xfe bad\nhi\n", refused_lines=1,
        check=chat_replied(1, "that line is not UTF-8 text: byte 0xff at offset 0")),

    # ------------------------------------------------------------------ every family with a broken field
    fam("llama-hidden-string", "llama", "hidden_size", "abc", r"field 'hidden_size' must be an integer, got 'abc'"),
    fam("llama-heads-zero", "llama", "num_attention_heads", 0, r"field 'num_attention_heads' must be a positive integer"),
    fam("llama-hidden-indivisible", "llama", "hidden_size", 66, r"hidden_size 66 is not divisible by num_attention_heads 4"),
    fam("llama-kv-heads", "llama", "num_key_value_heads", 3, r"4 attention heads are not a multiple of 3 KV heads"),
    fam("llama-vocab-negative", "llama", "vocab_size", -1, r"field 'vocab_size' must be a positive integer, got -1"),
    fam("llama-layers-fraction", "llama", "num_hidden_layers", 1.5, r"field 'num_hidden_layers' must be an integer, got 1.5"),
    fam("llama-hidden-bool", "llama", "hidden_size", True, r"field 'hidden_size' must be an integer, got True"),
    fam("llama-tie-string", "llama", "tie_word_embeddings", "yes", r"field 'tie_word_embeddings' must be true or false"),
    row("family-llama-vocab-nan", "family", EST, r"c\.json: NaN is not a JSON number",
        files=(("c.json", config(FAMILY["llama"], vocab_size=float("nan"))),)),
    fam("llama-no-intermediate", "llama", "intermediate_size", DROP, r"missing field 'intermediate_size'"),
    fam("llama-positions-zero", "llama", "max_position_embeddings", 0, r"field 'max_position_embeddings' must be a positive"),
    fam("llama-quant-unknown", "llama", "quantization_config", {"quant_method": "zzz"},
        r"quantization_config\.quant_method 'zzz' is not known"),
    fam("llama-per-layer", "llama", "per_layer_config", {"a": 1}, r"per_layer_config \(layers that differ\) is not supported"),
    fam("mistral-window-string", "mistral", "sliding_window", "abc", r"field 'sliding_window' must be an integer"),
    fam("mistral-window-negative", "mistral", "sliding_window", -5, r"field 'sliding_window' must be a positive integer, got -5"),
    fam("mistral-window-zero", "mistral", "sliding_window", 0, r"field 'sliding_window' must be a positive integer, got 0"),
    fam("qwen2-window-layers", "qwen2", "max_window_layers", -1, r"field 'max_window_layers' must be an integer >= 0"),
    fam("qwen2-use-window-string", "qwen2", "use_sliding_window", "no", r"field 'use_sliding_window' must be true or false"),
    fam("qwen3-head-dim-zero", "qwen3", "head_dim", 0, r"field 'head_dim' must be a positive integer, got 0"),
    fam("gemma-head-dim-string", "gemma", "head_dim", "x", r"field 'head_dim' must be an integer, got 'x'"),
    fam("gemma2-window-negative", "gemma2", "sliding_window", -5, r"field 'sliding_window' must be a positive integer"),
    fam("gemma3-text-pattern-zero", "gemma3_text", "sliding_window_pattern", 0, r"field 'sliding_window_pattern' must be a"),
    fam("gemma3-text-layer-types-short", "gemma3_text", "layer_types", ["full_attention"],
        r"field 'layer_types' lists 1 layers, the model has 4"),
    fam("gemma3-text-layer-type-unknown", "gemma3_text", "layer_types", ["x"] * 4, r"layer type 'x' is not one this tool"),
    fam("gemma3-text-config-list", "gemma3", "text_config", [1], r"a gemma3 config needs a text_config object"),
    fam("olmo2-heads-negative", "olmo2", "num_attention_heads", -4, r"field 'num_attention_heads' must be a positive integer"),
    fam("granite-intermediate-string", "granite", "intermediate_size", "96", r"field 'intermediate_size' must be an integer"),
    fam("smollm3-nope-interval-zero", "smollm3", "no_rope_layer_interval", 0, r"field 'no_rope_layer_interval' must be"),
    fam("smollm3-nope-layers-short", "smollm3", "no_rope_layers", [1, 0], r"field 'no_rope_layers' must list 4 integers"),
    fam("phi3-rotary-string", "phi3", "partial_rotary_factor", "half", r"field 'partial_rotary_factor' must be a positive"),
    fam("phi3-rotary-negative", "phi3", "partial_rotary_factor", -1, r"field 'partial_rotary_factor' must be a positive"),
    fam("phi3-rope-rotary-string", "phi3", "rope_parameters", {"partial_rotary_factor": "x"}, r"field 'rope_parameters\.partial_rotary_factor' must be a positive number at most 1, got 'x'"),
    fam("phi3-rope-rotary-negative", "phi3", "rope_parameters", {"partial_rotary_factor": -3}, r"field 'rope_parameters\.partial_rotary_factor' must be a positive number at most 1, got -3"),
    fam("gpt2-inner-string", "gpt2", "n_inner", "abc", r"field 'n_inner' must be an integer, got 'abc'"),
    fam("gpt2-inner-negative", "gpt2", "n_inner", -5, r"field 'n_inner' must be a positive integer, got -5"),
    fam("gpt2-embd-indivisible", "gpt2", "n_embd", 66, r"n_embd 66 is not divisible by n_head 4"),
    fam("gpt2-positions-zero", "gpt2", "n_positions", 0, r"field 'n_positions' must be a positive integer"),
    fam("gpt-bigcode-multi-query", "gpt_bigcode", "multi_query", "yes", r"field 'multi_query' must be true or false"),
    fam("gpt-neox-rotary-zero", "gpt_neox", "rotary_pct", 0, r"field 'rotary_pct' must be a positive number at most 1, got 0"),
    fam("gpt-neox-rope-rotary-list", "gpt_neox", "rope_parameters", {"partial_rotary_factor": [1]}, r"field 'rope_parameters\.partial_rotary_factor' must be a positive number at most 1, got \[1\]"),
    fam("starcoder2-bias-int", "starcoder2", "use_bias", 1, r"field 'use_bias' must be true or false, got 1"),
    fam("mixtral-top-k-zero", "mixtral", "num_experts_per_tok", 0, r"field 'num_experts_per_tok' must be a positive integer"),
    fam("mixtral-top-k-over", "mixtral", "num_experts_per_tok", 9, r"num_experts_per_tok 9 exceeds the 4 experts"),
    fam("mixtral-experts-string", "mixtral", "num_local_experts", "8", r"field 'num_local_experts' must be an integer"),
    fam("qwen3-moe-step-zero", "qwen3_moe", "decoder_sparse_step", 0, r"field 'decoder_sparse_step' must be a positive"),
    fam("qwen3-moe-inner-negative", "qwen3_moe", "moe_intermediate_size", -1, r"field 'moe_intermediate_size' must be a"),
    fam("qwen3-moe-dense-layer-index", "qwen3_moe", "mlp_only_layers", [9], r"field 'mlp_only_layers' must list layer indices"),
    fam("gpt-oss-experts-string", "gpt_oss", "num_local_experts", "x", r"field 'num_local_experts' must be an integer"),
    fam("gpt-oss-window-negative", "gpt_oss", "sliding_window", -1, r"field 'sliding_window' must be a positive integer"),
    fam("deepseek-v2-kv-rank-zero", "deepseek_v2", "kv_lora_rank", 0, r"field 'kv_lora_rank' must be a positive integer"),
    fam("deepseek-v2-shared-negative", "deepseek_v2", "n_shared_experts", -1, r"field 'n_shared_experts' must be an integer"),
    fam("deepseek-v3-q-rank-zero", "deepseek_v3", "q_lora_rank", 0, r"field 'q_lora_rank' must be a positive integer"),
    fam("deepseek-v3-mtp-negative", "deepseek_v3", "num_nextn_predict_layers", -1, r"field 'num_nextn_predict_layers' must"),
    fam("deepseek-v3-rope-dim-string", "deepseek_v3", "qk_rope_head_dim", "4", r"field 'qk_rope_head_dim' must be an integer"),
    row("family-whole-float-is-an-integer", "family", "estimate -t c.json -c 64 --json",
        files=(("c.json", config(TINY, num_hidden_layers=2.0)),), check=same_total_as_tiny),
    row("family-default-positions-stated", "family", "estimate -t c.json -c 64",
        files=(("c.json", config(TINY, max_position_embeddings=DROP)),),
        check=stdout_has("transformers' LlamaConfig defaults used: max_position_embeddings=2048", err=True)),
    row("family-default-positions-cited", "family", "estimate -t c.json -c 4096",
        r"context 4096 exceeds the target's 2048 positions", files=(("c.json", config(TINY, max_position_embeddings=DROP)),)),

    # ------------------------------------------------------------------ unknown model types
    row("type-unknown", "model-type", "estimate -t c.json", r"model_type 'foo' is not supported \(supported: deepseek_v2",
        files=(("c.json", config(TINY, model_type="foo")),)),
    row("type-number", "model-type", "estimate -t c.json", r"model_type 5 is not supported",
        files=(("c.json", config(TINY, model_type=5)),)),
    row("type-missing", "model-type", "estimate -t c.json", r"model_type None is not supported",
        files=(("c.json", config(TINY, model_type=DROP)),)),
    row("type-encoder-decoder", "model-type", "estimate -t c.json",
        r"model_type 't5' is not supported \(transformers has no causal LM for it\)",
        files=(("c.json", dict(model_type="t5", vocab_size=128, d_model=64, num_layers=2, num_heads=4, d_ff=96)),)),
    row("type-nonstandard-attention", "model-type", "estimate -t c.json -c 64", r"attention is not standard",
        files=(("c.json", dict(model_type="bert", vocab_size=128, hidden_size=64, num_hidden_layers=2,
                                num_attention_heads=4, intermediate_size=96, is_decoder=True)),)),
    row("type-generic-sized-and-said", "model-type", "estimate -t c.json -c 64 --json", files=(("c.json", OPT),),
        check=stdout_has("opt: sized by building OPTForCausalLM on the meta device", err=True)),
    row("type-no-attention", "model-type", "estimate -t c.json -c 64", r"mamba|attention",
        files=(("c.json", dict(model_type="mamba", vocab_size=128, hidden_size=64, num_hidden_layers=2)),)),
    row("type-generic-negative-layers", "model-type", "estimate -t c.json -c 64", r"num_hidden_layers",
        files=(("c.json", config(OPT, num_hidden_layers=-2)),)),
    row("type-generic-indivisible", "model-type", "estimate -t c.json -c 64", r"divisible|cannot build",
        files=(("c.json", config(OPT, hidden_size=66, word_embed_proj_dim=66)),)),
    row("type-engine-refuses-generic", "model-type", "--plan plan.json --prompt hi",
        r"model_type opt is not supported by the engine",
        cli="engine", files=(("opt.json", OPT), ("plan.json", cpu_plan(target="opt.json", draft=None)))),

    # ------------------------------------------------------------------ wrong pairs
    row("pair-padded-vocab-noted", "pair", "estimate -t target.json -d d.json -c 64",
        files=(("target.json", TINY), ("d.json", config(DRAFT, vocab_size=300))),
        check=stdout_has("vocabularies differ by 44 rows (256 vs 300): taken as padding", err=True)),
    row("pair-vocab-far", "pair", "estimate -t target.json -d d.json -c 64",
        r"draft vocabulary \(1000\) differs from the target's \(256\) by 744 tokens",
        files=MISMATCHED[:1] + (("d.json", config(DRAFT, vocab_size=1000)),)),
    row("pair-eos-differs", "pair", "estimate -t target.json -d d.json -c 64", r"the draft's EOS tokens \[7\] differ",
        files=(("target.json", TINY), ("d.json", config(DRAFT, vocab_size=300, eos_token_id=7)))),
    row("pair-tokenizers-differ", "pair", "estimate -t a -d b -c 64", r"the draft's tokenizer\.json vocabulary differs",
        files=TOK + (("b/config.json", TINY), ("b/tokenizer.json", tokenizer({"a": 0, "c": 1})))),
    row("pair-tokenizer-not-an-object", "pair", "estimate -t a -d b -c 64", r"cannot read the tokenizer b/tokenizer\.json",
        files=TOK + (("b/config.json", TINY), ("b/tokenizer.json", {"model": 5}))),
    row("pair-presets", "pair", "estimate -t llama-2-7b-chat -d gpt2", r"draft vocabulary \(50257\) differs"),
    row("pair-plan-writes-nothing", "pair", "plan -t llama-2-7b-chat -d gpt2 --profile rtx-4090 -o p.json",
        r"draft vocabulary \(50257\) differs"),
    row("pair-compare", "pair", "compare --profiles rtx-4090 -t llama-2-7b-chat -d gpt2", r"draft vocabulary \(50257\)"),
    row("pair-min-budget", "pair", "min-budget -t llama-2-7b-chat -d gpt2", r"draft vocabulary \(50257\)"),

    # ------------------------------------------------------------------ devices and profiles
    row("devices-zero", "devices", f"estimate {P} --devices 0", r"'--devices': must be positive, got 0", code=2),
    row("devices-negative", "devices", f"fit {P} --budget 24GiB --devices -1", r"'--devices': must be positive", code=2),
    row("devices-2-no-profile", "devices", f"estimate {P} --devices 2", r"--devices 2 needs 2 GPUs; this machine shows 0",
        setup=cpu_only),
    row("devices-2-plan-no-profile", "devices", f"plan {P} --devices 2 -o p.json", r"--devices 2 needs 2 GPUs; this machine "
        "shows 0", setup=cpu_only),
    row("devices-estimate-no-profile", "devices", f"estimate {P} --devices 64", r"--devices 64 needs 64 GPUs; this machine"),
    row("devices-fit-no-profile", "devices", f"fit {P} --budget 24GiB --devices 64", r"--devices 64 needs 64 GPUs"),
    row("devices-plan-no-profile", "devices", f"plan {P} --devices 64 -o p.json", r"--devices 64 needs 64 GPUs"),
    row("devices-min-budget-no-profile", "devices", f"min-budget {P} --devices 64", r"--devices 64 needs 64 GPUs"),
    row("devices-more-than-layers", "devices", "estimate -t llama-2-7b-chat --devices 99 --profile rtx-4090",
        check=stdout_has("35 of 99 devices used (balanced)")),
    row("profile-typo", "devices", f"estimate {P} --profile rtx4090",
        r"unknown hardware profile 'rtx4090' \(close names: rtx-4090"),
    row("profile-unknown-plan", "devices", f"plan {P} --profile nonsense -o p.json", r"unknown hardware profile 'nonsense'"),
    row("split-policy", "devices", f"estimate {P} --devices 2 --profile rtx-4090 --split-policy x",
        r"'--split-policy': 'x' is not one of", code=2),
    row("compare-profiles-comma", "devices", f"compare --profiles , {P}", r"--profiles ',' names no profile"),
    row("compare-profiles-blank", "devices", f"compare --profiles ' , ' {P}", r"--profiles ' , ' names no profile"),
    row("compare-profiles-unknown", "devices", f"compare --profiles nonsense {P}", r"unknown hardware profile 'nonsense'"),
    row("compare-profiles-and-all", "devices", f"compare --profiles rtx-4090 --all {P}", r"not both", code=2),
    row("compare-nothing", "devices", f"compare {P}", r"give --profiles a,b,c, --all, or --measured FILE", code=2),
    row("compare-no-pair", "devices", "compare --profiles rtx-4090", r"give --target and --draft", code=2),
    row("compare-duplicates-once", "devices", f"compare --profiles rtx-4090,rtx-4090 {P} -c 2048 --json",
        check=json_rows("devices", 1)),
    row("devices-json", "devices", "devices --json", check=json_rows("devices")),
    row("presets-lists-bundled", "devices", "presets --json", check=json_rows("presets", prefix="bundled:")),
    row("devices-profiles-json", "devices", "devices --profiles --json", check=json_rows("profiles", prefix="NVIDIA")),
    row("presets-extra-argument", "devices", "presets extra", r"Got unexpected extra argument \(extra\)", code=2),
    row("command-unknown", "devices", "nosuch", r"No such command 'nosuch'", code=2),
    row("version", "devices", "--version", check=stdout_has("version")),
]
