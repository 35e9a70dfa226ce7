"""Giving freed memory back to the operating system during a large export."""

from __future__ import annotations

import ctypes
import gc
import os


def total_memory() -> int:
    """Physical memory in bytes: what exports, the doctor and the matrix report size against."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def release_free_memory() -> None:
    """Collects garbage, then asks glibc to return its free heap pages. Quantizing a 12B model
    layer by layer frees gigabytes of temporaries in pieces too small for glibc to unmap on
    its own; measured on a 2-layer Mistral Nemo, trimming takes ~0.4 GB off the resident set
    before lowering. A no-op where the C library has no malloc_trim (macOS, musl)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
