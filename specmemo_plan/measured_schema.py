"""The fields of a measured profile file (what `specmemo-plan profile` writes), checked one by one.

`check_measured(data, where)` returns the keyword arguments of autotune.MeasuredProfile, or raises a
SpecMemoError naming the file and the field: `field target.fingerprint is missing`, `field
samples[3].ms must be a positive number, got "abc"`. Without it a hand-edited or foreign JSON
reached the dataclass and printed Python's `__init__() missing 8 required positional arguments`,
or a fit with too few coefficients predicted from a truncated sum.
"""

from __future__ import annotations

import math

from .errors import SpecMemoError
from .memory import WEIGHT_DTYPES

VERSION = 1
HINT = "run `specmemo-plan profile` again, or fix that field"
FIELDS = ("device", "target", "draft", "samples", "target_fit", "draft_fit", "acceptance_histogram",
          "acceptance_source", "notes", "version", "draft_method", "rank_histogram")
REQUIRED = FIELDS[:8]  # notes, version and draft_method have defaults (a file without draft_method: draft-model
# with a draft, none without, as every file written before the field)
FIT_FIELDS = ("coefficients", "mean_abs_pct_error", "max_abs_pct_error", "num_samples", "knots")


class _Check:
    def __init__(self, where: str):
        self.where = where

    def fail(self, name: str, why: str):
        raise SpecMemoError(f"{self.where}: field {name} {why}", HINT)

    def obj(self, data: dict, key: str, name: str, optional: bool = False) -> dict | None:
        value = data.get(key)
        if value is None and optional:
            return None
        if not isinstance(value, dict):
            self.fail(name, "is missing" if key not in data else f"must be an object, got {value!r:.40}")
        return value

    def str(self, data: dict, key: str, name: str, choices=None, optional: bool = False) -> str | None:
        value = data.get(key)
        if value is None and optional:
            return None
        if key not in data:
            self.fail(name, "is missing")
        if not isinstance(value, str) or not value:
            self.fail(name, f"must be a non-empty string, got {value!r:.40}")
        if choices is not None and value not in choices:
            self.fail(name, f"is {value!r}, not one of: {', '.join(choices)}")
        return value

    def int(self, data: dict, key: str, name: str, low: int = 0) -> int:
        value = data.get(key)
        if key not in data:
            self.fail(name, "is missing")
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            self.fail(name, f"must be a whole number >= {low}, got {value!r:.40}")
        return value

    def number(self, value, name: str, positive: bool = False, nonnegative: bool = False) -> float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or (positive and value <= 0) or (nonnegative and value < 0):
            kind = "a positive number" if positive else "a number >= 0" if nonnegative else "a finite number"
            self.fail(name, f"must be {kind}, got {value!r:.40}")
        return value

    def list(self, data: dict, key: str, name: str) -> list:
        value = data.get(key)
        if not isinstance(value, list):
            self.fail(name, "is missing" if key not in data else f"must be a list, got {value!r:.40}")
        return value


def _model(c: _Check, data: dict, role: str, optional: bool) -> None:
    ref = c.obj(data, role, role, optional)
    if ref is None:
        return
    c.str(ref, "ref", f"{role}.ref")
    c.str(ref, "dtype", f"{role}.dtype", choices=WEIGHT_DTYPES)
    c.str(ref, "fingerprint", f"{role}.fingerprint")
    if role == "draft":
        c.str(ref, "head_embedding", "draft.head_embedding", choices=("shared", "copied"), optional=True)


def _fit(c: _Check, data: dict, key: str, optional: bool) -> None:
    fit = c.obj(data, key, key, optional)
    if fit is None:
        return
    unknown = sorted(set(fit) - set(FIT_FIELDS))
    if unknown:
        c.fail(f"{key}.{unknown[0]}", "is not a field of a latency fit")
    coefficients = c.list(fit, "coefficients", f"{key}.coefficients")
    for i, value in enumerate(coefficients):
        c.number(value, f"{key}.coefficients[{i}]", nonnegative=True)
    knots = fit.get("knots", [])
    if not isinstance(knots, list) or not all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in knots):
        c.fail(f"{key}.knots", f"must be a list of whole numbers >= 1, got {knots!r:.40}")
    if knots and (len(knots) < 2 or knots != sorted(set(knots))):
        c.fail(f"{key}.knots", "must be at least two increasing numbers")
    width = len(knots) + 2 if knots else 4  # autotune._features: floor, g's slopes (or c1), c2, c3
    if len(coefficients) != width:
        c.fail(f"{key}.coefficients", f"has {len(coefficients)} values; {len(knots)} knots need {width}")
    for name in ("mean_abs_pct_error", "max_abs_pct_error"):
        if name not in fit:
            c.fail(f"{key}.{name}", "is missing")
        c.number(fit[name], f"{key}.{name}", nonnegative=True)
    c.int(fit, "num_samples", f"{key}.num_samples")


def _samples(c: _Check, data: dict) -> None:
    samples = c.list(data, "samples", "samples")
    for i, s in enumerate(samples):
        name = f"samples[{i}]"
        if not isinstance(s, dict):
            c.fail(name, f"must be an object, got {s!r:.40}")
        c.str(s, "model", f"{name}.model", choices=("target", "draft"))
        c.int(s, "batch", f"{name}.batch", low=1)
        c.int(s, "num_tokens", f"{name}.num_tokens", low=1)
        c.int(s, "context", f"{name}.context")
        c.number(s.get("ms"), f"{name}.ms", positive=True)
    if not any(s["model"] == "target" for s in samples):
        c.fail("samples", "holds no target latency (tune searches the batches and contexts it measured)")


def _method(c: _Check, data: dict) -> None:
    """draft_method: a known method whose drafter is there exactly when it has one (drafting/methods.py):
    a draft model, a head or MTP layers are timed (draft, draft_fit); n-gram and plain decoding have no
    draft forward, and n-gram is known only by its acceptance histogram."""
    from .drafting.methods import DRAFT_METHODS

    method = c.str(data, "draft_method", "draft_method", choices=DRAFT_METHODS, optional=True)
    if method is None:  # a file from before the field: MeasuredProfile derives it
        method = "draft-model" if data["draft"] is not None else "none"
    if method in ("ngram", "none"):
        why = "n-gram drafting has no draft forward" if method == "ngram" else "plain decoding has no draft"
        if data["draft"] is not None:
            c.fail("draft", f"must be null for draft method {method} ({why})")
        drafted = next((i for i, s in enumerate(data["samples"]) if s["model"] == "draft"), None)
        if drafted is not None:
            c.fail(f"samples[{drafted}].model", f"is 'draft', but {why}")
        if method == "ngram" and data["acceptance_histogram"] is None:
            c.fail("acceptance_histogram", "must be given for draft method ngram (its acceptance is all that is measured)")
    elif data["draft"] is None:
        c.fail("draft", f"is null, but draft method {method} times a drafter (give draft and draft_fit)")
    if data["draft"] is not None and data["draft"].get("head_embedding") is not None and method not in (
            "eagle", "eagle3", "mtp"):
        c.fail("draft.head_embedding", f"is for an EAGLE or MTP head, not draft method {method}")


def _counts(c, data, name: str) -> None:
    """An optional list of at least 2 non-negative counts, not all zero."""
    counts = data.get(name)
    if counts is None:
        return
    if not isinstance(counts, list) or len(counts) < 2:
        c.fail(name, f"must be null or a list of at least 2 counts, got {counts!r:.40}")
    for i, count in enumerate(counts):
        c.number(count, f"{name}[{i}]", nonnegative=True)
    if sum(counts) <= 0:
        c.fail(name, "counts no step (all zero)")


def check_measured(data, where: str) -> dict:
    """MeasuredProfile's keyword arguments from a file's JSON, every field checked (see the module docstring)."""
    c = _Check(where)
    if not isinstance(data, dict):
        raise SpecMemoError(f"{where} is not a measured profile (a JSON object)", HINT)
    version = data.get("version", None)
    if version != VERSION:
        raise SpecMemoError(f"{where}: measured profile version {version!r} is not {VERSION}", HINT)
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        c.fail(unknown[0], "is not a field of a measured profile")
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        c.fail(missing[0], f"is missing ({len(missing)} of the {len(REQUIRED)} required fields are)")
    device = c.obj(data, "device", "device")
    c.str(device, "kind", "device.kind")
    c.str(device, "name", "device.name")
    c.int(device, "total_memory_bytes", "device.total_memory_bytes", low=1)
    c.str(device, "profile", "device.profile", optional=True)
    _model(c, data, "target", optional=False)
    _model(c, data, "draft", optional=True)
    _samples(c, data)
    _fit(c, data, "target_fit", optional=False)
    _fit(c, data, "draft_fit", optional=True)
    if (data["draft"] is None) != (data["draft_fit"] is None):
        c.fail("draft_fit", "must be given exactly when draft is")
    _counts(c, data, "acceptance_histogram")  # quantities.acceptance_rate would divide by an all-zero one
    _counts(c, data, "rank_histogram")  # [none, rank 1, ...]: drafting.trees.sibling_shares divides by rank 1
    ranks = data.get("rank_histogram")
    if ranks is not None and not ranks[1]:
        c.fail("rank_histogram", "counts no depth-1 draft of rank 1 (the shares are relative to it)")
    c.str(data, "acceptance_source", "acceptance_source", choices=("measured", "given", "none"))
    _method(c, data)
    if data.get("notes") is not None and not isinstance(data["notes"], dict):
        c.fail("notes", "must be an object")
    return {k: v for k, v in data.items() if not (k == "notes" and v is None)}
