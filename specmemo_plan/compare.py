"""Which device runs a pair, and how fast: the numbers behind `specmemo-plan compare`.

For each hardware profile: does plain decoding fit, does SD fit, the minimum budget, the best k
and batch inside the device's memory (autotune.search over the profile's roofline, or over a
measured profile's fitted curves), predicted tokens/s plain vs SD, and the headroom left.

With several draft methods (`compare --draft-method`): per device and method (MethodVerdict), the fastest
configuration with k >= 1 inside the device's memory (chains and, where the method drafts them, trees; batch),
its memory, tokens/s and speedup over the fastest plain decoding there, and the cheapest budget at which it pays
(budget.min_budget at batch 1 over the same shapes). A measured device is weighed for the method it measured,
over the shapes its profile timed (MeasuredProfile.search_shapes).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .autotune import MeasuredProfile, search
from .budget import min_budget, search_shapes
from .drafting.methods import get_method
from .errors import SpecMemoError
from .hardware import HardwareProfile
from .memory import Knobs, breakdown, plain_knobs
from .models import ModelShape
from .throughput import MAX_DRAFT_LENGTH, roofline_from_profile


@dataclass(frozen=True)
class DeviceVerdict:
    profile: str  # profile key
    name: str
    memory_bytes: int
    plain_fits: bool  # plain decoding at batch 1 and the requested context
    sd_fits: bool  # SD at batch 1 and the requested context with k = 1
    min_budget_bytes: int | None  # at batch 1; None: SD does not pay on this device
    best_draft_length: int | None  # 0 = plain decoding is the fastest that fits
    best_batch: int | None
    sd_tokens_per_s: float | None  # best configuration within memory, batch <= the requested batch
    plain_tokens_per_s: float | None  # plain decoding at the same batch
    speedup: float | None
    headroom_bytes: int | None  # device memory minus the best configuration's total
    best_breakdown: dict | None  # MemoryBreakdown.as_dict() of the best configuration
    note: str = ""
    draft_length_limit: int = MAX_DRAFT_LENGTH  # the k searched to: a best k there may lie past it
    # compare --engine: the engine's own accounting of the best configuration on this device's memory
    engine: str | None = None
    engine_starts: bool | None = None  # None: the engine model could not size it (engine_refusal says why)
    engine_kv_cache_tokens: int | None = None
    engine_max_concurrency: float | None = None
    engine_refusal: str | None = None
    engine_batch: int | None = None
    engine_draft_length: int | None = None

    def as_dict(self) -> dict:
        out = dict(self.__dict__)
        if self.engine is None:  # without --engine the verdict is as it was
            out = {k: v for k, v in out.items() if not k.startswith("engine")}
        return out


def compare_device(
    profile: HardwareProfile,
    target: ModelShape,
    draft: ModelShape,
    knobs: Knobs,
    acceptance: float,
    k_max: int = MAX_DRAFT_LENGTH,
) -> DeviceVerdict:
    """One device's verdict on its profile's roofline. Batch is searched up to the requested batch (a serving cap)."""
    try:
        latency = roofline_from_profile(profile, knobs.weight_dtype)
    except SpecMemoError as exc:  # e.g. bf16 on a Turing card
        return DeviceVerdict(profile.key, profile.name, profile.memory_bytes, False, False, None, None, None, None,
                             None, None, None, None, note=exc.message, draft_length_limit=k_max)
    return _verdict(profile.key, profile.name, profile.memory_bytes, profile.runtime_overhead_bytes, latency,
                    target, draft, knobs, k_max, {"acceptance": acceptance})


def compare_measured(measured: MeasuredProfile, label: str, target: ModelShape, draft: ModelShape, knobs: Knobs,
                     k_max: int = MAX_DRAFT_LENGTH) -> DeviceVerdict:
    """The verdict for a device measured by `specmemo-plan profile`: its fitted latency curves and
    its measured acceptance histogram (not an assumed rate), its own memory. Only for the measured
    pair and dtype: the curves say nothing about other models."""
    measured.check_pair(target, draft)
    if measured.target["dtype"] != knobs.weight_dtype:
        raise SpecMemoError(f"{label} was measured in {measured.target['dtype']}, not {knobs.weight_dtype}",
                            f"use --dtype {measured.target['dtype']} or profile again in {knobs.weight_dtype}")
    if not measured.acceptance_histogram:
        raise SpecMemoError(f"{label} has no acceptance for a draft", "run `specmemo-plan profile` with --draft")
    k_max = min(k_max, len(measured.acceptance_histogram) - 1)
    device = measured.device
    return _verdict(label, device.get("name", "measured device"), device["total_memory_bytes"],
                    measured.runtime_overhead_bytes, measured.latency(), target, draft, knobs, k_max,
                    {"histogram": measured.acceptance_histogram})


def _verdict(key: str, name: str, memory: int, overhead: int, latency, target: ModelShape, draft: ModelShape,
             knobs: Knobs, k_max: int, speed_kwargs: dict) -> DeviceVerdict:
    single = replace(knobs, batch_size=1)
    plain_fits = breakdown(target, None, plain_knobs(single), overhead).total_bytes <= memory
    sd_fits = breakdown(target, draft, replace(single, draft_length=1), overhead).total_bytes <= memory
    note = ""
    try:
        minimum = min_budget(target, draft, replace(single, draft_length=1), latency, k_max=k_max,
                             device_overhead_bytes=overhead, **speed_kwargs).total_bytes
    except SpecMemoError as exc:
        minimum, note = None, exc.message
    if not plain_fits:
        return DeviceVerdict(key, name, memory, False, sd_fits, minimum, None, None, None, None, None,
                             None, None, note=note or "the target does not fit at batch 1 with this context",
                             draft_length_limit=k_max)
    try:
        result = search(target, draft, knobs, memory, latency, k_max=k_max, max_batch=knobs.batch_size,
                        chunks=(knobs.chunk,), device_overhead_bytes=overhead, **speed_kwargs)
    except SpecMemoError as exc:
        return DeviceVerdict(key, name, memory, plain_fits, sd_fits, minimum, None, None, None, None,
                             None, None, None, note=exc.message, draft_length_limit=k_max)
    best = result.fastest
    plain_speed = result.plain.tokens_per_s if result.plain else None
    return DeviceVerdict(
        profile=key, name=name, memory_bytes=memory, plain_fits=plain_fits, sd_fits=sd_fits,
        min_budget_bytes=minimum, best_draft_length=best.knobs.draft_length, best_batch=best.knobs.batch_size,
        sd_tokens_per_s=best.tokens_per_s, plain_tokens_per_s=plain_speed,
        speedup=best.tokens_per_s / plain_speed if plain_speed else None,
        headroom_bytes=memory - best.total_bytes, best_breakdown=best.memory.as_dict(), note=note,
        draft_length_limit=k_max,
    )


def compare_devices(profiles, target, draft, knobs, acceptance, k_max: int = MAX_DRAFT_LENGTH) -> list[DeviceVerdict]:
    return [compare_device(p, target, draft, knobs, acceptance, k_max) for p in profiles]


def with_engine(verdict: DeviceVerdict, engine: str, options, target: ModelShape, draft: ModelShape, knobs: Knobs,
                overhead: int, tp: int = 1) -> DeviceVerdict:
    """`verdict` with whether `engine` starts its best configuration (engine_budget.with_engine_knobs) on the
    device's memory, and the engine's KV pool there (tokens, concurrency at the context)."""
    from .engine_budget import refusal, with_engine_knobs

    kk = with_engine_knobs(knobs, verdict.best_batch, verdict.best_draft_length)
    options = replace(options, device_name=verdict.name, cuda_context_bytes=overhead
                      if options.cuda_context_bytes is None else options.cuda_context_bytes)
    base = dict(engine=engine, engine_batch=kk.batch_size, engine_draft_length=kk.draft_length)
    try:
        memory, why = refusal(engine, target, draft, kk, options, verdict.memory_bytes, tp)
    except SpecMemoError as exc:  # a setting this engine cannot run: said on the row, the others go on
        return replace(verdict, engine_refusal=exc.message, **base)
    return replace(verdict, engine_starts=why is None, engine_kv_cache_tokens=memory.kv_cache_tokens,
                   engine_max_concurrency=memory.max_concurrency, engine_refusal=why, **base)


# ----------------------------------------------------------------------------- several draft methods


@dataclass(frozen=True)
class MethodSetup:
    """One draft method to weigh on every device: its drafter, knobs (batch cap, context, method) and acceptance."""

    draft_method: str
    draft_ref: str | None  # as a plan stores it (MTP: the target's; n-gram: None)
    draft: ModelShape | None
    knobs: Knobs | None
    acceptance: float | None
    acceptance_source: str  # given | assumed | published
    error: str | None = None  # why the method cannot be built here (MTP on a target without MTP layers)


@dataclass(frozen=True)
class MethodVerdict:
    """One method on one device: its fastest drafting configuration (k >= 1) inside the device's memory, the
    fastest plain decoding there (both batch <= the requested batch), and its cheapest paying budget."""

    draft_method: str
    draft: str | None
    acceptance: float | None  # per-token: given or the method's default (profiles), the histogram's (measured)
    acceptance_source: str
    sd_fits: bool | None  # k = 1 at batch 1 fits the device
    draft_length: int | None
    batch: int | None
    total_bytes: int | None  # memory of that configuration
    tokens_per_s: float | None
    plain_tokens_per_s: float | None
    speedup: float | None  # tokens_per_s / plain_tokens_per_s
    min_budget_bytes: int | None  # budget.min_budget at batch 1 (trees too where the method drafts them)
    min_budget_tree: dict | None
    headroom_bytes: int | None
    best_breakdown: dict | None
    note: str = ""
    draft_length_limit: int = MAX_DRAFT_LENGTH
    tree: dict | None = None  # the best configuration's shape (drafting.trees.TreeShape.as_dict); None: plain
    siblings_source: str | None = None  # where a best tree's sibling acceptance comes from; None: a chain

    @property
    def pays(self) -> bool:
        return self.speedup is not None and self.speedup > 1.0

    def as_dict(self) -> dict:
        return dict(self.__dict__, pays=self.pays)


@dataclass(frozen=True)
class DeviceMethods:
    profile: str  # profile key, or measured:NAME
    name: str
    memory_bytes: int
    plain_fits: bool | None
    methods: tuple  # MethodVerdict, in the order given
    note: str = ""

    @property
    def best_method(self) -> str | None:
        """The fastest method that pays on this device; None when none does."""
        paying = [m for m in self.methods if m.pays]
        return max(paying, key=lambda m: (m.tokens_per_s, -m.total_bytes)).draft_method if paying else None

    def as_dict(self) -> dict:
        return {"profile": self.profile, "name": self.name, "memory_bytes": self.memory_bytes,
                "plain_fits": self.plain_fits, "best_method": self.best_method, "note": self.note,
                "methods": [m.as_dict() for m in self.methods]}


def _failed(setup: MethodSetup, note: str, **known) -> MethodVerdict:
    fields = dict(draft_method=setup.draft_method, draft=setup.draft_ref, acceptance=setup.acceptance,
                  acceptance_source=setup.acceptance_source, sd_fits=None, draft_length=None, batch=None,
                  total_bytes=None, tokens_per_s=None, plain_tokens_per_s=None, speedup=None, min_budget_bytes=None,
                  min_budget_tree=None, headroom_bytes=None, best_breakdown=None, note=note)
    return MethodVerdict(**(fields | known))


def method_verdict(memory: int, overhead: int, latency, target: ModelShape, setup: MethodSetup, k_max: int,
                   speed_kwargs: dict, shapes=None) -> MethodVerdict:
    """One method on one device (MethodVerdict); a method that cannot be sized here is a row with the reason.
    `shapes`: the chains and trees searched, for the cheapest paying budget and the best configuration alike
    (default budget.search_shapes: chains of 1..k_max and the method's tree grid)."""
    if setup.error:
        return _failed(setup, setup.error)
    draft, method = setup.draft, setup.draft_method
    knobs = replace(setup.knobs, tree_depth=None, tree_topk=None)
    single = replace(knobs, batch_size=1, draft_length=0 if method == "none" else 1)
    sd_fits = breakdown(target, draft, single, overhead).total_bytes <= memory
    minimum = tree = None
    note = ""
    if method == "none":
        note = "plain decoding (the baseline)"
    else:
        shapes = shapes if shapes is not None else search_shapes(target, draft, single, k_max)
        try:
            mb = min_budget(target, draft, single, latency, k_max=k_max, device_overhead_bytes=overhead,
                            shapes=shapes, **speed_kwargs)
            minimum, tree = mb.total_bytes, mb.tree.as_dict()
        except SpecMemoError as exc:
            note = exc.message
    if not _plain_fits(target, knobs, overhead, memory):
        return _failed(setup, "the target does not fit at batch 1 with this context", sd_fits=sd_fits,
                       min_budget_bytes=minimum, min_budget_tree=tree, draft_length_limit=k_max)
    result = search(target, draft, knobs, memory, latency, k_max=k_max, max_batch=knobs.batch_size,
                    chunks=(knobs.chunk,), device_overhead_bytes=overhead, shapes=shapes, **speed_kwargs)
    best = result.plain if method == "none" else result.best_draft
    plain = result.plain.tokens_per_s
    if best is None:
        return _failed(setup, note or "no drafting configuration fits the device's memory", sd_fits=sd_fits,
                       plain_tokens_per_s=plain, min_budget_bytes=minimum, min_budget_tree=tree,
                       draft_length_limit=k_max)
    tree_best = best.knobs.draft_length and not best.knobs.tree.is_chain
    siblings = None if not tree_best else "measured: the profile's depth-1 ranks" if speed_kwargs.get("ranks") \
        else get_method(method).ranks_source
    return MethodVerdict(
        siblings_source=siblings, draft_method=method, draft=setup.draft_ref, acceptance=setup.acceptance,
        acceptance_source=setup.acceptance_source, sd_fits=sd_fits, draft_length=best.knobs.draft_length,
        tree=best.knobs.tree.as_dict() if best.knobs.draft_length else None, batch=best.knobs.batch_size,
        total_bytes=best.total_bytes, tokens_per_s=best.tokens_per_s,
        plain_tokens_per_s=plain, speedup=best.tokens_per_s / plain, min_budget_bytes=minimum, min_budget_tree=tree,
        headroom_bytes=memory - best.total_bytes, best_breakdown=best.memory.as_dict(), note=note,
        draft_length_limit=k_max)


def _plain_fits(target: ModelShape, knobs: Knobs, overhead: int, memory: int) -> bool:
    return breakdown(target, None, plain_knobs(replace(knobs, batch_size=1)), overhead).total_bytes <= memory


def compare_device_methods(profile: HardwareProfile, target: ModelShape, setups: list[MethodSetup], knobs: Knobs,
                           k_max: int = MAX_DRAFT_LENGTH) -> DeviceMethods:
    """Every method on one device's roofline, at each method's acceptance (given, or its default)."""
    try:
        latency = roofline_from_profile(profile, knobs.weight_dtype)
    except SpecMemoError as exc:  # e.g. bf16 on a Turing card
        return DeviceMethods(profile.key, profile.name, profile.memory_bytes, None, (), exc.message)
    overhead = profile.runtime_overhead_bytes
    rows = tuple(method_verdict(profile.memory_bytes, overhead, latency, target, s, k_max,
                                {"acceptance": s.acceptance}) for s in setups)
    return DeviceMethods(profile.key, profile.name, profile.memory_bytes,
                         _plain_fits(target, knobs, overhead, profile.memory_bytes), rows)


def measured_method_verdict(measured: MeasuredProfile, label: str, target: ModelShape, knobs: Knobs,
                            k_max: int = MAX_DRAFT_LENGTH) -> MethodVerdict:
    """A measured device for the method it measured: its fitted curves, its acceptance histogram, its memory."""
    from .quantities import acceptance_rate

    timed, drafter = measured.shapes()
    if timed.fingerprint != target.fingerprint:
        raise SpecMemoError(f"the measured profile's target is {measured.target['ref']}, not {target.name}",
                            "run `specmemo-plan profile` for this target")
    if measured.target["dtype"] != knobs.weight_dtype:
        raise SpecMemoError(f"{label} was measured in {measured.target['dtype']}, not {knobs.weight_dtype}",
                            f"use --dtype {measured.target['dtype']} or profile again in {knobs.weight_dtype}")
    method, histogram = measured.draft_method, measured.acceptance_histogram
    if method != "none" and not histogram:
        raise SpecMemoError(f"{label} has no acceptance for its {method} drafting", "run `specmemo-plan profile` again")
    setup = MethodSetup(method, (measured.draft or {}).get("ref"), drafter,
                        replace(knobs, draft_method=None if method == "none" else method,
                                draft_length=0 if method == "none" else 1, head_embedding=measured.head_embedding),
                        acceptance_rate(histogram) if histogram else None, measured.acceptance_source)
    k_max = min(k_max, len(histogram) - 1) if histogram else k_max
    speed = {"histogram": histogram, "ranks": measured.rank_histogram} if histogram else {}
    return method_verdict(measured.device["total_memory_bytes"], measured.runtime_overhead_bytes, measured.latency(),
                          target, setup, k_max, speed, measured.search_shapes(k_max))


def compare_measured_methods(profiles: list[MeasuredProfile], labels: list[str], target: ModelShape, knobs: Knobs,
                             k_max: int = MAX_DRAFT_LENGTH) -> DeviceMethods:
    """The methods measured on one device (one profile each) side by side; `labels` name the profiles."""
    first = profiles[0]
    memory, overhead = first.device["total_memory_bytes"], first.runtime_overhead_bytes
    rows = tuple(measured_method_verdict(m, label, target, knobs, k_max) for m, label in zip(profiles, labels))
    name = "measured:" + "+".join(label.removeprefix("measured:") for label in labels)
    return DeviceMethods(name, first.device.get("name", "measured device"), memory,
                         _plain_fits(target, knobs, overhead, memory), rows)
