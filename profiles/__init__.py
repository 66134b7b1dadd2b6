"""Hardware profiles: one TOML file per device, with the numbers from its spec sheet.

To add a device, copy the file of the closest one, change its numbers and name the pages they come from
in `sources`; the fields and their types are the `HardwareProfile` dataclass in
`specmemo_plan/hardware/profiles.py`, and a file that breaks them is refused with the file and field named.

This folder is installed as the package `specmemo_plan.profiles` (pyproject.toml maps it); this file exists
so that the editable install can import that package from here. Every file follows these conventions and
states them in its `notes`:

- `memory_bytes`: total device memory as the driver reports it (nvidia-smi / NVML `memory.total`, checked
  against public nvidia-smi logs where a file says so), not the marketing capacity: a T4 "16 GB" shows 15360 MiB.
  For unified-memory devices (Jetson, CPU) it is the nominal RAM; `profile_for_device` replaces it with what the
  probe saw.
- Flops are dense (no 2:4 sparsity) peaks. Tensor-core fp16/bf16 figures are with FP32 accumulate, which is what
  cuBLAS and PyTorch use for fp16 GEMM (GeForce cards run it at half the FP16-accumulate rate). `peak_bf16_tflops`
  is 0.0 on chips without bf16; `peak_int8_tops` is 0.0 where none is claimed.
- `interconnect_bandwidth_gbps` is the host link (what offloading weights or KV to the host goes through), per
  direction, in GB/s (10^9 B/s); peer links (NVLink, Infinity Fabric) are named in `interconnect`.
- `runtime_overhead_bytes` is the memory the runtime holds outside tensors (CUDA/HIP context, library workspaces,
  caching-allocator slack): a typical value, with its basis in `notes`; 0 on the CPU.
- `match`: substrings of the names the probe reports (NVML, amdsmi, torch) that this profile takes, as whole
  words; "RTX 3090" does not take "RTX 3090 Ti" (see `specmemo_plan/hardware/matching.py`).
"""
