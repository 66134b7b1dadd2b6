"""The architecture, checked: the planner never imports the engine, nor torch or transformers at module
level; the cache of a test run stays out of the home folder; modules stay small."""

import ast
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "accelerate", "safetensors", "pynvml", "amdsmi")
MAX_MODULE_LINES = 420  # "under about 400 lines": one job per module


def modules(package: str):
    return sorted((ROOT / package).rglob("*.py"))


def imported_names(tree: ast.AST, top_level_only: bool):
    nodes = tree.body if top_level_only else ast.walk(tree)
    for node in nodes:
        if isinstance(node, ast.Import):
            yield from (alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.split(".")[0]


@pytest.mark.parametrize("path", modules("specmemo_plan"), ids=lambda p: str(p.relative_to(ROOT)))
def test_planner_never_imports_the_engine(path):
    tree = ast.parse(path.read_text())
    assert "engine" not in set(imported_names(tree, top_level_only=False)), path
    heavy = set(imported_names(tree, top_level_only=True)) & set(HEAVY)
    assert not heavy, f"{path} imports {heavy} at module level"


def test_the_check_catches_an_engine_import(tmp_path):
    tree = ast.parse("def f():\n    from engine.runtime import Engine\n")
    assert "engine" in set(imported_names(tree, top_level_only=False))
    assert "torch" in set(imported_names(ast.parse("import torch.nn as nn\n"), top_level_only=True))


@pytest.mark.parametrize("package", ["specmemo_plan", "engine"])
def test_modules_stay_small(package):
    big = {str(p.relative_to(ROOT)): n for p in modules(package) if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not big, f"modules over {MAX_MODULE_LINES} lines: {big}"


def test_chat_uses_the_engine_through_its_public_methods():
    """No import cycle (runtime.py never imports chat.py) and no reaching into the Engine's private state."""
    runtime = ast.parse((ROOT / "engine" / "runtime.py").read_text())
    imported = {n.module for n in ast.walk(runtime) if isinstance(n, ast.ImportFrom) and n.module}
    assert not imported & {"chat", "engine.chat"}
    chat = ast.parse((ROOT / "engine" / "chat.py").read_text())
    private = {n.attr for n in ast.walk(chat) if isinstance(n, ast.Attribute) and n.attr.startswith("_")
               and isinstance(n.value, ast.Name) and n.value.id == "engine"}
    assert not private, f"chat.py reads engine.{private}"


def test_test_caches_are_temporary():
    home = str(Path.home())
    assert not os.environ["SPECMEMO_CACHE"].startswith(home)
    assert not os.environ["HF_HOME"].startswith(home)


def test_hardware_profiles_live_at_the_top_level():
    assert len(list((ROOT / "profiles").glob("*.toml"))) >= 15
    assert not (ROOT / "specmemo_plan" / "profiles").exists()
