"""The speculative-decoding runtime that enforces a plan (`python -m engine --plan plan.json`).

- engine.runtime.Engine: loads the plan's models, refuses what the plan does not allow, generates
  (batched, greedy or lossless sampling), measured memory; engine.chat: multi-turn sessions over its
  public `continue_sequence` / `release`; engine.results: Output, Stats, Result; engine.tokens: tokenisation.
- engine.cache: KV caches and step buffers preallocated from specmemo_plan.memory, never grown.
- engine.speculative: one step: draft k, verify once, accept/reject, bonus token.
- engine.forward: a model over its static cache, logits only where used.
- engine.attention: grouped-query attention without per-head K/V copies for multi-token forwards.
- engine.loading: models from presets, HF folders, GGUF; engine.placement: multi-device plans through accelerate.
- engine.profiling, engine.workflow: what the autotuner measures (latency grid, acceptance replay) and the
  profile -> tune -> verify workflow on this device; engine.commands: its `specmemo-plan` commands.
- engine.checks: the plan against this engine and this machine (device, memory, the prediction recomputed),
  before anything loads; engine.prompts: prompts checked (encoding, count, length) before the weights load;
  engine.model_cache: the content-keyed cache of converted GGUF models.
- engine.memory_probe: measured memory on CPU (tensor bytes, VmHWM per phase), CUDA/ROCm (torch, NVML, amdsmi).

Nothing is imported here, so `import engine.loading` stays light.
"""
