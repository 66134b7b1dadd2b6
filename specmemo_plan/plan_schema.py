"""Reading a plan file: JSON bytes -> a typed `plan.Plan`, each wrong field one line that names it.

What it refuses, field by field: a missing field, a wrong type (a string where a number belongs, a bool
where an integer belongs), a number out of range (a negative or zero size, a temperature <= 0, an
acceptance outside [0, 1]), NaN or Infinity anywhere (JSON has neither; Python's json reads them unless
told not to: `parse_constant` keeps them as markers so the check can say where they are), a list or a
string where an object belongs, a schema_version this version does not read. Internal consistency of
what the file states by itself (per-device totals are their components' sum, the per-device list has
`device.count` entries) is checked here; the prediction against the knobs is plan_check.validate.
"""

from __future__ import annotations

import dataclasses
import difflib

import json
import math
from typing import Any

from .drafting.methods import DRAFT_METHODS
from .errors import SpecMemoError
from .memory import COMPONENTS, Knobs
from .placement import POLICIES, DeviceShare, Placement
from .placement.split import HOLDS
from .plan import (DEVICE_KINDS, SAMPLING_MODES, SCHEMA_VERSION, SEED_RANGE, DeviceSpec, Generation, ModelRef, Plan,
                   Prediction)

HINT = "make the plan again (`specmemo-plan plan` or `tune`), or fix that field"


class NonFinite:
    """What json.loads' parse_constant makes of NaN, Infinity and -Infinity: kept so the check can name the field."""

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return self.text


def loads(text: str) -> Any:
    """json.loads that keeps NaN / Infinity as NonFinite markers (refused later, by field)."""
    return json.loads(text, parse_constant=NonFinite)


def first_non_finite(value: Any, path: str = "") -> tuple[str, str] | None:
    """(field path, value) of the first NaN or infinity inside `value` (a marker or a float), or None."""
    if isinstance(value, NonFinite) or (isinstance(value, float) and not math.isfinite(value)):
        return path or "plan", repr(value)
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found = first_non_finite(item, f"{path}[{key}]" if isinstance(key, int) else (f"{path}.{key}" if path else str(key)))
        if found:
            return found
    return None


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class _Reader:
    """Typed access to a JSON object that names the field path in every error."""

    def __init__(self, data: Any, path: str, where: str):
        if not isinstance(data, dict):
            what = "null" if data is None else {list: "a list", str: "a string"}.get(type(data), type(data).__name__)
            raise SpecMemoError(f"{where}: {'field ' + path if path else 'the plan'} must be a JSON object, got {what}",
                                HINT if path else "give the JSON file `specmemo-plan plan` or `tune` wrote")
        self.data, self.path, self.where = data, path, where

    def _name(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def fail(self, key: str, why: str):
        raise SpecMemoError(f"{self.where}: field {self._name(key)} {why}", HINT)

    def get(self, key: str, types, optional: bool = False, default=None):
        if key not in self.data or self.data[key] is None:
            if optional:
                return default
            self.fail(key, "is missing")
        value = self.data[key]
        if isinstance(value, NonFinite) or (isinstance(value, float) and not math.isfinite(value)):
            self.fail(key, f"is {value!r}: JSON has no NaN or Infinity")
        if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
            self.fail(key, f"must be {getattr(types, '__name__', 'a number')}, got {value!r}")
        if not isinstance(value, types):
            self.fail(key, f"has the wrong type ({type(value).__name__}: {value!r:.40})")
        return value

    def positive(self, key: str, optional: bool = False, default=None, allow_zero: bool = False):
        value = self.get(key, int, optional, default)
        if value is not None and (value < 0 or (value == 0 and not allow_zero)):
            self.fail(key, f"must be {'>= 0' if allow_zero else 'positive'}, got {value}")
        return value

    def number(self, key: str, optional: bool = False, default=None, low: float = 0.0, high: float | None = None,
               open_low: bool = False):
        """A finite int or float in [low, high] ((low, high] with open_low)."""
        value = self.get(key, (int, float), optional, default)
        if value is not None and (value < low or (open_low and value == low) or (high is not None and value > high)):
            span = f"{'(' if open_low else '['}{low:g}, {'inf' if high is None else f'{high:g}'}]"
            self.fail(key, f"must be in {span}, got {value!r}")
        return value

    def string(self, key: str, optional: bool = False, default=None):
        value = self.get(key, str, optional, default)
        if value is not None and not value.strip():
            self.fail(key, "is empty")
        return value

    def choice(self, key: str, options, optional: bool = False, default=None):
        value = self.get(key, str, optional, default)
        if value is not None and value not in options:
            self.fail(key, f"must be one of {', '.join(options)}, got {value!r}")
        return value

    def str_list(self, key: str, allowed=None):
        value = self.get(key, list)
        if any(not isinstance(v, str) or (allowed is not None and v not in allowed) for v in value):
            self.fail(key, "must be a list of " + ("strings" if allowed is None else "names among " + ", ".join(allowed))
                      + f", got {value!r:.60}")
        return value

    def int_map(self, key: str, optional: bool = False, int_keys: bool = False):
        """An object of integers >= 0 (device_map, max_memory, duplicates); keys are device indices with int_keys."""
        value = self.get(key, dict, optional)
        for name, item in (value or {}).items():
            if int_keys and not name.isdigit():
                self.fail(key, f"has the key {name!r}: device indices are integers")
            if not _is_int(item) or item < 0:
                self.fail(f"{key}.{name}", f"must be an integer >= 0, got {item!r}")
        return value

    def sub(self, key: str, optional: bool = False):
        if optional and self.data.get(key) is None:
            return None
        if key not in self.data:
            self.fail(key, "is missing")
        return _Reader(self.data[key], self._name(key), self.where)


# ----------------------------------------------------------------------------- the plan


def parse_plan(data: Any, where: str = "plan") -> Plan:
    r = _Reader(data, "", where)
    found = first_non_finite(data)
    if found:
        raise SpecMemoError(f"{where}: field {found[0]} is {found[1]}: JSON has no NaN or Infinity", HINT)
    version = r.get("schema_version", int)
    if version != SCHEMA_VERSION:
        r.fail("schema_version", f"is {version}; this version reads {SCHEMA_VERSION}")
    knobs = _knobs(r.sub("knobs"))
    draft = _model_ref(r.sub("draft", optional=True))
    try:
        knobs.validate(has_draft=draft is not None)
    except SpecMemoError as exc:
        raise SpecMemoError(f"{where}: knobs: {exc.message}", exc.hint) from None
    d = r.sub("device")
    device = DeviceSpec(
        kind=d.choice("kind", DEVICE_KINDS), name=d.string("name"), total_memory_bytes=d.positive("total_memory_bytes"),
        profile=d.get("profile", str, optional=True), count=d.positive("count", optional=True, default=1),
    )
    generation = _generation(r.sub("generation"), knobs)
    return Plan(
        schema_version=version,
        target=_model_ref(r.sub("target")),
        draft=draft,
        device=device,
        budget_bytes=r.positive("budget_bytes"),
        knobs=knobs,
        generation=generation,
        prediction=_prediction(r.sub("prediction")),
        per_device=_per_device(r, device.count),
        placement=_placement(r.sub("placement"), device.count, draft is not None),
        provenance=r.get("provenance", dict, optional=True, default={}),
        measured=r.get("measured", dict, optional=True),
    )


def _knobs(k: _Reader) -> Knobs:
    unknown = sorted(set(k.data) - {f.name for f in dataclasses.fields(Knobs)})
    if unknown:  # a typo (max_contxt) would otherwise leave the real field at its default
        close = difflib.get_close_matches(unknown[0], [f.name for f in dataclasses.fields(Knobs)], n=1)
        k.fail(unknown[0], "is not a knob" + (f" (did you mean {close[0]}?)" if close else ""))
    return Knobs(
        batch_size=k.positive("batch_size"),
        max_context=k.positive("max_context"),
        draft_length=k.positive("draft_length", allow_zero=True),
        weight_dtype=k.get("weight_dtype", str),
        draft_weight_dtype=k.get("draft_weight_dtype", str, optional=True),
        kv_dtype=k.get("kv_dtype", str, optional=True),
        prefill_chunk=k.positive("prefill_chunk", optional=True),
        # plans made before the draft method was a knob have none of these: a draft model's chain
        draft_method=k.choice("draft_method", DRAFT_METHODS, optional=True),
        tree_depth=k.positive("tree_depth", optional=True),
        tree_topk=k.positive("tree_topk", optional=True),
        head_embedding=k.choice("head_embedding", ("shared", "copied"), optional=True),
    )


def _model_ref(r: _Reader | None) -> ModelRef | None:
    if r is None:
        return None
    return ModelRef(ref=r.string("ref"), dtype=r.get("dtype", str), fingerprint=r.string("fingerprint"),
                    num_params=r.positive("num_params"))


def _generation(g: _Reader, knobs: Knobs) -> Generation:
    max_new = g.positive("max_new_tokens")
    if max_new >= knobs.max_context:  # make_plan's rule: room for at least one prompt token
        g.fail("max_new_tokens", f"({max_new}) leaves no room for a prompt in knobs.max_context {knobs.max_context}")
    seed = g.get("seed", int, optional=True, default=0)
    if not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
        g.fail("seed", f"must be in [{SEED_RANGE[0]}, {SEED_RANGE[1]}] (torch.manual_seed's range), got {seed}")
    sampling = g.choice("sampling", SAMPLING_MODES)
    temperature = float(g.number("temperature", optional=True, default=1.0, open_low=True))
    if sampling == "sample" and temperature < 1e-5:  # plan.MIN_TEMPERATURE: logits / T overflow below it
        g.fail("temperature", f"{temperature!r} is below 1e-05 (logits / T overflow): use sampling greedy")
    return Generation(max_new_tokens=max_new, sampling=sampling, temperature=temperature, seed=seed)


def _components(r: _Reader) -> dict:
    """The memory components: each an integer >= 0, no others."""
    c = r.sub("components")
    for name in COMPONENTS:
        c.positive(name, allow_zero=True)
    for name in c.data:
        if name not in COMPONENTS:
            c.fail(name, "is not a memory component (" + ", ".join(COMPONENTS) + ")")
    return c.data


def _prediction(p: _Reader) -> Prediction:
    """Types and ranges; the numbers against the knobs (and the totals against the components) are validate's."""
    memory = p.sub("memory")
    _components(memory)
    memory.positive("total_bytes", allow_zero=True), memory.positive("generation_bytes", allow_zero=True)
    return Prediction(
        memory=memory.data,
        tokens_per_s=p.number("tokens_per_s", optional=True),
        plain_tokens_per_s=p.number("plain_tokens_per_s", optional=True),
        speedup=p.number("speedup", optional=True),
        acceptance_rate=p.number("acceptance_rate", optional=True, high=1.0),
        expected_tokens_per_step=p.number("expected_tokens_per_step", optional=True),
        latency_source=p.get("latency_source", str, optional=True, default="none"),
        acceptance_source=p.get("acceptance_source", str, optional=True, default="assumed"),
    )


def _per_device(r: _Reader, count: int) -> tuple[DeviceShare, ...]:
    entries = r.get("per_device", list)
    if len(entries) != count:
        r.fail("per_device", f"has {len(entries)} entries for device.count {count}")
    shares = []
    for i, entry in enumerate(entries):
        e = _Reader(entry, f"per_device[{i}]", r.where)
        if e.positive("index", allow_zero=True) != i:
            e.fail("index", f"is {entry['index']}, the entry's position is {i}")
        for key in ("budget_bytes", "accelerate_weight_bytes", "target_params"):
            e.positive(key, allow_zero=True)
        e.str_list("holds", HOLDS), e.str_list("modules")
        layers = e.get("layers", list, optional=True)
        if layers is not None and (len(layers) != 2 or not all(_is_int(x) and x >= 0 for x in layers)
                                   or layers[0] > layers[1]):
            e.fail("layers", f"must be [first, last] decoder layers (0 <= first <= last), got {layers!r:.40}")
        total = sum(_components(e).values())
        # derived fields: Plan keeps the components and recomputes these, so an edit here would vanish unseen
        for key, value in (("total_bytes", total), ("headroom_bytes", entry["budget_bytes"] - total),
                           ("num_layers", 0 if layers is None else layers[1] - layers[0] + 1)):
            stated = e.get(key, int, optional=True)
            if stated is not None and stated != value:
                e.fail(key, f"{stated} != {value} from the entry's own "
                       + ("layers" if key == "num_layers" else "components and budget_bytes"))
        shares.append(DeviceShare.from_dict(entry))
    return tuple(shares)


def _placement(r: _Reader, count: int, has_draft: bool) -> Placement:
    r.choice("policy", POLICIES)
    for key in ("head_device", "draft_device"):
        value = r.positive(key, allow_zero=True, optional=key == "draft_device")
        if value is not None and value >= count:
            r.fail(key, f"is {value}, past the plan's {count} device(s)")
    if has_draft != (r.data.get("draft_device") is not None):
        r.fail("draft_device", "must name a device when the plan has a draft, and be null without one")
    r.positive("hops", allow_zero=True)
    r.int_map("device_map"), r.int_map("duplicates"), r.int_map("max_memory", optional=True, int_keys=True)
    return Placement.from_dict(r.data)
