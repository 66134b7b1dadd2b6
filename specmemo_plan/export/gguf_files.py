"""The GGUF files a llama.cpp export loads, and the shell lines that make the ones that do not exist yet.

llama.cpp loads GGUF files only. A model that is one (a path, or the bundled SmolLM2 GGUF) is loaded as
it is; any other is converted first by llama.cpp's own `convert_hf_to_gguf.py` (at the top of the
ggml-org/llama.cpp repository; its `--outtype` takes f32, f16, bf16, q8_0, tq1_0, tq2_0 or auto), after
`hf download` for a Hub repo. Formats it cannot write (int4) are converted to f16 and then quantised with
llama.cpp's `llama-quantize`. A folder without a tokenizer (the bundled draft uses the target's) gets the
target's tokenizer copied in first: the GGUF must carry the vocabulary.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

from .facts import ModelSource, Raw, pretrained_args, python_lines

# plan weight dtype -> convert_hf_to_gguf.py --outtype; int4 goes through f16, then llama-quantize Q4_0
# (4.5 bits per weight); fp8 has no GGUF type, q8_0 is the nearest (8.5 bits per weight)
OUTTYPES = {"fp32": "f32", "fp16": "f16", "bf16": "bf16", "int8": "q8_0", "fp8": "q8_0", "int4": "f16"}
QUANTIZE = {"int4": "Q4_0"}
CONVERT = "python llama.cpp/convert_hf_to_gguf.py"


@dataclass(frozen=True)
class GgufFile:
    """One model as llama.cpp loads it."""

    word: str  # what -m / -md takes on the command line
    setting: str  # what the settings show
    steps: list[str] = field(default_factory=list)  # shell lines before the command: find it, or make it
    made: bool = False  # True: the file does not exist until the steps run


def gguf_file(src: ModelSource, dtype: str, target: ModelSource) -> GgufFile:
    """The GGUF for `src` with weights in `dtype`; `target`: where a folder without a tokenizer takes one."""
    if src.form == "gguf":
        if src.kind == "bundled":
            return GgufFile(Raw(f'"${src.var}"'), src.ref, src.shell_lines())
        return GgufFile(src.location, src.location)
    out = f"{src.stem}.gguf"
    if src.form == "config":
        return GgufFile(out, out, [f"# {src.ref} is a config.json without weights: nothing to convert; give llama.cpp "
                                   f"a GGUF of the real model as {out}"], made=True)
    steps = [f"# {src.ref} is not a GGUF file: make {out} first"]
    if src.kind == "hub":
        steps += [f"# {src.location} from the Hugging Face Hub (a gated repo needs `hf auth login` first)",
                  f"hf download {shlex.quote(src.location)} --local-dir {shlex.quote(src.stem)}"]
        folder = shlex.quote(src.stem)
    elif not src.has_tokenizer and src.role == "draft" and target.has_tokenizer:
        folder = f"{src.stem}-hf"
        steps += _with_tokenizer(src, target, folder)
        folder = shlex.quote(folder)
    else:
        if not src.has_tokenizer:
            steps.append(f"# {src.ref} has no tokenizer: convert_hf_to_gguf.py needs one in the folder")
        steps += src.shell_lines()
        folder = f'"${src.var}"' if src.kind == "bundled" else shlex.quote(src.location)
    outtype = OUTTYPES[dtype]
    if dtype in QUANTIZE:
        unquantised = f"{src.stem}-{outtype}.gguf"
        steps += [f"{CONVERT} {folder} --outfile {shlex.quote(unquantised)} --outtype {outtype}",
                  f"llama-quantize {shlex.quote(unquantised)} {shlex.quote(out)} {QUANTIZE[dtype]}"]
    else:
        steps.append(f"{CONVERT} {folder} --outfile {shlex.quote(out)} --outtype {outtype}")
    return GgufFile(out, out, steps, made=True)


def _with_tokenizer(src: ModelSource, target: ModelSource, folder: str) -> list[str]:
    """Copy a folder without a tokenizer to `folder` and save the target's tokenizer beside its weights."""
    imports = ["import shutil", "from pathlib import Path", "from transformers import AutoTokenizer"]
    if "bundled" in (src.kind, target.kind):
        imports.append("from specmemo_plan.models import bundled_path")
    return [f"# {src.ref} has no tokenizer (it uses the target's): copy it with the target's tokenizer to {folder}",
            "python - <<'EOF'", *imports, *python_lines(src), *python_lines(target),
            f"shutil.copytree({src.var}, {folder!r}, dirs_exist_ok=True)",
            f"AutoTokenizer.from_pretrained({pretrained_args(target)}).save_pretrained({folder!r})", "EOF"]
