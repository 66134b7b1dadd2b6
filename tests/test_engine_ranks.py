"""The engine's depth-1 rank histogram (Stats.rank_histogram), which profiling records for the tree model's
siblings (specmemo_plan/drafting/trees.py sibling_shares).

Greedy decoding gives an exact check: the first draft is accepted exactly when the target's token is the
drafter's rank-1 candidate, so rank_histogram[1] equals the row-steps that accepted at least one draft."""

from __future__ import annotations

import pytest

from engine.runtime import Engine
from engine.speculative import depth1_ranks
from specmemo_plan.drafting.trees import RANKED

from conftest import make_test_plan
from test_engine_eagle import cycle, eagle_plan  # noqa: F401  (the module fixture of tiny heads)
from test_engine_ngram import PROMPTS, REPETITIVE, cycle_target, ngram_engine  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


def test_depth1_ranks():
    assert depth1_ranks([[5, 7, 9], [5], []], [7, 4, 1]) == [2, 0, 0]


def check_ranks(stats) -> None:
    ranks, hist = stats.rank_histogram, stats.accepted_histogram
    assert len(ranks) == RANKED + 1 and sum(ranks) == sum(hist)  # one rank per row-step
    assert ranks[1] == sum(hist[1:])  # greedy: rank 1 is right exactly when the first draft is accepted


@pytest.mark.parametrize("which", ["full", "trimmed"])
def test_eagle_chain_ranks_match_its_acceptance(cycle, which):  # noqa: F811
    engine = Engine(eagle_plan(cycle["target"], cycle[which], 3, batch_size=2, max_context=64, max_new_tokens=16),
                    tokenizer=None)
    engine.measure_ranks = True
    stats = engine.generate(PROMPTS[:2], ignore_eos=True).stats
    check_ranks(stats)


def test_ngram_chain_ranks_match_its_acceptance(cycle_target):  # noqa: F811
    engine = ngram_engine(cycle_target, 3, max_context=64, max_new_tokens=24)
    engine.measure_ranks = True
    stats = engine.generate([REPETITIVE], ignore_eos=True).stats
    check_ranks(stats)


def test_ranks_are_not_measured_unless_asked(cycle_target):  # noqa: F811
    stats = ngram_engine(cycle_target, 3, max_context=64, max_new_tokens=8).generate([REPETITIVE]).stats
    assert stats.rank_histogram == []
    plain = Engine(make_test_plan(cycle_target, None, max_context=64, max_new_tokens=8), tokenizer=None)
    plain.measure_ranks = True  # plain decoding has no drafter: nothing to rank
    assert plain.generate([REPETITIVE]).stats.rank_histogram == []
