"""How fast a plan runs: expected accepted tokens, a latency model, predicted tokens/s.

Step time of speculative decoding with draft length k (docs/throughput.md):
    k * t_draft(B, 1) + t_target(B, k + 1)
and each step yields E[tokens] = (1 - a^(k+1)) / (1 - a) per sequence for an i.i.d. per-token
acceptance a (Leviathan et al. 2023, eq. 1), or the mean of a measured histogram. A target forward
over N devices visits them one after another: the sum of their forwards plus one hidden-state hop
per device change (`target_forward_ms`); one device is the N = 1 case.

Latency models share one method, `forward_ms(model, dtype, batch, num_tokens, context)`:
- `BandwidthLatency`: bytes read / bandwidth (decoding is memory-bound);
- `RooflineLatency`: max(bytes / bandwidth, FLOPs / peak) with stated efficiencies (hardware profiles);
- the autotuner's fitted model (`autotune.FittedLatency`) from measurements on the device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol, Sequence

from .errors import SpecMemoError
from .memory import (
    FLOAT_DTYPES, Knobs, compute_dtype, dtype_bytes, kv_cache_bytes, kv_layer_slots, matrix_params,
    STORED, quantised_bytes, stored_weights, weight_bytes,
)
from .models import ModelShape, slice_layers
from .quantities import acceptance_rate, tokens_per_step

# Per-token acceptance when none is measured or given: the middle of the 0.5-0.9 range that
# Leviathan et al. (2023, Table 3) report for small drafts of the same family.
DEFAULT_ACCEPTANCE = 0.7
# The one limit on k that every search shares. Draft token k+1 adds a^(k+1) expected tokens per step:
# at the default a = 0.7 that is 0.002 past k = 16, far less than the draft forward it costs, and the
# serving engines' examples stay below it (vLLM, SGLang: 1-8 speculative tokens). An optimum found at
# the limit is reported as such ("at the limit"), never as a free choice.
MAX_DRAFT_LENGTH = 16


def expected_tokens_per_step(acceptance: float, k: int) -> float:
    """(1 - a^(k+1)) / (1 - a): accepted drafts plus the bonus token, i.i.d. acceptance a."""
    if not 0.0 <= acceptance <= 1.0:
        raise SpecMemoError(f"acceptance must be within [0, 1], got {acceptance}")
    if acceptance == 1.0:
        return float(k + 1)
    return (1.0 - acceptance ** (k + 1)) / (1.0 - acceptance)


def expected_tokens_from_histogram(histogram: Sequence[float], k: int) -> float:
    """Mean tokens per step at draft length k from a histogram measured at k_max = len - 1:
    quantities.tokens_per_step of the histogram cut at k (a step that accepted i >= k drafts accepts all k)."""
    folded = [0.0] * (k + 1)
    for i, count in enumerate(histogram):
        folded[min(i, k)] += count
    return tokens_per_step(folded)


def tokens_per_step_distribution(k: int, acceptance: float = DEFAULT_ACCEPTANCE,
                                 histogram: Sequence[float] | None = None) -> list[float]:
    """P(a step yields j tokens), j = 1 .. k+1: from a measured histogram cut at k, or i.i.d. acceptance."""
    if histogram is not None:
        total = float(sum(histogram))
        shares = [0.0] * (k + 1)
        for i, count in enumerate(histogram):
            shares[min(i, k)] += count / total
        return shares
    return [acceptance**i * (1 - acceptance) for i in range(k)] + [acceptance**k]


@lru_cache(maxsize=None)
def expected_max_of_normals(n: int) -> float:
    """E[max of n independent standard normals] (0 for n = 1), by the trapezoid rule on
    x * n * phi(x) * Phi(x)^(n-1) over [-10, 10]."""
    if n <= 1:
        return 0.0
    steps, lo, hi = 4000, -10.0, 10.0
    h = (hi - lo) / steps
    total = 0.0
    for i in range(steps + 1):
        x = lo + i * h
        phi = math.exp(-x * x / 2) / math.sqrt(2 * math.pi)
        cdf = 0.5 * (1 + math.erf(x / math.sqrt(2)))
        total += (0.5 if i in (0, steps) else 1.0) * x * n * phi * cdf ** (n - 1)
    return total * h


def batch_utilisation(distribution: Sequence[float], batch: int, new_tokens: int) -> float:
    """Share of row-steps that still produce tokens when `batch` rows each generate `new_tokens`
    and a step gives a row j+1 tokens with probability distribution[j]: a static batch runs until
    its slowest row is done, and rows accept differently. Steps per row are approximately normal
    (renewal theory: mean n/mu, variance n*var/mu^3); the slowest of B rows adds sigma * E[max of
    B standard normals]. Measured in the engine at k=1-2, batch 4, 48 tokens: 0.87-0.91."""
    if batch <= 1 or new_tokens <= 0:
        return 1.0
    mu = sum((j + 1) * p for j, p in enumerate(distribution))
    var = sum((j + 1) ** 2 * p for j, p in enumerate(distribution)) - mu * mu
    mean_steps = new_tokens / mu
    sigma = math.sqrt(max(var, 0.0) * new_tokens / mu**3)
    return mean_steps / (mean_steps + sigma * expected_max_of_normals(batch))


class LatencyModel(Protocol):
    def forward_ms(self, model: ModelShape, dtype: str, batch: int, num_tokens: int, context: int) -> float:
        """Milliseconds of one forward of `batch` sequences x `num_tokens` new tokens over `context` cached."""


def expected_distinct_experts(num_experts: int, top_k: int, tokens: int) -> float:
    """Experts one MoE layer reads for `tokens` routed tokens: E * (1 - (1 - top_k / E) ** tokens).

    Under uniform routing each token picks top_k of the E experts, so an expert is missed by one token
    with probability 1 - top_k / E and by all of them with that to the power `tokens`. Real routers are
    skewed (popular experts take more tokens), which leaves fewer distinct experts: this is an upper
    bound on the experts (so the bytes) a forward reads. It grows with tokens: verifying k + 1 draft
    tokens reads more experts than decoding one, which is why speculative decoding gains less on MoE."""
    if tokens <= 0:
        return 0.0
    return num_experts * (1.0 - (1.0 - top_k / num_experts) ** tokens)


def expert_bytes(model: ModelShape, dtype: str) -> int:
    """Bytes of all routed experts in `dtype` (their matrices, quantised when the dtype is; their biases 16-bit)."""
    experts = model.experts
    if experts is None:
        return 0
    if dtype == STORED:
        return stored_weights(model).expert_bytes
    matrices = [m for m in model.matrices if m.expert]
    params = experts.expert_params * experts.num_experts * experts.moe_layers
    if dtype in FLOAT_DTYPES:
        return params * dtype_bytes(dtype)
    return quantised_bytes(matrices, dtype) + (params - matrix_params(matrices)) * dtype_bytes("fp16")


def weights_read_bytes(model: ModelShape, dtype: str, tokens: int) -> int:
    """Weight bytes one forward of `tokens` tokens reads: every non-expert weight once, and in each MoE
    layer the expected distinct routed experts (expected_distinct_experts, uniform routing)."""
    experts = model.experts
    if experts is None or not experts.moe_layers:
        return weight_bytes(model, dtype)
    routed = expert_bytes(model, dtype)
    touched = expected_distinct_experts(experts.num_experts, experts.top_k, tokens) / experts.num_experts
    return weight_bytes(model, dtype) - routed + round(routed * touched)


def kv_read_bytes(model: ModelShape, kv_dtype: str, batch: int, num_tokens: int, context: int) -> int:
    """KV bytes a forward moves: each layer's cache at `context` (a window layer at most its window) plus
    the n new positions, for B sequences."""
    return kv_cache_bytes(model, batch, context, num_tokens, kv_dtype)


def forward_bytes(model: ModelShape, dtype: str, batch: int, num_tokens: int, context: int, kv_dtype: str | None = None) -> int:
    """Bytes a forward moves: the weights it reads (weights_read_bytes: MoE reads only the experts its
    B x n tokens are routed to), the KV of B sequences at `context`, and the new KV."""
    kv = kv_read_bytes(model, kv_dtype or compute_dtype(dtype), batch, num_tokens, context)
    return weights_read_bytes(model, dtype, batch * num_tokens) + kv


def attention_flops_per_token(model: ModelShape, num_tokens: int, context: int) -> int:
    """Scores and values of one new token over all layers: 2 * 2 * q_dim * S_l per layer (standard; S_l the
    positions layer l attends to, a window layer at most its window + n), and for latent attention
    2 * h * (d_qk + d_v) * S_l."""
    total = 0
    for layer in model.cache_layers:
        S = kv_layer_slots(layer, context, num_tokens)
        if model.latent is not None:
            total += 2 * model.num_attention_heads * (model.latent.qk_head_dim + model.latent.v_head_dim) * S
        else:
            total += 4 * model.num_attention_heads * layer.k_dim * S
    return total


def forward_flops(model: ModelShape, batch: int, num_tokens: int, context: int) -> int:
    """2 FLOPs per weight per token for the layers (Kaplan et al. 2020), a routed expert's weights only for
    the top_k experts each token is routed to, the output layer only at the positions whose logits the
    engine computes (one per sequence at decode, n at verify), and attention scores and values
    (attention_flops_per_token). Latent attention also expands the cached latent of every position each
    forward (transformers' expand_kv: kv_b_proj over S positions per sequence): 2 * S * r_kv * h (d_n + d_v)
    per layer and sequence."""
    tokens = batch * num_tokens
    dense = sum(m.params for m in model.matrices if not m.expert)
    flops = 2 * dense * tokens
    experts = model.experts
    if experts is not None and experts.moe_layers:
        per_expert = sum(m.params for m in model.matrices if m.expert) // (experts.num_experts * experts.moe_layers)
        flops += 2 * per_expert * experts.top_k * experts.moe_layers * tokens
    flops += attention_flops_per_token(model, num_tokens, context) * tokens
    mla = model.latent
    if mla is not None:
        for layer in model.cache_layers:
            S = kv_layer_slots(layer, context, num_tokens)
            flops += 2 * S * mla.kv_lora_rank * model.num_attention_heads * (mla.qk_nope_head_dim + mla.v_head_dim) * batch
    return flops + 2 * model.vocab_size * model.hidden_size * tokens


@dataclass(frozen=True)
class BandwidthLatency:
    """t = bytes moved / bandwidth: the memory-bound decoding model, before hardware profiles."""

    bandwidth_gbps: float  # GB/s, 10^9 bytes/s

    @property
    def source(self) -> str:
        return f"bandwidth:{self.bandwidth_gbps:g}GB/s"

    def forward_ms(self, model, dtype, batch, num_tokens, context):
        return forward_bytes(model, dtype, batch, num_tokens, context) / (self.bandwidth_gbps * 1e9) * 1e3


@dataclass(frozen=True)
class RooflineLatency:
    """max(bytes / (bandwidth * e_bw), FLOPs / (peak * e_flops)) + a fixed per-forward cost.

    Default efficiencies: decoding kernels reach about 80% of peak DRAM bandwidth and large
    matmuls about 60% of dense peak (measured ranges in the LLM-Viewer roofline study,
    Yuan et al. 2024, and llm-analysis' defaults); the fixed cost stands for kernel launches.
    """

    bandwidth_gbps: float
    peak_tflops: float  # dense, in the compute dtype
    bandwidth_efficiency: float = 0.8
    compute_efficiency: float = 0.6
    fixed_ms: float = 0.0
    name: str = "roofline"

    @property
    def source(self) -> str:
        return f"roofline:{self.name}"

    def forward_ms(self, model, dtype, batch, num_tokens, context):
        memory_ms = forward_bytes(model, dtype, batch, num_tokens, context) / (
            self.bandwidth_gbps * 1e9 * self.bandwidth_efficiency
        ) * 1e3
        compute_ms = forward_flops(model, batch, num_tokens, context) / (
            self.peak_tflops * 1e12 * self.compute_efficiency
        ) * 1e3
        return max(memory_ms, compute_ms) + self.fixed_ms


@dataclass(frozen=True)
class SpeedPrediction:
    tokens_per_s: float  # all sequences together
    plain_tokens_per_s: float
    speedup: float
    expected_tokens_per_step: float
    acceptance_rate: float
    step_ms: float
    plain_step_ms: float
    verify_ms_per_device: tuple[float, ...] = ()  # one target forward of B x (k+1) tokens, per device
    decode_ms_per_device: tuple[float, ...] = ()  # one target forward of B x 1 token, per device
    transfer_ms_per_step: float = 0.0  # hidden-state hops of one verify pass
    draft_ms: float = 0.0  # one draft forward

    def plan_fields(self, latency_source: str, acceptance_source: str) -> dict:
        """The throughput fields of plan.Prediction."""
        return dict(
            tokens_per_s=self.tokens_per_s, plain_tokens_per_s=self.plain_tokens_per_s, speedup=self.speedup,
            acceptance_rate=self.acceptance_rate, expected_tokens_per_step=self.expected_tokens_per_step,
            latency_source=latency_source, acceptance_source=acceptance_source,
        )


def mean_context(knobs: Knobs) -> int:
    """Cached tokens a step sees on average when sequences fill the context over their life."""
    return max(1, knobs.max_context // 2)


def device_shape(model: ModelShape, share) -> ModelShape | None:
    """The part of `model` one device holds (a placement.DeviceShare), as a ModelShape the latency models read:
    its layers, its parameters, and the output layer's vocabulary only where the logits are computed."""
    if share.num_layers == model.num_layers and share.holds_embedding and share.holds_lm_head:
        return model
    if not share.target_params:
        return None
    return slice_layers(model, share.layers, share.target_params, model.vocab_size if share.holds_lm_head else 0)


def transfer_ms(target: ModelShape, dtype: str, batch: int, num_tokens: int, interconnect_gbps: float | None) -> float:
    """One hop: the hidden state [B, n, H] in the compute dtype over the link (GB/s); 0 without a link figure."""
    if not interconnect_gbps:
        return 0.0
    nbytes = batch * num_tokens * target.hidden_size * dtype_bytes(compute_dtype(dtype))
    return nbytes / (interconnect_gbps * 1e9) * 1e3


def target_forward_ms(latency, target: ModelShape, dtype: str, batch: int, num_tokens: int, context: int,
                      split=None, interconnect_gbps: float | None = None) -> tuple[float, tuple[float, ...], float]:
    """(total ms, ms per device, transfer ms) of one target forward. Without a split (or with one device)
    the whole model on one device; over N devices run one after another (no pipelining overlap), the sum
    of each device's forward plus one hidden-state transfer per hop."""
    if split is None:
        ms = latency.forward_ms(target, dtype, batch, num_tokens, context)
        return ms, (ms,), 0.0
    per_device = []
    for share in split.devices:
        shape = device_shape(target, share)
        per_device.append(0.0 if shape is None else latency.forward_ms(shape, dtype, batch, num_tokens, context))
    hops = split.placement.hops * transfer_ms(target, dtype, batch, num_tokens, interconnect_gbps)
    return sum(per_device) + hops, tuple(per_device), hops


def predict_speed(
    target: ModelShape,
    draft: ModelShape | None,
    knobs: Knobs,
    latency: LatencyModel,
    acceptance: float = DEFAULT_ACCEPTANCE,
    histogram: Sequence[float] | None = None,
    draft_latency: LatencyModel | None = None,
    context: int | None = None,
    new_tokens: int | None = None,
    split=None,
    interconnect_gbps: float | None = None,
    ranks: Sequence[float] | None = None,
) -> SpeedPrediction:
    """Tokens/s of the plan and of plain decoding with the same batch, context and placement.
    `context`: cached tokens per step, when known (a measured run); else `mean_context`.
    `new_tokens`: tokens each row generates in a static batch; given, a batch > 1 loses the
    share of row-steps its rows spend waiting for the slowest one (batch_utilisation).
    `split`: a placement.DeviceSplit over N devices (None: one device), `interconnect_gbps` its link.
    `ranks`: a tree drafter's measured depth-1 rank histogram (drafting.trees.sibling_shares); chains ignore it."""
    B, k = knobs.batch_size, knobs.draft_length
    ctx = context if context is not None else mean_context(knobs)
    dtype = knobs.weight_dtype
    plain_ms, decode, _ = target_forward_ms(latency, target, dtype, B, 1, ctx, split, interconnect_gbps)
    plain = B / plain_ms * 1e3
    method = knobs.method(draft is not None)
    if method == "none" or k == 0:
        return SpeedPrediction(plain, plain, 1.0, 1.0, 0.0, plain_ms, plain_ms, decode, decode)
    if method != "draft-model":
        return _predict_method(target, draft, knobs, latency, method, acceptance, histogram, draft_latency, ctx,
                               new_tokens, split, interconnect_gbps, plain, plain_ms, decode, ranks)
    if histogram is not None:
        tokens = expected_tokens_from_histogram(histogram, k)
        acceptance = acceptance_rate(histogram)
    else:
        tokens = expected_tokens_per_step(acceptance, k)
    draft_ms = (draft_latency or latency).forward_ms(draft, knobs.draft_dtype, B, 1, ctx)
    verify_ms, verify, hops = target_forward_ms(latency, target, dtype, B, k + 1, ctx, split, interconnect_gbps)
    step_ms = k * draft_ms + verify_ms
    speed = B * tokens / step_ms * 1e3
    if new_tokens:
        speed *= batch_utilisation(tokens_per_step_distribution(k, acceptance, histogram), B, new_tokens)
    return SpeedPrediction(speed, plain, speed / plain, tokens, acceptance, step_ms, plain_ms, verify, decode,
                           hops, draft_ms)


def draft_ms_per_step(latency: LatencyModel, target: ModelShape, draft: ModelShape | None, knobs: Knobs,
                      method: str, context: int) -> float:
    """Device time of drafting one step's tree (a chain: top-k 1):
    - EAGLE-1/2, EAGLE-3: `depth` head forwards, the first over B x 1 token, each later over B x top-k
      (the nodes expanded), each one decoder layer + its output layer over its vocabulary
      (drafting.heads.read_shape: what a step reads, the target's lm_head for EAGLE-1/2);
    - MTP: k forwards of the MTP layer(s) and the output head (vLLM reruns the layer for k > n_predict);
    - Medusa: one forward of all heads on B x 1 hidden state (the heads run side by side);
    - n-gram: 0 (a host matcher: no device time)."""
    if method == "ngram":
        return 0.0
    from .drafting.heads import read_shape

    shape = read_shape(draft, method, target, knobs.embedding_policy)
    B, tree = knobs.batch_size, knobs.tree
    if method == "medusa":
        return latency.forward_ms(shape, knobs.draft_dtype, B, 1, context)
    widths = [1] + [tree.topk] * (tree.depth - 1)
    return sum(latency.forward_ms(shape, knobs.draft_dtype, B, w, context) for w in widths)


def _predict_method(target, draft, knobs, latency, method, acceptance, histogram, draft_latency, ctx, new_tokens,
                    split, interconnect_gbps, plain, plain_ms, decode, ranks=None) -> SpeedPrediction:
    """predict_speed for the methods of drafting/: tokens per step from the tree model (drafting/trees.py),
    step = draft_ms_per_step + a target forward of T + 1 tokens."""
    from .drafting import trees

    B, tree = knobs.batch_size, knobs.tree
    if histogram is not None:
        per_depth = trees.per_depth_from_histogram(histogram, tree.depth)
        acceptance = acceptance_rate(histogram)
    else:
        per_depth = trees.per_depth_acceptance(acceptance, tree.depth)
    if ranks is None:  # the method's own (drafting/methods.py: n-gram's measured), else geometric
        from .drafting.methods import get_method

        ranks = get_method(method).default_ranks
    siblings = trees.sibling_shares(ranks) if ranks and not tree.is_chain else None
    tokens = trees.expected_tokens(tree, per_depth, siblings)
    draft_ms = draft_ms_per_step(draft_latency or latency, target, draft, knobs, method, ctx)
    verify_ms, verify, hops = target_forward_ms(latency, target, knobs.weight_dtype, B, tree.tokens + 1, ctx, split,
                                                interconnect_gbps)
    step_ms = draft_ms + verify_ms
    speed = B * tokens / step_ms * 1e3
    if new_tokens:
        speed *= batch_utilisation(trees.tokens_distribution(tree, per_depth, siblings), B, new_tokens)
    return SpeedPrediction(speed, plain, speed / plain, tokens, acceptance, step_ms, plain_ms, verify, decode,
                           hops, draft_ms)


def roofline_from_profile(profile, dtype: str) -> RooflineLatency:
    """The roofline of a hardware profile (profiles/*.toml) for weights stored in `dtype`."""
    return RooflineLatency(
        bandwidth_gbps=profile.memory_bandwidth_gbps,
        peak_tflops=profile.peak_tflops(compute_dtype(dtype)),
        name=profile.key,
    )
