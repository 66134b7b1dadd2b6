"""Token-tree verification in the engine (issue 17 item 3), on tiny random models (CPU, fp32, offline).

What must hold: the tree's positions and mask; greedy output equal to plain decoding for synthetic
trees that hide the target's continuation among wrong siblings (batch 1 and 4, rows of different
lengths, nodes in any order); after each step the cache equals plain decoding's cache of the same
tokens (the accepted path's K/V moved into place); n-gram trees equal to plain and, as a chain
(top-k 1), to ngram_step step for step; lossless sampling (chi-square); window models refused.
The steps are driven as engine/runtime.py drives them, on caches and buffers from allocate_caches.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.cache import allocate_caches
from engine.loading import load_model
from engine.ngram import ngram_step, ngram_tree_step, propose, propose_tree, target_decoder
from engine.runtime import Engine
from engine.speculative import Sampler
from engine.tree import ancestors, tree_inputs, tree_verify
from specmemo_plan.drafting.trees import TreeShape
from specmemo_plan.errors import SpecMemoError
from specmemo_plan.memory import Knobs
from specmemo_plan.models import load_shape

from conftest import make_test_plan
from test_engine import _chi2_pvalue, _exact_marginals
# the n-gram tests' targets: cycle_target cycles 4 tokens broken now and then; clean_cycle_target's clean cycles
# continue the prompts below 4 5 6 7 ..., not as their latest n-gram did
from test_engine_ngram import PROMPTS, clean_cycle_target, cycle_target  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


class Rows:
    """The decode state of a batch without the Engine: the target's cache and the plan's step buffers
    from allocate_caches (as engine/runtime.py), each row prefilled up to x[L-1] (the first step's root)."""

    def __init__(self, folder: str, prompts, T: int, depth=None, topk=None, C: int = 96, sampler=None):
        knobs = Knobs(batch_size=len(prompts), max_context=C, draft_length=T, weight_dtype="fp32",
                      draft_method="ngram", tree_depth=depth, tree_topk=topk).validate(False)
        self.cache, _, self.buf = allocate_caches(load_shape(folder), None, knobs, torch.device("cpu"))
        self.dec = target_decoder(load_model(folder, "fp32").model, self.cache, self.buf.target_logits.dtype)
        self.sampler = sampler or Sampler()
        self.seqs = [list(p) for p in prompts]
        self.prompt_lens = [len(p) for p in prompts]
        self.prefill(self.seqs)

    @torch.inference_mode()
    def prefill(self, seqs) -> torch.Tensor:
        """Positions 0 .. L-2 of each row, from scratch (rows padded with their last token): hidden states."""
        n, B = max(map(len, seqs)) - 1, len(seqs)
        ids = torch.tensor([[s[min(j, len(s) - 2)] for j in range(n)] for s in seqs])
        return self.dec.forward(ids, [0] * B, torch.empty((B, 1, n, n), dtype=torch.bool),
                                real=[len(s) - 1 for s in seqs])

    def new(self, b: int) -> list[int]:
        return self.seqs[b][self.prompt_lens[b]:]

    @torch.inference_mode()
    def step(self, fn, max_new: int):
        """One step of every row (fn(self, lengths) -> step output); rows with max_new tokens are frozen
        (stepped, not committed), as the runtime leaves done rows."""
        lens = [len(s) for s in self.seqs]
        self.buf.lengths[: len(lens)].copy_(torch.tensor(lens))
        out = fn(self, lens)
        for b, seq in enumerate(self.seqs):
            if len(seq) - self.prompt_lens[b] < max_new:
                seq += out.tokens[b, : int(out.accepted[b]) + 1].tolist()
        return out

    def done(self, max_new: int) -> bool:
        return all(len(s) - p >= max_new for s, p in zip(self.seqs, self.prompt_lens))


def plain_greedy(folder: str, prompt: list[int], n: int) -> list[int]:
    engine = Engine(make_test_plan(folder, None, max_context=len(prompt) + n, max_new_tokens=n), tokenizer=None)
    return engine.generate([prompt], ignore_eos=True).outputs[0].token_ids


def synthetic_tree(rng, truth: list[int], T: int, depth: int, V: int):
    """(tokens, parents) of up to T nodes in a random order: the first d tokens of `truth` (d random,
    now and then one of them wrong) are one root path, the other nodes wrong branches anywhere."""
    count = int(rng.integers(0, T + 1))
    nodes = []  # (token, parent, depth) in creation order
    parent = -1
    for j in range(min(int(rng.integers(0, depth + 1)), count, len(truth))):
        token = truth[j] if rng.random() > 0.15 else (truth[j] + 1) % V
        nodes.append((token, parent, j + 1))
        parent = len(nodes) - 1
    while len(nodes) < count:
        par = int(rng.choice([-1] + [i for i, node in enumerate(nodes) if node[2] < depth]))
        nodes.append((int(rng.integers(0, V)), par, 1 + (nodes[par][2] if par >= 0 else 0)))
    order = rng.permutation(count)  # node i goes to index order[i]: parents may follow their children
    tokens, parents = [0] * count, [-1] * count
    for i, (token, par, _) in enumerate(nodes):
        tokens[order[i]] = token
        parents[order[i]] = int(order[par]) if par >= 0 else -1
    return tokens, parents


def verify_trees(rows: Rows, lens, trees, hidden_out=None):
    """tree_verify over per-row (tokens, parents) in the plan's candidate buffers (padding: root children)."""
    B, T = len(trees), max(len(t) for t, _ in trees)
    tokens, parents = rows.buf.candidate_tokens[:B, :T], rows.buf.candidate_parents[:B, :T]
    if T:
        tokens.copy_(torch.tensor([t + [0] * (T - len(t)) for t, _ in trees]))
        parents.copy_(torch.tensor([p + [-1] * (T - len(p)) for _, p in trees]))
    last = torch.tensor([[s[-1]] for s in rows.seqs])
    return tree_verify(rows.dec, rows.buf, last, lens, tokens, parents, [len(t) for t, _ in trees], rows.sampler,
                       hidden_out=hidden_out)


# ----------------------------------------------------------------------------- inputs


def test_positions_and_mask_of_a_tree(tiny_pair):
    """Two rows at L = 5 and 3; nodes 0 and 2 children of the root, 1 of 0, 3 of 1 (depths 1 2 1 3)."""
    rows = Rows(tiny_pair[0], [[3, 4, 5, 6, 7], [8, 9, 10]], T=4, depth=3, topk=2, C=16)
    parents = torch.tensor([[-1, 0, -1, 1], [-1, 0, -1, 1]])
    # input j (0: x[L-1], i+1: node i) sees input i
    visible = [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 0, 0, 1, 0], [1, 1, 1, 0, 1]]
    assert ancestors(parents)[0].int().tolist() == visible
    positions, mask = tree_inputs(rows.buf, torch.tensor([5, 3]), parents, read=5 + 4)
    assert positions.tolist() == [[4, 5, 6, 5, 7], [2, 3, 4, 3, 5]]
    assert mask.shape == (2, 1, 5, 9) and mask.data_ptr() == rows.buf.verify_mask.data_ptr()
    # slots 0 .. L-2, then x[L-1] and the nodes' slots, then nothing (row 1 is shorter)
    assert mask[0, 0].int().tolist() == [[1] * 4 + row for row in visible]
    assert mask[1, 0].int().tolist() == [[1] * 2 + row + [0, 0] for row in visible]


# ----------------------------------------------------------------------------- greedy, synthetic trees


@pytest.mark.parametrize("batch", [1, 4])
def test_synthetic_trees_equal_plain_and_cache_equals_plain(tiny_pair, batch):
    """Greedy output equal to plain decoding token for token; after every step each row's cache holds
    what plain decoding's does for the committed tokens (allclose, fp32), compacted paths included, and
    `hidden_out` the target's hidden states at x[L-1] and the accepted nodes (an EAGLE head's pairs)."""
    folder, max_new, T, depth, V = tiny_pair[0], 24, 6, 3, 256
    prompts = PROMPTS[:batch]
    truth = [plain_greedy(folder, p, max_new + depth + 1) for p in prompts]
    rows = Rows(folder, prompts, T, depth, topk=3, C=64)
    reference = Rows(folder, prompts, T, depth, topk=3, C=64)
    rng = np.random.default_rng(batch)
    moved = accepted = 0
    pairs = torch.zeros((batch, T + 1, rows.dec.head.shape[1]))
    while not rows.done(max_new):
        def fn(r, lens):
            return verify_trees(r, lens, [synthetic_tree(rng, truth[b][len(r.new(b)):], T, depth, V)
                                          for b in range(batch)], pairs)
        lens = [len(s) for s in rows.seqs]
        out = rows.step(fn, max_new)
        moved += sum(p != list(range(len(p))) for p in out.paths)
        accepted += int(out.accepted.sum())
        hidden = reference.prefill(rows.seqs)  # plain prefill of 0 .. L-2
        for b, seq in enumerate(rows.seqs):
            if len(seq) > lens[b]:  # committed this step: inputs L-1 .. L-1+accepted
                n = int(out.accepted[b]) + 1
                torch.testing.assert_close(pairs[b, :n], hidden[b, lens[b] - 1 : lens[b] - 1 + n], atol=1e-5, rtol=1e-5)
            for keys, ref in zip(rows.cache.keys + rows.cache.values, reference.cache.keys + reference.cache.values):
                torch.testing.assert_close(keys[b, :, : len(seq) - 1], ref[b, :, : len(seq) - 1], atol=1e-5, rtol=1e-5)
    for b in range(batch):
        assert rows.new(b)[:max_new] == truth[b][:max_new]
    assert moved > 0 and accepted > 0  # paths off the first indices were accepted and moved


# ----------------------------------------------------------------------------- n-gram trees


def test_propose_tree_siblings_counts_and_limits():
    seq = [1, 2, 3, 4, 5, 1, 2, 3, 9, 9, 1, 2, 3, 4, 6, 1, 2, 3]
    # "1 2 3" was followed by 4 5 1, 9 9 1, 4 6 1: the chain (most recent) first, then by occurrences
    assert propose_tree(seq, TreeShape(3, 2, 6)) == ([4, 6, 1, 9, 9, 1], [-1, 0, 1, -1, 3, 4])
    assert propose_tree(seq, TreeShape(3, 3, 9)) == ([4, 6, 1, 9, 9, 1, 5, 1], [-1, 0, 1, -1, 3, 4, 0, 6])  # all 8
    assert propose_tree(seq, TreeShape(2, 2, 3)) == ([4, 6, 9], [-1, 0, -1])  # T caps the nodes
    assert propose_tree(seq, TreeShape(3, 1, 3)) == (propose(seq, 3), [-1, 0, 1])  # top-k 1: the chain
    assert propose_tree([1, 2, 3], TreeShape(2, 2, 4)) == ([], [])
    # the chain comes first even where more occurrences went another way
    seq = [7, 8, 1, 7, 8, 1, 7, 8, 2, 5, 7, 8]
    assert propose_tree(seq, TreeShape(2, 2, 4)) == ([2, 5, 1, 7], [-1, 0, -1, 2])


BRANCHING = [
    [4, 5, 6, 7, 4, 5, 6, 7, 4, 5, 9, 9, 4, 5],  # the latest "4 5" went on with 9 9, two earlier with 6 7
    [12, 13, 14, 15, 12, 13, 30, 31, 12, 13, 14, 15, 12, 13, 30, 31, 12, 13],
    [20, 21, 22, 23, 20, 21, 22, 23],
    [40, 41, 42, 43, 44, 40, 41, 50, 40, 41],
]


@pytest.mark.parametrize("clean,batch", [(True, 1), (True, 4), (False, 4)])
def test_ngram_trees_equal_plain(request, clean, batch):
    """Repetitive prompts whose n-grams went on differently: branching trees, the output plain
    decoding's; on clean cycles paths through later siblings are accepted (where the chain's latest
    occurrence is wrong) and steps are few."""
    folder = request.getfixturevalue("clean_cycle_target" if clean else "cycle_target")
    max_new, tree = 24, TreeShape(3, 2, 6)
    prompts = BRANCHING[:batch]
    rows = Rows(folder, prompts, tree.tokens, tree.depth, tree.topk, C=64)
    off_first = steps = 0
    while not rows.done(max_new):
        out = rows.step(lambda r, lens: ngram_tree_step(r.dec, r.buf, r.seqs, lens, r.sampler, tree), max_new)
        steps += 1
        off_first += sum(p != list(range(len(p))) for p in out.paths)
    for b, prompt in enumerate(prompts):
        assert rows.new(b)[:max_new] == plain_greedy(folder, prompt, max_new)
    tokens, parents = propose_tree(BRANCHING[0], tree)
    assert (tokens, parents) == ([9, 9, 4, 6, 7, 4], [-1, 0, 1, -1, 3, 4])  # the chain, and the sibling 6 7 4
    if clean:
        assert off_first > 0 and steps <= max_new // 3


def test_engine_runs_ngram_tree_plans(clean_cycle_target, monkeypatch):
    """Through the Engine: greedy equal to plain at batch 4, each step a tree step."""
    import dataclasses

    from engine import runtime
    from specmemo_plan.plan import make_plan

    base = make_test_plan(clean_cycle_target, None, batch_size=4, max_context=64, max_new_tokens=24)
    knobs = dataclasses.replace(base.knobs, draft_method="ngram", draft_length=6, tree_depth=3, tree_topk=2)
    plan = make_plan(clean_cycle_target, load_shape(clean_cycle_target), None, None, knobs, base.device,
                     base.budget_bytes, generation=base.generation)
    engine = Engine(plan, tokenizer=None)
    calls = []
    real = runtime.ngram_tree_step

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(runtime, "ngram_tree_step", spy)
    result = engine.generate(BRANCHING, ignore_eos=True)
    for prompt, out in zip(BRANCHING, result.outputs):
        assert out.token_ids == plain_greedy(clean_cycle_target, prompt, 24)
    assert len(calls) == result.stats.steps > 0 and sum(result.stats.accepted_histogram[1:]) > 0


def test_chain_as_tree_equals_ngram_step(cycle_target):
    """Top-k 1: ngram_tree_step accepts what ngram_step accepts, step for step, batch 4."""
    k, max_new = 4, 20
    chains = Rows(cycle_target, PROMPTS, k, C=64)
    trees = Rows(cycle_target, PROMPTS, k, C=64)
    tree = TreeShape(k, 1, k)
    while not chains.done(max_new):
        a = chains.step(lambda r, lens: ngram_step(r.dec, r.buf, r.seqs, lens, r.sampler, k), max_new)
        b = trees.step(lambda r, lens: ngram_tree_step(r.dec, r.buf, r.seqs, lens, r.sampler, tree), max_new)
        assert a.accepted.tolist() == b.accepted.tolist()
        for row, n in enumerate(a.accepted.tolist()):
            assert a.tokens[row, : n + 1].tolist() == b.tokens[row, : n + 1].tolist()
    assert chains.seqs == trees.seqs and trees.done(max_new)


# ----------------------------------------------------------------------------- sampling


def test_tree_sampling_is_lossless(tiny_vocab_pair):
    """x1 .. x3 and (x1, x2) from tree steps (root x[L-1] = the prompt's last token) match the
    target's exact distributions; and the test tells the rule from one that keeps rejected siblings'
    tokens in the residual (computed from the same exact distribution)."""
    V, temp, N, prompt = 16, 0.8, 3000, [1, 2, 3]
    marginals, joint12 = _exact_marginals(tiny_vocab_pair[0], prompt, V, temp)
    p1 = marginals[0]
    a1, a2, a3 = p1.argsort(descending=True)[:3].tolist()
    b1, b2 = (joint12.view(V, V)[a1] / p1[a1]).argsort(descending=True)[:2].tolist()  # likely after a1
    # root children a2, a1, a2 again (a repeated sibling), a3; b1, b2 under a1; a depth-3 node under b1
    tree = ([a2, a1, a2, a3, b1, b2, 0], [-1, -1, -1, -1, 1, 1, 4])
    rows = Rows(tiny_vocab_pair[0], [prompt] * N, 7, 3, 4, C=16, sampler=Sampler("sample", temp, seed=2))
    first = rows.step(lambda r, lens: verify_trees(r, lens, [tree] * N), 3)
    assert 300 < int((first.accepted > 0).sum()) < N - 300 and int((first.accepted >= 2).sum()) > 100
    assert {tuple(p) for p in first.paths} >= {(), (0,), (1,), (3,), (1, 4), (1, 5)}
    while not rows.done(3):
        rows.step(lambda r, lens: verify_trees(r, lens, [tree] * N), 3)
    samples = np.array([rows.new(b)[:3] for b in range(N)])
    pvalues = [_chi2_pvalue(np.bincount(samples[:, j], minlength=V), marginals[j]) for j in range(3)]
    pvalues.append(_chi2_pvalue(np.bincount(samples[:, 0] * V + samples[:, 1], minlength=V * V), joint12))
    assert min(pvalues) > 1e-3, pvalues
    # power: each child c accepted with p(c), but the bonus drawn from p itself over-weights the children
    kids = [a1, a2, a3]
    wrong = p1 * (1.0 - p1[kids].sum())
    wrong[kids] += p1[kids]
    assert _chi2_pvalue(np.bincount(samples[:, 0], minlength=V), wrong) < 1e-6


# ----------------------------------------------------------------------------- refusals


def test_trees_refused_on_window_models(tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(model_type="mistral", vocab_size=64, hidden_size=32, intermediate_size=64,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                  sliding_window=8, max_position_embeddings=128)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "m")
    rows = Rows(str(tmp_path / "m"), [[1, 2, 3, 4]], 4, 2, 2, C=40)
    with pytest.raises(SpecMemoError, match=r"^knobs\.tree_topk: token trees on .*sliding-window layers"):
        verify_trees(rows, [4], [([5, 6, 7], [-1, -1, 0])])
