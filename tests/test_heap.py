"""release_freed_memory: the C heap's free pages go back to the system (glibc, as on Linux CI)."""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

import pytest

from soundtag._heap import release_freed_memory


def _anon_bytes() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no RssAnon in /proc/self/status")


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's; Linux CI has it"
)
def test_freed_heap_pages_go_back_to_the_system():
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    block, count = 64 << 10, 3200  # 200 MB in blocks under glibc's mmap threshold: on the heap
    blocks = [libc.malloc(block) for _ in range(count)]
    pin = libc.malloc(block)  # the heap's last block stays in use, so free() alone cannot shrink it
    for b in blocks:
        ctypes.memset(b, 1, block)
    touched = _anon_bytes()
    for b in blocks:
        libc.free(b)
    assert _anon_bytes() > touched - (50 << 20), "glibc gave the pages back by itself: the test shows nothing"
    assert release_freed_memory() is True
    assert _anon_bytes() < touched - (150 << 20)
    libc.free(pin)
