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
- "drop-oldest": the oldest turns (user message and reply) are dropped, a system message kept,
  until the conversation fits; the reply says how many turns were dropped. A single turn that does
  not fit even alone is refused.
Never an out-of-memory error, never silent truncation of a prompt or of a reply's budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from specmemo_plan.errors import SpecMemoError

from .results import Result, Stats
from .tokens import conversation_ids

OVERFLOW_POLICIES = ("refuse", "drop-oldest")


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
                 max_new_tokens: int | None = None, system_ids: list[int] | None = None):
        if on_overflow not in OVERFLOW_POLICIES:
            raise SpecMemoError(f"unknown overflow policy {on_overflow!r}", "choose one of: " + ", ".join(OVERFLOW_POLICIES))
        self.engine = engine
        self.system = system
        self.system_ids = list(system_ids or [])
        self.on_overflow = on_overflow
        self.max_new = max_new_tokens or engine.plan.generation.max_new_tokens
        self.turns: list[tuple] = []  # (user, reply): texts, or token-id lists
        self.stats = Stats(engine.k)
        self.reset()

    def reset(self) -> None:
        """Forget the conversation; the engine forgets what its caches hold for this session, so
        the next turn prefills from scratch (the cached K/V is simply overwritten)."""
        self.turns = []
        self.engine.release(self)

    # ------------------------------------------------------------------ rendering

    def _render_text(self, turns) -> list[int]:
        return render_text(self.engine, turns, self.system)

    def _render_ids(self, turns) -> list[int]:
        return render_ids(turns, self.system_ids)

    # ------------------------------------------------------------------ a turn

    def say(self, text: str) -> Reply:
        if not self.engine.real_tokenizer:
            raise SpecMemoError("this model has no tokenizer, so chat needs token ids", "use say_ids(), or a model with a tokenizer")
        return self._turn(text, self._render_text, text_mode=True)

    def say_ids(self, ids: list[int]) -> Reply:
        return self._turn(list(ids), self._render_ids, text_mode=False)

    def _turn(self, user, render, text_mode: bool) -> Reply:
        engine, context = self.engine, self.engine.plan.knobs.max_context
        turns = self.turns + [(user, None)]
        ids, dropped = render(turns), 0
        while len(ids) + self.max_new > context:
            need = len(ids) + self.max_new
            if self.on_overflow == "refuse" or len(turns) == 1:
                alone = " even alone" if len(turns) == 1 and self.turns else ""
                raise SpecMemoError(
                    f"knobs.max_context: this turn{alone} needs {need} tokens ({len(ids)} of conversation + "
                    f"{self.max_new} new), over the plan's context of {context}",
                    "start a new conversation (/reset), lower --max-new-tokens, or use --on-overflow drop-oldest"
                    if self.on_overflow == "refuse" else "shorten the message or lower --max-new-tokens",
                )
            turns, dropped = turns[1:], dropped + 1
            ids = render(turns)
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
