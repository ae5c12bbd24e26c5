"""Patches for training and overlapping tiles for inference. No Ray here.

Patch contract: images are arrays (h, w) or (h, w, c); patches come back as (n, p, p) or
(n, p, p, c) with their top-left corners (y, x).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np


def patch_origins(length: int, size: int, stride: int) -> list[int]:
    """Top-left offsets along one axis: 0, stride, 2*stride, ... while the patch fits.

    The count is floor((length - size) / stride) + 1, or 0 when the image is smaller than a patch.
    """
    if size < 1 or stride < 1:
        raise ValueError(f"patch size and stride must be positive, got {size}, {stride}")
    if length < size:
        return []
    return list(range(0, length - size + 1, stride))


def extract_patches(image: np.ndarray, size: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Cut every size x size patch on a stride grid. Returns (patches, origins (n, 2) as y, x)."""
    ys = patch_origins(image.shape[0], size, stride)
    xs = patch_origins(image.shape[1], size, stride)
    origins = np.array([(y, x) for y in ys for x in xs], dtype=np.int32).reshape(-1, 2)
    if not len(origins):
        return np.zeros((0, size, size) + image.shape[2:], image.dtype), origins
    # A strided view of every window, then one copy of the ones on the grid.
    windows = np.lib.stride_tricks.sliding_window_view(image, (size, size), axis=(0, 1))
    grid = windows[:: stride, :: stride][: len(ys), : len(xs)]  # (ny, nx, [c,] size, size)
    if image.ndim == 3:
        grid = np.moveaxis(grid, 2, -1)  # -> (ny, nx, size, size, c)
    return np.ascontiguousarray(grid).reshape((-1, size, size) + image.shape[2:]), origins


def stitch_patches(patches: np.ndarray, origins: np.ndarray, shape: tuple) -> np.ndarray:
    """Inverse of :func:`extract_patches`: average the patches back into an image of `shape`.

    Pixels no patch covered are 0. Returns float64.
    """
    total = np.zeros(shape, np.float64)
    count = np.zeros(shape[:2], np.float64)
    size = patches.shape[1]
    for patch, (y, x) in zip(patches, origins):
        total[y : y + size, x : x + size] += patch
        count[y : y + size, x : x + size] += 1
    count = np.maximum(count, 1)
    return total / (count[..., None] if total.ndim == 3 else count)


@dataclass(frozen=True)
class Tile:
    """One inference tile: `core` is the region it owns in the output, `window` the larger input
    region it reads (core plus margin, clipped to the image). Boxes are (y0, y1, x0, x1)."""

    core: tuple[int, int, int, int]
    window: tuple[int, int, int, int]


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def plan_tiles(height: int, width: int, tile: int, margin: int, align: int = 8) -> list[Tile]:
    """Cover an image with non-overlapping cores of about `tile` pixels, each read with `margin`
    context on every side.

    Cores start at multiples of `align`, so networks with strided layers see every tile on the same
    grid as the whole image. When `margin` covers the network's receptive field, the stitched result
    equals running the network on the whole image.
    """
    tile = max(align, _round_up(tile, align))
    margin = _round_up(max(margin, 0), align)
    tiles = []
    for y0 in range(0, height, tile):
        for x0 in range(0, width, tile):
            y1, x1 = min(y0 + tile, height), min(x0 + tile, width)
            window = (max(0, y0 - margin), min(height, y1 + margin), max(0, x0 - margin), min(width, x1 + margin))
            tiles.append(Tile(core=(y0, y1, x0, x1), window=window))
    return tiles


def apply_tiled(
    image: np.ndarray,
    fn: Callable[[np.ndarray], np.ndarray],
    tile: int,
    margin: int,
    align: int = 8,
) -> np.ndarray:
    """Run `fn` (array -> array of the same height and width) tile by tile and stitch the cores.

    Memory is bounded by one window, whatever the image size.
    """
    out = None
    for t in plan_tiles(image.shape[0], image.shape[1], tile, margin, align):
        wy0, wy1, wx0, wx1 = t.window
        cy0, cy1, cx0, cx1 = t.core
        result = fn(image[wy0:wy1, wx0:wx1])
        if out is None:
            out = np.empty(image.shape[:2] + result.shape[2:], result.dtype)
        out[cy0:cy1, cx0:cx1] = result[cy0 - wy0 : cy1 - wy0, cx0 - wx0 : cx1 - wx0]
    return out

