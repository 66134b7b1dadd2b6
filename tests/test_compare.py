import json

import pytest
from click.testing import CliRunner

from specmemo_plan.cli import cli
from specmemo_plan.compare import compare_device
from specmemo_plan.hardware import load_profile
from specmemo_plan.memory import Knobs
from specmemo_plan.models import load_shape

TITAN = load_profile("titan-rtx")


def test_llama70b_fp16_does_not_fit_titan_rtx():
    v = compare_device(TITAN, load_shape("llama-2-70b-chat"), load_shape("llama-68m"),
                       Knobs(batch_size=1, max_context=4096, draft_length=1), acceptance=0.7)
    assert not v.plain_fits and not v.sd_fits and v.best_draft_length is None


def test_llama7b_with_68m_draft_fits_titan_rtx_with_sd_at_4096():
    v = compare_device(TITAN, load_shape("llama-2-7b-chat"), load_shape("llama-68m"),
                       Knobs(batch_size=1, max_context=4096, draft_length=1), acceptance=0.7)
    assert v.plain_fits and v.sd_fits
    assert v.best_draft_length >= 1 and v.speedup > 1
    assert v.min_budget_bytes < TITAN.memory_bytes
    assert v.headroom_bytes == TITAN.memory_bytes - v.best_breakdown["total_bytes"] > 0


def test_bf16_on_turing_is_a_note_not_a_crash():
    v = compare_device(TITAN, load_shape("llama-2-7b-chat"), load_shape("llama-68m"),
                       Knobs(batch_size=1, max_context=1024, draft_length=1, weight_dtype="bf16"), acceptance=0.7)
    assert "bf16" in v.note and not v.plain_fits


def test_compare_cli_json_and_plot(tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["compare", "-t", "llama-2-7b-chat", "-d", "llama-68m", "--all", "--json"])
    assert result.exit_code == 0, result.output
    devices = {d["profile"]: d for d in json.loads(result.stdout)["devices"]}
    assert len(devices) >= 14 and devices["titan-rtx"]["sd_fits"]
    png = tmp_path / "cmp.png"
    result = runner.invoke(cli, ["compare", "-t", "llama-2-7b-chat", "-d", "llama-68m", "--profiles", "titan-rtx,h200",
                                 "--plot", str(png)])
    try:
        import matplotlib  # noqa: F401
        assert result.exit_code == 0 and png.stat().st_size > 1000
    except ImportError:
        assert result.exit_code != 0 and "needs matplotlib" in result.output


def test_compare_needs_profiles():
    result = CliRunner().invoke(cli, ["compare", "-t", "llama-2-7b-chat", "-d", "llama-68m"])
    assert result.exit_code != 0 and "--profiles" in result.output


def test_devices_cli_finds_the_cpu():
    result = CliRunner().invoke(cli, ["devices", "--json"])
    assert result.exit_code == 0
    devices = json.loads(result.stdout)["devices"]
    assert devices[-1]["backend"] == "cpu" and devices[-1]["total_memory_bytes"] > 0


# ----------------------------------------------------------------------------- a measured device


def measured_profile(path, draft_ms, histogram, profile="rtx-4090", dtype="fp16"):
    """A measured profile as `specmemo-plan profile` writes it, with known curves: the target costs
    20 ms + 0.05 ms per token per forward, the draft `draft_ms` per forward."""
    from dataclasses import asdict

    from specmemo_plan.autotune import LatencyFit, MeasuredProfile
    from specmemo_plan.files import write_json_atomic

    target, draft = load_shape("llama-2-7b-chat"), load_shape("llama-68m")
    fit = lambda c: asdict(LatencyFit(c, 1.0, 2.0, 60))  # noqa: E731
    device = load_profile(profile)
    m = MeasuredProfile(
        device={"kind": device.backend, "name": device.name, "total_memory_bytes": device.memory_bytes, "profile": profile},
        target={"ref": "llama-2-7b-chat", "dtype": dtype, "fingerprint": target.fingerprint},
        draft={"ref": "llama-68m", "dtype": dtype, "fingerprint": draft.fingerprint},
        samples=[{"model": "target", "batch": 1, "num_tokens": 1, "context": 0, "ms": 20.05}],
        target_fit=fit((20.0, 0.05, 0.0, 0.0)), draft_fit=fit((draft_ms, 0.0, 0.0, 0.0)),
        acceptance_histogram=histogram, acceptance_source="measured",
    )
    write_json_atomic(asdict(m), path)
    return m


def test_compare_uses_the_measured_curves_and_histogram(tmp_path):
    # every step accepts all 4 drafts: 5 tokens per step for 4 x 1 ms + 20.25 ms -> 5 / 24.25 ms
    measured_profile(tmp_path / "box.json", 1.0, [0, 0, 0, 0, 1])
    result = CliRunner().invoke(cli, ["compare", "--measured", str(tmp_path / "box.json"), "--profiles", "titan-rtx",
                                      "-c", "1024", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (data["target"], data["draft"]) == ("llama-2-7b-chat", "llama-68m")
    box, titan = data["devices"]
    assert box["profile"] == "measured:box" and titan["profile"] == "titan-rtx"
    assert box["best_draft_length"] == 4 and box["best_batch"] == 1
    assert box["plain_tokens_per_s"] == pytest.approx(1000 / 20.05)
    assert box["sd_tokens_per_s"] == pytest.approx(5 * 1000 / (4 * 1.0 + 20.0 + 5 * 0.05))
    # the matched profile's runtime overhead (CUDA context) is part of every total
    assert box["best_breakdown"]["components"]["runtime_overhead"] == load_profile("rtx-4090").runtime_overhead_bytes


def test_compare_measured_slow_draft_plans_plain(tmp_path):
    measured_profile(tmp_path / "slow.json", 30.0, [0.5, 0.5])
    result = CliRunner().invoke(cli, ["compare", "--measured", str(tmp_path / "slow.json"), "--json"])
    assert result.exit_code == 0, result.output
    (box,) = json.loads(result.stdout)["devices"]
    assert box["best_draft_length"] == 0 and box["min_budget_bytes"] is None and "does not pay" in box["note"]


def test_compare_measured_refuses_another_pair_or_dtype(tmp_path):
    measured_profile(tmp_path / "box.json", 1.0, [0.5, 0.5])
    runner = CliRunner()
    result = runner.invoke(cli, ["compare", "--measured", str(tmp_path / "box.json"), "-t", "llama-2-13b-chat"])
    assert result.exit_code != 0 and "measured profile's target is llama-2-7b-chat" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(cli, ["compare", "--measured", str(tmp_path / "box.json"), "--dtype", "fp32"])
    assert result.exit_code != 0 and "measured in fp16, not fp32" in result.output
