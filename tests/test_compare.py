import json

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
