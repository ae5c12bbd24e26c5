"""Giving freed memory back to the system between large images. No Ray here."""
from __future__ import annotations

import functools


@functools.lru_cache(maxsize=None)
def _malloc_trim():
    """glibc's malloc_trim, looked up once per process (None where there is no glibc)."""
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def release_free_memory() -> None:
    """Give the heap's free pages back to the system (glibc keeps them otherwise): a worker that
    just restored or stitched a large image would hold its peak for the rest of the job."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
