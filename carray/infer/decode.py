"""Read, look at the header, decide; decode only what is cut into tiles. No Ray here.

The policy (carray/quality.py) decides from the header alone: an input it passes through is never
decoded, and its own bytes travel on to be written as they are. An image to restore travels on as
its file's bytes too (a tenth of its pixels, or less) with what its header said: the restoring actor
decodes, restores, encodes and writes it (carray.infer.restorer), so its pixels never cross the
object store. Only an image above --split-above is decoded here, to be cut into tiles for every actor.
"""
from __future__ import annotations

import itertools
from typing import Callable, Optional

from .. import storage
from ..images import ImageError, decode_image, read_header
from ..quality import Policy
from .layout import Locations
from .packs import ENCODED_PACK_PIXELS, IMAGE_TYPES, NO_QUALITY, TILE_PACK_PIXELS, WHOLE, empty_row, image_fields, pending_decode, to_packs, to_row, unpack, weight
from .plan import passed_name
from .tiles import split_into_tiles


def read_and_plan(row: dict, *, where: Locations, max_pixels: Optional[int], policy: Policy) -> dict:
    """One planned key -> a row with its file's bytes and the quality to restore at, or skipped, or
    the reason it cannot be used. An input passed through is written here, as its own bytes, by the
    task that already holds them: its row goes on without them (nothing to restore, nothing to encode)."""
    path, output = row["path"], row["output"]
    if row["skipped"]:
        return empty_row(path, output, skipped=row["skipped"])
    try:
        data = storage.read_bytes(where.src_fs, where.input_path(path))
    except (OSError, storage.StorageError) as exc:
        return empty_row(path, output, error=f"cannot read: {exc}")
    row = plan_row(path, output, data, max_pixels, policy)
    if row["passed"]:
        try:
            storage.write_bytes_atomic(where.dst_fs, where.output_path(row["output"]), row["data"], read_again=False)
        except OSError as exc:
            row["error"] = f"cannot write the output: {exc}"
        row["data"] = b""
    return row


def plan_row(path: str, output: str, data: bytes, max_pixels: Optional[int], policy: Optional[Policy] = None) -> dict:
    """A file's bytes -> a row decided from its header alone, its bytes in `data`: passed through
    (its own name, :func:`carray.infer.plan.passed_name`), to be decoded and restored (at the
    tables' quality, or the policy's), or the reason it cannot be used."""
    try:
        header = read_header(data, max_pixels)
        quality, passed = policy.decide(header.quality) if policy else (header.quality, "")
        if passed:
            row = empty_row(path, passed_name(path, output))
            row.update(passed=passed, data=data, height=header.height, width=header.width,
                       quality=NO_QUALITY if header.quality is None else header.quality)
            return row
        chroma = policy.chroma_quality(quality, header.chroma_quality) if policy else header.chroma_quality
        row = to_row(path, output, None, quality, chroma, header.subsampling)
        row.update(data=data, height=header.height, width=header.width, format=header.format)
        return row
    except ImageError as exc:
        return empty_row(path, output, error=str(exc))
    except Exception as exc:  # last resort: one bad file must never stop the job
        return empty_row(path, output, error=f"unexpected error while reading its header: {type(exc).__name__}: {exc}")


def decode_row(row: dict, max_pixels: Optional[int], as_bytes: bool = True, allocate: Optional[Callable] = None) -> dict:
    """A planned row's bytes -> its pixels and metadata, in place (its bytes dropped), or its error.
    As stored: restored on the grid it was coded on, its EXIF (orientation too) kept as it is.
    as_bytes=False: the pixels stay a numpy array (a row that never leaves this process), a JPEG's
    in an array from `allocate` where given (carray.images.decode_image)."""
    if not pending_decode(row):
        return row
    try:
        row.update(image_fields(decode_image(row["data"], max_pixels, upright=False, allocate=allocate), as_bytes))
    except ImageError as exc:
        row["error"] = str(exc)
    except MemoryError:
        row["error"] = "out of memory while decoding (lower --max-pixels or add memory)"
    except Exception as exc:  # last resort: one bad file must never stop the job
        row["error"] = f"unexpected error while decoding: {type(exc).__name__}: {exc}"
    row["data"] = b""
    return row


def decode_to_row(path: str, output: str, data: bytes, max_pixels: Optional[int], policy: Optional[Policy] = None) -> dict:
    """A file's bytes -> a row, decoded unless passed through (:func:`plan_row`, then :func:`decode_row`).
    Without a policy, the quality is the tables'."""
    return decode_row(plan_row(path, output, data, max_pixels, policy), max_pixels)


def needs_tiles(row: dict, split_above: float) -> bool:
    """An image above --split-above megapixels is cut into tiles that every actor restores."""
    return bool(split_above) and not (row["error"] or row["skipped"] or row["passed"]) and row["height"] * row["width"] > split_above * 1e6


def read_packs(table, *, where: Locations, max_pixels: Optional[int], policy: Policy, split_above: float,
               tile: int, margin: int, tile_batch: int = 1):
    """map_batches generator: packs of keys -> packs of images to restore of about ENCODED_PACK_PIXELS
    pixels by their headers (as file bytes: decoded by the actor), or of decoded tiles
    (TILE_PACK_PIXELS, or one tile batch when that is more), yielded as they fill, so that a pack
    of keys never holds more than one large image decoded at a time."""
    tile_pack_pixels = max(TILE_PACK_PIXELS, tile_batch * (tile + 2 * margin) ** 2)
    pack, pixels = [], 0
    for keys in unpack(table):
        for key in keys:
            row = read_and_plan(key, where=where, max_pixels=max_pixels, policy=policy)
            if needs_tiles(row, split_above):
                row = decode_row(row, max_pixels)  # cut here, so that every actor restores some of its tiles
            rows = _tile_rows(row, where, tile, margin) if needs_tiles(row, split_above) else [row]
            del row  # a large image's pixels stay alive only through its windows' generator
            for r in rows:
                size = weight(r)
                if pack and pixels + size > (ENCODED_PACK_PIXELS if r["tile"] == WHOLE else tile_pack_pixels):
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
