"""What this machine trains on: the one place that asks whether there is a GPU, how many cores
this process may use, and whether the CPU multiplies bf16 in hardware.

The ``auto`` recipe sizes its model to the device, training picks Lightning's accelerator and
the precision ``training.precision: auto`` means, and both ask here.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["accelerator", "cpu_count", "cpu_native_bf16", "default_device"]


def default_device() -> str:
    """``gpu`` when torch sees a CUDA device, else ``cpu``."""
    import torch

    return "gpu" if torch.cuda.is_available() else "cpu"


def cpu_count() -> int:
    """The CPU cores this process may run on (its affinity, where the system reports one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def cpu_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU multiplies bf16 in hardware (the ``avx512_bf16`` or ``amx_bf16`` flag of
    ``/proc/cpuinfo``). Elsewhere oneDNN emulates bf16 and autocast is several times slower.

    Examples
    --------
    >>> cpu_native_bf16("flags : fpu avx2 avx512f avx512_bf16")
    True
    >>> cpu_native_bf16("flags : fpu avx2 avx512f")
    False
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:  # not Linux: no flags to read, so no claim
            return False
    flags = set(cpuinfo.split())
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def accelerator() -> tuple[str, str]:
    """Lightning's accelerator here and the precision ``training.precision: auto`` means on it:
    bf16 (or fp16) mixed precision on a GPU, bf16 on a CPU that has it natively, else fp32."""
    import torch

    if torch.cuda.is_available():
        return "gpu", "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "cpu", "bf16-mixed" if cpu_native_bf16() else "32-true"
