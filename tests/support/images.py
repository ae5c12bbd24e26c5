"""Test images: the bundled data folder, and small synthetic images with JPEG-worthy texture."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

DATA = Path(__file__).resolve().parents[1] / "data"


def png_bytes(array: np.ndarray, **save) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=save.pop("format", "PNG"), **save)
    return buf.getvalue()


def smooth_image(h: int, w: int, color: bool = False, seed: int = 0) -> np.ndarray:
    """A natural-ish test image: smooth gradients plus texture, so JPEG has artifacts to add."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = 128 + 60 * np.sin(x / 9.0 + seed) * np.cos(y / 13.0) + rng.normal(0, 12, (h, w))
    if color:
        base = np.stack([base, np.roll(base, 7, axis=1), 255 - base], axis=2)
    return np.clip(base, 0, 255).astype(np.uint8)
