"""Ways to draft besides a separate draft model: EAGLE-1/2 and EAGLE-3 heads, Medusa heads, MTP layers,
model-free n-gram lookup, and the token trees they are verified as.

- methods.py: the DraftMethod registry (what each method holds, whether it drafts trees, its default
  acceptance and the source of that number) and the recognition of a head's config.json;
- heads.py: a head's weights by its real layout, as a head-shaped ModelShape the memory and latency
  models read;
- trees.py: token trees (depth, top-k per node, T verified tokens) and their expected accepted length;
- buffers.py: the step's preallocated tensors per method (memory.candidate_buffer_specs);
- ngram.py: the host-memory index of model-free drafting (stated, never counted in device memory).
"""
