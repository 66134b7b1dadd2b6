"""Issue 18, the planner's rows: every bad input is one line and a non-zero exit, never a traceback,
never a file written on failure; no silent wrong answer; every prediction says where it comes from.

Exit statuses (cli/options.py): 1 for a user error (`Error: ...`), 2 for click's usage errors.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import asdict

import click
import pytest
from click.testing import CliRunner

from specmemo_plan import files
from specmemo_plan.cli import COMMANDS, cli
from specmemo_plan.cli.options import EXIT_USER_ERROR
from specmemo_plan.models import BUNDLED_MODELS, load_shape
from specmemo_plan.plan import read_plan

PAIR = ["-t", "llama-2-7b-chat", "-d", "llama-68m"]
PLAN = ["plan", *PAIR, "--profile", "titan-rtx", "--budget", "22GiB"]


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def refused(result, message: str, code: int = EXIT_USER_ERROR) -> str:
    """The command exited `code` through SystemExit (no traceback) with one `Error:` line holding `message`."""
    assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if not line.startswith("note:")]
    if code == EXIT_USER_ERROR:
        assert len(lines) == 1, lines  # nothing but the one line (notes aside)
    (error,) = [line for line in lines if line.startswith("Error: ")]
    assert message in error, error
    return error


# ----------------------------------------------------------------------------- files


def test_output_to_a_device_a_fifo_or_a_folder_is_refused(tmp_path):
    refused(run(*PLAN, "-o", "/dev/null"), "/dev/null is a character device, not a regular file")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    refused(run(*PLAN, "-o", fifo), "is a FIFO, not a regular file")
    refused(run(*PLAN, "-o", tmp_path), "is a directory", code=2)  # click.Path(dir_okay=False)
    refused(run(*PLAN, "-o", tmp_path / "no" / "dir" / "plan.json"), "does not exist")
    assert sorted(os.listdir(tmp_path)) == ["fifo"]


def test_output_writes_through_a_symlink(tmp_path):
    real = tmp_path / "real.json"
    real.write_text("old")
    (tmp_path / "link.json").symlink_to(real)
    result = run(*PLAN, "-o", tmp_path / "link.json")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "link.json").is_symlink() and read_plan(real).budget_bytes == 22 * 2**30


def test_output_over_an_input_is_refused(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(_preset_text("llama-68m"))
    before = config.read_bytes()
    refused(run("plan", "-t", config, "--profile", "titan-rtx", "-o", config), "is also an input")
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_bytes(before)
    refused(run("plan", "-t", folder, "--profile", "titan-rtx", "-o", folder / "config.json"), "is also an input")
    assert config.read_bytes() == before and (folder / "config.json").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model"]


def _preset_text(name: str) -> str:
    import importlib.resources

    return importlib.resources.files("specmemo_plan").joinpath(f"presets/{name}.json").read_text()


def test_plan_honours_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        assert run(*PLAN, "-o", tmp_path / "p.json").exit_code == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "p.json").st_mode) == 0o644


@pytest.mark.parametrize("code", [28, 30, 13])  # ENOSPC, EROFS, EACCES
def test_a_full_or_read_only_filesystem_is_one_line(tmp_path, monkeypatch, code):
    def failing(fd, data):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "write", failing)
    refused(run(*PLAN, "-o", tmp_path / "p.json"), f"cannot write {tmp_path / 'p.json'}: {os.strerror(code)}")
    assert os.listdir(tmp_path) == []


def test_a_read_only_folder_is_refused_before_the_work(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    monkeypatch.setattr(files, "_read_only", lambda folder: True)
    refused(run(*PLAN, "-o", tmp_path / "p.json"), "it is on a read-only filesystem")


# ----------------------------------------------------------------------------- numbers


@pytest.mark.parametrize("args", [
    ["min-budget", *PAIR, "--bandwidth", "inf"],
    ["min-budget", *PAIR, "--bandwidth", "nan"],
    ["min-budget", *PAIR, "--bandwidth", "-inf"],
    ["min-budget", *PAIR, "--acceptance", "nan"],
    ["min-budget", *PAIR, "--retain", "nan"],
    ["plan", *PAIR, "--acceptance", "NaN", "-o", "p.json"],
    ["plan", *PAIR, "--temperature", "nan", "-o", "p.json"],
    ["plan", *PAIR, "--bandwidth", "Infinity", "-o", "p.json"],
    ["compare", *PAIR, "--all", "--acceptance", "nan"],
])
def test_non_finite_numbers_are_refused(tmp_path, monkeypatch, args):
    monkeypatch.chdir(tmp_path)
    refused(run(*args), "is not a finite number", code=2)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("budget", ["nanGiB", "infGiB", "1e400", "-5GB", "0"])
def test_bad_budgets_are_refused(budget):
    refused(run("fit", *PAIR, "--budget", budget), "budget", code=2)


def test_every_float_option_refuses_nan():
    """Every command's float options (the engine's profile/tune/demo too) go through options.FiniteFloat."""
    from specmemo_plan.cli.options import FiniteFloat

    ctx = click.Context(cli)
    for name in COMMANDS:
        for p in cli.get_command(ctx, name).params:
            if isinstance(p.type, (click.types.FloatParamType, click.FloatRange)):
                assert isinstance(p.type, FiniteFloat), (name, p.opts)


# ----------------------------------------------------------------------------- measured profiles


def good_measured() -> dict:
    from specmemo_plan.autotune import LatencyFit, MeasuredProfile

    target, draft = load_shape("llama-2-7b-chat"), load_shape("llama-68m")
    fit = asdict(LatencyFit((20.0, 0.05, 0.0, 0.0), 1.0, 2.0, 60))
    return asdict(MeasuredProfile(
        device={"kind": "cuda", "name": "box", "total_memory_bytes": 24 * 2**30, "profile": None},
        target={"ref": "llama-2-7b-chat", "dtype": "fp16", "fingerprint": target.fingerprint},
        draft={"ref": "llama-68m", "dtype": "fp16", "fingerprint": draft.fingerprint},
        samples=[{"model": "target", "batch": 1, "num_tokens": 1, "context": 0, "ms": 20.05}],
        target_fit=fit, draft_fit=dict(fit, coefficients=[1.0, 0.0, 0.0, 0.0]),
        acceptance_histogram=[2, 3, 5], acceptance_source="measured"))


def edited(change):
    data = good_measured()
    change(data)
    return json.dumps(data).encode()


@pytest.mark.parametrize("content, message", [
    (b"[1, 2]", "holds a list, not a measured profile"),
    (b'{"version": 1}', "field device is missing (8 of the 8 required fields are)"),
    (b'{"version": 2}', "measured profile version 2 is not 1"),
    (b"\xff\xfe{\x00", "is not UTF-8 text (byte 0 is 0xff)"),
    (b'{"version": 1,', "is not valid JSON"),
    (edited(lambda d: d["target"].pop("fingerprint")), "field target.fingerprint is missing"),
    (edited(lambda d: d["samples"][0].update(ms="abc")), "field samples[0].ms must be a positive number, got 'abc'"),
    (edited(lambda d: d["samples"][0].update(batch=True)), "field samples[0].batch must be a whole number >= 1"),
    (edited(lambda d: d["device"].update(total_memory_bytes="24GiB")), "field device.total_memory_bytes must be"),
    (edited(lambda d: d["target_fit"].update(coefficients=[1.0, 2.0])), "field target_fit.coefficients has 2 values"),
    (edited(lambda d: d.update(acceptance_histogram=[0, 0])), "field acceptance_histogram counts no step"),
    (edited(lambda d: d.update(extra=1)), "field extra is not a field of a measured profile"),
    (edited(lambda d: d.update(draft_fit=None)), "field draft_fit must be given exactly when draft is"),
    (edited(lambda d: d["target"].update(dtype="fp64")), "field target.dtype is 'fp64', not one of"),
    (b'{"version": 1, "x": NaN}', "NaN is not a JSON number"),
])
def test_bad_measured_profiles_are_one_line_naming_the_field(tmp_path, content, message):
    path = tmp_path / "m.json"
    path.write_bytes(content)
    error = refused(run("compare", "--measured", path), message)
    assert "__init__" not in error and str(path) in error


def test_a_good_measured_profile_reads(tmp_path):
    path = tmp_path / "m.json"
    path.write_bytes(edited(lambda d: None))
    result = run("compare", "--measured", path, "-c", "1024", "--json")
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)["devices"]
    assert row["profile"] == "measured:m"


def test_tune_reads_measured_profiles_the_same_way(tmp_path):
    path = tmp_path / "m.json"
    path.write_bytes(b'{"version": 1}')
    refused(run("tune", "--measured", path, "-o", tmp_path / "plan.json"), "field device is missing")
    assert sorted(os.listdir(tmp_path)) == ["m.json"]


# ----------------------------------------------------------------------------- silent wrong answers


def test_min_budget_honours_k_and_says_which():
    given = json.loads(run("min-budget", *PAIR, "-k", "8", "--json").stdout)
    searched = json.loads(run("min-budget", *PAIR, "--json").stdout)
    assert (given["draft_length"], given["draft_length_source"]) == (8, "given")
    assert searched["draft_length_source"] == "searched" and searched["draft_length"] == 1
    assert given["min_budget_bytes"] > searched["min_budget_bytes"]
    assert "8 (given with -k)" in run("min-budget", *PAIR, "-k", "8").stdout
    assert "1 (searched 1..16)" in run("min-budget", *PAIR).stdout


def test_min_budget_at_a_k_that_does_not_pay_says_that_k():
    refused(run("min-budget", *PAIR, "-k", "16", "--acceptance", "0.05"), "does not pay here: at k=16 the predicted")


def test_fit_says_when_the_batch_search_limit_binds():
    data = json.loads(run("fit", "-t", "llama-68m", "-c", "128", "--budget", "80GiB", "--json").stdout)
    assert data["largest_batch"] == data["batch_search_limit"] == 4096
    assert data["notes"] == ["the batch search stops at 4096 (budget.MAX_BATCH_SEARCH): a larger batch may fit too; "
                             "give --batch to check one"]
    text = run("fit", "-t", "llama-68m", "-c", "128", "--budget", "80GiB").stdout
    assert "4096 (the search limit)" in text and "note: the batch search stops at 4096" in text
    assert "notes" not in json.loads(run("fit", *PAIR, "--budget", "24GiB", "--json").stdout)


@pytest.mark.parametrize("names", [",", " , ,", ""])
def test_compare_with_empty_profile_names_is_one_line(names):
    refused(run("compare", *PAIR, "--profiles", names), "names no profile")


# ----------------------------------------------------------------------------- --plot


def test_plot_paths_are_checked_before_the_work(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    import specmemo_plan.compare as compare_mod

    monkeypatch.setattr(compare_mod, "compare_devices", lambda *a, **k: pytest.fail("the work ran first"))
    base = ["compare", *PAIR, "--profiles", "titan-rtx", "--plot"]
    refused(run(*base, tmp_path / "missing" / "chart.png"), "does not exist")
    refused(run(*base, tmp_path / "chart.xyz"), "extension .xyz is not an image format matplotlib writes here")
    refused(run(*base, tmp_path / "chart"), "no extension is not an image format")
    assert os.listdir(tmp_path) == []


def test_plot_writes_the_format_of_its_extension(tmp_path):
    pytest.importorskip("matplotlib")
    result = run("compare", *PAIR, "--profiles", "titan-rtx", "--plot", tmp_path / "chart.svg")
    assert result.exit_code == 0, result.output
    assert b"<svg" in (tmp_path / "chart.svg").read_bytes()
    assert sorted(os.listdir(tmp_path)) == ["chart.svg"]


# ----------------------------------------------------------------------------- presets, help, exit codes


def test_presets_list_the_bundled_models():
    rows = {r["name"]: r for r in json.loads(run("presets", "--json").stdout)["presets"]}
    for name in BUNDLED_MODELS:
        row = rows[f"bundled:{name}"]
        assert row["weights"] in ("real (bundled)", "missing")
    assert rows["llama-68m"]["weights"] == "none (random)"


def test_every_option_has_help():
    ctx = click.Context(cli)
    missing = [(name, p.opts[0]) for name in COMMANDS
               for p in cli.get_command(ctx, name).params if isinstance(p, click.Option) and not p.help]
    assert missing == []


def test_exit_statuses_user_error_1_usage_error_2():
    refused(run("fit", *PAIR, "--budget", "10GiB"), "below the weights alone", code=1)
    refused(run("fit", *PAIR, "--budget", "10GiB", "--no-such-option"), "No such option", code=2)
    refused(run("estimate", "-t", "lama-2-7b"), "close names", code=1)


# ----------------------------------------------------------------------------- where predictions come from


def test_plan_says_its_acceptance_was_assumed(tmp_path):
    text = run(*PLAN, "-o", tmp_path / "p.json").stdout
    assert "x plain) at an assumed acceptance 0.7 (no measurement; give --acceptance, or measure it with " \
           "`specmemo-plan profile`)" in text
    assert "latency from        the titan-rtx profile's roofline (spec-sheet peaks and assumed efficiencies" in text
    given = run(*PLAN, "-a", "0.5", "-o", tmp_path / "p.json").stdout
    assert "at the given acceptance 0.5 (not measured)" in given
    plain = run("plan", "-t", "llama-2-7b-chat", "--profile", "titan-rtx", "-o", tmp_path / "q.json").stdout
    assert "acceptance" not in plain.split("\n", 1)[1] and "latency from" in plain


def test_min_budget_and_compare_say_where_their_numbers_come_from():
    text = run("min-budget", *PAIR).stdout
    assert "at an assumed acceptance 0.7 (no measurement" in text
    assert "a bandwidth-only model at 100 GB/s (assumed: no --profile; set --bandwidth)" in text
    text = run("compare", *PAIR, "--profiles", "titan-rtx").stdout
    assert text.splitlines()[-1] == ("profiles: latency from each profile's roofline (spec-sheet peaks, not measured), "
                                     "at an assumed acceptance 0.7 (no measurement; give --acceptance or --measured)")
    assert "at the given acceptance 0.6" in run("compare", *PAIR, "--profiles", "titan-rtx", "-a", "0.6").stdout


def test_tune_output_says_where_its_prediction_comes_from():
    from specmemo_plan.plan import Prediction
    from specmemo_plan.render.workflow import prediction_sources

    measured = Prediction(memory={}, acceptance_rate=0.41234, latency_source="measured:AMD EPYC",
                          acceptance_source="measured")
    assert prediction_sources(measured) == ("prediction from curves fitted to latencies measured on AMD EPYC "
                                            "at the measured acceptance 0.412")
    given = Prediction(memory={}, acceptance_rate=0.5, latency_source="measured:box", acceptance_source="given")
    assert prediction_sources(given).endswith("at the given acceptance 0.5 (`profile --acceptance`, not measured)")
    plain = Prediction(memory={}, latency_source="measured:box", acceptance_source="none")
    assert prediction_sources(plain) == "prediction from curves fitted to latencies measured on box"
