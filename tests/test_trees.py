"""Token trees: capacity, the expected-length model (chain formula as its top-k 1 case), histograms."""

import pytest

from specmemo_plan.drafting import trees
from specmemo_plan.drafting.trees import TreeShape
from specmemo_plan.errors import SpecMemoError
from specmemo_plan.throughput import expected_tokens_from_histogram, expected_tokens_per_step


@pytest.mark.parametrize("a", [0.0, 0.3, 0.7, 0.95])
@pytest.mark.parametrize("k", [1, 2, 5, 16])
def test_chain_is_the_chain_formula(a, k):
    got = trees.expected_tokens(TreeShape(k, 1, k), [a] * k)
    assert got == pytest.approx(expected_tokens_per_step(a, k), rel=1e-12)


def test_hand_computed_tree():
    # depth 2, top-k 2, T 3 at a = 0.5: node values 0.5 (d1 r1), 0.25 (d1 r2), 0.25 (d2 r1 under d1 r1)
    assert trees.expected_tokens(TreeShape(2, 2, 3), [0.5, 0.5]) == pytest.approx(2.0)
    # T 2 keeps the two largest: 0.5 and one of the 0.25s
    assert trees.expected_tokens(TreeShape(2, 2, 2), [0.5, 0.5]) == pytest.approx(1.75)


def test_measured_siblings_replace_the_geometric_ranks():
    # rank histogram [none, r1, r2] = [30, 50, 10]: s = (1, 0.2). Depth 2, top-k 2 at a = 0.5: node values
    # 0.5 (d1 r1), 0.1 (d1 r2: 0.5 * 0.2), 0.25 (d2 r1 under d1 r1), 0.05 (d2 r2), 0.05 (d2 r1 under d1 r2)
    siblings = trees.sibling_shares([30, 50, 10])
    assert siblings == [1.0, 0.2]
    assert trees.expected_tokens(TreeShape(2, 2, 3), [0.5, 0.5], siblings) == pytest.approx(1.85)  # 0.5, 0.25, 0.1
    assert trees.expected_tokens(TreeShape(2, 2, 3), [0.5, 0.5]) == pytest.approx(2.0)  # geometric: 0.25 at r2
    # a chain does not read them; ranks past the measured ones catch nothing
    assert trees.expected_tokens(TreeShape(3, 1, 3), [0.5] * 3, siblings) == trees.expected_tokens(TreeShape(3, 1, 3),
                                                                                                 [0.5] * 3)
    assert trees.expected_tokens(TreeShape(1, 4, 4), [0.5], siblings) == pytest.approx(1 + 0.5 + 0.1)
    # siblings that never hold the target's token: a tree is worth its chain
    assert trees.expected_tokens(TreeShape(3, 4, 12), [0.6] * 3, [1.0, 0.0, 0.0, 0.0]) == pytest.approx(
        trees.expected_tokens(TreeShape(3, 1, 3), [0.6] * 3))
    with pytest.raises(SpecMemoError, match="no rank-1 draft"):
        trees.sibling_shares([5, 0, 1])


def test_capacity_and_refusals():
    assert trees.tree_capacity(1, 4) == 4 and trees.tree_capacity(3, 4) == 4 + 2 * 16
    with pytest.raises(SpecMemoError, match="holds at most 4 nodes"):
        trees.check_tree(TreeShape(1, 4, 5))
    with pytest.raises(SpecMemoError, match="at least 3 tokens"):
        trees.check_tree(TreeShape(3, 2, 2))


def test_more_tree_never_expects_fewer_tokens():
    base = trees.expected_tokens(TreeShape(3, 2, 6), [0.6] * 4)
    assert trees.expected_tokens(TreeShape(3, 2, 7), [0.6] * 4) >= base
    assert trees.expected_tokens(TreeShape(3, 4, 6), [0.6] * 4) >= base
    assert trees.expected_tokens(TreeShape(4, 2, 6), [0.6] * 4) >= base


def test_histogram_per_depth_reproduces_the_chain_mean():
    hist = [10, 20, 30, 40]  # measured at k_max = 3
    for k in (1, 2, 3):
        per_depth = trees.per_depth_from_histogram(hist, k)
        got = trees.expected_tokens(TreeShape(k, 1, k), per_depth)
        assert got == pytest.approx(expected_tokens_from_histogram(hist, k))
    assert trees.per_depth_from_histogram(hist, 5)[3:] == [0.0, 0.0]  # nothing measured past k_max


def test_distribution_sums_to_one():
    d = trees.tokens_distribution(TreeShape(3, 2, 8), [0.7] * 3)
    assert sum(d) == pytest.approx(1.0) and len(d) == 4


def test_search_shapes_are_valid():
    shapes = trees.search_shapes(True, 16)
    assert TreeShape(16, 1, 16) in shapes and all(trees.check_tree(s) for s in shapes)
    assert all(s.tokens <= trees.MAX_TREE_TOKENS and s.depth <= trees.MAX_TREE_DEPTH for s in shapes if s.topk > 1)
    assert trees.search_shapes(False, 4) == [TreeShape(k, 1, k) for k in range(1, 5)]
