"""Read, look at the header, decide, decode. No Ray here.

The policy (carray/quality.py) decides from the header alone: an input it passes through is never
decoded, and its own bytes travel on to be written as they are.
"""
from __future__ import annotations

import itertools
from typing import Optional

from .. import storage
from ..images import ImageError, decode_image, read_header
from ..quality import Policy
from .layout import Locations
from .packs import IMAGE_TYPES, NO_QUALITY, PACK_PIXELS, TILE_PACK_PIXELS, WHOLE, empty_row, to_packs, to_row, unpack, weight
from .plan import passed_name
from .tiles import split_into_tiles


def read_and_decode(row: dict, *, where: Locations, max_pixels: Optional[int], policy: Policy) -> dict:
    """One planned key -> a row with its pixels and the quality to restore at, or skipped, or the
    reason it cannot be used. An input passed through is written here, as its own bytes, by the task
    that already holds them: its row goes on without them (nothing to restore, nothing to encode)."""
    path, output = row["path"], row["output"]
    if row["skipped"]:
        return empty_row(path, output, skipped=row["skipped"])
    try:
        data = storage.read_bytes(where.src_fs, where.input_path(path))
    except (OSError, storage.StorageError) as exc:
        return empty_row(path, output, error=f"cannot read: {exc}")
    row = decode_to_row(path, output, data, max_pixels, policy)
    if row["passed"]:
        try:
            storage.write_bytes_atomic(where.dst_fs, where.output_path(row["output"]), row["data"])
        except OSError as exc:
            row["error"] = f"cannot write the output: {exc}"
        row["data"] = b""
    return row


def decode_to_row(path: str, output: str, data: bytes, max_pixels: Optional[int], policy: Optional[Policy] = None) -> dict:
    """A file's bytes -> a row. With a policy, the header decides first: a passed-through file
    keeps its bytes (`data`) and its own name (:func:`carray.infer.plan.passed_name`), and its
    pixels are never decoded. Without one, the pixels are decoded and the quality is the tables'."""
    try:
        header = read_header(data, max_pixels)
        quality, passed = policy.decide(header.quality) if policy else (header.quality, "")
        if passed:
            row = empty_row(path, passed_name(path, output))
            row.update(passed=passed, data=data, height=header.height, width=header.width,
                       quality=NO_QUALITY if header.quality is None else header.quality)
            return row
        chroma = policy.chroma_quality(quality, header.chroma_quality) if policy else header.chroma_quality
        # As stored: restored on the grid it was coded on, its EXIF (orientation too) kept as it is.
        return to_row(path, output, decode_image(data, max_pixels, upright=False), quality, chroma, header.subsampling)
    except ImageError as exc:
        return empty_row(path, output, error=str(exc))
    except MemoryError:
        return empty_row(path, output, error="out of memory while decoding (lower --max-pixels or add memory)")
    except Exception as exc:  # last resort: one bad file must never stop the job
        return empty_row(path, output, error=f"unexpected error while decoding: {type(exc).__name__}: {exc}")


def needs_tiles(row: dict, split_above: float) -> bool:
    """A decoded image above --split-above megapixels is cut into tiles that every actor restores."""
    return bool(split_above) and not (row["error"] or row["skipped"] or row["passed"]) and row["height"] * row["width"] > split_above * 1e6


def decode_packs(table, *, where: Locations, max_pixels: Optional[int], policy: Policy, split_above: float,
                 tile: int, margin: int, tile_batch: int = 1):
    """map_batches generator: packs of keys -> packs of decoded images of about PACK_PIXELS pixels
    (tiles: TILE_PACK_PIXELS, or one tile batch when that is more), yielded as they fill, so that a
    pack of keys never holds more than one large image decoded at a time."""
    tile_pack_pixels = max(TILE_PACK_PIXELS, tile_batch * (tile + 2 * margin) ** 2)
    pack, pixels = [], 0
    for keys in unpack(table):
        for key in keys:
            row = read_and_decode(key, where=where, max_pixels=max_pixels, policy=policy)
            rows = _tile_rows(row, where, tile, margin) if needs_tiles(row, split_above) else [row]
            del row  # a large image's pixels stay alive only through its windows' generator
            for r in rows:
                size = weight(r)
                if pack and pixels + size > (PACK_PIXELS if r["tile"] == WHOLE else tile_pack_pixels):
                    yield to_packs([pack], IMAGE_TYPES)
                    pack, pixels = [], 0
                pack.append(r)
                pixels += size
    if pack:
        yield to_packs([pack], IMAGE_TYPES)


def _tile_rows(row: dict, where: Locations, tile: int, margin: int):
    rows = split_into_tiles(row, tile=tile, margin=margin, where=where)
    try:
        first = next(rows)  # stores the image's size and metadata for the stitching
    except OSError as exc:
        return iter([empty_row(row["path"], row["output"], error=f"cannot store its tiles: {exc}")])
    return itertools.chain([first], rows)
