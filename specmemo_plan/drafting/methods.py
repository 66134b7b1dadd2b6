"""The draft methods the planner sizes, and how a head's config.json says which one it is.

A method decides what the draft holds on the device (its weights and KV), whether it drafts a tree,
and the acceptance assumed when none is measured or given. Tree support is the engines' (option names
in the export modules): EAGLE/EAGLE-3 trees in SGLang (`--speculative-eagle-topk` > 1), TensorRT-LLM
(dynamic tree) and vLLM v0.10-0.12 (`speculative_token_tree`, TREE_ATTN); Medusa trees in TensorRT-LLM
(`medusa_choices`; vLLM's Medusa is top-1); n-gram trees in SGLang (NGRAM builds a BFS tree). Draft-model
and MTP chains only here: vLLM and TensorRT-LLM run MTP as a chain (SGLang's NEXTN reuses EAGLE's tree,
not modelled).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import SpecMemoError


@dataclass(frozen=True)
class DraftMethod:
    name: str
    needs_draft: bool  # a --draft file (model or head config); MTP reads the target, n-gram nothing
    device_weights: bool  # holds weights on the device
    trees: bool  # may verify a token tree (top-k > 1)
    default_acceptance: float  # per-token acceptance a, when none is measured or given
    acceptance_source: str  # where default_acceptance comes from
    description: str
    # a tree's siblings when none were measured (trees.sibling_shares of this depth-1 rank histogram);
    # None: the tree model's geometric ranks
    default_ranks: tuple[int, ...] | None = None
    ranks_source: str = "assumed: geometric ranks, the r-th child right with a(1-a)^(r-1) (drafting/trees.py)"


# The engine's depth-1 ranks of n-gram lookup (none, rank 1, ..., rank 10), bench/tree_model.py 2026-12-02:
# other occurrences' continuations almost never hold the target's token, so the geometric ranks overstated
# n-gram trees by up to 29% there.
NGRAM_RANKS = (271, 20, 1, 0, 0, 0, 0, 0, 0, 0, 0)


def _eagle3_default() -> float:
    """Per-token a whose chain of k = 3 gives the mean accepted length 2.29 (1 + a + a^2 + a^3 = 2.29),
    by bisection: vLLM's measurement of gpt-oss-120b + nvidia/gpt-oss-120b-Eagle3 on MT-Bench at k = 3
    (vllm-project/vllm#28549: per-position acceptance 0.65 / 0.40 / 0.24)."""
    low, high = 0.0, 1.0
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if 1 + mid + mid**2 + mid**3 < 2.29 else (low, mid)
    return round(low, 4)


METHODS = {
    m.name: m for m in (
        DraftMethod("draft-model", True, True, False, 0.7,
                    "assumed: the middle of Leviathan et al. (2023, Table 3)'s 0.5-0.9 for small same-family drafts",
                    "a separate draft model proposing a chain of k tokens"),
        DraftMethod("eagle", True, True, True, 0.7,
                    "assumed: no per-token figure of EAGLE-1/2 was verified; the draft-model default",
                    "EAGLE-1/2 head: fc over [embedding; hidden] + decoder layer(s), the target's lm_head"),
        DraftMethod("eagle3", True, True, True, _eagle3_default(),
                    "vllm-project/vllm#28549: mean accepted length 2.29 at k=3 (gpt-oss-120b EAGLE-3, MT-Bench)",
                    "EAGLE-3 head: fc fusing 3 target layers, one decoder layer, its own lm_head over the draft vocabulary"),
        DraftMethod("medusa", True, True, True, 0.6,
                    "assumed: Medusa (arXiv 2401.10774) reports speedups (Medusa-1 > 2.2x), not a per-token rate",
                    "Medusa heads: per head residual block(s) and an output layer, all reading the target's last hidden state"),
        DraftMethod("mtp", False, True, False, 0.85,
                    "DeepSeek-V3 technical report (arXiv 2412.19437, sec. 5.4.3): second-token acceptance 85-90%",
                    "the target's own multi-token-prediction layer(s): a full decoder layer with eh_proj, its own KV"),
        DraftMethod("ngram", False, False, True, 0.5,
                    "assumed: depends on repetition in the workload (SuffixDecoding, arXiv 2411.04975: 1.0-5.3x)",
                    "prompt lookup / n-gram matching over the request's tokens: no device weights, no draft KV",
                    default_ranks=NGRAM_RANKS,
                    ranks_source="measured: bench/tree_model.py, SmolLM2-135M-Instruct, 8 calibration prompts "
                                 "(README): the second candidate held the target's token in 1 of 292 steps"),
        DraftMethod("none", False, False, False, 0.0, "-", "plain decoding"),
    )
}
DRAFT_METHODS = tuple(METHODS)
HEAD_METHODS = ("eagle", "eagle3", "medusa", "mtp")  # a head-shaped draft (heads.py)


def get_method(name: str) -> DraftMethod:
    if name not in METHODS:
        raise SpecMemoError(f"unknown draft method {name!r}", "choose one of: " + ", ".join(DRAFT_METHODS))
    return METHODS[name]


def effective_method(draft_method: str | None, has_draft: bool) -> str:
    """The method of a plan or knobs: the stated one, else draft-model with a draft and none without
    (plans made before the method was a knob)."""
    if draft_method is not None:
        return draft_method
    return "draft-model" if has_draft else "none"


def recognise(cfg: dict) -> str | None:
    """The method a config.json declares by itself, or None (a plain model config: a draft model).

    - `architectures` naming Eagle3 (`LlamaForCausalLMEagle3` in SGLang/SpecForge, `Eagle3LlamaForCausalLM`
      in vLLM), or `draft_vocab_size` (EAGLE-3's reduced output vocabulary; yuhuili/EAGLE3-LLaMA3.1-Instruct-8B
      declares `LlamaForCausalLM` and only this field says it is a head): eagle3;
    - `architectures` naming Eagle without 3 (`EagleLlamaForCausalLM`, vLLM; the bundled head, which also
      has `draft_vocab_size`): eagle (the published EAGLE-1 heads declare `LlamaForCausalLM`: give
      --draft-method eagle);
    - `medusa_num_heads`: medusa.
    An MTP layer lives in the target's config (`num_nextn_predict_layers`): see ModelShape.mtp_layers.
    """
    archs = cfg.get("architectures") or []
    names = [a.lower() for a in archs if isinstance(a, str)]
    if any("eagle3" in n for n in names):
        return "eagle3"
    if any("eagle" in n for n in names):  # an EAGLE-1 head may trim its vocabulary too (draft_vocab_size)
        return "eagle"
    if "draft_vocab_size" in cfg:
        return "eagle3"
    if "medusa_num_heads" in cfg:
        return "medusa"
    return None


def validate_knobs(knobs, has_draft: bool) -> None:
    """memory.Knobs.validate's method rules: the draft each method needs or refuses, k >= 1 with a draft,
    and a tree only where the method drafts trees (within trees.check_tree)."""
    from .trees import check_tree

    name = knobs.method(has_draft)
    method = get_method(name)
    if knobs.head_embedding not in (None, "shared", "copied"):
        raise SpecMemoError(f"head_embedding {knobs.head_embedding!r} is not known", "shared or copied")
    if name == "none":
        if has_draft:
            raise SpecMemoError("draft method none is plain decoding, but a draft is given", "drop --draft")
        if knobs.draft_length:
            raise SpecMemoError(f"draft_length {knobs.draft_length} needs a draft model", "add --draft")
    elif name == "ngram":
        if has_draft:
            raise SpecMemoError("n-gram drafting has no draft model", "drop --draft")
        if knobs.draft_length == 0:
            raise SpecMemoError("draft_length is 0 with n-gram drafting", "use --draft-length >= 1")
    else:
        what = "a draft model" if name == "draft-model" else f"a {name} draft"
        if not has_draft:
            raise SpecMemoError(f"draft_length {knobs.draft_length} needs {what}" if knobs.draft_length
                                else f"draft method {name} needs {what}", "add --draft")
        if knobs.draft_length == 0:
            raise SpecMemoError(f"draft_length is 0 but {what} is given", "use --draft-length >= 1, or drop --draft")
    if (knobs.tree_depth is not None or knobs.tree_topk is not None) and knobs.draft_length:
        if (knobs.tree_topk or 1) > 1 and not method.trees:
            raise SpecMemoError(f"draft method {name} drafts chains, not trees (tree top-k {knobs.tree_topk})",
                                "drop --tree-topk, or use eagle, eagle3, medusa or ngram")
        check_tree(knobs.tree)
