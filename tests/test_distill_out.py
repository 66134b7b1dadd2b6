"""train/distill_draft.py never overwrites the committed draft by default: --out defaults to a new
folder, and a folder inside the package needs --force; checked before any work."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def distill():
    spec = importlib.util.spec_from_file_location("distill_draft", ROOT / "train" / "distill_draft.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_default_out_is_a_new_folder_not_the_committed_draft(distill):
    assert distill.DEFAULT_OUT == "distilled-draft"
    committed = ROOT / "specmemo_plan" / "drafts" / "smollm2-135m-draft"
    assert distill.check_out(distill.DEFAULT_OUT, force=False) == Path.cwd().resolve() / "distilled-draft"
    with pytest.raises(SystemExit) as err:
        distill.check_out(str(committed), force=False)
    assert str(err.value).startswith(f"error: --out {committed} is inside the package ({ROOT / 'specmemo_plan'})")
    assert "--force" in str(err.value)
    assert distill.check_out(str(committed), force=True) == committed


def test_out_that_cannot_be_written_is_refused_first(distill, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit, match="is a file, not a folder"):
        distill.check_out(str(tmp_path / "file"), force=False)
    assert distill.check_out(str(tmp_path / "new" / "deeper"), force=False) == tmp_path / "new" / "deeper"
