"""Text to token ids and back: the model's tokenizer with its chat template, or UTF-8 bytes.

One place for it, because generate (a prompt), chat (a whole conversation) and the benches (the
calibration prompts) must all wrap text the same way, or KV reuse and greedy equality break.

A text too long for a plan is refused before it is tokenised (`tokens_at_least`): tokenising megabytes
costs seconds and gigabytes (a 10 MB line took 24 s and 2.4 GB), and the answer is known sooner.
"""

from __future__ import annotations

import math

from specmemo_plan.errors import SpecMemoError


class ByteTokenizer:
    """For models without a tokenizer (random-weight presets): UTF-8 bytes as token ids."""

    chat_template = None
    eos_token_id = None

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size

    def encode(self, text: str) -> list[int]:
        return [b % self.vocab_size for b in text.encode()]

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return bytes(i for i in ids if i < 256).decode(errors="replace")

    def max_token_chars(self) -> int:
        return 1  # one token per UTF-8 byte, and a character is at least one byte


def engine_tokenizer(ref: str, vocab_size: int, given="auto") -> tuple[object, bool]:
    """(tokenizer, real): `given`, or with "auto" the model's own; without one, UTF-8 bytes
    (real False: the text of such a run means nothing, and chat needs token ids)."""
    if given == "auto":
        from .loading import load_tokenizer

        try:
            given = load_tokenizer(ref)
        except SpecMemoError:
            given = None
    return (given, True) if given is not None else (ByteTokenizer(vocab_size), False)


def eos_ids(model, tokenizer=None) -> set[int]:
    """Token ids that end a sequence: the model's generation config's, and the real tokenizer's."""
    eos = set()
    config = getattr(model, "generation_config", None)
    value = getattr(config, "eos_token_id", None) if config is not None else None
    for v in value if isinstance(value, (list, tuple)) else [value]:
        if v is not None:
            eos.add(int(v))
    if tokenizer is not None and tokenizer.eos_token_id is not None:
        eos.add(int(tokenizer.eos_token_id))
    return eos


def has_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def template_ids(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of `messages` through the chat template, ready for the assistant's reply.
    transformers returns a list, a tensor or a BatchEncoding depending on version: a flat list here."""
    out = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if isinstance(out, dict) or hasattr(out, "keys"):
        out = out["input_ids"]
    if hasattr(out, "tolist"):
        out = out.tolist()
    if out and isinstance(out[0], list):
        out = out[0]
    return list(out)


def plain_ids(tokenizer, text: str) -> list[int]:
    """Token ids of `text` as it is, no template."""
    if isinstance(tokenizer, ByteTokenizer):
        return tokenizer.encode(text)
    return list(tokenizer(text)["input_ids"])


def prompt_ids(tokenizer, prompt: str, chat_template: bool | None = None, system: str | None = None) -> list[int]:
    """Token ids of one prompt; in the chat template when the tokenizer has one (or when asked)."""
    use_template = has_template(tokenizer) if chat_template is None else chat_template
    if not use_template:
        return plain_ids(tokenizer, prompt)
    if not has_template(tokenizer):
        raise SpecMemoError("this model's tokenizer has no chat template", "use --no-chat-template")
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    return template_ids(tokenizer, messages)


def conversation_ids(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of a conversation ready for the next reply: the chat template, or without one
    one plain line per message."""
    if has_template(tokenizer):
        return template_ids(tokenizer, messages)
    return plain_ids(tokenizer, "".join(f"{m['content']}\n" for m in messages))


def max_token_chars(tokenizer) -> int:
    """The most characters of (normalised) text one token can stand for: the longest entry of the
    vocabulary, added tokens included. An upper bound for byte-level BPE (an entry holds one
    character per byte it covers, and a character is at least one byte) and for SentencePiece
    pieces (one character per character; byte-fallback entries such as <0x0A> are longer than what
    they cover). Computed once per tokenizer by its callers (a vocabulary scan, ~20 ms for 49k)."""
    if isinstance(tokenizer, ByteTokenizer):
        return tokenizer.max_token_chars()
    entries = list(tokenizer.get_vocab())
    entries += [str(getattr(t, "content", t)) for t in getattr(tokenizer, "added_tokens_decoder", {}).values()]
    return max(1, max((len(e) for e in entries), default=1))


def covers(token_chars: int) -> str:
    """The bound behind a refusal, in words."""
    return f"a token of this tokenizer covers at most {token_chars} character{'s' if token_chars != 1 else ''}"


def normalized_length(tokenizer, text: str) -> int:
    """Characters of `text` after the tokenizer's normalizer (NFC, Prepend, Replace, ...), the
    alphabet its vocabulary is written in; the text's own length when it has none (byte-level BPE:
    SmolLM2, Llama 3, GPT-2). A normalizer costs ~40 bytes per character (tokenizers' alignments)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    normalizer = getattr(backend, "normalizer", None)
    return len(normalizer.normalize_str(text)) if normalizer is not None else len(text)


def tokens_at_least(tokenizer, text: str, token_chars: int, limit: int) -> int | None:
    """A lower bound on the tokens of `text` when it proves them over `limit`, else None.

    Every token covers at most `token_chars` (max_token_chars) normalised characters, so no
    tokenisation has fewer than ceil(characters / token_chars) tokens, and a chat template only adds
    some. None means: tokenise it, which is cheap, since the text then has at most limit *
    token_chars characters (or a normalizer contracted it). Linear time, no tokenisation: a 10 MB
    prompt is refused in milliseconds instead of 24 s and 2.4 GB of tokenising."""
    if len(text) <= limit * token_chars:
        return None
    bound = math.ceil(normalized_length(tokenizer, text) / token_chars)
    return bound if bound > limit else None
