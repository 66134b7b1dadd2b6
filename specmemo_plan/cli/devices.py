"""`devices`: this machine and the bundled profiles."""

from __future__ import annotations

import click

from ..render import planner as render
from .options import emit, json_option, user_errors


@click.command()
@click.option("--profiles", "show_profiles", is_flag=True, help="List the bundled hardware profiles instead.")
@json_option
@user_errors
def devices(show_profiles, as_json):
    """This machine's devices (NVML, amdsmi, torch, /proc) matched to hardware profiles."""
    from ..hardware import load_all_profiles, probe_devices

    if show_profiles:
        rows = [{"key": k, "name": p.name, "backend": p.backend, "memory_bytes": p.memory_bytes,
                 "memory_bandwidth_gbps": p.memory_bandwidth_gbps, "peak_fp16_tflops": p.peak_fp16_tflops,
                 "peak_bf16_tflops": p.peak_bf16_tflops, "peak_int8_tops": p.peak_int8_tops,
                 "runtime_overhead_bytes": p.runtime_overhead_bytes} for k, p in sorted(load_all_profiles().items())]
        emit({"profiles": rows}, as_json, lambda: render.profiles(rows))
        return
    found, notes = probe_devices()
    rows = [{"index": d.index, "backend": d.backend, "name": d.name, "total_memory_bytes": d.total_memory_bytes,
             "free_memory_bytes": d.free_memory_bytes, "source": d.source, "profile": d.profile_key,
             "details": d.details} for d in found]
    for note in notes:
        click.echo(f"note: {note}", err=True)
    emit({"devices": rows, "notes": notes}, as_json, lambda: render.probed(rows))
