"""Encode and write: one output file per input, atomically, as soon as its pixels are ready.

Restored pixels are encoded in the output format (a passed-through input was already written, as
its own bytes, by the task that read it); a tile is stored beside its image's other tiles, and the
task that stores the last one stitches and writes the image.
"""
from __future__ import annotations

from typing import Optional

import pyarrow as pa
import ray

from .. import storage
from ..images import DecodedImage, encode_image
from .layout import Locations
from .memory import release_free_memory
from .packs import RESULT_TYPES, WHOLE, from_row, join_notes, to_packs, unpack
from .sink import tally
from .tiles import remove_tiles, stitch, store_tile

_RESULT_KEYS = ("path", "output", "error", "skipped", "passed", "node")


def encode_row(row: dict, *, fmt: str, quality: int, image: Optional[DecodedImage] = None) -> dict:
    """Restored pixels -> output file bytes (`data`); a passed-through row keeps its own bytes.
    `image`: the pixels when they are not in the row (a stitched large image)."""
    out = {k: row[k] for k in _RESULT_KEYS}
    out.update(data=b"", megapixels=0.0, notes="")
    if row["error"] or row["skipped"]:
        return out
    if row["passed"]:
        out["data"] = row["data"]
        return out
    try:
        out["megapixels"] = row["megapixels"] if image is not None else row["height"] * row["width"] / 1e6
        image = image if image is not None else from_row(row)
        notes = list(image.notes)  # what decoding could not keep, then what the output format cannot
        out["data"] = encode_image(image, fmt, quality, notes)
        out["notes"] = join_notes(notes)
    except Exception as exc:  # a codec refusing an image must not stop the job
        out["error"] = f"cannot encode as {fmt}: {exc}"
    return out


def encode_and_write(row: dict, *, fmt: str, quality: int, where: Locations) -> dict:
    """Encode and write the output file; hands on a small row (no pixels) for the sink's counts. A
    passed-through input was written by its read task (carray.infer.decode.read_and_plan), a whole
    image by its restoring actor (carray.infer.restorer)."""
    if row["written"]:
        return {**{k: row[k] for k in _RESULT_KEYS}, "data": b"", "part": "", "notes": row["notes"],
                "megapixels": row["height"] * row["width"] / 1e6}
    return write_output(encode_row(row, fmt=fmt, quality=quality), where=where)


def is_tile(row: dict) -> bool:
    return row["tile"] != WHOLE and not row["skipped"]


def write_output(out: dict, *, where: Locations) -> dict:
    """An encoded row's output file written (its error says why not); hands on the row without its bytes."""
    if not (out["error"] or out["skipped"] or out["passed"]):
        try:
            storage.write_bytes_atomic(where.dst_fs, where.output_path(out["output"]), out["data"], read_again=False)
        except OSError as exc:
            out["error"] = f"cannot write the output: {exc}"
    out["data"] = b""
    out["part"] = ""
    return out


def write_pack(table: pa.Table, *, tracker, fmt: str, quality: int, where: Locations) -> pa.Table:
    """map_batches stage: :func:`encode_and_write` on every image of the pack, its tiles stored (and
    each image they complete stitched and written), then its counts to the tracker for the progress
    line (the sink sees the rows only when the run ends)."""
    rows = [row for pack in unpack(table) for row in pack]
    results = [None if is_tile(row) else encode_and_write(row, fmt=fmt, quality=quality, where=where) for row in rows]
    tiles = [i for i, row in enumerate(rows) if is_tile(row)]
    for i, (result, image) in zip(tiles, _store_tiles([rows[i] for i in tiles], where=where, tracker=tracker)):
        # A completed image is encoded from its last tile's result (its megapixels: that tile's core, as each tile counts its own).
        results[i] = result if image is None else write_output(encode_row(result, fmt=fmt, quality=quality, image=image), where=where)
    counts, _ = tally(results)
    tracker.add.remote({key: sum(value.values()) if isinstance(value, dict) else value for key, value in counts.items() if key != "nodes"})
    return to_packs([results], RESULT_TYPES)


def _store_tiles(rows: list[dict], *, where: Locations, tracker) -> list[tuple[dict, Optional[DecodedImage]]]:
    """Restored tiles -> their images' tiles folders, the pack's tiles counted in one call to the
    tracker (one blocking round trip per pack, not per tile: a tracker on another node is a network
    round trip each). Per tile: (result, None) while its image is incomplete (result `part: tile`)
    or failed, else (result, the stitched image) for the tile that completed it."""
    results, counted = [], []
    for row in rows:
        result = {k: row[k] for k in _RESULT_KEYS}
        result.update(part="tile", megapixels=0.0, notes="")
        if row["error"]:  # the image fails once, however many of its tiles failed
            result["part"] = "" if ray.get(tracker.tile_failed.remote(row["path"])) else "tile"
            result["error"] = row["error"] if result["part"] == "" else ""
        else:
            core = from_row(row).pixels
            result["megapixels"] = core.shape[0] * core.shape[1] / 1e6
            try:
                store_tile(where, row["path"], int(row["tile"]), core)
                counted.append(len(results))
            except OSError as exc:
                result["error"] = f"cannot store a restored tile: {exc}"
                result["part"] = "" if ray.get(tracker.tile_failed.remote(row["path"])) else "tile"
        results.append(result)
    out: list[tuple[dict, Optional[DecodedImage]]] = [(result, None) for result in results]
    if not counted:
        return out
    complete = ray.get(tracker.tiles_done.remote([(rows[i]["path"], int(rows[i]["tile"]), int(rows[i]["tiles"])) for i in counted]))
    for i, done in zip(counted, complete):
        if done:
            out[i] = _stitched(results[i], where=where, tracker=tracker)
    return out


def _stitched(result: dict, *, where: Locations, tracker) -> tuple[dict, Optional[DecodedImage]]:
    """The last tile of an image is stored: the image stitched, its tiles removed."""
    path = result["path"]
    try:
        whole = stitch(where, path)
    except (OSError, ValueError, KeyError) as exc:
        return {**result, "part": "", "error": f"cannot stitch its tiles: {exc}"}, None
    tracker.stitched.remote(path)
    remove_tiles(where, path)
    release_free_memory()
    return {**result, "part": ""}, whole
