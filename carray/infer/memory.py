"""Giving freed memory back to the system between large images. No Ray here."""
from __future__ import annotations

import functools
import math
import sys
import threading
from typing import Callable

import numpy as np


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


# What a restoring actor keeps of its images' buffers, free and in use together: a GPU actor's dozen
# calls at once on 12 MP photos (36 MB each, decoded), or a CPU actor's 64 MP image decoded and restored.
PIXEL_BUFFER_BYTES = 512 << 20


def new_host_buffer(size: int) -> np.ndarray:
    return np.empty(size, np.uint8)


class PixelBuffers:
    """Uninitialised uint8 arrays for decoded and restored images, from buffers this process keeps
    and hands out again once nothing refers to them any more: a photo above 10.7 MP (32 MB, past what
    glibc keeps: keep_freed_memory) was otherwise memory new to the process each time, faulted in and
    zeroed by the kernel before the decoder, or the restoring, wrote it (docs/benchmarks.md, session 20).

    A buffer is in use while any array refers to it: every view of it (a reshaped or sliced array,
    numpy's frombuffer, torch.from_numpy) holds a reference, so its reference count says so, and no
    caller has to give anything back. Held: up to `keep_bytes`; a free buffer smaller than a new one
    is dropped (a collection's largest photos set the size); beyond the bound arrays are new.

    `new_buffer(size)` makes a buffer of `size` bytes: numpy's memory, or on a GPU actor pinned host
    memory (carray.ondevice.pinned_host_buffer), which the upload to the GPU reads as it is."""

    def __init__(self, keep_bytes: int = PIXEL_BUFFER_BYTES, new_buffer: Callable[[int], np.ndarray] = new_host_buffer):
        self.keep_bytes, self.new_buffer = keep_bytes, new_buffer
        self._lock = threading.Lock()
        self._buffers = [np.empty(0, np.uint8)]
        self._unused_count = self._counts()[0]  # what a buffer no array refers to counts, measured as array() does
        self._buffers = []

    def _counts(self) -> list[int]:
        return [sys.getrefcount(buffer) for buffer in self._buffers]

    def array(self, shape: tuple) -> np.ndarray:
        size = math.prod(shape)
        with self._lock:
            in_use = [count > self._unused_count for count in self._counts()]
            fits = [buffer for buffer, used in zip(self._buffers, in_use) if not used and buffer.size >= size]
            if fits:
                return min(fits, key=len)[:size].reshape(shape)
            # No free buffer is large enough: the free ones, all smaller, are dropped.
            self._buffers = [buffer for buffer, used in zip(self._buffers, in_use) if used]
            buffer = self.new_buffer(size)
            if self.held_bytes() + size <= self.keep_bytes:
                self._buffers.append(buffer)
            return buffer.reshape(shape)

    def held_bytes(self) -> int:
        return sum(buffer.size for buffer in self._buffers)
