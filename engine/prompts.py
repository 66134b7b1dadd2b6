"""A request checked before any model loads: prompts read, counted, measured and tokenised.

`python -m engine` refuses what it can before the weights load (engine/cli.py), in this order,
each refusal one SpecMemoError: text that is not UTF-8 (a prompts file, `--prompt` bytes that
arrive from argv as surrogate escapes); more prompts than the plan's batch (counted, not
tokenised); a prompt whose characters alone prove it over the plan's context
(engine.tokens.tokens_at_least); then the exact token counts (`check_request`, the same checks and
messages as Engine.check_request). Only the tokenizer loads for this (engine.loading.load_tokenizer
reads no weights), so a 10 MB prompt or 10,000 prompts fail in well under a second.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from specmemo_plan.errors import SpecMemoError

from .tokens import covers, max_token_chars, prompt_ids, tokens_at_least


@dataclass(frozen=True)
class Prompt:
    label: str  # how messages name it: "prompt 2 (prompts.txt line 5)"
    text: str


def check_text(text: str, label: str) -> str:
    """`text` when it is encodable UTF-8; argv bytes that are not UTF-8 reach Python as lone
    surrogates (surrogateescape, U+DC80..U+DCFF stand for bytes 0x80..0xFF), and a JSON file can
    hold lone surrogates as escapes: the tokenizer cannot encode either."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        code = ord(text[exc.start])
        what = f"byte 0x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"an unpaired surrogate U+{code:04X}"
        raise SpecMemoError(f"{label} is not UTF-8 text: {what} at character {exc.start}",
                            "give the text in UTF-8") from None
    return text


def decode_text_file(path: Path, what: str) -> str:
    """A file's text: UTF-8 without NUL bytes (a NUL means a binary file, not prompts)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SpecMemoError(f"cannot read {path}: {exc.strerror}", f"give {what}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise SpecMemoError(f"{path} is not UTF-8 text: byte 0x{data[exc.start]:02x} at offset {exc.start} (line {line})",
                            f"save it as UTF-8; expected {what}") from None
    if "\0" in text:
        line = text.count("\n", 0, text.index("\0")) + 1
        raise SpecMemoError(f"{path} holds a NUL byte (line {line}): it is a binary file", f"give {what}")
    return text


def read_prompts(prompts: tuple[str, ...], prompts_file: str | None) -> list[Prompt]:
    """`--prompt` texts, then the file's: one prompt per non-blank line, or a .json list of strings."""
    out = [Prompt(f"--prompt {i + 1}", check_text(p, f"--prompt {i + 1}")) for i, p in enumerate(prompts)]
    if prompts_file:
        path = Path(prompts_file)
        what = "a text file, one prompt per line, or a .json list of strings"
        text = decode_text_file(path, what)
        if path.suffix == ".json":
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                raise SpecMemoError(f"{path} is not valid JSON: {exc.msg} at line {exc.lineno}",
                                    "give a JSON list of strings") from None
            if not isinstance(data, list) or not all(isinstance(p, str) for p in data):
                raise SpecMemoError(f"{path} must hold a JSON list of strings")
            rows = [(f"{path.name} item {i + 1}", p) for i, p in enumerate(data)]
        else:
            rows = [(f"{path.name} line {n}", line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
        start = len(out)
        out += [Prompt(f"prompt {start + i + 1} ({where})", check_text(p, f"prompt {start + i + 1} ({where})"))
                for i, (where, p) in enumerate(rows)]
    if not out:
        raise SpecMemoError("no prompt given", "use --prompt TEXT or --prompts-file FILE")
    return out


def check_count(count: int, knobs) -> None:
    """More prompts than the plan's batch: refused by counting, before anything is tokenised."""
    if count > knobs.batch_size:
        raise SpecMemoError(f"knobs.batch_size: {count} prompts exceed the plan's batch of {knobs.batch_size}",
                            "split the prompts, or make a plan with a larger --batch")


def check_new_tokens(knobs, max_new: int) -> None:
    """New tokens that leave no room for a prompt in the context: refused before anything loads."""
    if max_new >= knobs.max_context:
        raise SpecMemoError(f"knobs.max_context: {max_new} new tokens leave no room for a prompt in the plan's "
                            f"context of {knobs.max_context}", f"use --max-new-tokens {knobs.max_context - 1} or less")


def _context_error(label: str, what: str, need: int, max_new: int, context: int) -> SpecMemoError:
    return SpecMemoError(f"knobs.max_context: {label} has {what}; with {max_new} new tokens it needs {need}, "
                         f"over the plan's context of {context}",
                         "shorten the prompt, lower --max-new-tokens, or make a plan with a larger --context")


def encode_prompts(prompts: list[Prompt], tokenizer, knobs, max_new: int, vocab_size: int,
                   chat_template: bool | None = None) -> list[list[int]]:
    """Token ids of each prompt (engine.tokens.prompt_ids, as Engine.encode), each refused before
    tokenising when its characters alone prove it too long for the plan's context."""
    check_count(len(prompts), knobs)
    check_new_tokens(knobs, max_new)
    limit = knobs.max_context - max_new  # prompt tokens a sequence can hold
    token_chars = max_token_chars(tokenizer)
    for p in prompts:
        bound = tokens_at_least(tokenizer, p.text, token_chars, limit)
        if bound is not None:
            raise _context_error(p.label, f"{len(p.text)} characters, so at least {bound} tokens "
                                 f"({covers(token_chars)})", bound + max_new, max_new, knobs.max_context)
    ids = [prompt_ids(tokenizer, p.text, chat_template) for p in prompts]
    check_request(knobs, vocab_size, ids, max_new, [p.label for p in prompts])
    return ids


def check_request(knobs, vocab_size: int, prompts: list[list[int]], max_new: int,
                  labels: list[str] | None = None) -> None:
    """A batch of token ids against the plan: its batch, its context, the vocabulary."""
    labels = labels or [f"prompt {i}" for i in range(len(prompts))]
    if not prompts:
        raise SpecMemoError("no prompt given", "give --prompt or --prompts-file")
    check_count(len(prompts), knobs)
    if max_new < 1:
        raise SpecMemoError(f"max_new_tokens must be at least 1, got {max_new}")
    for label, ids in zip(labels, prompts):
        if not ids:
            raise SpecMemoError(f"{label} is empty", "give at least one token")
        if len(ids) + max_new > knobs.max_context:
            raise _context_error(label, f"{len(ids)} tokens", len(ids) + max_new, max_new, knobs.max_context)
        if max(ids) >= vocab_size or min(ids) < 0:
            raise SpecMemoError(f"{label} has token ids outside the vocabulary of {vocab_size}")
