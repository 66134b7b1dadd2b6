"""The acceptance histogram replayed from one plain target run and one draft pass equals running
speculative decoding: by hand on agreement patterns, and against the engine on a tiny pair."""

from __future__ import annotations

import pytest

from engine.chat import ChatSession
from engine.loading import load_model
from engine.profiling import calibration_prompts, measure_acceptance, replay_histogram
from engine.runtime import Engine

from conftest import make_test_plan


pytestmark = pytest.mark.usefixtures("one_thread")


def produced(histogram: list[int]) -> int:
    """Tokens a row gets from these steps, the prefill's first token included."""
    return 1 + sum((n + 1) * count for n, count in enumerate(histogram))


def test_all_agree_accepts_k_per_step():
    # steps start at 1 and 5 (4 tokens each), then 9 = max_new: done
    assert replay_histogram([True] * 12, k=3, max_new=9) == [0, 0, 0, 2]


def test_none_agree_is_plain_decoding():
    assert replay_histogram([False] * 8, k=4, max_new=5) == [4, 0, 0, 0, 0]


def test_runs_are_cut_at_k_and_restart_after_the_bonus_token():
    #            0      1     2     3      4     5     6      7     8
    matches = [False, True, True, False, True, True, True, True, False, False, False]
    # p=1: 1,2 agree, 3 does not -> n=2, next p=4; p=4: 4,5 agree, k=2 -> n=2, next p=7;
    # p=7: 7 agrees, 8 does not -> n=1, next p=9; p=9: n=0 -> p=10 = max_new
    assert replay_histogram(matches, k=2, max_new=10) == [1, 1, 2]
    assert produced([1, 1, 2]) == 10


def test_eos_ends_the_row():
    # the target's answer ends with EOS at index 3: one step accepts 1..3 and the row is done
    assert replay_histogram([False, True, True, True], k=4, max_new=10) == [0, 0, 0, 1, 0]


def test_equals_running_the_engine(tiny_pair):
    """Same prompts, greedy, k=4: the replayed histogram is the engine's own, step for step."""
    target_ref, draft_ref = tiny_pair
    k, max_new = 4, 20
    prompts = calibration_prompts(10)
    conversations = [p["turns"] for p in prompts[:2] + prompts[8:10]]
    assert any(len(c) > 1 for c in conversations)  # later turns carry the earlier answers

    engine = Engine(make_test_plan(target_ref, draft_ref, max_context=512, draft_length=k,
                                   max_new_tokens=max_new), tokenizer=None)
    expected = [0] * (k + 1)
    for conversation in conversations:
        session = ChatSession(engine, max_new_tokens=max_new)
        for turn in conversation:
            reply = session.say_ids(engine.encode(turn))
            expected = [a + b for a, b in zip(expected, reply.stats.accepted_histogram)]

    target, draft = load_model(target_ref, "fp32"), load_model(draft_ref, "fp32")
    histogram, info = measure_acceptance(target, draft, target_ref, "fp32", k_max=k, max_new_tokens=max_new,
                                         context=512, batch=4, conversations=conversations, progress=False)
    assert info["turns"] == sum(map(len, conversations))
    assert 0 < histogram[0] and 0 < histogram[k]  # both rejections and full runs happen
    assert histogram == expected
