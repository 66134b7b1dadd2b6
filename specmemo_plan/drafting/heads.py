"""A draft head's weights by its real layout, as a head-shaped ModelShape.

The memory model (memory.py) and the latency models (throughput.py) read a draft as a ModelShape: for a
head, `num_params` is what the head holds on the device (parts shared with the target are not counted),
`vocab_size` is the vocabulary its logits cover, `cache_layers` the layers it caches, `matrices` its
quantisable matrices. Notation: H hidden, V the target's vocabulary, V_d EAGLE-3's draft vocabulary,
n_h / n_kv attention / KV heads, d head_dim, I MLP width.

Sharing with the target, per engine (`--head-embedding shared|copied`, default shared):
- EAGLE-1/2 and EAGLE-3 embedding: vLLM shares the target's (vllm-project/vllm#17326) and SGLang replaces
  the draft's with the target's; the EAGLE reference (SafeAILab/EAGLE cnets.py) loads its own copy: copied.
- EAGLE-1/2 lm_head: always the target's (the reference and every engine); never counted.
- MTP embedding and output head: DeepSeek-V3 shares them with the main model (technical report sec. 2.2)
  but its checkpoint stores a copy; vLLM's deepseek_mtp.py builds its own per MTP layer: copied.
- Medusa: one lm_head per head in vLLM (medusa.py, unless `original_lm_head`) and TensorRT-LLM: counted.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import os
from dataclasses import replace
from pathlib import Path

from ..architectures import CacheLayer, Matrix
from ..errors import SpecMemoError
from ..models import ModelShape, load_preset_config

EMBEDDING_POLICIES = ("shared", "copied")
EAGLE3_AUX_LAYERS = 3  # fc fuses the hidden states of 3 target layers (EAGLE-3 paper, sec. 3)


def read_head_config(ref: str) -> dict:
    """A head's config.json: a file, a folder holding one, `bundled:NAME` (a head that ships with the
    project, models.BUNDLED_MODELS), a preset in presets/heads/, or a model preset."""
    if ref.startswith("bundled:"):
        from ..models import bundled_path

        ref = str(bundled_path(ref.split(":", 1)[1]))
    path = Path(os.path.expanduser(ref))
    if path.is_dir():
        path = path / "config.json"
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise SpecMemoError(f"{path} is not a JSON config: {exc}") from None
    heads = importlib.resources.files("specmemo_plan").joinpath("presets", "heads", f"{ref}.json")
    if heads.is_file():
        return json.loads(heads.read_text())
    if "/" in ref or ref.endswith(".json"):
        raise SpecMemoError(f"no such file or folder: {ref}", "check the path")
    return load_preset_config(ref)


def _int(cfg: dict, key: str, where: str, default: int | None = None) -> int:
    value = cfg.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise SpecMemoError(f"{where}: {key} must be a positive integer, got {value!r}")
    return value


# ----------------------------------------------------------------------------- parameter counts


def eagle3_fc_params(target_hidden: int, hidden: int) -> int:
    """fc: Linear(3 H_t -> H), no bias: the fused hidden states of 3 target layers (SafeAILab/EAGLE
    cnets.py `self.fc`; vLLM llama_eagle3.py). 3 * 4096 * 4096 = 50,331,648 for the Llama-3.1-8B head."""
    return EAGLE3_AUX_LAYERS * target_hidden * hidden


def attention_params(in_width: int, hidden: int, heads: int, kv_heads: int, head_dim: int) -> int:
    """q/k/v: Linear(in -> n_h d), 2 x Linear(in -> n_kv d); o: Linear(n_h d -> H); no bias (Llama).
    EAGLE-3's first layer reads [embedding; fused hidden], in = 2H (cnets.py LlamaAttention with
    `hidden_size * 2`); every other layer in = H."""
    return in_width * (heads + 2 * kv_heads) * head_dim + heads * head_dim * hidden


def mlp_params(hidden: int, intermediate: int) -> int:
    """Gated MLP: gate, up (H -> I) and down (I -> H), no bias: 3 H I."""
    return 3 * hidden * intermediate


def eagle_fc_params(hidden: int, bias: bool) -> int:
    """EAGLE-1/2 fc: Linear(2H -> H) over [embedding; hidden] (+H bias when the config's `bias` is true:
    the Vicuna heads; false in the Llama-3 training config). SafeAILab/EAGLE cnets1.py."""
    return 2 * hidden * hidden + (hidden if bias else 0)


def medusa_head_params(hidden: int, vocab: int, layers: int) -> int:
    """One Medusa head: `layers` ResBlocks of Linear(H -> H) with bias, then its lm_head Linear(H -> V),
    no bias (FasterDecoding/Medusa medusa_model.py; vLLM medusa.py). Vicuna-7B: 4096^2 + 4096 + 32000 * 4096."""
    return layers * (hidden * hidden + hidden) + vocab * hidden


def mtp_extra_params(hidden: int) -> int:
    """What an MTP module adds around its decoder layer: enorm and hnorm (H each), eh_proj Linear(2H -> H)
    without bias, shared_head.norm (H): 2H^2 + 3H (DeepSeek-V3 report sec. 2.2; vLLM deepseek_mtp.py)."""
    return 2 * hidden * hidden + 3 * hidden


def _fingerprint(method: str, parts: dict) -> str:
    return hashlib.sha256(json.dumps([method, parts], sort_keys=True).encode()).hexdigest()[:16]


def _shape(method: str, ref: str, target: ModelShape, parts: dict, **fields) -> ModelShape:
    """The head-shaped ModelShape: held parameters = the sum of `parts` (shared parts are 0)."""
    base = dict(
        name=ref, source=f"head:{ref}", model_type=f"{method}-head", tie_word_embeddings=False,
        num_params=sum(parts.values()), fingerprint=_fingerprint(method, parts), has_real_weights=False,
        max_position_embeddings=target.max_position_embeddings,  # vLLM raises the head's to the target's
        weight_source="head layout (drafting/heads.py): " + ", ".join(f"{k} {v:,}" for k, v in parts.items() if v),
    )
    base.update(fields)
    return ModelShape(**base)


def _llama_dims(cfg: dict, where: str) -> tuple[int, ...]:
    """(hidden, vocab, heads, layers, KV heads, head_dim, MLP width) of an EAGLE head's Llama-style config
    (layers default 1, KV heads the heads, head_dim hidden / heads, as LlamaConfig has them)."""
    H, V = _int(cfg, "hidden_size", where), _int(cfg, "vocab_size", where)
    heads, layers = _int(cfg, "num_attention_heads", where), _int(cfg, "num_hidden_layers", where, 1)
    kv = _int(cfg, "num_key_value_heads", where, heads)
    return H, V, heads, layers, kv, _int(cfg, "head_dim", where, H // heads), _int(cfg, "intermediate_size", where)


def eagle3_shape(cfg: dict, ref: str, target: ModelShape, embedding: str) -> ModelShape:
    """EAGLE-3: fc 3H_t -> H; layer 0 with 2H-wide q/k/v, layers > 0 H-wide (vLLM); norms hidden_norm,
    input_layernorm, post_attention_layernorm per layer and a final norm; lm_head H -> V_d; embedding V x H
    when copied. The d2t (int64 [V_d]) and t2d (bool [V]) maps are buffers (drafting/buffers.py)."""
    where = f"EAGLE-3 head {ref}"
    H, V, heads, layers, kv, d, I = _llama_dims(cfg, where)
    V_d = _int(cfg, "draft_vocab_size", where, V)
    H_t = _int(cfg, "target_hidden_size", where, target.hidden_size)
    _check_target(where, target, H_t, V)
    layer_params = [attention_params(2 * H if i == 0 else H, H, heads, kv, d) + mlp_params(H, I)
                    + (3 if i == 0 else 2) * H for i in range(layers)]
    parts = {"fc": eagle3_fc_params(H_t, H), "layers": sum(layer_params), "norm": H, "lm_head": V_d * H,
             "embedding": V * H if embedding == "copied" else 0}
    matrices = [Matrix(H, 3 * H_t, 1, layers=(0,))] + _layer_matrices(H, heads, kv, d, I, layers, first_in=2 * H)
    return _shape("eagle3", ref, target, parts, vocab_size=V_d, hidden_size=H, intermediate_size=I,
                  num_layers=layers, num_attention_heads=heads, num_kv_heads=kv, head_dim=d,
                  cache_layers=(CacheLayer(kv, d, d, None),) * layers, matrices=tuple(matrices),
                  layer_params=tuple(layer_params))


def eagle_shape(cfg: dict, ref: str, target: ModelShape, embedding: str) -> ModelShape:
    """EAGLE-1/2: fc 2H -> H (+bias), N_d Llama layers whose first has no input_layernorm (cnets1.py),
    the target's lm_head (vocab V, not held), its own embedding copy only when copied. A head with
    `draft_vocab_size` V_d < V (this project's bundled head, train/train_eagle.py) holds its own
    lm_head H -> V_d over the V_d tokens the target predicts most, ids mapped back by d2t (a buffer)."""
    where = f"EAGLE head {ref}"
    H, V, heads, layers, kv, d, I = _llama_dims(cfg, where)
    V_d = _int(cfg, "draft_vocab_size", where, V)
    _check_target(where, target, H, V)
    if V_d > V:
        raise SpecMemoError(f"{where}: draft_vocab_size {V_d} exceeds the vocabulary {V}", "fix the head's config")
    layer_params = [attention_params(H, H, heads, kv, d) + mlp_params(H, I) + (1 if i == 0 else 2) * H
                    for i in range(layers)]
    parts = {"fc": eagle_fc_params(H, bool(cfg.get("bias", True))), "layers": sum(layer_params),
             "lm_head": V_d * H if V_d != V else 0, "embedding": V * H if embedding == "copied" else 0}
    matrices = [Matrix(H, 2 * H, 1, layers=(0,))] + _layer_matrices(H, heads, kv, d, I, layers, first_in=H)
    return _shape("eagle", ref, target, parts, vocab_size=V_d, hidden_size=H, intermediate_size=I,
                  num_layers=layers, num_attention_heads=heads, num_kv_heads=kv, head_dim=d,
                  cache_layers=(CacheLayer(kv, d, d, None),) * layers, matrices=tuple(matrices),
                  layer_params=tuple(layer_params))


def medusa_shape(cfg: dict, ref: str, target: ModelShape) -> ModelShape:
    """Medusa: `medusa_num_heads` heads of `medusa_num_layers` ResBlocks + an lm_head each; H and V are the
    target's (Medusa configs name only the base model). No KV: the heads read the target's last hidden
    state. `layer_params` holds one entry per head (their count sizes the logits buffer)."""
    where = f"Medusa head {ref}"
    n, layers = _int(cfg, "medusa_num_heads", where, 5), _int(cfg, "medusa_num_layers", where, 1)
    H, V = target.hidden_size, target.vocab_size
    per_head = medusa_head_params(H, V, layers)
    parts = {"resblocks": n * layers * (H * H + H), "lm_heads": n * V * H}
    matrices = (Matrix(H, H, n * layers), Matrix(V, H, n))
    return _shape("medusa", ref, target, parts, vocab_size=V, hidden_size=H, intermediate_size=0, num_layers=0,
                  num_attention_heads=target.num_attention_heads, num_kv_heads=0, head_dim=target.head_dim,
                  cache_layers=(), matrices=matrices, layer_params=(per_head,) * n)


def mtp_shape(target: ModelShape, ref: str, embedding: str) -> ModelShape:
    """MTP (DeepSeek-V3): per module a full decoder layer of the target (its last layer's kind: MLA + MoE
    with every routed expert), plus mtp_extra_params, plus embedding and head V x H each when copied.
    Its KV: that layer's cache over the whole context, one per module."""
    m = target.mtp_layers
    if m <= 0:
        raise SpecMemoError(f"{target.name} has no multi-token-prediction layers (num_nextn_predict_layers)",
                            "MTP needs a target whose checkpoint ships them, such as DeepSeek-V3")
    last = target.num_layers - 1
    H, V = target.hidden_size, target.vocab_size
    parts = {"decoder_layers": m * target.layer_params[last], "eh_proj_norms": m * mtp_extra_params(H),
             "embedding": V * H if embedding == "copied" else 0, "head": m * V * H if embedding == "copied" else 0}
    matrices = [Matrix(x.out_features, x.in_features, x.per_layer * m, x.expert, tuple(range(m)))
                for x in target.matrices if last in x.layers] + [Matrix(H, 2 * H, m, layers=tuple(range(m)))]
    experts = target.experts
    if experts is not None:
        moe = any(x.expert and last in x.layers for x in target.matrices)
        experts = replace(experts, moe_layers=m if moe else 0)
    return _shape("mtp", ref, target, parts, vocab_size=V, hidden_size=H,
                  intermediate_size=target.intermediate_size, num_layers=m,
                  num_attention_heads=target.num_attention_heads, num_kv_heads=target.num_kv_heads,
                  head_dim=target.head_dim, cache_layers=(target.cache_layers[last],) * m, matrices=tuple(matrices),
                  layer_params=(target.layer_params[last] + mtp_extra_params(H),) * m, experts=experts,
                  latent=target.latent)


def _layer_matrices(H, heads, kv, d, I, layers, first_in):
    out = []
    for i in range(layers):
        width = first_in if i == 0 else H
        out += [Matrix(heads * d, width, 1, layers=(i,)), Matrix(kv * d, width, 2, layers=(i,)),
                Matrix(H, heads * d, 1, layers=(i,)), Matrix(I, H, 2, layers=(i,)), Matrix(H, I, 1, layers=(i,))]
    return out


def _check_target(where: str, target: ModelShape, hidden: int, vocab: int) -> None:
    if hidden != target.hidden_size:
        raise SpecMemoError(f"{where} reads hidden states of width {hidden}, {target.name} has {target.hidden_size}",
                            "give the head trained for this target")
    if vocab != target.vocab_size:
        raise SpecMemoError(f"{where} has vocabulary {vocab}, {target.name} has {target.vocab_size}",
                            "give the head trained for this target")


def head_shape(method: str, ref: str | None, target: ModelShape, embedding: str = "shared") -> ModelShape:
    """The head-shaped ModelShape of `method` (eagle, eagle3, medusa, mtp) from the head's config (MTP: the
    target's own config; `ref` then names the target)."""
    if embedding not in EMBEDDING_POLICIES:
        raise SpecMemoError(f"head embedding {embedding!r} is not known", "shared or copied")
    if method == "mtp":
        return mtp_shape(target, ref or target.name, embedding)
    if not ref:
        raise SpecMemoError(f"--draft-method {method} needs the head's config", "give --draft with its config.json")
    cfg = read_head_config(ref)
    build = {"eagle3": eagle3_shape, "eagle": eagle_shape}.get(method)
    if build is not None:
        return build(cfg, ref, target, embedding)
    if method == "medusa":
        return medusa_shape(cfg, ref, target)
    raise SpecMemoError(f"{method} is not a head method", "eagle, eagle3, medusa or mtp")


def read_shape(draft: ModelShape, method: str, target: ModelShape, embedding: str) -> ModelShape:
    """What one draft step reads, as a ModelShape for forward_ms: held weights, less a copied embedding
    (a step looks up B rows), plus the target's output layer where the head uses it (EAGLE-1/2 always;
    MTP when shared); Medusa's lm_heads as matrices (all heads run on one token, vocab 0)."""
    VH = target.vocab_size * draft.hidden_size
    copied = embedding == "copied"
    if method == "medusa":
        return replace(draft, vocab_size=0)
    if method == "eagle3":
        return replace(draft, num_params=draft.num_params - (VH if copied else 0))
    if method == "eagle":  # the target's lm_head, unless the head holds its own over a trimmed vocabulary
        own_head = draft.vocab_size != target.vocab_size
        return replace(draft, num_params=draft.num_params - (VH if copied else 0) + (0 if own_head else VH))
    if method == "mtp":  # the head is read once per step (vocab V in forward_flops)
        held_head = draft.num_layers * VH if copied else 0
        return replace(draft, num_params=draft.num_params - (VH if copied else 0) - held_head + VH)
    return draft
