"""Large images: cut into tile windows that any actor restores, stored, stitched back. No Ray here.

The windows come from :func:`carray.patches.plan_tiles` (core `tile` pixels plus `margin` context,
on the 8-pixel grid), so the stitched image equals the image restored whole: no seams.
"""
from __future__ import annotations

import io
from dataclasses import replace

import numpy as np

from .. import storage
from ..images import DecodedImage
from ..patches import plan_tiles
from .layout import Locations
from .packs import empty_row, from_row

META_FILE = "meta.npz"


def _array_bytes(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def split_into_tiles(row: dict, *, tile: int, margin: int, where: Locations):
    """A decoded large image -> one row per tile window. Its size, alpha and metadata wait in its
    tiles folder for the stitching (written when the first window is asked for)."""
    image = from_row(row)
    h, w = image.pixels.shape[:2]
    meta = _array_bytes(
        size=np.array([h, w, row["channels"], tile, margin]), alpha=image.alpha if image.alpha is not None else np.zeros(0, np.uint8),
        **{name: np.frombuffer(value, np.uint8) for name, value in _metadata_fields(row).items()},
    )
    storage.write_bytes_atomic(where.dst_fs, storage.join(where.tiles_folder(row["path"]), META_FILE), meta)
    plan = plan_tiles(h, w, tile, margin)
    for index, t in enumerate(plan):  # one window at a time: the image is not copied whole again
        (wy0, wy1, wx0, wx1), (cy0, cy1, cx0, cx1) = t.window, t.core
        yield {**empty_row(row["path"], row["output"]), "pixels": image.pixels[wy0:wy1, wx0:wx1].tobytes(),
               "height": wy1 - wy0, "width": wx1 - wx0, "channels": row["channels"], "quality": row["quality"],
               "chroma_quality": row["chroma_quality"], "subsampling": row["subsampling"], "tile": index, "tiles": len(plan), "crop": [cy0 - wy0, cy1 - wy0, cx0 - wx0, cx1 - wx0]}


_METADATA = ("icc", "exif", "xmp", "envelope")


def _metadata_fields(row: dict) -> dict[str, bytes]:
    return {**{name: bytes(row[name]) for name in _METADATA}, "notes": row["notes"].encode()}


def store_tile(where: Locations, path: str, index: int, core: np.ndarray) -> None:
    """A restored tile's core into its image's tiles folder (raises OSError)."""
    buffer = io.BytesIO()
    np.save(buffer, core)
    storage.write_bytes_atomic(where.dst_fs, storage.join(where.tiles_folder(path), f"{index:06d}.npy"), buffer.getvalue())


def stitch(where: Locations, path: str) -> DecodedImage:
    """The restored tiles of one image, put back together (with its alpha and metadata), as from_row
    gives an image."""
    fs, folder = where.dst_fs, where.tiles_folder(path)
    with np.load(io.BytesIO(storage.read_bytes(fs, storage.join(folder, META_FILE)))) as meta:
        h, w, channels, tile, margin = (int(v) for v in meta["size"])
        alpha = meta["alpha"].reshape(h, w) if meta["alpha"].size else None
        fields = {name: meta[name].tobytes() for name in _METADATA}
        notes = meta["notes"].tobytes().decode()
    pixels = np.empty((h, w) if channels == 1 else (h, w, channels), np.uint8)
    for index, t in enumerate(plan_tiles(h, w, tile, margin)):
        y0, y1, x0, x1 = t.core
        pixels[y0:y1, x0:x1] = np.load(io.BytesIO(storage.read_bytes(fs, storage.join(folder, f"{index:06d}.npy"))))
    image = from_row({**fields, "notes": notes, "pixels": b"", "height": 0, "width": 0, "channels": 1, "alpha": b""})
    return replace(image, pixels=pixels, alpha=alpha)


def remove_tiles(where: Locations, path: str) -> None:
    storage.delete_dir_if_exists(where.dst_fs, where.tiles_folder(path))
