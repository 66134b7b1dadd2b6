"""Chat sessions: KV reuse, the context policies, interrupts, lines that cannot be used.

Issue 18's chat classes: SIGINT during a reply cancels the reply only (the turn is dropped, the
next turn equals a fresh session's with the same history), Ctrl-C at the prompt ends the session
with exit 130 and no traceback, a line that is not UTF-8 or is far too long prints one line and
the session goes on, and drop-oldest drops down to a low-water mark so later turns reuse their KV.
Interrupts are real SIGINTs, raised from a hook inside the model's forward (deterministic: the
signal lands at a chosen forward of a chosen turn), in this process and in a `python -m engine`.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from engine import chat as chat_module
from engine.chat import LOW_WATER_FRACTION, ChatSession
from engine.cli import main as cli_main
from engine.forward import Decoder
from engine.runtime import Engine
from specmemo_plan.errors import SpecMemoError
from specmemo_plan.plan import write_plan

from test_engine_cli import bpe_model, bpe_token_chars, config_plan, make_test_plan  # noqa: F401  (fixtures)

pytestmark = pytest.mark.usefixtures("one_thread")


from test_engine import hf_greedy, hf_target  # noqa: E402,F401  (hf_target: a fixture)


def engine_for(pair, **plan_kwargs) -> Engine:
    target, draft = pair
    return Engine(make_test_plan(target, draft, **plan_kwargs))


def interrupt_at(monkeypatch, call: int):
    """Arm a real SIGINT at the `call`-th model forward from now (returns the arming function)."""
    original, state = Decoder.forward, {"left": None}

    def forward(self, *args, **kwargs):
        if state["left"] is not None:
            state["left"] -= 1
            if state["left"] == 0:
                state["left"] = None
                signal.raise_signal(signal.SIGINT)  # Python's handler: KeyboardInterrupt right here
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Decoder, "forward", forward)

    def arm():
        state["left"] = call

    return arm


@pytest.fixture(autouse=True)
def default_sigint():
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


# ----------------------------------------------------------------------------- KV reuse, policies


def test_chat_reuses_kv_and_matches_generate(tiny_pair, hf_target):
    engine = engine_for(tiny_pair, draft_length=3, max_context=96, max_new_tokens=12)
    session = ChatSession(engine, max_new_tokens=12)
    history = []
    for i, user in enumerate([[5, 6, 7, 8], [40, 41, 42], [9, 9, 9, 9, 9]]):
        reply = session.say_ids(user)
        history += user
        assert reply.token_ids == hf_greedy(hf_target, history, 12)
        if i:  # everything before this turn's message came from the caches
            assert reply.reused_tokens == len(history) - len(user)
        history += reply.token_ids
        assert reply.prompt_tokens == len(history) - len(reply.token_ids)
    # another request in between takes the caches: the session notices and recomputes
    engine.generate([[1, 2, 3]], max_new_tokens=4)
    reply = session.say_ids([7, 8])
    assert reply.reused_tokens == 0 and reply.token_ids == hf_greedy(hf_target, history + [7, 8], 12)


def test_chat_overflow_refuses_with_a_message(tiny_pair):
    engine = engine_for(tiny_pair, draft_length=2, max_context=40, max_new_tokens=10)
    session = ChatSession(engine, max_new_tokens=10)
    session.say_ids(list(range(10, 22)))  # 12 + up to 10
    turns = list(session.turns)
    with pytest.raises(SpecMemoError) as err:
        session.say_ids(list(range(50, 62)))
    assert "knobs.max_context" in err.value.message and "40" in err.value.message
    assert "drop-oldest" in err.value.hint
    assert session.turns == turns  # the session is unchanged and still usable
    assert session.say_ids([3, 4]).token_ids


def test_chat_drop_oldest_turns(tiny_pair, hf_target):
    engine = engine_for(tiny_pair, draft_length=2, max_context=40, max_new_tokens=8)
    session = ChatSession(engine, max_new_tokens=8, on_overflow="drop-oldest", system_ids=[1, 2])
    first = session.say_ids(list(range(10, 24)))
    second_user = list(range(60, 74))
    reply = session.say_ids(second_user)
    assert reply.dropped_turns == 1
    assert reply.token_ids == hf_greedy(hf_target, [1, 2] + second_user, 8)
    assert len(session.turns) == 1 and first.token_ids
    with pytest.raises(SpecMemoError, match="alone"):
        session.say_ids(list(range(100, 135)))


def _drop_oldest_run(pair, low_water: float, turns: int = 14):
    engine = engine_for(pair, draft_length=2, max_context=128, max_new_tokens=6)
    session = ChatSession(engine, max_new_tokens=6, on_overflow="drop-oldest", system_ids=[1, 2], low_water=low_water)
    return [session.say_ids([10 + t, 11 + t, 12 + t, 13 + t, 14 + t, 15 + t, 16 + t, 17 + t]) for t in range(turns)]


def test_drop_oldest_drops_to_the_low_water_mark_then_reuses(tiny_pair):
    replies = _drop_oldest_run(tiny_pair, LOW_WATER_FRACTION)
    drops = [i for i, r in enumerate(replies) if r.dropped_turns]
    assert drops and LOW_WATER_FRACTION == 0.5
    first = drops[0]
    assert replies[first].prompt_tokens + 6 <= 128 * LOW_WATER_FRACTION  # the low-water mark
    assert replies[first].reused_tokens == 2  # the system message: everything after it moved
    after = replies[first + 1]  # the next turn appends: everything before its message is reused
    assert not after.dropped_turns and after.reused_tokens == after.prompt_tokens - 8
    # the old policy (drop just enough, low_water 1.0) drops again on the very next turns
    old = _drop_oldest_run(tiny_pair, 1.0)
    old_drops = [i for i, r in enumerate(old) if r.dropped_turns]
    assert len(old_drops) > len(drops) and old_drops[1] == old_drops[0] + 1
    assert sum(r.reused_tokens for r in old[old_drops[0]:]) < sum(r.reused_tokens for r in replies[old_drops[0]:])


def test_far_too_long_message_is_refused_before_tokenising(bpe_model, monkeypatch):  # noqa: F811
    engine = Engine(make_test_plan(bpe_model, None, max_context=64, max_new_tokens=8))
    session = ChatSession(engine)
    ok = session.say("hello world")

    def no_tokenising(*args, **kwargs):
        raise AssertionError("the conversation was tokenised")

    monkeypatch.setattr(chat_module, "conversation_ids", no_tokenising)
    bound = -(-1_000_000 // bpe_token_chars(bpe_model))
    with pytest.raises(SpecMemoError, match=rf"this message alone has 1000000 characters, so at least {bound} tokens"):
        session.say("x" * 1_000_000)
    assert session.turns == [("hello world", ok.text.strip())]


# ----------------------------------------------------------------------------- interrupts


@pytest.mark.parametrize("where", ["prefill", "decode", "after"])
def test_interrupted_turn_is_dropped_and_the_next_equals_a_fresh_session(tiny_pair, hf_target, monkeypatch, where):
    """An interrupt in the prefill, during decoding, or just after the reply completed (the CLI's
    restore): the session drops that turn, and its next turn equals a fresh session's."""
    arm = interrupt_at(monkeypatch, {"prefill": 1, "decode": 6, "after": 10**9}[where])
    u1, u2, u3 = [5, 6, 7, 8], list(range(30, 45)), [9, 9, 9]
    engine = engine_for(tiny_pair, draft_length=3, max_context=96, max_new_tokens=10)
    session = ChatSession(engine, max_new_tokens=10)
    r1 = session.say_ids(u1)
    before = session.snapshot()
    arm()
    if where == "after":
        session.say_ids(u2)
    else:
        with pytest.raises(KeyboardInterrupt):
            session.say_ids(u2)
    session.restore(before)
    r3 = session.say_ids(u3)
    assert session.turns == [(u1, r1.token_ids), (u3, r3.token_ids)]
    fresh = ChatSession(engine_for(tiny_pair, draft_length=3, max_context=96, max_new_tokens=10), max_new_tokens=10)
    fresh.say_ids(u1)
    assert r3.token_ids == fresh.say_ids(u3).token_ids == hf_greedy(hf_target, u1 + r1.token_ids + u3, 10)
    assert session.stats.steps == fresh.stats.steps  # the dropped turn's work is not counted either


def test_cli_chat(config_plan):  # noqa: F811
    result = CliRunner().invoke(cli_main, ["chat", "--plan", config_plan, "--json", "--max-new-tokens", "4"],
                                input="hi\nagain\n/reset\nnew\n")
    assert result.exit_code == 0, result.output
    replies = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(replies) == 3
    assert replies[1]["reused_tokens"] > 0 and replies[2]["reused_tokens"] == 0


def test_cli_chat_interrupt_cancels_the_reply_only(config_plan, monkeypatch):  # noqa: F811
    arm = interrupt_at(monkeypatch, 3)
    original = ChatSession.say_ids
    calls = []

    def say_ids(self, ids):
        calls.append(ids)
        if len(calls) == 2:
            arm()
        return original(self, ids)

    monkeypatch.setattr(ChatSession, "say_ids", say_ids)
    result = CliRunner().invoke(cli_main, ["chat", "--plan", config_plan, "--json", "--max-new-tokens", "4"],
                                input="hi\nagain\nthird\n")
    assert result.exit_code == 0, result.output
    replies = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(replies) == 2 and len(calls) == 3
    assert result.stderr.count("(reply interrupted: that turn is dropped, the conversation is as before it)") == 1
    # the third turn renders hi, its reply, third: the dropped "again" is not in it
    assert replies[1]["prompt_tokens"] == len(b"hi") + len(replies[0]["token_ids"]) + len(b"third")


def test_cli_chat_lines_that_cannot_be_used_keep_the_session(config_plan):  # noqa: F811
    data = b"hi\n\xff\xfe oops\n" + b"y" * 100 + b"\nagain\n"
    result = CliRunner().invoke(cli_main, ["chat", "--plan", config_plan, "--json", "--max-new-tokens", "4"], input=data)
    assert result.exit_code == 0, result.output
    replies = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(replies) == 2 and replies[1]["reused_tokens"] > 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert errors == [
        "Error: that line is not UTF-8 text: byte 0xff at offset 0; it was ignored (type UTF-8 text (check the "
        "terminal's encoding))",
        "Error: knobs.max_context: this message alone has 100 characters, so at least 100 tokens (a token of this "
        "tokenizer covers at most 1 character); with 4 new tokens it needs 104, over the plan's context of 64 "
        "(shorten the message or lower --max-new-tokens)",
    ]


# ----------------------------------------------------------------------------- a real process


SIGINT_IN_TURN_2 = """
import os, signal, sys
from engine.chat import ChatSession
from engine.forward import Decoder
state = {"turn": 0, "calls": 0}
forward, say_ids = Decoder.forward, ChatSession.say_ids
def counting(self, *a, **k):
    state["calls"] += 1
    if state["turn"] == 2 and state["calls"] == 3:
        os.kill(os.getpid(), signal.SIGINT)
    return forward(self, *a, **k)
def turn(self, ids):
    state["turn"] += 1
    state["calls"] = 0
    return say_ids(self, ids)
Decoder.forward, ChatSession.say_ids = counting, turn
sys.argv = ["python -m engine", "chat", "--plan", sys.argv[1], "--json", "--max-new-tokens", "4"]
from engine.cli import run
run()
"""


def test_sigint_in_a_real_process(config_plan):  # noqa: F811
    """One `python -m engine chat` (a process costs seconds of imports): a SIGINT during the second
    reply cancels it and the session answers the third line; a SIGINT at the prompt then ends the
    session with exit 130, no traceback."""
    proc = subprocess.Popen([sys.executable, "-c", SIGINT_IN_TURN_2, config_plan], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        proc.stdin.write("hi\nagain\nthird\n")
        proc.stdin.flush()  # stdin stays open: after the third reply the session waits at the prompt
        replies = []
        while len(replies) < 2:
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            replies += [json.loads(line)] if line.startswith("{") else []
        time.sleep(0.5)  # into the read of the next line
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "Aborted" not in err
    assert err.count("(reply interrupted: that turn is dropped, the conversation is as before it)") == 1
    assert not out.strip()  # nothing after the two replies
    assert replies[1]["prompt_tokens"] == len(b"hi") + len(replies[0]["token_ids"]) + len(b"third")


def test_cli_chat_system_message_without_a_tokenizer(config_plan):  # noqa: F811
    """Without a tokenizer the conversation is UTF-8 bytes: the system message too (it was ignored)."""
    result = CliRunner().invoke(cli_main, ["chat", "--plan", config_plan, "--json", "--max-new-tokens", "2",
                                           "--system", "sys"], input="hi\n")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.splitlines()[0])["prompt_tokens"] == len(b"sys") + len(b"hi")
