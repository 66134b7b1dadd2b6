"""The calibration set: public measurements of the engines (calibration.json) and this package's predictions.

Each point names the engine and version that was measured, the model (a preset, or a config in
calibration_models/ with its public source), the settings (the plan's knobs, the engine's options, the
device's total memory, the tensor-parallel size), the quantity, the measured number with the log line it
was read from, a relative tolerance and the source URL. `predict(point)` runs `engine_memory` on those
settings; `table()` gives the rows of the README's calibration table.
"""

from __future__ import annotations

import importlib.resources
import json
from dataclasses import dataclass

from ..errors import SpecMemoError
from ..memory import Knobs
from ..models import ModelShape, load_shape
from . import engine_memory
from .base import EngineOptions

# Quantities that are not one EngineMemory field: how each is computed from the result (or the model).
DERIVED = {
    "kv_bytes_per_token": lambda m, model: m.kv_cache_bytes / m.kv_cache_tokens,
    "activation_plus_non_torch": lambda m, model: m.activation_peak_bytes + m.non_torch_bytes,
    "model_bytes": lambda m, model: m.weights_bytes + m.host_bytes,
    "params": lambda m, model: model.num_params,
}


@dataclass(frozen=True)
class Row:
    """One point's prediction against its measurement."""

    id: str
    engine: str
    version: str
    quantity: str
    predicted: float | None  # None: the engine could not be run (unknown engine)
    measured: float
    unit: str
    tolerance: float
    source: str
    unreached: str | None

    @property
    def error(self) -> float | None:
        """(predicted - measured) / measured."""
        return None if self.predicted is None else (self.predicted - self.measured) / self.measured

    @property
    def within(self) -> bool:
        return self.error is not None and abs(self.error) <= self.tolerance


def points() -> list[dict]:
    """The calibration set, as stored."""
    text = importlib.resources.files(__package__).joinpath("calibration.json").read_text()
    return json.loads(text)["points"]


def model(ref: str | None) -> ModelShape | None:
    """'preset:NAME' or a config in calibration_models/."""
    if ref is None:
        return None
    if ref.startswith("preset:"):
        return load_shape(ref.split(":", 1)[1])
    return load_shape(str(importlib.resources.files(__package__).joinpath(ref)))


def predict(point: dict) -> float:
    """The package's prediction of the point's quantity on its settings (SpecMemoError if it cannot run)."""
    target, draft = model(point["model"]), model(point.get("draft"))
    s = point["settings"]
    result = engine_memory(point["engine"], target, draft, Knobs(**s["knobs"]), EngineOptions(**s["options"]),
                           s["device_total_bytes"], s["tensor_parallel"])
    quantity = point["quantity"]
    if quantity in DERIVED:
        return DERIVED[quantity](result, target)
    value = getattr(result, quantity, None)
    if value is None:
        raise SpecMemoError(f"{point['engine']} has no {quantity}")
    return value


def row(point: dict) -> Row:
    try:
        predicted = predict(point)
    except SpecMemoError:
        predicted = None
    return Row(point["id"], point["engine"], point["version"], point["quantity"], predicted, point["measured"],
               point["unit"], point["tolerance"], point["source"], point.get("unreached"))


def table() -> list[Row]:
    """Every point's row, in the file's order."""
    return [row(p) for p in points()]


def markdown(rows: list[Row] | None = None) -> str:
    """The README table: predicted vs measured, error, tolerance and source (binary units for bytes)."""
    lines = ["| # | engine | quantity | predicted | measured | error | tolerance | source |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows or table():
        pred = "not modelled" if r.predicted is None else _show(r.predicted, r.unit)
        err = "—" if r.error is None else f"{r.error:+.1%}"
        mark = "" if r.unreached is None else " (not reached)"
        lines.append(f"| {r.id} | {r.version} | {r.quantity} | {pred} | {_show(r.measured, r.unit)} | {err}{mark} | "
                     f"±{r.tolerance:.0%} | {r.source} |")
    return "\n".join(lines)


def _show(value: float, unit: str) -> str:
    if unit == "bytes":
        return f"{value / 2**30:.4f} GiB" if value >= 2**30 else f"{value / 2**20:.2f} MiB"
    if unit == "x":
        return f"{value:.2f}x"
    return f"{value:,.0f} {unit}"
