"""Handing the C heap's freed pages back to the system during evaluation on the CPU."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def _malloc_trim():
    """glibc's ``malloc_trim``, or None where the C library has none (macOS, musl)."""
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


def release_freed_memory() -> bool:
    """Return the free pages of the C heap to the system (glibc's ``malloc_trim(0)``); False
    where the C library cannot.

    Why: after a training epoch has freed large tensors, glibc raises its mmap threshold and
    serves later tensors from the heap, whose free pages it keeps. Evaluation batches of
    varying clips then left a one-epoch X run 0.7-1.1 GB more at 50,000 clips than at 5,000
    (``benchmarks/scale.py``, docs/benchmarks.md); trimming after each evaluation batch keeps
    the heap flat, for about 10 ms a batch of 64 X clips on 2 cores (timed by hand). Only on
    the CPU: a GPU's batches do not live on this heap, and 10 ms would dwarf them.
    """
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
