"""The committed draft for the bundled target loads as a plain transformers model and fits it."""

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from specmemo_plan.models import bundled_path, check_pair, load_shape  # noqa: E402

DRAFT = "bundled:smollm2-135m-draft"


def test_draft_folder_is_committed_and_small():
    folder = Path(bundled_path("smollm2-135m-draft"))
    for name in ("config.json", "model.safetensors", "README.md"):
        assert (folder / name).is_file(), name
    size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
    assert size <= 25_000_000, size
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"]


def test_draft_vocabulary_matches_target():
    draft, target = load_shape(DRAFT), load_shape("smollm2-135m-instruct")
    assert draft.vocab_size == target.vocab_size == 49152
    check_pair(target, draft)


def test_draft_forward_pass():
    from transformers import AutoModelForCausalLM

    folder = bundled_path("smollm2-135m-draft")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.vocab_size == load_shape("smollm2-135m-instruct").vocab_size
    ids = torch.tensor([[1, 504, 3458, 282, 1345, 30, 2]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape == (1, ids.shape[1], model.config.vocab_size)
    assert torch.isfinite(logits).all()
