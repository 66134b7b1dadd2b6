"""Can this draft speculate for this target? They must share one tokenizer; their embeddings may differ
in padding rows.

The rule is llama.cpp's (ggml-org/llama.cpp, common/speculative.cpp, `common_speculative_are_compatible`):
the same BOS and EOS tokens, vocabulary sizes within SPEC_VOCAB_MAX_SIZE_DIFFERENCE = 128 of each other,
and the same token text at every id both have (from SPEC_VOCAB_CHECK_START_TOKEN_ID = 5 on). Qwen2.5-32B
(152,064 embedding rows) with Qwen2.5-0.5B (151,936) passes: the rows past the tokenizer's 151,665 tokens are
padding, and both files carry the same tokenizer.
- Where both models are folders with a tokenizer.json, the tokenizers themselves are compared: a sha256 of
  the base vocabulary (`model.vocab`) and the added tokens at the ids both have. Equal tokenizers are a
  pair whatever their padding; different ones are refused.
- Where only config.json files are given, equal vocabulary sizes are a pair (as before: configs' special
  ids are not reliable, llama-68m states BOS 0 for Llama's tokenizer); sizes within 128 of each other are a
  pair when the configs' bos_token_id and eos_token_id agree (some EOS id in common).
The step buffers are sized on each model's own vocabulary: the verify logits on the target's V, the draft's
logits on the draft's (memory.candidate_buffer_specs); a draft token id is always below both sizes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from .errors import SpecMemoError

SPEC_VOCAB_MAX_SIZE_DIFFERENCE = 128  # llama.cpp common/speculative.cpp
SPEC_VOCAB_CHECK_START_TOKEN_ID = 5  # llama.cpp compares token texts from this id on


@dataclass(frozen=True)
class TokenizerInfo:
    """What a pair check knows of one model's tokenizer."""

    vocab_size: int  # embedding rows (the config's vocab_size)
    bos_token_id: int | None  # the config's
    eos_token_ids: tuple[int, ...]  # the config's eos_token_id (one or a list)
    vocab_hash: str | None = None  # sha256 of tokenizer.json's model.vocab, when the folder has one
    added_tokens: tuple[tuple[int, str], ...] = ()  # tokenizer.json's added_tokens (id, content)


def special_ids(cfg: dict) -> tuple[int | None, tuple[int, ...]]:
    """(bos_token_id, eos_token_ids) of a config (Gemma-3: its text_config when the top level has none)."""
    text = cfg.get("text_config") if isinstance(cfg.get("text_config"), dict) else {}
    bos = cfg.get("bos_token_id", text.get("bos_token_id"))
    eos = cfg.get("eos_token_id", text.get("eos_token_id"))
    eos = eos if isinstance(eos, list) else [eos]
    ints = tuple(e for e in eos if isinstance(e, int) and not isinstance(e, bool))
    return (bos if isinstance(bos, int) and not isinstance(bos, bool) else None), ints


def read_tokenizer(folder: Path) -> tuple[str | None, tuple[tuple[int, str], ...]]:
    """(vocab hash, added tokens) of folder/tokenizer.json; (None, ()) when there is none."""
    path = folder / "tokenizer.json"
    if not path.is_file():
        return None, ()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        vocab = data["model"]["vocab"]
        added = tuple(sorted((int(t["id"]), str(t["content"])) for t in data.get("added_tokens") or []))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SpecMemoError(f"cannot read the tokenizer {path}: {type(exc).__name__}",
                            "is it a Hugging Face tokenizer.json?") from None
    digest = hashlib.sha256(json.dumps(vocab, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
    return digest, added


def check(target: TokenizerInfo, draft: TokenizerInfo, names: tuple[str, str] = ("target", "draft")) -> str | None:
    """None when the vocabularies are identical, a one-line note saying which rule accepted a padded pair,
    or SpecMemoError naming what differs."""
    hint = "speculative decoding needs a draft that shares the target's tokenizer"
    if target.vocab_hash and draft.vocab_hash:
        if target.vocab_hash != draft.vocab_hash:
            raise SpecMemoError(f"the {names[1]}'s tokenizer.json vocabulary differs from the {names[0]}'s", hint)
        t_added, d_added = dict(target.added_tokens), dict(draft.added_tokens)
        clash = sorted(i for i in t_added.keys() & d_added.keys()
                       if i >= SPEC_VOCAB_CHECK_START_TOKEN_ID and t_added[i] != d_added[i])
        if clash:
            raise SpecMemoError(f"token {clash[0]} is {t_added[clash[0]]!r} for the {names[0]} but "
                                f"{d_added[clash[0]]!r} for the {names[1]}", hint)
        if target.vocab_size == draft.vocab_size:
            return None
        return (f"same tokenizer.json vocabulary; embedding rows {target.vocab_size:,} vs {draft.vocab_size:,} "
                "differ only by padding")
    diff = abs(target.vocab_size - draft.vocab_size)
    if diff == 0:  # as before: configs' special ids are unreliable (llama-68m states BOS 0 for Llama's tokenizer)
        return None
    if diff > SPEC_VOCAB_MAX_SIZE_DIFFERENCE:
        raise SpecMemoError(
            f"{names[1]} vocabulary ({draft.vocab_size}) differs from the {names[0]}'s ({target.vocab_size}) by "
            f"{diff} tokens, more than padding (llama.cpp allows {SPEC_VOCAB_MAX_SIZE_DIFFERENCE})", hint)
    _special_tokens_match(target, draft, names, hint)
    return (f"vocabularies differ by {diff} rows ({target.vocab_size:,} vs {draft.vocab_size:,}): taken as padding of "
            f"one tokenizer, as llama.cpp does (difference <= {SPEC_VOCAB_MAX_SIZE_DIFFERENCE}, same BOS/EOS); "
            "give model folders with tokenizer.json to compare the tokenizers themselves")


def _special_tokens_match(target: TokenizerInfo, draft: TokenizerInfo, names, hint) -> None:
    if target.bos_token_id is not None and draft.bos_token_id is not None and target.bos_token_id != draft.bos_token_id:
        raise SpecMemoError(f"the {names[1]}'s BOS token ({draft.bos_token_id}) differs from the {names[0]}'s "
                            f"({target.bos_token_id})", hint)
    if target.eos_token_ids and draft.eos_token_ids and not set(target.eos_token_ids) & set(draft.eos_token_ids):
        raise SpecMemoError(f"the {names[1]}'s EOS tokens {list(draft.eos_token_ids)} differ from the {names[0]}'s "
                            f"{list(target.eos_token_ids)}", hint)
