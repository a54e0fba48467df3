"""What a run trains on: the one place that asks whether there is a GPU, how many cores this
process may use and whether the CPU multiplies bf16 in hardware, and that holds the devices,
nodes and strategy a run is given (:class:`Hardware`).

The ``auto`` recipe sizes its model to the device, training picks Lightning's accelerator, the
precision ``training.precision: auto`` means and its strategy, and all of them ask here. The
settings a user chooses per recipe (``training.precision``, ``device_data``, ``channels_last``,
``compile``, ``workers``) are fields of the recipe's ``training`` section.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from soundtag.errors import ParameterError

__all__ = ["Hardware", "accelerator", "cpu_count", "cpu_native_bf16", "default_device"]


def default_device() -> str:
    """``gpu`` when torch sees a CUDA device, else ``cpu`` (:func:`accelerator`'s answer)."""
    return accelerator()[0]


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


@dataclass(frozen=True)
class Hardware:
    """Where a run trains: devices per node, nodes, and Lightning's strategy.

    ``devices=2`` on one machine starts the other process itself (Lightning's launcher);
    under ``torchrun`` or SLURM every process runs the same command and finds its rank in the
    environment. ``strategy="ddp"`` is DistributedDataParallel (gloo on CPUs, NCCL on GPUs).
    """

    devices: int | str = 1
    num_nodes: int = 1
    strategy: str = "auto"

    def __post_init__(self):
        if isinstance(self.devices, str) and self.devices != "auto":
            try:
                object.__setattr__(self, "devices", int(self.devices))
            except ValueError:
                raise ParameterError(f"devices={self.devices!r} must be a whole number or 'auto'") from None
        if self.strategy not in ("auto", "ddp"):
            raise ParameterError(f"strategy={self.strategy!r} must be 'auto' or 'ddp'")
        if self.num_nodes < 1 or (isinstance(self.devices, int) and self.devices < 1):
            raise ParameterError(f"devices={self.devices} and num_nodes={self.num_nodes} must be at least 1")

    def lightning_strategy(self):
        if self.strategy == "ddp":
            import inspect

            # No buffer broadcast in forward: evaluation shards differ by a clip, and a
            # broadcast in a forward that one rank skips would hang every rank. Newer torch
            # names the switch forward_sync_buffers and deprecates broadcast_buffers.
            import torch
            from lightning.pytorch.strategies import DDPStrategy

            ddp_args = inspect.signature(torch.nn.parallel.DistributedDataParallel).parameters
            name = "forward_sync_buffers" if "forward_sync_buffers" in ddp_args else "broadcast_buffers"
            return DDPStrategy(**{name: False})
        return "auto"
