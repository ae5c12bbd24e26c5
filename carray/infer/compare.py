"""Where restoring changed an image the most, and the pictures that show it. No Ray here."""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

BLOCK = 8  # the search moves in JPEG's 8x8 blocks: the changes restoring makes follow them
STRIPE = 128 * BLOCK  # rows compared at a time
THUMBNAIL_SIDE = 480


@dataclass(frozen=True)
class Region:
    top: int
    left: int
    height: int
    width: int


def change_map(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """Absolute change per pixel, summed over the channels (int32, H x W)."""
    diff = np.abs(after.astype(np.int32) - before.astype(np.int32))
    return diff.sum(axis=2) if diff.ndim == 3 else diff


def most_changed(before: np.ndarray, after: np.ndarray, size: int) -> Region:
    """The size x size window (the whole side where the image is smaller) whose pixels restoring
    changed the most, on the grid of 8x8 blocks."""
    if before.shape != after.shape:
        raise ValueError(f"the restored image is {after.shape}, the input {before.shape}")
    h, w = before.shape[:2]
    wh, ww = min(size, h), min(size, w)
    bh, bw = h // BLOCK, w // BLOCK
    nh, nw = min(wh // BLOCK, bh), min(ww // BLOCK, bw)
    if nh == 0 or nw == 0:  # smaller than a block: the whole image
        return Region(0, 0, wh, ww)
    blocks = np.concatenate([  # stripe by stripe: a 100 MP image's whole change map would take GBs
        change_map(before[y:end, : bw * BLOCK], after[y:end, : bw * BLOCK]).reshape(-1, BLOCK, bw, BLOCK).sum(axis=(1, 3), dtype=np.int64)
        for y in range(0, bh * BLOCK, STRIPE) for end in [min(y + STRIPE, bh * BLOCK)]
    ])
    integral = np.pad(blocks.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    sums = integral[nh:, nw:] - integral[:-nh, nw:] - integral[nh:, :-nw] + integral[:-nh, :-nw]
    i, j = np.unravel_index(int(np.argmax(sums)), sums.shape)
    top, left = min(int(i) * BLOCK, h - wh), min(int(j) * BLOCK, w - ww)
    return Region(top, left, wh, ww)


def mean_change(before: np.ndarray, after: np.ndarray, region: Region | None = None) -> float:
    """Mean absolute change in grey levels per channel value (of the region, or the whole image)."""
    if region is not None:
        rows, cols = slice(region.top, region.top + region.height), slice(region.left, region.left + region.width)
        before, after = before[rows, cols], after[rows, cols]
    if not before.size:
        return 0.0
    total = sum(int(change_map(before[y : y + STRIPE], after[y : y + STRIPE]).sum()) for y in range(0, before.shape[0], STRIPE))
    return total / before.size


def crop_png(pixels: np.ndarray, region: Region) -> bytes:
    """The region at 100 %, lossless, so the page shows the pixels themselves."""
    part = pixels[region.top : region.top + region.height, region.left : region.left + region.width]
    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(part)).save(out, format="PNG", compress_level=6)
    return out.getvalue()


def thumbnail_jpeg(pixels: np.ndarray, side: int = THUMBNAIL_SIDE) -> bytes:
    """The whole image at most `side` pixels on its long side, for finding the region in it."""
    img = Image.fromarray(pixels)
    img.thumbnail((side, side), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=85)
    return out.getvalue()
