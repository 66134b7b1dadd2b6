"""What a generate call returns: the outputs per row, and the statistics of the run.

Kept apart from the loop (engine/runtime.py) so that chat sessions, the workflow and the benches
read results without importing the engine itself. The rates in `Stats.as_dict` come from
specmemo_plan.quantities, the one definition the planner uses too, so a plan's predicted
acceptance and the engine's measured one are the same quantity.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from specmemo_plan.quantities import acceptance_rate, tokens_per_step

_SUMMED = ("steps", "new_tokens", "rows", "row_slots", "prefill_tokens", "prefill_s", "draft_s", "verify_s",
           "accept_s", "total_s")


@dataclass
class Output:
    token_ids: list[int]  # new tokens only (an EOS that ended the sequence included)
    text: str | None  # decoded new tokens; None without a tokenizer
    stop_reason: str  # "eos" | "max_new_tokens"


@dataclass
class Stats:
    draft_length: int
    steps: int = 0  # speculative steps (one verify forward each)
    accepted_histogram: list[int] = field(default_factory=list)  # [i]: row-steps that accepted i drafts
    # [r]: row-steps whose depth-1 target token was the drafter's rank-r candidate (0: none of them); [] unmeasured
    rank_histogram: list[int] = field(default_factory=list)
    new_tokens: int = 0  # all rows, the prefill's first token included
    rows: int = 0  # sequences (each got its first token from the prefill)
    row_slots: int = 0  # steps x rows in the batch: a row that is done still occupies its slot
    prefill_tokens: int = 0
    prefill_s: float = 0.0
    draft_s: float = 0.0
    verify_s: float = 0.0
    accept_s: float = 0.0
    total_s: float = 0.0

    def __post_init__(self):
        if not self.accepted_histogram:
            self.accepted_histogram = [0] * (self.draft_length + 1)

    def merge(self, other: "Stats") -> None:
        for name in _SUMMED:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.accepted_histogram = [a + b for a, b in zip(self.accepted_histogram, other.accepted_histogram)]
        if other.rank_histogram:
            mine = self.rank_histogram or [0] * len(other.rank_histogram)
            self.rank_histogram = [a + b for a, b in zip(mine, other.rank_histogram)]

    @property
    def acceptance_rate(self) -> float | None:
        """Per-token acceptance (quantities.acceptance_rate); None without drafts or steps."""
        if not self.draft_length or not sum(self.accepted_histogram):
            return None
        return acceptance_rate(self.accepted_histogram)

    @property
    def tokens_per_step(self) -> float | None:
        """Mean tokens per row-step; plain decoding (k = 0) yields exactly one."""
        if not sum(self.accepted_histogram):
            return None
        return tokens_per_step(self.accepted_histogram) if self.draft_length else 1.0

    @property
    def decode_tokens_per_s(self) -> float | None:
        """New tokens after each row's first (which the prefill gives) per second of decoding."""
        decode_s = self.total_s - self.prefill_s
        return (self.new_tokens - self.rows) / decode_s if decode_s > 0 else None

    def as_dict(self) -> dict:
        row_steps = sum(self.accepted_histogram)
        decode_s = self.total_s - self.prefill_s
        return {
            "draft_length": self.draft_length,
            "steps": self.steps,
            "accepted_histogram": {str(i): n for i, n in enumerate(self.accepted_histogram)},
            "acceptance_rate": self.acceptance_rate,
            "tokens_per_step": self.tokens_per_step,
            # share of row slots still generating: a static batch waits for its slowest row
            "row_utilisation": row_steps / self.row_slots if self.row_slots else None,
            "new_tokens": self.new_tokens,
            "prefill_tokens": self.prefill_tokens,
            "tokens_per_s": self.new_tokens / self.total_s if self.total_s else None,
            "decode_tokens_per_s": self.decode_tokens_per_s,
            "seconds": {
                "total": self.total_s, "prefill": self.prefill_s, "draft": self.draft_s,
                "verify": self.verify_s, "accept": self.accept_s,
                "other": max(0.0, decode_s - self.draft_s - self.verify_s - self.accept_s),
            },
        }


@dataclass
class Result:
    outputs: list[Output]
    stats: Stats
    valid: list[tuple[int, int]] = field(default_factory=list)  # per row: (target, draft) cached positions
    reused: list[int] = field(default_factory=list)  # per row: prompt positions whose K/V came from the caches


@dataclass
class Row:
    """One sequence while the loop runs: its tokens, and how far each cache holds them."""

    tokens: list[int]  # prompt + committed new tokens
    prompt_len: int
    max_new: int
    done: bool = False
    stop_reason: str = "max_new_tokens"
    target_valid: int = 0  # leading positions whose K/V in the target cache match `tokens`
    draft_valid: int = 0
    pending: int = 1  # EAGLE head: target hidden states not yet fed to the head (engine/eagle.py)

    @property
    def new(self) -> list[int]:
        return self.tokens[self.prompt_len :]

    def commit(self, new: list[int], eos: set[int], ignore_eos: bool) -> None:
        room = self.max_new - len(self.new)
        if len(new) >= room:
            new = new[:room]
            self.done = True
        for i, token in enumerate(new):
            if token in eos and not ignore_eos:
                new, self.done, self.stop_reason = new[: i + 1], True, "eos"
                break
        self.tokens += new
        self.target_valid = min(self.target_valid, len(self.tokens))
        self.draft_valid = min(self.draft_valid, len(self.tokens))
