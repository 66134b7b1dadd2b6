"""The speculative-decoding runtime that enforces a plan (`python -m engine --plan plan.json`).

- engine.runtime.Engine: loads the plan's models, refuses what the plan does not allow, generates
  (batched, greedy or lossless sampling), chat sessions (engine.chat), measured memory.
- engine.cache: KV caches and step buffers preallocated from specmemo_plan.memory, never grown.
- engine.speculative: one step: draft k, verify once, accept/reject, bonus token.
- engine.forward: a model over its static cache, logits only where used.
- engine.attention: grouped-query attention without per-head K/V copies for multi-token forwards.
- engine.memory_probe: measured memory on CPU (tensor bytes, VmHWM per phase), CUDA/ROCm (torch, NVML, amdsmi).

Nothing is imported here, so `import engine.loading` stays light.
"""
