"""Load a model and its tokenizer from any reference `specmemo_plan.models` understands.

- a preset: random-initialised weights from its config (for memory and latency work; callers say so);
- a local Hugging Face folder: its weights;
- a GGUF file (the bundled SmolLM2): dequantised by transformers once, then cached as safetensors
  in $SPECMEMO_CACHE (default ~/.cache/specmemo-plan), keyed by the file's content, validated on
  every use (engine.model_cache), because the conversion takes ~20 s on two CPU cores.

Offline always: nothing is fetched from a hub.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from specmemo_plan.errors import SpecMemoError  # noqa: E402
from specmemo_plan.models import ModelShape, load_preset_config, load_shape  # noqa: E402

from . import model_cache  # noqa: E402

TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class LoadedModel:
    model: torch.nn.Module  # a transformers *ForCausalLM in eval mode
    shape: ModelShape
    random_weights: bool  # True when initialised from a preset config, not trained weights


def torch_dtype(dtype: str) -> torch.dtype:
    if dtype not in TORCH_DTYPES:
        raise SpecMemoError(f"the engine runs fp32, fp16 or bf16 weights, not {dtype}", "plan with --dtype fp16")
    return TORCH_DTYPES[dtype]


def convert_gguf(gguf: Path, out: Path) -> None:
    """The GGUF's dequantised fp32 weights, config and tokenizer, saved as a Hugging Face folder in `out`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The weights are already dequantised; drop the GGUF marker so the copy saves as plain fp32.
    model.hf_quantizer = None
    model.config.__dict__.pop("quantization_config", None)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _converted_gguf(gguf: Path) -> Path:
    """A Hugging Face folder with the GGUF's dequantised weights and tokenizer (converted once per content)."""
    return model_cache.converted(gguf, convert_gguf)


def weights_folder(ref: str) -> Path | None:
    """The Hugging Face folder holding the weights of `ref`, or None for a preset (random weights)."""
    shape = load_shape(ref)
    if shape.source.startswith(("preset:", "config:")):
        return None
    path = Path(shape.source)
    return _converted_gguf(path) if path.suffix == ".gguf" else path


def load_model(ref: str, dtype: str = "fp32", device: str | torch.device = "cpu", seed: int = 0) -> LoadedModel:
    """The model behind `ref` in `dtype` on `device`, in eval mode."""
    from transformers import AutoConfig, AutoModelForCausalLM

    shape = load_shape(ref)
    folder = weights_folder(ref)
    if folder is None:
        if shape.source.startswith("preset:"):
            cfg = load_preset_config(shape.source.split(":", 1)[1])
        else:
            import json

            cfg = json.loads(Path(shape.source.split(":", 1)[1]).read_text())
        cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
        config = AutoConfig.for_model(**cfg)
        torch.manual_seed(seed)
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype(dtype))
        return LoadedModel(model.eval(), shape, random_weights=True)
    model = _from_pretrained(AutoModelForCausalLM, folder, torch_dtype(dtype))
    return LoadedModel(model.to(device).eval(), shape, random_weights=False)


def _from_pretrained(auto, folder: Path, dtype: torch.dtype):
    """The weights of a folder; a damaged file (a truncated or half-written safetensors, a missing
    shard) is one line naming the folder, not a traceback."""
    from safetensors import SafetensorError

    try:
        return auto.from_pretrained(folder, dtype=dtype, device_map=None)
    except (OSError, ValueError, SafetensorError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SpecMemoError(f"cannot load the weights in {folder}: {first}",
                            "the files are damaged or incomplete: copy or save the model again") from None


def load_tokenizer(ref: str):
    """The tokenizer of a model with real weights; None for presets (they ship no tokenizer)."""
    from transformers import AutoTokenizer

    folder = weights_folder(ref)
    if folder is None or not any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
        return None
    return AutoTokenizer.from_pretrained(folder)
