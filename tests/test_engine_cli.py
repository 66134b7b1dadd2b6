"""`python -m engine`: one-line errors with exit 1, refusals before any weights load, options.

Classes of issue 18 covered here: bad encodings (a prompts file, `--prompt` bytes, a plan), a bad
`--device`, early failure (more prompts than the batch, 10,000 prompts, a 10 MB prompt: refused
before the Engine is built, the last without tokenising it), `--plan` on both sides of `chat`,
`--help` on every option, and the exit codes (1 for user errors, as the planner's CLI).
"""

from __future__ import annotations

import json
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from engine import prompts as prompts_module
from engine import runtime as runtime_module
from engine import tokens as tokens_module
from engine.cli import main as cli_main
from engine.prompts import Prompt, check_text, encode_prompts
from engine.tokens import ByteTokenizer, max_token_chars, tokens_at_least
from specmemo_plan.errors import SpecMemoError
from specmemo_plan.plan import write_plan

from conftest import TINY_CONFIG
from conftest import make_test_plan as _make_test_plan


def make_test_plan(*args, **kwargs):
    """conftest's plan, for this machine's CPU (the engine checks a CPU plan's device and memory)."""
    from specmemo_plan.hardware import this_device

    spec = this_device(torch_device="cpu").spec
    kwargs.setdefault("device_name", spec.name)
    kwargs.setdefault("budget_bytes", min(2**30, spec.total_memory_bytes))
    return _make_test_plan(*args, **kwargs)


def save_bpe_tokenizer(folder) -> int:
    """A byte-level BPE tokenizer trained in milliseconds, saved beside a model; its vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<eos>"])
    tok.train_from_iterator(["hello world, the quick brown fox jumps over the lazy dog " * 20], trainer)
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>").save_pretrained(folder)
    return tok.get_vocab_size()


@pytest.fixture(scope="session")
def bpe_model(tmp_path_factory):
    """A tiny random Llama with a real (byte-level BPE) tokenizer in its folder."""
    from conftest import save_tiny_model

    folder = tmp_path_factory.mktemp("bpe_model") / "target"
    folder.mkdir()
    vocab = save_bpe_tokenizer(folder)
    save_tiny_model(folder, dict(TINY_CONFIG, vocab_size=320, eos_token_id=0, bos_token_id=None))
    assert vocab <= 320
    return str(folder)


def bpe_token_chars(folder) -> int:
    """The longest entry of the vocabulary of save_bpe_tokenizer's tokenizer."""
    from transformers import AutoTokenizer

    return max(len(e) for e in AutoTokenizer.from_pretrained(folder).get_vocab())


@pytest.fixture
def config_plan(tmp_path):
    """A plan whose models are config.json files: random weights, no tokenizer (UTF-8 bytes)."""
    (tmp_path / "target.json").write_text(json.dumps(TINY_CONFIG))
    (tmp_path / "draft.json").write_text(json.dumps(dict(TINY_CONFIG, num_hidden_layers=1)))
    plan = make_test_plan(str(tmp_path / "target.json"), str(tmp_path / "draft.json"), batch_size=2, max_context=64,
                          max_new_tokens=8)
    return str(write_plan(plan, tmp_path / "plan.json"))


@pytest.fixture
def no_engine(monkeypatch):
    """Building an Engine (which loads the weights) fails the test: refusals must come before it."""

    def boom(self, *args, **kwargs):
        raise AssertionError("the Engine was built (weights loaded) before the refusal")

    monkeypatch.setattr(runtime_module.Engine, "__init__", boom)


def one_line_error(result, needle: str) -> str:
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("Error: ") and needle in line, line
    assert not [x for x in result.stderr.splitlines() if x.startswith("Error") and x != line]
    return line


# ----------------------------------------------------------------------------- runs that work


def test_cli_json(config_plan):
    result = CliRunner().invoke(cli_main, ["--plan", config_plan, "--prompt", "hello", "--json", "--ignore-eos"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert set(data) == {"outputs", "stats", "memory"}
    assert len(data["outputs"][0]["token_ids"]) == 8 and "text" in data["outputs"][0]
    assert data["stats"]["random_weights"] == {"target": True, "draft": True}
    assert set(data["memory"]) == {"predicted", "measured"}
    assert "RANDOM weights" in result.stderr


def test_cli_batch_and_text_output(config_plan, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("first prompt\n\nsecond\n")
    result = CliRunner().invoke(cli_main, ["--plan", config_plan, "--prompts-file", str(prompts)])
    assert result.exit_code == 0, result.output
    assert "output 2" in result.stdout and "acceptance rate" in result.stdout and "target_kv" in result.stdout


def test_real_tokenizer_run_equals_engine_generate(bpe_model):
    """The CLI tokenises before the Engine loads, with the engine's own prompt_ids: same tokens."""
    from engine.runtime import Engine

    plan = make_test_plan(bpe_model, None, max_context=64, max_new_tokens=6)
    path = write_plan(plan, bpe_model + "-plan.json")
    result = CliRunner().invoke(cli_main, ["--plan", str(path), "--prompt", "hello world", "--json", "--ignore-eos"])
    assert result.exit_code == 0, result.output
    expected = Engine(plan).generate(["hello world"], ignore_eos=True).outputs[0].token_ids
    assert json.loads(result.stdout)["outputs"][0]["token_ids"] == expected


# ----------------------------------------------------------------------------- one-line errors, exit 1


def test_errors_are_one_line_and_exit_1(config_plan, tmp_path, no_engine):
    runner = CliRunner()
    cases = [
        (["--plan", str(tmp_path / "missing.json"), "--prompt", "x"], "no plan file"),
        (["--plan", config_plan, "--prompt", "x" * 100], "knobs.max_context: --prompt 1 has 100 characters"),
        (["--plan", config_plan, "--prompt", "a", "--prompt", "b", "--prompt", "c"],
         "knobs.batch_size: 3 prompts exceed the plan's batch of 2"),
        (["--plan", config_plan, "--prompt", "x", "--device", "foo"], "--device 'foo' is not a torch device"),
        (["--plan", config_plan, "--prompt", "x", "--device", "meta"], "the engine runs on cpu or cuda"),
        (["--plan", config_plan, "--prompt", "x", "--device", "cuda:99"], "--device cuda:99: this machine has"),
        (["--plan", config_plan, "--prompt", "x", "--max-new-tokens", "64"],
         "knobs.max_context: 64 new tokens leave no room for a prompt in the plan's context of 64"),
        (["--plan", config_plan, "--prompt", "x" * 57, "--max-new-tokens", "8"], "it needs 65, over the plan's context"),
    ]
    for args, needle in cases:
        one_line_error(runner.invoke(cli_main, args), needle)


def test_bad_encodings_are_one_line(config_plan, tmp_path, no_engine):
    runner = CliRunner()
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\u00e9\n".encode("latin-1"))
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"ab\x00\x00cd\n")
    surrogate = tmp_path / "surrogate.json"
    surrogate.write_text('["ok", "\\ud800"]')
    cases = [
        (["--prompts-file", str(latin1)], f"{latin1} is not UTF-8 text: byte 0xe9 at offset 3 (line 1)"),
        (["--prompts-file", str(binary)], f"{binary} holds a NUL byte (line 1)"),
        (["--prompts-file", str(surrogate)], "prompt 2 (surrogate.json item 2) is not UTF-8 text: an unpaired "
                                             "surrogate U+D800 at character 0"),
        # bytes on argv that are not UTF-8 reach Python as surrogate escapes (os.fsdecode)
        (["--prompt", "ab\udcff"], "--prompt 1 is not UTF-8 text: byte 0xff at character 2"),
    ]
    for args, needle in cases:
        one_line_error(runner.invoke(cli_main, ["--plan", config_plan, *args]), needle)


def test_non_utf8_plan_is_one_line(tmp_path):
    """The plan's loader (specmemo_plan.plan.read_plan) raises a SpecMemoError; it reaches the user as one line."""
    plan = tmp_path / "plan.json"
    plan.write_bytes(b'{"schema_version": 1, "name": "caf\xe9"}')
    result = CliRunner().invoke(cli_main, ["--plan", str(plan), "--prompt", "x"])
    one_line_error(result, str(plan))


def test_prompt_bytes_from_a_real_argv(config_plan):
    run = subprocess.run([sys.executable, "-m", "engine", "--plan", config_plan, "--prompt", b"caf\xe9"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 1, run.stderr
    assert run.stderr.strip().splitlines()[-1] == (
        "Error: --prompt 1 is not UTF-8 text: byte 0xe9 at character 3 (give the text in UTF-8)")
    assert "Traceback" not in run.stderr


# ----------------------------------------------------------------------------- early failure


def test_many_prompts_refused_by_counting(config_plan, tmp_path, no_engine, monkeypatch):
    many = tmp_path / "many.txt"
    many.write_text("".join(f"prompt {i}\n" for i in range(10_000)))
    def not_reached(*args, **kwargs):
        raise AssertionError("a tokenizer was loaded or used before the count was refused")

    monkeypatch.setattr(tokens_module, "engine_tokenizer", not_reached)
    monkeypatch.setattr(prompts_module, "encode_prompts", not_reached)
    result = CliRunner().invoke(cli_main, ["--plan", config_plan, "--prompts-file", str(many)])
    one_line_error(result, "knobs.batch_size: 10000 prompts exceed the plan's batch of 2")


def test_huge_prompt_refused_without_tokenising(bpe_model, tmp_path, no_engine, monkeypatch):
    plan = write_plan(make_test_plan(bpe_model, None, max_context=64, max_new_tokens=8), tmp_path / "plan.json")
    prompt = tmp_path / "huge.txt"
    prompt.write_text("hello world " * (10_000_000 // 12) + "\n")  # a 10 MB line

    def no_tokenising(*args, **kwargs):
        raise AssertionError("the prompt was tokenised")

    monkeypatch.setattr(prompts_module, "prompt_ids", no_tokenising)
    result = CliRunner().invoke(cli_main, ["--plan", str(plan), "--prompts-file", str(prompt)])
    chars = len("hello world ") * (10_000_000 // 12)
    L = bpe_token_chars(bpe_model)
    assert L > 1
    one_line_error(result, f"knobs.max_context: prompt 1 (huge.txt line 1) has {chars} characters, so at least "
                           f"{-(-chars // L)} tokens (a token of this tokenizer covers at most {L} characters)")


def test_over_long_prompt_in_tokens_refused_before_loading(bpe_model, tmp_path, no_engine):
    """Under the character bound, the prompt is tokenised (a bounded cost) and its exact count refused."""
    plan = write_plan(make_test_plan(bpe_model, None, max_context=64, max_new_tokens=8), tmp_path / "plan.json")
    text = "zq" * 60  # 120 characters, one token each pair at best: over 56 tokens, under 56 * 8 characters
    result = CliRunner().invoke(cli_main, ["--plan", str(plan), "--prompt", text])
    one_line_error(result, "knobs.max_context: --prompt 1 has ")
    assert "tokens; with 8 new tokens" in result.stderr


def test_token_bound_is_a_lower_bound(bpe_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(bpe_model)
    L = max_token_chars(tok)
    assert L == bpe_token_chars(bpe_model)
    for text in ["hello world " * 50, "the quick brown fox" * 30, "\u00e9\u4e2d" * 40]:
        n, bound = len(tok(text)["input_ids"]), -(-len(text) // L)
        assert n >= bound
        assert tokens_at_least(tok, text, L, n) is None  # never refuses a text that fits
        assert tokens_at_least(tok, text, L, bound - 1) == bound
    byte_tok = ByteTokenizer(256)
    assert max_token_chars(byte_tok) == 1
    assert tokens_at_least(byte_tok, "\u00e9" * 10, 1, 9) == 10  # 20 byte tokens: 10 is a lower bound


def test_encode_prompts_names_each_prompt():
    from specmemo_plan.memory import Knobs

    knobs = Knobs(batch_size=2, max_context=16)
    with pytest.raises(SpecMemoError, match=r"knobs\.max_context: p2 has 20 characters"):
        encode_prompts([Prompt("p1", "ok"), Prompt("p2", "x" * 20)], ByteTokenizer(256), knobs, 4, 256)
    assert encode_prompts([Prompt("p1", "ok")], ByteTokenizer(256), knobs, 4, 256) == [[111, 107]]
    assert check_text("caf\u00e9", "x") == "caf\u00e9"


# ----------------------------------------------------------------------------- options


def test_help_covers_every_option():
    for command, args in ((cli_main, ["--help"]), (cli_main.commands["chat"], ["chat", "--help"])):
        result = CliRunner().invoke(cli_main, args)
        assert result.exit_code == 0, result.output
        for param in command.params:
            if isinstance(param, click.Option):
                assert param.help, f"{param.opts} has no help text"
                for opt in param.opts:
                    assert opt in result.stdout, opt
    chat_help = CliRunner().invoke(cli_main, ["chat", "--help"]).stdout
    assert "Ctrl-C" in chat_help and "/reset" in chat_help


def test_plan_before_or_after_chat(config_plan, tmp_path):
    runner = CliRunner()
    other = tmp_path / "other.json"
    other.write_text("{}")
    for args, needle in [
        (["--plan", config_plan, "chat", "--plan", str(other)], "--plan is given before `chat` as"),
        (["--max-new-tokens", "2", "chat", "--plan", config_plan, "--max-new-tokens", "3"], "--max-new-tokens"),
        (["--prompt", "x", "chat", "--plan", config_plan], "--prompt is an option of a single run, not of `chat`"),
    ]:
        one_line_error(runner.invoke(cli_main, args, input=""), needle)
    for args in (["--plan", config_plan, "chat"], ["chat", "--plan", config_plan],
                 ["--plan", config_plan, "--json", "chat", "--plan", config_plan, "--json"]):
        result = runner.invoke(cli_main, [*args, "--max-new-tokens", "2"], input="hi\n")
        assert result.exit_code == 0, (args, result.output)
        assert result.stdout.count("assistant>") + result.stdout.count('"token_ids"') == 1
    missing = runner.invoke(cli_main, ["chat"], input="")
    assert missing.exit_code == 2 and "--plan is required" in missing.stderr  # a usage error, as click's
