"""The plan's draft method as each engine spells it: pure functions over (method, k, depth, top-k, T, head).

A chain of k tokens is depth k, top-k 1, T = k. A tree is (depth, top-k per node, T verified draft tokens).
Each `*_spec` function returns the engine's settings for the method and the lines the engine cannot
express (they go to the export's `unsupported`). What an engine cannot run at all is exported without
speculation, said so; a tree an engine cannot express is exported as the chain of its depth (less memory
than the plan's tree, said so). Option names, checked against each project's documentation:

- vLLM `speculative_config` `method`: `draft_model`, `eagle`, `eagle3`, `medusa`, `mtp`, `ngram` (the
  SpeculativeMethod literal, docs.vllm.ai/en/v0.12.0/api/vllm/config/speculative/); EAGLE / EAGLE-3
  examples docs.vllm.ai/en/latest/features/speculative_decoding/eagle/; `prompt_lookup_max` with `ngram`
  .../n_gram/ (example value 4); `mtp` without a model .../en/v0.19.1/features/speculative_decoding/mtp/.
  No tree option: `speculative_token_tree` was in the v0.10-v0.12 line only (vllm/v1/spec_decode/eagle.py).
- SGLang `--speculative-algorithm EAGLE|EAGLE3|STANDALONE|NGRAM` with `--speculative-num-steps`,
  `--speculative-eagle-topk`, `--speculative-num-draft-tokens` (verified tokens including the root: with
  top-k 1 it is steps + 1), docs.sglang.io/docs/advanced_features/speculative_decoding; MTP models run
  under EAGLE (the docs' Multi Token Prediction section; NEXTN is its alias). NGRAM's
  `--speculative-ngram-{min,max}-match-window-size` and `--speculative-ngram-max-bfs-breadth`: same page,
  Full Parameter Reference. No Medusa.
- llama.cpp `--spec-type draft-simple|draft-eagle3|draft-mtp|ngram-simple` (docs/speculative.md;
  draft-eagle3 added with ggml-org/llama.cpp#24977, draft-mtp with #22673), `--spec-draft-n-max/-n-min`,
  `--spec-ngram-size-n/-m` (docs/speculative.md at commit 067318e). Chains only; no EAGLE-1, no Medusa.
- TensorRT-LLM `speculative_config` `decoding_type` `Eagle3` (`max_draft_len`, `speculative_model`,
  `use_dynamic_tree`, `dynamic_tree_max_topK`, `max_total_draft_tokens`), `MTP` (`max_draft_len`, the same
  tree fields), `NGram` (`max_draft_len`, `max_matching_ngram_size`): nvidia.github.io/TensorRT-LLM/
  1.3.0rc27/llm-api/reference/MTPDecodingConfig.html and 1.4.0rc4/.../Eagle3DecodingConfig.html,
  NGramDecodingConfig.html. The PyTorch backend lists EAGLE 3, MTP, draft/target and NGram
  (features/speculative-decoding.html); Medusa (`MedusaDecodingConfig`) and EAGLE-1 are TRT-engine only.
- transformers 5.24 `generate(prompt_lookup_num_tokens=, max_matching_ngram_size=)` and
  `assistant_model=` (generation/configuration_utils.py, installed); no heads, no MTP, no trees.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import SpecMemoError

METHODS = ("draft-model", "eagle", "eagle3", "medusa", "mtp", "ngram", "none")
NGRAM_MAX = 4  # longest n-gram matched: the value in vLLM's N-Gram example (features/speculative_decoding/n_gram)
NGRAM_MIN = 1  # shortest n-gram matched: a single token, the weakest match a lookup can use


@dataclass(frozen=True)
class Drafting:
    """What the engine must draft: the method, the tree (a chain is top-k 1, T = depth) and the head."""

    method: str
    depth: int  # draft steps; k for a chain
    topk: int = 1  # children kept per node
    tokens: int | None = None  # T: draft tokens verified per step; None = depth (a chain)
    head: str | None = None  # the draft model or head as the engine loads it; None for mtp / ngram / none
    ngram_min: int = NGRAM_MIN
    ngram_max: int = NGRAM_MAX

    def __post_init__(self):
        if self.method not in METHODS:
            raise SpecMemoError(f"unknown draft method '{self.method}'", "one of: " + ", ".join(METHODS))
        if self.method == "none":
            return
        if self.depth < 1 or self.topk < 1:
            raise SpecMemoError(f"draft depth {self.depth} and top-k {self.topk} must be at least 1")
        t = self.verified
        if self.topk == 1 and t != self.depth:
            raise SpecMemoError(f"a chain (top-k 1) verifies its {self.depth} tokens, not {t}",
                                f"give T = {self.depth}, or a top-k above 1 for a tree")
        most = sum(self.topk**i for i in range(1, self.depth + 1))
        if not self.depth <= t <= most:
            raise SpecMemoError(f"T = {t} verified tokens does not fit a tree of depth {self.depth} and top-k "
                                f"{self.topk}", f"T lies between {self.depth} and {most}")
        if self.method in ("draft-model", "eagle", "eagle3", "medusa") and not self.head:
            raise SpecMemoError(f"draft method {self.method} needs the draft model or head to export")

    @property
    def verified(self) -> int:
        """T: draft tokens verified per step (the depth for a chain)."""
        return self.depth if self.tokens is None else self.tokens

    @property
    def is_tree(self) -> bool:
        return self.topk > 1

    def shape(self) -> str:
        return f"depth {self.depth}, top-k {self.topk}, T = {self.verified}"


def _chain_only(d: Drafting, engine: str, why: str) -> list[str]:
    """The line for a tree an engine cannot express; [] for a chain."""
    if not d.is_tree:
        return []
    return [f"token tree ({d.shape()}): {engine} {why}; exported as the chain of depth {d.depth}, which "
            f"verifies {d.depth} tokens instead of {d.verified} and needs less memory than the plan's tree"]


def _not_run(d: Drafting, engine: str, why: str) -> list[str]:
    return [f"draft method {d.method}: {engine} {why}; exported without speculative decoding"]


def vllm_spec(d: Drafting) -> tuple[dict | None, list[str]]:
    """vLLM's speculative_config for the method, and what it cannot express."""
    if d.method == "none":
        return None, []
    spec = {"method": {"draft-model": "draft_model"}.get(d.method, d.method)}
    if d.head and d.method != "mtp":
        spec["model"] = d.head
    spec["num_speculative_tokens"] = d.depth
    out = _chain_only(d, "vLLM 0.25's speculative_config", "has no token-tree option (speculative_token_tree was "
                      "in the v0.10-v0.12 line)")
    if d.method == "ngram":
        spec.update({"prompt_lookup_max": d.ngram_max, "prompt_lookup_min": d.ngram_min})
        out.append("n-gram index: vLLM matches on the CPU over each request's own tokens (host memory, not "
                   "counted in the plan's device total)")
    if d.method == "mtp":
        out.append("mtp: vLLM runs the target checkpoint's own MTP layer(s); num_speculative_tokens above the "
                   "checkpoint's layer count re-runs the last one")
    if d.method == "medusa":
        out.append("medusa: vLLM drafts top-1 per head, so num_speculative_tokens cannot pass the head count")
    return spec, out


SGLANG_ALGORITHMS = {"draft-model": "STANDALONE", "eagle": "EAGLE", "eagle3": "EAGLE3", "mtp": "EAGLE",
                     "ngram": "NGRAM"}


def sglang_spec(d: Drafting) -> tuple[dict, list[str]]:
    """SGLang's speculative server arguments (settings names, without the leading --) and what it cannot express."""
    if d.method == "none":
        return {}, []
    if d.method == "medusa":
        return {}, _not_run(d, "SGLang", "has no Medusa algorithm (EAGLE, EAGLE3, STANDALONE, NGRAM)")
    spec = {"speculative_algorithm": SGLANG_ALGORITHMS[d.method]}
    if d.head and d.method != "mtp":
        spec["speculative_draft_model_path"] = d.head
    out = []
    if d.method == "ngram":
        spec.update({"speculative_num_draft_tokens": d.verified + 1,
                     "speculative_ngram_min_match_window_size": d.ngram_min,
                     "speculative_ngram_max_match_window_size": d.ngram_max,
                     "speculative_ngram_max_bfs_breadth": d.topk})
        out.append("n-gram index: SGLang's NGRAM trie lives in host memory (--speculative-ngram-capacity "
                   "entries), not counted in the plan's device total")
        return spec, out
    spec.update({"speculative_num_steps": d.depth, "speculative_eagle_topk": d.topk,
                 "speculative_num_draft_tokens": d.verified + 1})  # + the root token
    if d.method == "mtp":
        out.append("mtp: SGLang runs the target's MTP layer through EAGLE (NEXTN); some checkpoints need "
                   "--speculative-draft-model-path to the extracted layer")
    if d.method == "draft-model" and d.is_tree:
        out += _chain_only(d, "SGLang's STANDALONE", "is documented for chains")
        spec.update({"speculative_eagle_topk": 1, "speculative_num_draft_tokens": d.depth + 1})
    return spec, out


LLAMACPP_TYPES = {"draft-model": "draft-simple", "eagle3": "draft-eagle3", "mtp": "draft-mtp", "ngram": "ngram-simple"}


def llamacpp_spec(d: Drafting) -> tuple[dict, list[str]]:
    """llama-server's speculative settings (option names without the leading --) and what it cannot express."""
    if d.method == "none":
        return {}, []
    if d.method not in LLAMACPP_TYPES:
        return {}, _not_run(d, "llama.cpp", "has no spec type for it (draft-simple, draft-eagle3, draft-mtp, "
                            "ngram-*)")
    spec = {"spec_type": LLAMACPP_TYPES[d.method]}
    if d.method == "ngram":
        spec.update({"spec_ngram_size_n": d.ngram_max, "spec_ngram_size_m": d.depth})
    spec.update({"spec_draft_n_max": d.depth, "spec_draft_n_min": d.depth})
    out = _chain_only(d, "llama.cpp", "drafts one chain per slot")
    if d.method == "eagle3":
        out.append("eagle3: needs a llama.cpp build with draft-eagle3 (ggml-org/llama.cpp#24977) and the head "
                   "converted to GGUF with --target-model-dir")
    if d.method == "mtp":
        out.append("mtp: needs a build with draft-mtp (ggml-org/llama.cpp#22673); the MTP layer comes from the "
                   "target GGUF and gets its own draft context")
    return spec, out


TRTLLM_TYPES = {"draft-model": "Draft_Target", "eagle3": "Eagle3", "mtp": "MTP", "ngram": "NGram"}


def trtllm_spec(d: Drafting) -> tuple[dict | None, list[str]]:
    """TensorRT-LLM's speculative_config (PyTorch backend) and what it cannot express."""
    if d.method == "none":
        return None, []
    if d.method not in TRTLLM_TYPES:
        return None, _not_run(d, "TensorRT-LLM's PyTorch backend", "has no decoding config for it "
                              "(MedusaDecodingConfig and EAGLE-1 are TRT-engine only)")
    spec = {"decoding_type": TRTLLM_TYPES[d.method], "max_draft_len": d.depth}
    if d.head and d.method in ("draft-model", "eagle3"):
        spec["speculative_model"] = d.head
    out = []
    if d.method == "ngram":
        spec["max_matching_ngram_size"] = d.ngram_max
    if d.is_tree and d.method in ("eagle3", "mtp"):
        spec.update({"use_dynamic_tree": True, "dynamic_tree_max_topK": d.topk, "max_total_draft_tokens": d.verified})
    else:
        out += _chain_only(d, "TensorRT-LLM", f"has no tree for {TRTLLM_TYPES[d.method]}")
    return spec, out


def hf_spec(d: Drafting) -> tuple[dict, list[str]]:
    """transformers' generate() keyword arguments for the method and what it cannot express."""
    if d.method == "none":
        return {}, []
    if d.method == "ngram":
        return ({"prompt_lookup_num_tokens": d.depth, "max_matching_ngram_size": d.ngram_max},
                _chain_only(d, "transformers", "drafts one chain"))
    if d.method == "draft-model":
        return {"assistant_model": "<the draft model>"}, _chain_only(d, "transformers", "drafts one chain")
    return {}, _not_run(d, "transformers 5.24's generate", "runs no EAGLE, Medusa or DeepSeek-style MTP head")
