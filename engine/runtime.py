"""The Engine: loads the plan's models, enforces the plan, runs the generation loop.

Generation: `generate` (a batch, each row from scratch) and `continue_sequence` (one sequence that
reuses the K/V its owner left in the caches). Chat sessions (engine.chat.ChatSession(engine)) are
built on the latter; this module does not know them, and they know the Engine only by its methods.
Results are engine.results, tokenisation engine.tokens, measured memory engine.memory_probe.

Enforcement, each refusal one SpecMemoError naming the plan field:
- before anything loads (engine.checks): schema (read_plan), model fingerprints, a prediction that is
  not the one its knobs give, the device (kind, name, count, budget against its total, what is to be
  allocated against what is free: on a CPU as on a GPU), formats the engine cannot run;
- requests: more prompts than `knobs.batch_size`, a prompt plus its new tokens over `knobs.max_context`.
On CUDA/ROCm the process is capped at the plan's budget (torch.cuda.set_per_process_memory_fraction).

Static memory is allocated once, before any request, by engine.cache from the same functions as the
plan's prediction (specmemo_plan.memory); generation never grows it.
"""

from __future__ import annotations

import time

import torch

from specmemo_plan.drafting.trees import RANKED
from specmemo_plan.errors import SpecMemoError
from specmemo_plan.models import load_shape
from specmemo_plan.plan import Plan, read_plan

from . import memory_probe
from .cache import allocate_caches
from .eagle import HeadDrafter, eagle_step, head_shape_of, load_plan_head
from .eagle_tree import eagle_tree_step
from .checks import STATIC_COMPONENTS, check_model_type, check_prediction, check_supported, refuse, resolve_device
from .forward import Decoder
from .loading import LoadedModel, load_model
from .ngram import ngram_step, ngram_tree_step, target_decoder
from .placement import layer_devices, load_split
from .results import Output, Result, Row, Stats
from .speculative import Sampler, speculative_step
from .tree import check_tree_cache
from .tokens import engine_tokenizer, eos_ids, prompt_ids

# ----------------------------------------------------------------------------- engine


class Engine:
    """Speculative decoding inside a plan's memory.

    Engine(plan) loads the plan's models; tests and benchmarks may pass already loaded models
    (`target=`, `draft=`: engine.loading.LoadedModel), which are checked against the plan's
    fingerprints like loaded ones, and a tokenizer (None: token ids in, token ids out)."""

    def __init__(self, plan: Plan | str, device: str | None = None, target: LoadedModel | None = None,
                 draft: LoadedModel | None = None, tokenizer="auto"):
        if not isinstance(plan, Plan):
            plan = read_plan(plan)
        self.plan, knobs = plan, plan.knobs
        check_supported(plan)
        t_shape = target.shape if target is not None else load_shape(plan.target.ref)
        d_shape = None
        self.method = knobs.method(plan.draft is not None)
        eagle = self.method == "eagle"  # an EAGLE head drafts from the target's hidden states (engine/eagle.py)
        if plan.draft is not None:
            d_shape = draft.shape if draft is not None else (head_shape_of(plan, t_shape) if eagle else
                                                               load_shape(plan.draft.ref))
        # fingerprints, and the prediction recomputed from the knobs: refused when the plan's differs,
        # reported against afterwards
        self.predicted_memory = check_prediction(plan, t_shape, d_shape)
        for role, shape in (("target", t_shape), ("draft", None if eagle else d_shape)):
            if shape is not None:
                check_model_type(role, shape)  # windows: engine.cache keeps window layers as ring buffers
        # what is still to allocate, against the memory free now (one device: a split plan's shares differ)
        held = sum(memory_probe.parameter_bytes(m.model) for m in (target, draft) if m is not None)
        need = self.predicted_memory["total_bytes"] - held if plan.device.count == 1 else None
        self.device = resolve_device(plan, device, need)
        self.memory_cap = self._cap_memory()
        self.probe = memory_probe.make_probe(self.device)

        seed = plan.generation.seed
        split = plan.device.count > 1
        self.target_model = target or (load_split(plan, "target", seed) if split else
                                       load_model(plan.target.ref, knobs.weight_dtype, self.device, seed))
        self.draft_model = None
        if plan.draft is not None:
            self.draft_model = draft or (load_plan_head(plan, d_shape, self.device, seed + 1) if eagle else
                                         load_split(plan, "draft", seed + 1) if split else
                                         load_model(plan.draft.ref, knobs.draft_dtype, self.device, seed + 1))
        if self.device.type == "cpu":  # weights loaded from safetensors are mmapped: page them in now,
            for loaded in (self.target_model, self.draft_model):  # so generation's measured peak is not weights
                if loaded is not None:
                    _page_in(loaded.model)
        self.random_weights = {"target": self.target_model.random_weights}
        if self.draft_model is not None:
            self.random_weights["draft"] = self.draft_model.random_weights

        if split:  # step buffers beside the output layer; each layer's KV beside its weights
            self.device = self.target_model.model.get_output_embeddings().weight.device
        self.target_cache, self.draft_cache, self.buffers = allocate_caches(
            t_shape, d_shape, knobs, self.device,
            layer_devices(self.target_model.model, t_shape.num_layers) if split else None,
            layer_devices(self.draft_model.model, d_shape.num_layers) if split and self.draft_model else None,
        )
        # n-gram drafting: proposals from the rows' own tokens (engine/ngram.py), fp32 verify logits
        self.ngram = self.method == "ngram"
        self.target = target_decoder(self.target_model.model, self.target_cache, self.buffers.target_logits.dtype)
        self.draft = self.head = None
        if eagle:
            self.head = HeadDrafter(self.draft_model.model, self.target, self.draft_cache,
                                    self.buffers.tensors.get("draft_d2t"))
        elif self.draft_model is not None:
            self.draft = Decoder(self.draft_model.model, self.draft_cache)
        self.k = knobs.draft_length if self.draft is not None or self.head is not None or self.ngram else 0
        self.tree = knobs.tree if self.k and not knobs.tree.is_chain else None  # n-gram trees (engine/tree.py)
        # profiling sets it: chain steps of a head or n-gram rank the depth-1 target token (Stats.rank_histogram)
        self.measure_ranks = False
        if self.tree is not None:
            check_tree_cache(self.target_cache)
        gen = plan.generation
        self.sampler = Sampler(gen.sampling, gen.temperature, gen.seed, self.device)

        self.tokenizer, self.real_tokenizer = engine_tokenizer(plan.target.ref, t_shape.vocab_size, tokenizer)
        self.eos_ids = eos_ids(self.target_model.model, self.tokenizer if self.real_tokenizer else None)
        # (owner, tokens, (target, draft) valid positions) of row 0 after continue_sequence, else None
        self._held: tuple | None = None

    # ------------------------------------------------------------------ setup helpers

    def _cap_memory(self) -> dict | None:
        """CUDA/ROCm: cap this process at the plan's budget; report the headroom the plan leaves."""
        if self.device.type != "cuda":
            return None
        total = torch.cuda.get_device_properties(self.device).total_memory
        fraction = min(1.0, self.plan.budget_bytes / total)
        for index in range(self.plan.device.count):  # the budget is per device
            torch.cuda.set_per_process_memory_fraction(fraction, torch.device("cuda", index))
        predicted = self.predicted_memory["total_bytes"]
        return {"budget_bytes": self.plan.budget_bytes, "fraction": fraction, "device_total_bytes": total,
                "predicted_total_bytes": predicted, "headroom_bytes": self.plan.budget_bytes - predicted}

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    # ------------------------------------------------------------------ requests

    def encode(self, prompt: str, chat_template: bool | None = None, system: str | None = None) -> list[int]:
        """Token ids of a prompt; with the tokenizer's chat template when it has one (or when asked)."""
        return prompt_ids(self.tokenizer, prompt, chat_template, system)

    def decode(self, ids: list[int]) -> str | None:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def check_request(self, prompts: list[list[int]], max_new: int) -> None:
        knobs = self.plan.knobs
        if not prompts:
            raise SpecMemoError("no prompt given", "give --prompt or --prompts-file")
        if len(prompts) > knobs.batch_size:
            raise refuse("knobs.batch_size", f"{len(prompts)} prompts exceed the plan's batch of {knobs.batch_size}",
                          "split the prompts, or make a plan with a larger --batch")
        if max_new < 1:
            raise SpecMemoError(f"max_new_tokens must be at least 1, got {max_new}")
        for i, ids in enumerate(prompts):
            if not ids:
                raise SpecMemoError(f"prompt {i} is empty", "give at least one token")
            if len(ids) + max_new > knobs.max_context:
                raise refuse("knobs.max_context", f"prompt {i} has {len(ids)} tokens; with {max_new} new tokens it needs "
                              f"{len(ids) + max_new}, over the plan's context of {knobs.max_context}",
                              "shorten the prompt, lower --max-new-tokens, or make a plan with a larger --context")
            vocab = self.target_cache.shape.vocab_size
            if max(ids) >= vocab or min(ids) < 0:
                raise SpecMemoError(f"prompt {i} has token ids outside the vocabulary of {vocab}")

    def generate(self, prompts, max_new_tokens: int | None = None, ignore_eos: bool = False,
                 chat_template: bool | None = None) -> Result:
        """Generate for a batch of prompts (strings, or lists of token ids), each row on its own."""
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        ids = [self.encode(p, chat_template) if isinstance(p, str) else list(p) for p in prompts]
        max_new = max_new_tokens or self.plan.generation.max_new_tokens
        self.check_request(ids, max_new)
        self._held = None  # every row is prefilled from scratch, and the caches hold this batch now
        return self._run(ids, [0] * len(ids), [0] * len(ids), max_new, ignore_eos)

    # ------------------------------------------------------------------ sequences that continue

    def continue_sequence(self, ids: list[int], max_new: int, owner: object) -> Result:
        """Generate for one sequence on row 0, reusing the K/V the caches still hold for `owner`.

        The engine remembers which tokens row 0 holds after a call, and for whom. When `owner`
        made the last request, the prefill starts at the first position where `ids` differs from
        those tokens (slots are absolute positions, so reuse is a shorter prefill; nothing is
        copied); after any other request (generate, another owner, `release`) it starts at 0.
        `Result.reused[0]` says how many positions of `ids` came from the caches. A chat session
        (engine/chat.py) is the owner this is for: it renders the conversation, the engine keeps
        the bookkeeping of its caches."""
        self.check_request([ids], max_new)
        t_start = d_start = 0
        if self._held is not None and self._held[0] is owner:
            _, tokens, (t_valid, d_valid) = self._held
            same = _common_prefix(tokens, ids)
            t_start, d_start = min(same, t_valid), min(same, d_valid)
        self._held = None  # until the run below completes, row 0 holds nothing anyone can reuse
        result = self._run([ids], [t_start], [d_start], max_new)
        self._held = (owner, ids + result.outputs[0].token_ids, result.valid[0])
        return result

    def release(self, owner: object) -> None:
        """Forget what the caches hold for `owner` (its next call prefills from scratch)."""
        if self._held is not None and self._held[0] is owner:
            self._held = None

    # ------------------------------------------------------------------ the loop

    @torch.inference_mode()
    def _run(self, prompts: list[list[int]], t_starts: list[int], d_starts: list[int], max_new: int,
             ignore_eos: bool = False) -> Result:
        """Prefill each row from its first uncached position, then speculative steps until every row stops."""
        stats = Stats(self.tree.depth if self.tree is not None else self.k)  # a tree accepts at most depth
        rows = [Row(list(p), len(p), max_new) for p in prompts]
        B = len(rows)
        t0 = time.perf_counter()
        with self.probe.phase("prefill"):
            first = self._prefill(rows, t_starts, d_starts)
            self._sync()
        stats.prefill_s = time.perf_counter() - t0
        stats.prefill_tokens = sum(len(r.tokens) - s for r, s in zip(rows, t_starts))
        for row, token in zip(rows, first):
            row.commit([token], self.eos_ids, ignore_eos)

        with self.probe.phase("decode"):
            lengths = self.buffers.lengths
            while not all(r.done for r in rows):
                lens = [len(r.tokens) for r in rows]
                lengths[:B].copy_(torch.tensor(lens))
                if self.k:
                    if self.ngram:
                        seqs = [r.tokens for r in rows]
                        out = (ngram_tree_step(self.target, self.buffers, seqs, lens, self.sampler, self.tree, self._sync)
                               if self.tree is not None else
                               ngram_step(self.target, self.buffers, seqs, lens, self.sampler, self.k, self._sync,
                                          self.measure_ranks))
                    elif self.head is not None:  # pending pairs: the last step's accepted + 1 (1 after a prefill)
                        seqs, pending = [r.tokens for r in rows], [r.pending for r in rows]
                        out = (eagle_tree_step(self.target, self.head, self.buffers, seqs, pending, lens, self.sampler,
                                               self.tree, self._sync) if self.tree is not None else
                               eagle_step(self.target, self.head, self.buffers, seqs, pending, lens, self.sampler,
                                          self._sync, self.measure_ranks))
                    else:
                        # catch-up: 1 token, or 2 where the draft has not seen x[L-2] (all k accepted, or after prefill)
                        c = max(n - r.draft_valid for r, n in zip(rows, lens))
                        last = torch.tensor([r.tokens[-c:] for r in rows], device=self.device)
                        out = speculative_step(self.target, self.draft, self.buffers, last, lens, self.sampler,
                                               self._sync)
                    stats.draft_s += out.draft_s
                    stats.verify_s += out.verify_s
                    stats.accept_s += out.accept_s
                    accepted, tokens = out.accepted.tolist(), out.tokens.tolist()
                    ranks = out.ranks
                else:
                    accepted, tokens, ranks = [0] * B, self._plain_step(rows, lens, stats), None
                stats.steps += 1
                if ranks is not None and not stats.rank_histogram:
                    stats.rank_histogram = [0] * (RANKED + 1)
                for b, (row, n, new, length) in enumerate(zip(rows, accepted, tokens, lens)):
                    if row.done:
                        continue
                    stats.accepted_histogram[n] += 1
                    if ranks is not None:
                        stats.rank_histogram[ranks[b]] += 1
                    row.target_valid = length + n  # positions 0 .. L-1+n hold committed tokens
                    row.draft_valid = length + min(n, self.k - 1) if self.draft is not None else 0  # d_k never fed
                    row.commit(new[: n + 1], self.eos_ids, ignore_eos)
                    if self.head is not None:  # true pairs up to L-2; the verify's n + 1 are pending
                        row.draft_valid, row.pending = length - 1, min(n + 1, len(row.tokens) - length)
            self._sync()
        stats.total_s = time.perf_counter() - t0
        stats.new_tokens = sum(len(r.new) for r in rows)
        stats.rows = B
        stats.row_slots = stats.steps * B
        outputs = [Output(r.new, self.decode(r.new), r.stop_reason) for r in rows]
        # the last prompt position is always recomputed: its logits give the first new token
        reused = [min(s, r.prompt_len - 1) for r, s in zip(rows, t_starts)]
        return Result(outputs, stats, [(r.target_valid, r.draft_valid) for r in rows], reused)

    def _plain_step(self, rows, lens: list[int], stats: Stats) -> list[list[int]]:
        """No draft (k = 0): one target forward per token, the plain-decoding baseline."""
        t0 = time.perf_counter()
        last = torch.tensor([[r.tokens[-1]] for r in rows], device=self.device)
        hidden = self.target.forward(last, [n - 1 for n in lens], self.buffers.verify_mask,
                                     window_mask=self.buffers.tensors.get("verify_mask_sliding"))
        logits = self.buffers.target_logits[: len(rows), 0]
        self.target.logits(hidden[:, -1], out=logits)
        tokens = self.sampler.pick(logits).tolist()
        stats.verify_s += time.perf_counter() - t0
        return [[t] for t in tokens]

    def _prefill(self, rows: list[Row], t_starts: list[int], d_starts: list[int]) -> list[int]:
        """Both caches from each row's first uncached position; the first new token per row from the
        target's logits at the last prompt position only (written into the target_logits buffer)."""
        B, V = len(rows), self.target_cache.shape.vocab_size
        scratch = self.buffers.target_logits.view(-1, V)[:B]  # B rows of the verify logits buffer
        seqs = [r.tokens for r in rows]
        # a window layer's ring may no longer hold the window before a reused prefix: prefill that row again
        t_starts[:] = [self.target_cache.reusable_start(b, min(s, len(seq) - 1))
                       for b, (s, seq) in enumerate(zip(t_starts, seqs))]
        if self.head is not None:  # the head reads the target's hidden states: both start where both hold
            t_starts[:] = d_starts[:] = [min(t, d) for t, d in zip(t_starts, d_starts)]
        self._prefill_model(self.target, seqs, t_starts, scratch, self._feed_head if self.head else None)
        for row, start in zip(rows, t_starts):
            row.target_valid = len(row.tokens)
        if self.draft is not None:
            # the draft prefills the whole prompt, so the first step's catch-up is the first new token only
            d_seqs = seqs
            d_starts[:] = [self.draft_cache.reusable_start(b, min(s, len(seq)))
                           for b, (s, seq) in enumerate(zip(d_starts, d_seqs))]
            if any(s < len(seq) for s, seq in zip(d_starts, d_seqs)):
                self._prefill_model(self.draft, d_seqs, d_starts, None)
            for row in rows:
                row.draft_valid = len(row.tokens)
        for row in rows if self.head is not None else ():
            row.draft_valid, row.pending = len(row.tokens) - 1, 1
        return self.sampler.pick(scratch).tolist()

    def _prefill_model(self, dec: Decoder, seqs: list[list[int]], starts: list[int], logits_out, on_chunk=None) -> None:
        """Chunks of knobs.chunk tokens per row; rows that run out are padded with their last token
        (right padding: those slots lie beyond the row's length and are rewritten before use).
        `on_chunk(seqs, pos, hidden, mask)`: called with each chunk's hidden states (the EAGLE head's prefill)."""
        chunk = self.plan.knobs.chunk
        todo = max(len(seq) - s for seq, s in zip(seqs, starts))
        for offset in range(0, todo, chunk):
            n = min(chunk, todo - offset)
            pos = [s + offset for s in starts]
            ids = [[seq[min(p + j, len(seq) - 1)] if seq else 0 for j in range(n)] for seq, p in zip(seqs, pos)]
            read = max(pos) + n
            mask = torch.empty((len(seqs), 1, n, read), dtype=torch.bool, device=self.device)
            real = [max(0, min(n, len(seq) - p)) for seq, p in zip(seqs, pos)]  # padding is not stored in rings
            hidden = dec.forward(torch.tensor(ids, device=self.device), pos, mask, real=real)
            if on_chunk is not None:
                on_chunk(seqs, pos, hidden, mask)
            if logits_out is None:
                continue
            for b, (seq, p) in enumerate(zip(seqs, pos)):
                last = len(seq) - 1 - p
                if 0 <= last < n:
                    dec.logits(hidden[b, last], out=logits_out[b])

    def _feed_head(self, seqs: list[list[int]], pos: list[int], hidden: torch.Tensor, mask: torch.Tensor) -> None:
        """The head over a prefill chunk's pairs (h_p, x_{p+1}); the pair at each row's last prompt
        position waits in draft_hidden_states[b, 0] for the first new token (engine/eagle.py)."""
        n = hidden.shape[1]
        ids = [[seq[min(p + j + 1, len(seq) - 1)] for j in range(n)] for seq, p in zip(seqs, pos)]
        self.head.forward(torch.tensor(ids, device=self.device), hidden, pos, torch.tensor(pos, device=self.device), mask)
        for b, (seq, p) in enumerate(zip(seqs, pos)):
            if 0 <= len(seq) - 1 - p < n:
                self.buffers.draft_hidden_states[b, 0].copy_(hidden[b, len(seq) - 1 - p])

    # ------------------------------------------------------------------ memory

    def static_bytes(self) -> dict[str, int]:
        """Exact bytes of the tensors the engine holds, per component of the plan's breakdown."""
        return {
            "target_weights": memory_probe.parameter_bytes(self.target_model.model),
            "draft_weights": memory_probe.parameter_bytes(self.draft_model.model) if self.draft_model else 0,
            "target_kv": self.target_cache.nbytes,
            "draft_kv": self.draft_cache.nbytes if self.draft_cache else 0,
            "candidate_buffers": self.buffers.nbytes,
        }

    def memory_report(self) -> dict:
        """{"predicted": the plan's breakdown recomputed from its knobs (engine.checks), "measured": exact static bytes, transient peaks, error %}
        (engine.memory_probe.memory_report)."""
        return memory_probe.memory_report(self.predicted_memory, self.static_bytes(), self.probe, self.device,
                                          self.memory_cap)


@torch.inference_mode()
def _page_in(model: torch.nn.Module) -> None:
    """Read every parameter once (a file-backed mmap counts in RSS only once touched)."""
    for p in model.parameters():
        p.sum()


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
