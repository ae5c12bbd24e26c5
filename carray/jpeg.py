"""JPEG compression at quality q with Pillow's libjpeg, in memory. No Ray here.

Pillow's `save(quality=q)` reproduces the JPEG rows of the published tables (see
shared SOURCES.md): gray images are coded as one-channel JPEGs, RGB with 4:2:0 chroma.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image


def compress(pixels: np.ndarray, quality: int) -> bytes:
    """uint8 (h, w) or (h, w, 3) -> JPEG bytes at `quality` (1..100)."""
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"JPEG quality must be in 1..100, got {quality}")
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=int(quality))
    return buf.getvalue()


def decompress(data: bytes) -> np.ndarray:
    """JPEG bytes -> uint8 (h, w) or (h, w, 3), as :func:`compress` was given them."""
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img).copy()


def roundtrip(pixels: np.ndarray, quality: int) -> np.ndarray:
    """Compress at `quality` and decode again: the degraded image, same shape and dtype."""
    return decompress(compress(pixels, quality))


def compress_twice(pixels: np.ndarray, first: int, second: int, shift: tuple[int, int]) -> tuple[np.ndarray, bytes]:
    """JPEG at `first`, crop `shift` pixels off the top and left (so the second JPEG's 8x8 grid
    does not line up with the first's), JPEG again at `second`. Returns (the original cropped the
    same way, the second JPEG's bytes)."""
    dy, dx = shift
    once = roundtrip(pixels, first)[dy:, dx:]
    return pixels[dy:, dx:], compress(np.ascontiguousarray(once), second)
