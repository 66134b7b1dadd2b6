"""Multi-device plans in the engine: refused cleanly where the machine has fewer devices."""

import pytest
from click.testing import CliRunner

from engine.placement import check_devices
from specmemo_plan.cli import cli
from specmemo_plan.errors import SpecMemoError
from specmemo_plan.plan import read_plan


def test_multi_device_plan_is_refused_on_this_machine(tmp_path):
    out = tmp_path / "plan.json"
    result = CliRunner().invoke(cli, ["plan", "-t", "llama-2-7b-chat", "-d", "llama-68m", "--devices", "2",
                                      "--profile", "rtx-4090", "--budget", "20GiB", "-c", "2048", "-o", str(out)])
    assert result.exit_code == 0, result.output
    plan = read_plan(out)
    assert plan.device.count == 2 and len(plan.per_device) == 2
    with pytest.raises(SpecMemoError, match=r"device\.count: the plan spans 2 devices"):
        check_devices(plan)


def test_engine_cli_refuses_it_in_one_line(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "plan.json"
    CliRunner().invoke(cli, ["plan", "-t", "llama-2-7b-chat", "-d", "llama-68m", "--devices", "2",
                             "--profile", "rtx-4090", "--budget", "20GiB", "-c", "2048", "-o", str(out)])
    run = subprocess.run([sys.executable, "-m", "engine", "--plan", str(out), "--prompt", "hi"],
                         capture_output=True, text=True)
    assert run.returncode != 0
    assert "device.count: the plan spans 2 devices" in run.stderr and len(run.stderr.strip().splitlines()) == 1
    assert "Traceback" not in run.stderr
