"""`validate(plan)`: a plan's numbers recomputed from its knobs, before anything trusts them.

A plan file states its knobs and, beside them, what they cost (`prediction.memory`, `per_device`,
`placement`). Anyone can edit the file; `read_plan` checks types and ranges, this checks that the
stated costs are what the knobs cost. In order, each refusal one SpecMemoError naming the field:
1. the models: the plan's references load (`target.ref`), their shapes are the ones the plan was made
   for (`target.fingerprint`, `num_params`) and `target.dtype` / `draft.dtype` are the knobs' dtypes;
2. the knobs' ranges: `knobs.max_context` within the target's `max_position_embeddings` (the planner's
   own limit: `fit` searches no further, `plan` refuses more);
3. the runtime overhead, the one input the knobs do not give: the plan's own per-device value (the
   hardware profile's `runtime_overhead_bytes` that `plan` / `tune` copied in), which must be equal on
   every used device, 0 on a CPU plan, and 0 or the named profile's value when the profile is bundled;
4. `prediction.memory` against the recomputation (memory.breakdown, split over the plan's devices by
   placement.split_layers: what make_plan does), component by component;
5. the budget: each device's recomputed total within `budget_bytes`;
6. `per_device` and `placement` against the recomputation.
The message names the first field that differs:
    prediction.memory.components.target_kv 123 != 456 recomputed from the knobs: remake the plan

The engine calls it before loading anything (passing the shapes of models it was handed), `export`
before it writes a single option.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from .drafting.heads import head_shape
from .drafting.methods import HEAD_METHODS
from .errors import SpecMemoError
from .memory import COMPONENTS
from .models import ModelShape, check_pair, load_shape
from .placement import DeviceSplit, split_layers
from .plan import Plan
from .units import format_bytes

REMAKE = "the plan was edited, or made by another version: make it again with `specmemo-plan plan` or `tune`"


@dataclass(frozen=True)
class CheckedPlan:
    """A plan whose prediction was recomputed from its knobs and matched: what validate returns."""

    plan: Plan
    target: ModelShape
    draft: ModelShape | None
    overhead_bytes: int  # one used device's runtime overhead, as the recomputation used it
    split: DeviceSplit  # the recomputed placement (per-device components, device_map)


def validate(plan: Plan, target: ModelShape | None = None, draft: ModelShape | None = None) -> CheckedPlan:
    """Recompute the plan's prediction from its knobs and refuse it, naming the first field, where they differ.
    `target` / `draft`: shapes of models already in hand (else read from the plan's references, no weights)."""
    target = _shape("target", plan.target.ref, target)
    method = plan.knobs.method(plan.draft is not None)
    if plan.draft is not None and draft is None and method in HEAD_METHODS:
        try:  # a head is rebuilt from its config by its layout, as the plan was made
            draft = head_shape(method, plan.draft.ref, target, plan.knobs.embedding_policy)
        except SpecMemoError as exc:
            raise SpecMemoError(f"draft.ref: {exc.message}", exc.hint) from None
    draft = _shape("draft", plan.draft.ref, draft) if plan.draft is not None else None
    for role, ref, shape, dtype in (("target", plan.target, target, plan.knobs.weight_dtype),
                                    ("draft", plan.draft, draft, plan.knobs.draft_dtype)):
        if ref is not None:
            _check_model(role, ref, shape, dtype)
    try:
        if method == "draft-model":
            check_pair(target, draft)
    except SpecMemoError as exc:
        raise SpecMemoError(f"draft.ref: {exc.message}", exc.hint) from None
    _check_ranges(plan, target)
    overhead = _overhead(plan)
    try:
        split = split_layers(target, draft, plan.knobs, [plan.budget_bytes] * plan.device.count, overhead,
                             plan.placement.policy)
    except SpecMemoError as exc:
        raise SpecMemoError(f"budget_bytes: {exc.message}", exc.hint) from None
    _compare("prediction.memory", plan.prediction.memory, split.total.as_dict())
    _check_budget(plan, split)
    stored = plan.to_dict()
    _compare("per_device", stored["per_device"], [d.as_dict() for d in split.devices])
    _compare("placement", stored["placement"], split.placement.as_dict())
    return CheckedPlan(plan, target, draft, overhead, split)


# ----------------------------------------------------------------------------- steps


def _shape(role: str, ref: str, given: ModelShape | None) -> ModelShape:
    if given is not None:
        return given
    try:
        return load_shape(ref)
    except SpecMemoError as exc:
        raise SpecMemoError(f"{role}.ref: {exc.message}",
                            "checking a plan recomputes its prediction from the model's config: run where the "
                            "model is, or make the plan again") from None


def _check_model(role: str, ref, shape: ModelShape, dtype: str) -> None:
    if shape.fingerprint != ref.fingerprint:
        raise SpecMemoError(f"{role}.fingerprint: {ref.ref} has fingerprint {shape.fingerprint}, the plan was made "
                            f"for {ref.fingerprint}",
                            "make a new plan for this model, or point the plan at the model it was made for")
    if shape.num_params != ref.num_params:
        raise SpecMemoError(f"{role}.num_params {ref.num_params} != {shape.num_params} counted from {ref.ref}'s "
                            "config: remake the plan", REMAKE)
    if ref.dtype != dtype:
        knob = "knobs.weight_dtype" if role == "target" else "knobs.draft_weight_dtype"
        raise SpecMemoError(f"{role}.dtype {ref.dtype} != {dtype} from {knob}: remake the plan", REMAKE)


def _check_ranges(plan: Plan, target: ModelShape) -> None:
    """What `plan` refuses to make: a context past the target's positions (budget.knob_limit's bound)."""
    limit = target.max_position_embeddings
    if limit is not None and plan.knobs.max_context > limit:
        raise SpecMemoError(
            f"knobs.max_context {plan.knobs.max_context} exceeds the target's {limit} positions "
            f"(max_position_embeddings of {plan.target.ref})", f"make the plan with --context {limit} or less")


def _overhead(plan: Plan) -> int:
    """One used device's runtime overhead: the plan's own value, checked as far as the plan's facts allow."""
    used = [d for d in plan.per_device if d.used] or list(plan.per_device[:1])
    values = [d.memory.components["runtime_overhead"] for d in used]
    field_name = f"per_device[{used[0].index}].components.runtime_overhead"
    for d, value in zip(used, values):
        if value != values[0]:
            raise SpecMemoError(f"per_device[{d.index}].components.runtime_overhead {value} != {values[0]} on "
                                f"device {used[0].index}: every used device has one runtime overhead", REMAKE)
    overhead = values[0]
    if plan.device.kind == "cpu" and overhead:
        raise SpecMemoError(f"{field_name} {overhead} != 0: a CPU plan has no runtime overhead "
                            "(hardware profiles state 0 on cpu)", REMAKE)
    allowed = _profile_overhead(plan.device.profile)
    if allowed is not None and overhead not in (0, allowed):
        raise SpecMemoError(f"{field_name} {overhead} != {allowed}, the runtime_overhead_bytes of the hardware "
                            f"profile {plan.device.profile}: remake the plan", REMAKE)
    return overhead


def _profile_overhead(key: str | None) -> int | None:
    """The bundled profile's runtime_overhead_bytes; None when the plan names none or one not bundled here
    (a profile .toml of the machine that made it): then the plan's own value stands."""
    if not key:
        return None
    from .hardware import list_profiles, load_profile

    if key not in list_profiles():
        return None
    return load_profile(key).runtime_overhead_bytes


def _check_budget(plan: Plan, split: DeviceSplit) -> None:
    for share in split.devices:
        if share.memory.total_bytes > plan.budget_bytes:
            where = "" if plan.device.count == 1 else f" (device {share.index})"
            raise SpecMemoError(
                f"budget_bytes {plan.budget_bytes} is below the predicted total{where} of {share.memory.total_bytes} "
                f"bytes ({format_bytes(share.memory.total_bytes)}) recomputed from the knobs",
                "make the plan with a larger --budget, or smaller knobs (see `specmemo-plan fit`)")


# ----------------------------------------------------------------------------- comparison


def _show(value) -> str:
    text = json.dumps(value, separators=(",", ":"), sort_keys=True)
    return text if len(text) <= 60 else text[:57] + "..."


def _order(expected: dict, stored: dict) -> list:
    """Keys to compare: the memory components first (in COMPONENTS order), then the rest, then extras."""
    first = [k for k in COMPONENTS if k in expected]
    return first + [k for k in expected if k not in first] + [k for k in stored if k not in expected]


def _compare(path: str, stored, expected) -> None:
    """Refuse at the first field where the stored value differs from the recomputed one."""
    if isinstance(expected, dict) and isinstance(stored, dict):
        if "components" in expected:  # the components decide everything else: report them first
            _compare(f"{path}.components", stored.get("components"), expected["components"])
        for key in _order(expected, stored):
            if key not in expected:
                raise SpecMemoError(f"{path}.{key} is not a field of the recomputed plan: remake the plan", REMAKE)
            if key not in stored:
                raise SpecMemoError(f"{path}.{key} is missing; {_show(expected[key])} recomputed from the knobs: "
                                    "remake the plan", REMAKE)
            _compare(f"{path}.{key}", stored[key], expected[key])
        return
    if isinstance(expected, list) and isinstance(stored, list):
        for i, (s, e) in enumerate(zip(stored, expected)):
            _compare(f"{path}[{i}]", s, e)
        if len(stored) != len(expected):
            raise SpecMemoError(f"{path} has {len(stored)} entries != {len(expected)} recomputed from the knobs: "
                                "remake the plan", REMAKE)
        return
    if stored != expected or (type(stored) is bool) != (type(expected) is bool):
        raise SpecMemoError(f"{path} {_show(stored)} != {_show(expected)} recomputed from the knobs: remake the plan",
                            REMAKE)
