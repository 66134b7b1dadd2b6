"""The engine models against public measurements (specmemo_plan/engines/calibration.json).

Every point is predicted on its own settings and must land within its tolerance. Points the models cannot
reach are listed in the file with the reason (`unreached`) and run here as strict xfails: they must
still miss, so a model that starts reaching one is noticed and the point moves to the checked set.
"""

import json

import pytest

from specmemo_plan.engines import ENGINES, calibration

POINTS = calibration.points()
# The tolerances, by kind of quantity.
TOLERANCE = {
    "weights_bytes": 0.01, "draft_weights_bytes": 0.01, "model_bytes": 0.01, "params": 0.01,
    "kv_cache_bytes": 0.01, "kv_bytes_per_token": 0.01, "draft_kv_cache_bytes": 0.01,
    "kv_cache_tokens": 0.05, "max_concurrency": 0.05,
    "activation_peak_bytes": 0.25, "compute_buffer_bytes": 0.25, "activation_plus_non_torch": 0.25,
    "cuda_graph_bytes": 0.25, "non_torch_bytes": 0.25, "total_bytes": 0.05,
}


def _param(point):
    marks = [pytest.mark.xfail(strict=True, reason=point["unreached"])] if point.get("unreached") else []
    return pytest.param(point, id=point["id"], marks=marks)


@pytest.mark.parametrize("point", [_param(p) for p in POINTS])
def test_point_within_its_tolerance(point):
    predicted = calibration.predict(point)  # SpecMemoError for an engine that is not modelled
    error = (predicted - point["measured"]) / point["measured"]
    assert abs(error) <= point["tolerance"], (
        f"{point['id']} {point['quantity']}: predicted {predicted:,.0f}, measured {point['measured']:,} "
        f"({point['measured_text']}): {error:+.2%} is outside ±{point['tolerance']:.0%}")


def test_every_point_is_complete_and_sourced():
    ids = [p["id"] for p in POINTS]
    assert len(ids) == len(set(ids))
    for p in POINTS:
        for key in ("engine", "version", "model", "settings", "quantity", "measured", "unit", "measured_text",
                    "tolerance", "source"):
            assert p.get(key) not in (None, ""), (p["id"], key)
        assert p["source"].startswith("https://"), p["id"]
        assert set(p["settings"]) == {"knobs", "options", "device_total_bytes", "tensor_parallel"}, p["id"]
        assert p["tolerance"] <= TOLERANCE[p["quantity"]], (p["id"], "looser than the issue allows")


def test_unreached_points_say_why_and_reached_engines_are_modelled():
    for p in POINTS:
        if p.get("unreached"):
            assert len(p["unreached"]) > 40, p["id"]
        else:
            assert p["engine"] in ENGINES, p["id"]


def test_the_set_covers_each_must_hold_quantity():
    reached = {p["quantity"] for p in POINTS if not p.get("unreached")}
    assert {"weights_bytes", "kv_cache_bytes", "kv_cache_tokens", "compute_buffer_bytes"} <= reached
    assert {p["engine"] for p in POINTS if not p.get("unreached")} == {"vllm", "llama.cpp"}


def test_markdown_table_has_a_row_per_point():
    rows = calibration.table()
    text = calibration.markdown(rows)
    assert text.count("\n") == len(POINTS) + 1
    for p in POINTS:
        assert f"| {p['id']} |" in text
    assert "not modelled" in text  # the LitGPT rows
    json.dumps([r.__dict__ for r in rows])  # plain data for the README generator


def test_reached_rows_agree_with_the_parametrised_check():
    for r in calibration.table():
        assert r.within == (r.unreached is None), (r.id, r.error)
