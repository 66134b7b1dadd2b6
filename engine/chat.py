"""Multi-turn chat sessions that reuse the KV of earlier turns.

Each turn renders the whole conversation to token ids (the tokenizer's chat template, or plain
concatenation of token-id turns) and hands them to `Engine.continue_sequence(ids, max_new, owner)`
with the session as owner: the engine keeps track of the tokens whose K/V row 0 of its caches
holds, and for which session, and prefills only from the first position that differs. A session
knows the engine only through `ChatEngine` below, and neither module imports the other:
`ChatSession(engine, ...)` starts a session on any engine.runtime.Engine.

Context policy (the plan's knobs.max_context = prompt + new tokens, per sequence):
- "refuse" (default): a turn whose conversation plus max_new_tokens would exceed the context is
  refused with a SpecMemoError saying how many tokens it needs; the session stays as it was.
- "drop-oldest": when a turn would not fit, the oldest turns (user message and reply) are dropped,
  a system message kept, down to a low-water mark (LOW_WATER_FRACTION of the context); the reply
  says how many turns were dropped. A single turn that does not fit even alone is refused.
Never an out-of-memory error, never silent truncation of a prompt or of a reply's budget. A message
whose characters alone prove it over the context is refused before it is tokenised
(engine.tokens.tokens_at_least).

An interrupted turn (KeyboardInterrupt inside `say`) leaves the session as it was before it: the
turns are assigned only when the reply is complete, and the engine marks row 0 as holding nothing
while it generates, so the next turn reuses exactly the K/V that is valid. `snapshot`/`restore`
let a caller drop a turn that completed as the interrupt arrived (engine/cli.py's chat does).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from specmemo_plan.errors import SpecMemoError

from .results import Result, Stats
from .tokens import conversation_ids, covers, max_token_chars, tokens_at_least

OVERFLOW_POLICIES = ("refuse", "drop-oldest")
# drop-oldest drops down to this share of the context (conversation + the reply's budget), not just
# below it. A drop changes the head of the conversation, so the turn after it prefills everything
# that is left; dropping just enough made every later turn drop again and re-prefill nearly the
# whole context (issue 18: KV reuse fell from 281/304 to 26/495 tokens a turn, turns took 2x). At
# half, about half a context of later turns reuse their K/V before the next drop, and half the
# history is kept (a tiny model, context 512: reuse 14/471 -> 293/346 tokens a turn, drops on 47 of
# 48 turns -> 7).
LOW_WATER_FRACTION = 0.5


class ChatEngine(Protocol):
    """What a session uses of engine.runtime.Engine."""

    plan: object  # knobs.max_context, generation.max_new_tokens
    k: int
    tokenizer: object
    real_tokenizer: bool

    def continue_sequence(self, ids: list[int], max_new: int, owner: object) -> Result: ...

    def release(self, owner: object) -> None: ...


@dataclass
class Reply:
    text: str | None
    token_ids: list[int]
    stop_reason: str
    prompt_tokens: int  # the whole rendered conversation sent to the model this turn
    reused_tokens: int  # of those, positions whose K/V came from earlier turns (not recomputed)
    dropped_turns: int  # turns dropped by the drop-oldest policy this turn
    stats: Stats


class ChatSession:
    """A conversation on row 0 of the engine's caches. `say(text)` with a tokenizer, `say_ids(ids)` without."""

    def __init__(self, engine: ChatEngine, system: str | None = None, on_overflow: str = "refuse",
                 max_new_tokens: int | None = None, system_ids: list[int] | None = None,
                 low_water: float = LOW_WATER_FRACTION):
        if on_overflow not in OVERFLOW_POLICIES:
            raise SpecMemoError(f"unknown overflow policy {on_overflow!r}", "choose one of: " + ", ".join(OVERFLOW_POLICIES))
        self.engine = engine
        self.system = system
        self.system_ids = list(system_ids or [])
        self.on_overflow = on_overflow
        if not 0 < low_water <= 1:
            raise SpecMemoError(f"low_water must be in (0, 1], got {low_water}")
        self.low_water = low_water
        self.max_new = max_new_tokens or engine.plan.generation.max_new_tokens
        self.turns: list[tuple] = []  # (user, reply): texts, or token-id lists
        self.stats = Stats(engine.k)
        self._token_chars = max_token_chars(engine.tokenizer)  # a real tokenizer's, or 1 for UTF-8 bytes
        self.reset()

    def reset(self) -> None:
        """Forget the conversation; the engine forgets what its caches hold for this session, so
        the next turn prefills from scratch (the cached K/V is simply overwritten)."""
        self.turns = []
        self.engine.release(self)

    def snapshot(self) -> tuple:
        """What `restore` puts back: the turns (never mutated in place: a turn assigns a new list)
        and a copy of the statistics."""
        stats = Stats(self.stats.draft_length)
        stats.merge(self.stats)
        return self.turns, stats

    def restore(self, snapshot: tuple) -> None:
        """The session as it was at `snapshot` (a turn interrupted, or completed as the interrupt
        came). The engine's record of row 0 stays: its K/V is valid for the tokens it names, and the
        next turn reuses only their common prefix with the restored conversation."""
        self.turns, self.stats = snapshot

    # ------------------------------------------------------------------ rendering

    def _render_text(self, turns) -> list[int]:
        return render_text(self.engine, turns, self.system)

    def _render_ids(self, turns) -> list[int]:
        return render_ids(turns, self.system_ids)

    # ------------------------------------------------------------------ a turn

    def say(self, text: str) -> Reply:
        if not self.engine.real_tokenizer:
            raise SpecMemoError("this model has no tokenizer, so chat needs token ids", "use say_ids(), or a model with a tokenizer")
        self.check_message(text)
        return self._turn(text, self._render_text, text_mode=True)

    def check_message(self, text: str) -> None:
        """Refuse a message whose characters alone prove it over the context, before tokenising it
        (a 10 MB line would take seconds and gigabytes to tokenise)."""
        context = self.engine.plan.knobs.max_context
        bound = tokens_at_least(self.engine.tokenizer, text, self._token_chars, max(context - self.max_new, 0))
        if bound is not None:
            raise SpecMemoError(
                f"knobs.max_context: this message alone has {len(text)} characters, so at least {bound} tokens "
                f"({covers(self._token_chars)}); with {self.max_new} new "
                f"tokens it needs {bound + self.max_new}, over the plan's context of {context}",
                "shorten the message or lower --max-new-tokens")

    def say_ids(self, ids: list[int]) -> Reply:
        return self._turn(list(ids), self._render_ids, text_mode=False)

    def _turn(self, user, render, text_mode: bool) -> Reply:
        engine, context = self.engine, self.engine.plan.knobs.max_context
        turns = self.turns + [(user, None)]
        ids, dropped = render(turns), 0
        if len(ids) + self.max_new > context and self.on_overflow == "drop-oldest":
            low = int(context * self.low_water)  # down to the low-water mark, not just below the context
            while len(turns) > 1 and len(ids) + self.max_new > low:
                turns, dropped = turns[1:], dropped + 1
                ids = render(turns)
        if len(ids) + self.max_new > context:
            need = len(ids) + self.max_new
            alone = " even alone" if len(turns) == 1 and self.turns else ""
            raise SpecMemoError(
                f"knobs.max_context: this turn{alone} needs {need} tokens ({len(ids)} of conversation + "
                f"{self.max_new} new), over the plan's context of {context}",
                "start a new conversation (/reset), lower --max-new-tokens, or use --on-overflow drop-oldest"
                if self.on_overflow == "refuse" else "shorten the message or lower --max-new-tokens",
            )
        result = engine.continue_sequence(ids, self.max_new, owner=self)
        out = result.outputs[0]
        self.stats.merge(result.stats)
        reply = out.text.strip() if text_mode else out.token_ids
        self.turns = turns[:-1] + [(user, reply)]
        return Reply(out.text, out.token_ids, out.stop_reason, len(ids), result.reused[0], dropped, result.stats)


def render_text(engine: ChatEngine, turns, system: str | None = None) -> list[int]:
    """Token ids of a conversation [(user, reply or None), ...] through the chat template, ready for
    the next reply; without a template, one plain line per message (engine.tokens.conversation_ids)."""
    messages = [{"role": "system", "content": system}] if system else []
    for user, reply in turns:
        messages.append({"role": "user", "content": user})
        if reply is not None:
            messages.append({"role": "assistant", "content": reply})
    return conversation_ids(engine.tokenizer, messages)


def render_ids(turns, system_ids=()) -> list[int]:
    """A conversation of token-id turns, for models without a tokenizer: the ids back to back."""
    ids = list(system_ids)
    for user, reply in turns:
        ids += list(user) + list(reply or [])
    return ids
