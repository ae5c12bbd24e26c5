"""Giving freed memory back to the system between large images. No Ray here."""
from __future__ import annotations

import functools


@functools.lru_cache(maxsize=None)
def _libc():
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters


def keep_freed_memory() -> None:
    """Let this process reuse the memory of one image for the next (glibc): buffers up to 32 MB (a
    9 MP photo's pixels: 28 MB) come from the heap and stay there when freed, up to 512 MB of free
    heap. By default glibc's thresholds adapt, and a freed photo's buffers often went back to the
    system: pages that a VM faults in afresh for the next photo, 30 ms per 28 MB here, as long as the
    decode itself (bench/infer.py --cases ceiling). release_free_memory() still gives it all back
    after an unusually large image."""
    libc = _libc()
    if libc is not None and hasattr(libc, "mallopt"):
        libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)
        libc.mallopt(M_TRIM_THRESHOLD, 512 << 20)


@functools.lru_cache(maxsize=None)
def _malloc_trim():
    """glibc's malloc_trim, looked up once per process (None where there is no glibc)."""
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


# Calls that held fewer pixels leave the heap as the next call will want it: giving the pages back
# and faulting them in again cost 0.5-0.9 ms per MP of a 9.4 MP photo (bench/infer.py --cases ceiling).
TRIM_ABOVE_PIXELS = 16_000_000


def release_free_memory() -> None:
    """Give the heap's free pages back to the system (glibc keeps them otherwise): a worker that
    just restored or stitched a large image would hold its peak for the rest of the job."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
