"""Token trees: (depth, top-k per node, T verified tokens), and the tokens a step is expected to yield.

A tree verifies T draft tokens at once; a chain of k is depth k, top-k 1, T = k. Its nodes are grown as
EAGLE-2 does (arXiv 2406.16858, sec. 4): each of `depth` draft steps expands the top-k children of the
nodes kept so far, and the T nodes of highest path score are verified. So at most
topk + (depth - 1) * topk^2 nodes exist (tree_capacity), and depth <= T.

Expected accepted length (our model, documented): at depth i the target's next token is the r-th ranked
child of the accepted node with probability a_i (1 - a_i)^(r - 1) (a geometric over ranks: the best child
is right with a_i, and the chance that one of the top w children is right is 1 - (1 - a_i)^w, the
independence formula). A node is on the accepted path with the product of those along its path; the
tree keeps the T nodes of largest such value (prefix-closed, since a child never beats its parent), and
    E[tokens per step] = 1 + sum over the T kept nodes of their values,
the bonus token included. For top-k 1 this is 1 + a + a^2 + ... + a^T = (1 - a^(T+1)) / (1 - a), the chain
formula (Leviathan et al. 2023, eq. 1). P(accepted length >= j) is the sum of the depth-j values (at most one
node per depth is accepted). Per-depth acceptance from a measured chain histogram h_0..h_K (steps that
accepted i drafts): a_j = P(L >= j) / P(L >= j - 1); past K nothing was measured and a_j = 0.

Measured siblings replace the geometric ranks where the engine measured them: profiling ranks each step's
depth-1 target token among the drafter's depth-1 candidates (engine Stats.rank_histogram n_0..n_R: n_r steps
found it at rank r, n_0 at none), and the r-th child is right with a_i * s_r, s_r = n_r / n_1 (sibling_shares;
the same shape at every depth, an assumption; ranks past R count 0). Measured on the bundled pair
(bench/tree_model.py, README): the geometric ranks overstate trees by 3-15% (EAGLE head) and up to 29%
(n-gram, whose siblings rarely hold the target's token); with the measured siblings the error is -3.6% to
+3.3% (EAGLE) and -6.8% to +1.3% (n-gram) over eight trees of depth 2-6, top-k 2-4, T 3-12.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Sequence

from ..errors import SpecMemoError

# Search limits, with their reasons: the EAGLE reference defaults to depth 7, top-k 10, 60 tokens
# (SafeAILab/EAGLE ea_model.py `total_token=60, depth=7, top_k=10`); SGLang to 5 steps, top-k 4, 8 tokens.
MAX_TREE_DEPTH = 8
MAX_TREE_TOPK = 10
MAX_TREE_TOKENS = 64
SEARCH_TOPK = (2, 4, 8)  # top-k values min-budget tries for trees (top-k 1 is the chain)
SEARCH_TOKENS = (8, 16, 32, 48, 64)  # T values min-budget tries for trees
# The bundled runtime (engine/) verifies trees for these methods: engine/tree.py verifies, engine/eagle_tree.py
# and engine/ngram.py grow them. The others' trees are sized and exported, not run here.
RUNTIME_TREE_METHODS = ("eagle", "ngram")
RANKED = MAX_TREE_TOPK  # depth-1 ranks profiling measures (sibling_shares): as wide as a tree searched
EVERY_T_TO = 16  # runtime_shapes tries every T up to here, then SEARCH_TOKENS (a measured grid is short)


@dataclass(frozen=True)
class TreeShape:
    depth: int  # draft steps
    topk: int  # children expanded per node
    tokens: int  # T: draft tokens verified per step

    @property
    def is_chain(self) -> bool:
        return self.topk == 1

    @property
    def label(self) -> str:
        """How tables and notes name it: k=3 for a chain, d3 x top-2, T=6 for a tree."""
        return f"k={self.tokens}" if self.is_chain else f"d{self.depth} x top-{self.topk}, T={self.tokens}"

    def as_dict(self) -> dict:
        return {"depth": self.depth, "topk": self.topk, "tokens": self.tokens}


def tree_capacity(depth: int, topk: int) -> int:
    """Nodes an EAGLE-2 tree of `depth` steps can hold: topk at the first, topk^2 candidates per later step."""
    return topk + (depth - 1) * topk * topk


def check_tree(tree: TreeShape) -> TreeShape:
    for name in ("depth", "topk", "tokens"):
        value = getattr(tree, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise SpecMemoError(f"tree {name} must be a positive integer, got {value!r}")
    if tree.depth > tree.tokens:
        raise SpecMemoError(f"a tree of depth {tree.depth} verifies at least {tree.depth} tokens, T is {tree.tokens}",
                            "raise --draft-length (T) or lower --tree-depth")
    capacity = tree_capacity(tree.depth, tree.topk)
    if tree.tokens > capacity:
        raise SpecMemoError(f"a tree of depth {tree.depth} and top-k {tree.topk} holds at most {capacity} nodes, "
                            f"T is {tree.tokens}", "lower --draft-length (T) or raise --tree-depth / --tree-topk")
    return tree


def per_depth_acceptance(acceptance: float, depth: int) -> list[float]:
    """The same per-token acceptance at every depth."""
    return [acceptance] * depth


def per_depth_from_histogram(histogram: Sequence[float], depth: int) -> list[float]:
    """a_j = P(L >= j) / P(L >= j-1) from a chain histogram (module docstring); 0 past what was measured."""
    total = float(sum(histogram))
    if total <= 0:
        raise SpecMemoError("the acceptance histogram is empty")
    at_least = [sum(histogram[j:]) / total for j in range(len(histogram))] + [0.0]
    out = []
    for j in range(1, depth + 1):
        prev = at_least[j - 1] if j - 1 < len(at_least) else 0.0
        cur = at_least[j] if j < len(at_least) else 0.0
        out.append(cur / prev if prev > 0 else 0.0)
    return out


def sibling_shares(rank_histogram: Sequence[float]) -> list[float]:
    """s_r = n_r / n_1, r = 1 .. R, from a depth-1 rank histogram [n_0 (none), n_1, ..., n_R] (module docstring)."""
    if len(rank_histogram) < 2 or rank_histogram[1] <= 0:
        raise SpecMemoError("the rank histogram counts no rank-1 draft", "profile the drafter again")
    return [n / rank_histogram[1] for n in rank_histogram[1:]]


def kept_nodes(tree: TreeShape, per_depth: Sequence[float], siblings: Sequence[float] | None = None
               ) -> list[tuple[int, float]]:
    """(depth, value) of the T nodes of highest acceptance value, best first (best-first expansion).
    `siblings`: measured s_1 = 1, s_2, ... (sibling_shares); None: the geometric ranks (module docstring)."""
    check_tree(tree)
    if len(per_depth) < tree.depth:
        raise SpecMemoError(f"{len(per_depth)} per-depth acceptances for a tree of depth {tree.depth}")

    def value(parent: float, depth: int, rank: int) -> float:
        a = per_depth[depth - 1]
        if siblings is None:
            return parent * a * (1.0 - a) ** (rank - 1)
        return parent * a * siblings[rank - 1] if rank <= len(siblings) else 0.0

    heap = [(-value(1.0, 1, 1), 1, 1, 1.0)]
    kept = []
    while heap and len(kept) < tree.tokens:
        neg, depth, rank, parent = heapq.heappop(heap)
        kept.append((depth, -neg))
        if rank < tree.topk:
            heapq.heappush(heap, (-value(parent, depth, rank + 1), depth, rank + 1, parent))
        if depth < tree.depth:
            heapq.heappush(heap, (-value(-neg, depth + 1, 1), depth + 1, 1, -neg))
    return kept


def expected_tokens(tree: TreeShape, per_depth: Sequence[float], siblings: Sequence[float] | None = None) -> float:
    """1 + the sum of the kept nodes' values: accepted drafts plus the bonus token (module docstring)."""
    return 1.0 + sum(v for _, v in kept_nodes(tree, per_depth, siblings))


def tokens_distribution(tree: TreeShape, per_depth: Sequence[float], siblings: Sequence[float] | None = None
                        ) -> list[float]:
    """P(a step yields j tokens), j = 1 .. depth + 1, from P(L >= j) = the sum of the depth-j values."""
    at_least = [1.0] + [0.0] * tree.depth
    for depth, v in kept_nodes(tree, per_depth, siblings):
        at_least[depth] += v
    at_least.append(0.0)
    return [max(0.0, at_least[j] - at_least[j + 1]) for j in range(tree.depth + 1)]


def search_shapes(trees: bool, k_max: int, max_depth: int = MAX_TREE_DEPTH) -> list[TreeShape]:
    """The shapes min-budget tries: chains of 1..k_max, and where the method drafts trees, depth 2..max_depth
    with top-k in SEARCH_TOPK and T in SEARCH_TOKENS (each within the tree's capacity)."""
    shapes = [TreeShape(k, 1, k) for k in range(1, k_max + 1)]
    if trees:
        for depth in range(2, max_depth + 1):
            for topk in SEARCH_TOPK:
                for tokens in SEARCH_TOKENS:
                    if depth < tokens <= tree_capacity(depth, topk):
                        shapes.append(TreeShape(depth, topk, tokens))
    return shapes


def eagle_head_slots(tree: TreeShape) -> int:
    """Head KV slots past the context that the runtime's EAGLE-2 growth writes: its K frontier nodes at each
    of the depth - 1 later steps (engine/eagle_tree.py), inside the plan's C + T + 1 (drafting/buffers.py)."""
    return (tree.depth - 1) * tree.topk


def runtime_runs(method: str, tree: TreeShape) -> bool:
    """Whether the bundled runtime runs this shape for this method: any chain; a tree for RUNTIME_TREE_METHODS,
    an EAGLE tree only when its growth fits the head's slots (eagle_head_slots <= T + 1)."""
    if tree.is_chain:
        return True
    if method not in RUNTIME_TREE_METHODS:
        return False
    return method != "eagle" or eagle_head_slots(tree) <= tree.tokens + 1


def runtime_shapes(method: str, k_max: int, max_tokens: int, max_topk: int = MAX_TREE_TOPK) -> list[TreeShape]:
    """The shapes `tune` tries for a plan the bundled runtime runs: chains of 1..k_max; where it grows trees
    for the method, depth 2..min(k_max, MAX_TREE_DEPTH) (past k_max the measured histogram says nothing),
    top-k in SEARCH_TOPK up to `max_topk` (the widest draft forward measured), and T from depth + 1 to
    `max_tokens` (the longest verify measured, less its root): every T to EVERY_T_TO, then SEARCH_TOKENS;
    each within the tree's capacity and runtime_runs."""
    shapes = [TreeShape(k, 1, k) for k in range(1, k_max + 1)]
    if method not in RUNTIME_TREE_METHODS:
        return shapes
    t_values = sorted({t for t in (*range(1, EVERY_T_TO + 1), *SEARCH_TOKENS) if t <= min(max_tokens, MAX_TREE_TOKENS)})
    for depth in range(2, min(k_max, MAX_TREE_DEPTH) + 1):
        for topk in (k for k in SEARCH_TOPK if k <= max_topk):
            for tokens in t_values:
                tree = TreeShape(depth, topk, tokens)
                if depth < tokens <= tree_capacity(depth, topk) and runtime_runs(method, tree):
                    shapes.append(tree)
    return shapes
