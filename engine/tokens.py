"""Text to token ids and back: the model's tokenizer with its chat template, or UTF-8 bytes.

One place for it, because generate (a prompt), chat (a whole conversation) and the benches (the
calibration prompts) must all wrap text the same way, or KV reuse and greedy equality break.
"""

from __future__ import annotations

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
