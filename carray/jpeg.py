"""JPEG compression at quality q with Pillow's libjpeg, in memory. No Ray here.

Pillow's `save(quality=q)` reproduces the JPEG rows of the published tables (see
shared SOURCES.md): gray images are coded as one-channel JPEGs, RGB with 4:2:0 chroma.
"""
from __future__ import annotations

import io
from typing import Optional

import numpy as np
from PIL import Image

from .quality import STANDARD_CHROMA, ijg_table


def compress(pixels: np.ndarray, quality: int, chroma_quality: Optional[int] = None, subsampling: Optional[int] = None) -> bytes:
    """uint8 (h, w) or (h, w, 3) -> JPEG bytes at `quality` (1..100). Colour only: `chroma_quality`
    codes Cb and Cr with the standard chrominance table at that quality instead of `quality`'s (as
    cameras and editors often do), `subsampling` 0/1/2 = 4:4:4 / 4:2:2 / 4:2:0 (the default)."""
    for name, value in (("JPEG quality", quality), ("chroma quality", chroma_quality)):
        if value is not None and not 1 <= int(value) <= 100:
            raise ValueError(f"{name} must be in 1..100, got {value}")
    options: dict = {"quality": int(quality)}
    if pixels.ndim == 3 and subsampling is not None:
        options["subsampling"] = int(subsampling)
    if pixels.ndim == 3 and chroma_quality is not None and int(chroma_quality) != int(quality):
        # The tables libjpeg's quality would write, with the chroma one at its own quality. Without
        # `quality`: Pillow would scale the given tables by it again.
        del options["quality"]
        options["qtables"] = [ijg_table(quality).astype(int).tolist(), ijg_table(chroma_quality, STANDARD_CHROMA).astype(int).tolist()]
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", **options)
    return buf.getvalue()


def decompress(data: bytes) -> np.ndarray:
    """JPEG bytes -> uint8 (h, w) or (h, w, 3), as :func:`compress` was given them."""
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img).copy()


def roundtrip(pixels: np.ndarray, quality: int, chroma_quality: Optional[int] = None, subsampling: Optional[int] = None) -> np.ndarray:
    """Compress (:func:`compress`) and decode again: the degraded image, same shape and dtype."""
    return decompress(compress(pixels, quality, chroma_quality, subsampling))


def compress_twice(pixels: np.ndarray, first: int, second: int, shift: tuple[int, int]) -> tuple[np.ndarray, bytes]:
    """JPEG at `first`, crop `shift` pixels off the top and left (so the second JPEG's 8x8 grid
    does not line up with the first's), JPEG again at `second`. Returns (the original cropped the
    same way, the second JPEG's bytes)."""
    dy, dx = shift
    once = roundtrip(pixels, first)[dy:, dx:]
    return pixels[dy:, dx:], compress(np.ascontiguousarray(once), second)
