"""infer: restore a JPEG collection from a folder or bucket into another, on Ray Data.

    keys (a --manifest, or the input listed into Parquet parts as it is walked; read by our tasks)
    -> plan (tasks: output name, already done?) -> read + decode (tasks: the quality to restore at,
    large images cut into tiles) -> Restorer (actor pool, one model per actor, GPUs when present)
    -> encode + write (tasks: one file per input; tiles stored, the last one stitches) -> ImageSink
    (counts, failure parts)

Rows are *packs* of images (see :func:`to_packs`): a task or actor call handles dozens of small
images at once, or a few tiles of a large one. Nothing on the driver grows with the collection:
keys stream from storage, each row computes its own output name (:func:`output_name`) and checks
its own output, and the write tasks record the failures as they go (parts in
``OUTPUT/_carray/failures/``, merged into ``_failures.jsonl`` at the end; readable even if the
driver died). Every input is accounted for in ``_summary.json``: restored, passed through (by
reason), skipped (by reason) or failed. Rows carry an ``error`` column: a stage that fails on one
image records why and passes the row on, so bad input never stops the job; an image whose actor
dies ``--max-attempts`` times becomes a failure line.
"""
from __future__ import annotations

import functools
import hashlib
import io
import itertools
import json
import threading
import time
import uuid
from dataclasses import asdict
from typing import TYPE_CHECKING, Optional

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray
from ray.data import Datasink

from . import __version__, storage
from .errors import OptionError
from .images import IMAGE_EXTENSIONS, OUTPUT_FORMATS, DecodedImage, ImageError, decode_image, encode_image
from .patches import plan_tiles
from .quality import Policy, jpeg_quality

if TYPE_CHECKING:  # the stages run in task processes that need not import torch (config does)
    from .config import InferConfig

FAILURES_FILE = storage.FAILURES_FILE
SUMMARY_FILE = "_summary.json"
WORK_DIR = "_carray"  # inside the output: the listing's parts and the failure parts of this run
LISTING_PART_ROWS = 100_000  # keys per Parquet part of a listing: bounds the driver's memory
PROGRESS_EVERY_S = 10.0
# Decoding asks for about half a CPU, like CPU actors: a node with one CPU then always fits an actor
# and a task (whole-CPU tasks next to half-CPU actors on 1-CPU nodes are never scheduled). Not
# exactly the actors' 0.5: Ray Data fuses consecutive stages whose resources are equal, and decoding
# fused into the actors would keep every tile of a large image on the actor that decoded it and
# stop decoding from running ahead of restoring (test_multinode checks the actors' class name).
READ_CPUS = {"num_cpus": 0.49}
# Reading keys and planning ask for less: Ray Data fuses consecutive stages with the same resources
# into one task, and one task must not decode every image of a 100 k-key listing part by itself.
PLAN_CPUS = {"num_cpus": 0.25}

SKIP_EXISTS = "output exists (--overwrite restores it again)"
SKIP_HIDDEN = "hidden: a folder or file name starts with '.' (--include-hidden restores it)"
SKIP_NOT_IMAGE = "not an image file name (" + " ".join(IMAGE_EXTENSIONS) + ", any case)"
KILLED = "killed while restoring, {} times (out of memory? lower --tile or --max-pixels)"


# --- naming and classification: per key, no global state ---


def output_name(relative_path: str, fmt: str) -> str:
    """The output's relative path: the input's own path plus the format's extension
    (photo.jpg -> photo.jpg.png). One input, one output, decided by the row alone: a.jpg and
    a.png can never write the same file, whatever else the collection holds."""
    return relative_path + OUTPUT_FORMATS[fmt][1]


def skip_reason(relative_path: str, include_hidden: bool = False) -> str:
    """Why a key is not restored at all ("" when it is a candidate)."""
    if not include_hidden and any(part.startswith(".") for part in relative_path.split("/")):
        return SKIP_HIDDEN
    if not relative_path.lower().endswith(IMAGE_EXTENSIONS):
        return SKIP_NOT_IMAGE
    return ""


# --- packs: the rows of the Dataset ---
#
# A row is a *pack*: a few images (or tiles of one large image) that one task or actor call
# handles together, every column a list with one entry per image. Ray Data's per-block cost (a
# task or an actor call, an object) is then paid once per pack: 128 thumbnails cost about what one
# photo costs. Packs hold at most PACK_KEYS keys and, once decoded, about PACK_PIXELS pixels; an
# image above --split-above megapixels becomes tiles (see split_into_tiles) spread over packs, so
# every actor restores part of it. Measured on 3000 JPEGs of 128x128, 2 CPUs, alternating runs on
# one Ray: 64-key / 1 MP packs 80.1-81.7 images/s, 256 / 4 MP 81.2-85.7, then 128 / 2 MP 86.4-88.8
# against 256 / 4 MP 80.1-88.3: the smaller of the two, as fast, leaves less idle at the end. The
# pixel bound sits well above a full pack of thumbnails (128 of 128x128 = 2.1 MP): at 2 MP each such
# pack was cut into 122 + 6 images, an actor call for 6 (128 / 4 MP vs 128 / 2 MP: 82.2-86.4 vs 80.3-83.6).

PACK_KEYS = 128
PACK_PIXELS = 4_000_000
# Tiles of a large image come in smaller packs: they are what fills the actors' memory on a
# 100 MP image (measured: 4 MP packs of tiles 1.56 GiB above idle Ray, 1 MP packs 1.42 GiB).
TILE_PACK_PIXELS = 1_000_000
# --tile-batch 0 on a GPU: tile windows per forward pass (a few hundred MB of activations for 576x576
# gray windows at the shipped width). CPUs get 1: one forward at a time measured faster there.
GPU_TILE_BATCH = 8
NO_QUALITY = -1  # the row's file has no JPEG quantization tables
WHOLE = -1  # the `tile` of an image that is not cut into tiles

IMAGE_TYPES = {
    "path": pa.string(), "output": pa.string(), "pixels": pa.binary(), "height": pa.int32(), "width": pa.int32(),
    "channels": pa.int32(), "alpha": pa.binary(), "icc": pa.binary(), "exif": pa.binary(), "quality": pa.int32(),
    "tile": pa.int32(), "tiles": pa.int32(), "crop": pa.list_(pa.int32()),
    "error": pa.string(), "skipped": pa.string(), "passed": pa.string(), "node": pa.string(),
}
# What the write stage hands to the sink: no pixels. `part` is "tile" for a tile whose image is not
# complete yet (counted in megapixels only) and "" for an image.
RESULT_TYPES = {
    "path": pa.string(), "output": pa.string(), "error": pa.string(), "skipped": pa.string(), "passed": pa.string(),
    "node": pa.string(), "part": pa.string(), "megapixels": pa.float64(),
}
PLAN_TYPES = {"path": pa.string(), "output": pa.string(), "skipped": pa.string()}


def to_packs(packs: list[list[dict]], types: dict) -> pa.Table:
    schema = pa.schema([(name, pa.list_(t)) for name, t in types.items()])
    return pa.Table.from_pylist([{k: [image[k] for image in pack] for k in types} for pack in packs], schema=schema)


def unpack(table: pa.Table) -> list[list[dict]]:
    """A batch of packs -> per pack, its images as dicts."""
    packs = []
    for row in table.to_pylist():
        names = list(row)
        packs.append([{k: row[k][i] for k in names} for i in range(len(row[names[0]]))])
    return packs


def _empty_row(path: str, output: str, error: str = "", skipped: str = "") -> dict:
    return {
        "path": path, "output": output, "pixels": b"", "height": 0, "width": 0, "channels": 0, "alpha": b"", "icc": b"",
        "exif": b"", "quality": NO_QUALITY, "tile": WHOLE, "tiles": 0, "crop": [], "error": error, "skipped": skipped,
        "passed": "", "node": "",
    }


def to_row(path: str, output: str, image: DecodedImage, quality: Optional[int] = None) -> dict:
    """quality: the IJG quality the file's tables say, None when it has none."""
    h, w = image.pixels.shape[:2]
    row = _empty_row(path, output)
    row.update(
        pixels=image.pixels.tobytes(), height=h, width=w, channels=3 if image.is_color else 1,
        alpha=b"" if image.alpha is None else image.alpha.tobytes(), icc=image.icc or b"", exif=image.exif or b"",
        quality=NO_QUALITY if quality is None else int(quality),
    )
    return row


def from_row(row: dict) -> DecodedImage:
    h, w, c = int(row["height"]), int(row["width"]), int(row["channels"])
    shape = (h, w) if c == 1 else (h, w, c)
    pixels = np.frombuffer(row["pixels"], np.uint8).reshape(shape)
    alpha = np.frombuffer(row["alpha"], np.uint8).reshape(h, w) if len(row["alpha"]) else None
    return DecodedImage(pixels=pixels, alpha=alpha, icc=bytes(row["icc"]) or None, exif=bytes(row["exif"]) or None)


def plan_keys(table: pa.Table, *, fmt: str, dst_fs: pafs.FileSystem, dst_root: str, overwrite: bool, include_hidden: bool) -> pa.Table:
    """map_batches stage: packs of keys -> packs of (path, output, skipped). "Already done" is
    decided here, per row, by looking for the row's own output (one metadata call per pack)."""
    packs = []
    for keys in table.column("key").to_pylist():
        paths = [str(k) for k in keys]
        outputs = [output_name(p, fmt) for p in paths]
        skipped = [skip_reason(p, include_hidden) for p in paths]
        if not overwrite:
            candidates = [i for i, reason in enumerate(skipped) if not reason]
            infos = dst_fs.get_file_info([storage.join(dst_root, outputs[i]) for i in candidates]) if candidates else []
            for i, info in zip(candidates, infos):
                if info.type == pafs.FileType.File:
                    skipped[i] = SKIP_EXISTS
        packs.append([{"path": p, "output": o, "skipped": s} for p, o, s in zip(paths, outputs, skipped)])
    return to_packs(packs, PLAN_TYPES)


def read_and_decode(row: dict, *, src_fs: pafs.FileSystem, src_root: str, max_pixels: Optional[int]) -> dict:
    """Read one input's bytes and decode them, or say why not."""
    path, output = row["path"], row["output"]
    if row["skipped"]:
        return _empty_row(path, output, skipped=row["skipped"])
    try:
        data = storage.read_bytes(src_fs, storage.join(src_root, path))
    except (OSError, storage.StorageError) as exc:
        return _empty_row(path, output, error=f"cannot read: {exc}")
    return decode_to_row(path, output, data, max_pixels)


def decode_to_row(path: str, output: str, data: bytes, max_pixels: Optional[int]) -> dict:
    """A file's bytes -> a row with its pixels and JPEG quality, or the reason it cannot be used."""
    try:
        return to_row(path, output, decode_image(data, max_pixels), jpeg_quality(data))
    except ImageError as exc:
        return _empty_row(path, output, error=str(exc))
    except MemoryError:
        return _empty_row(path, output, error="out of memory while decoding (lower --max-pixels or add memory)")
    except Exception as exc:  # last resort: one bad file must never stop the job
        return _empty_row(path, output, error=f"cannot decode: {type(exc).__name__}: {exc}")


def apply_policy(row: dict, policy: Policy) -> dict:
    """Decide, from the JPEG's tables, the quality to restore at, or pass the image through."""
    if row["error"] or row["skipped"]:
        return row
    quality, passed = policy.decide(None if row["quality"] == NO_QUALITY else int(row["quality"]))
    row["passed"] = passed
    row["quality"] = NO_QUALITY if quality is None else int(quality)
    return row


# --- large images: tiles restored anywhere, stitched by the write task of the last one ---


def tiles_folder(dst_root: str, path: str) -> str:
    """Where the restored tiles of one large input wait for their stitching (inside the output, so
    every node reaches it and a dead actor loses only the tile it was restoring)."""
    return storage.join(dst_root, WORK_DIR, "tiles", hashlib.sha1(path.encode()).hexdigest()[:24])


def _array_bytes(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def split_into_tiles(row: dict, *, tile: int, margin: int, dst_fs, dst_root: str):
    """A decoded large image -> one row per tile window (core `tile` pixels, `margin` context, on
    the 8-pixel grid; :func:`carray.patches.plan_tiles`). Its size, alpha, ICC and EXIF wait in its
    tiles folder for the stitching."""
    image = from_row(row)
    h, w = image.pixels.shape[:2]
    meta = _array_bytes(
        size=np.array([h, w, row["channels"], tile, margin]), alpha=image.alpha if image.alpha is not None else np.zeros(0, np.uint8),
        icc=np.frombuffer(image.icc or b"", np.uint8), exif=np.frombuffer(image.exif or b"", np.uint8),
    )
    storage.write_bytes_atomic(dst_fs, storage.join(tiles_folder(dst_root, row["path"]), "meta.npz"), meta)
    plan = plan_tiles(h, w, tile, margin)
    for index, t in enumerate(plan):  # one window at a time: the image is not copied whole again
        (wy0, wy1, wx0, wx1), (cy0, cy1, cx0, cx1) = t.window, t.core
        yield {**_empty_row(row["path"], row["output"]), "pixels": image.pixels[wy0:wy1, wx0:wx1].tobytes(),
               "height": wy1 - wy0, "width": wx1 - wx0, "channels": row["channels"], "quality": row["quality"],
               "tile": index, "tiles": len(plan), "crop": [cy0 - wy0, cy1 - wy0, cx0 - wx0, cx1 - wx0]}


def stitch(dst_fs, folder: str) -> DecodedImage:
    """The restored tiles of one image, put back together (with its alpha, ICC and EXIF)."""
    with np.load(io.BytesIO(storage.read_bytes(dst_fs, storage.join(folder, "meta.npz")))) as meta:
        h, w, channels, tile, margin = (int(v) for v in meta["size"])
        alpha = meta["alpha"].reshape(h, w) if meta["alpha"].size else None
        icc, exif = meta["icc"].tobytes() or None, meta["exif"].tobytes() or None
    pixels = np.empty((h, w) if channels == 1 else (h, w, channels), np.uint8)
    for index, t in enumerate(plan_tiles(h, w, tile, margin)):
        y0, y1, x0, x1 = t.core
        pixels[y0:y1, x0:x1] = np.load(io.BytesIO(storage.read_bytes(dst_fs, storage.join(folder, f"{index:06d}.npy"))))
    return DecodedImage(pixels=pixels, alpha=alpha, icc=icc, exif=exif)


def decode_packs(table: pa.Table, *, src_fs, src_root: str, max_pixels: Optional[int], policy: Policy, split_above: float,
                 tile: int, margin: int, dst_fs, dst_root: str, tile_batch: int = 1):
    """map_batches generator: packs of keys -> packs of decoded images of about PACK_PIXELS pixels
    (tiles: TILE_PACK_PIXELS, or one tile batch when that is more), yielded as they fill, so that a
    pack of keys never holds more than one large image decoded at a time."""
    tile_pack_pixels = max(TILE_PACK_PIXELS, tile_batch * (tile + 2 * margin) ** 2)
    pack, pixels = [], 0
    for keys in unpack(table):
        for key in keys:
            row = apply_policy(read_and_decode(key, src_fs=src_fs, src_root=src_root, max_pixels=max_pixels), policy)
            rows = [row]
            if split_above and not (row["error"] or row["skipped"] or row["passed"]) and row["height"] * row["width"] > split_above * 1e6:
                rows = split_into_tiles(row, tile=tile, margin=margin, dst_fs=dst_fs, dst_root=dst_root)
                try:
                    first = next(rows)  # stores the image's size and metadata for the stitching
                except OSError as exc:
                    first, rows = _empty_row(row["path"], row["output"], error=f"cannot store its tiles: {exc}"), iter(())
                rows = itertools.chain([first], rows)
            del row  # a large image's pixels stay alive only through its windows' generator
            for r in rows:
                size = r["height"] * r["width"]
                if pack and pixels + size > (PACK_PIXELS if r["tile"] == WHOLE else tile_pack_pixels):
                    yield to_packs([pack], IMAGE_TYPES)
                    pack, pixels = [], 0
                pack.append(r)
                pixels += size
    if pack:
        yield to_packs([pack], IMAGE_TYPES)


def encode_and_write(row: dict, *, fmt: str, quality: int, dst_fs, dst_root: str, tracker=None) -> dict:
    """Encode the restored (or passed-through) pixels and write the output file (atomically) as soon
    as they are ready; hands on a small row (no pixels) for the sink's counts. A tile is stored in
    its image's tiles folder instead; the task that stores the last one stitches and writes the image."""
    image = None
    if row["tile"] != WHOLE and not row["skipped"]:
        row, image = _store_tile(row, dst_fs=dst_fs, dst_root=dst_root, tracker=tracker)
        if image is None:
            return row
    out = encode_row(row, fmt=fmt, quality=quality, image=image)
    if not out["error"] and not out["skipped"]:
        try:
            storage.write_bytes_atomic(dst_fs, storage.join(dst_root, out["output"]), out["data"])
        except OSError as exc:
            out["error"] = f"cannot write the output: {exc}"
    out["data"] = b""
    out["part"] = ""
    return out


def write_pack(table: pa.Table, *, tracker, **kwargs) -> pa.Table:
    """map_batches stage: :func:`encode_and_write` on every image of the pack, then its counts to
    the tracker for the progress line (the sink sees the rows only when the run ends)."""
    results = [encode_and_write(row, tracker=tracker, **kwargs) for pack in unpack(table) for row in pack]
    counts, _ = tally(results)
    tracker.add.remote({key: sum(value.values()) if isinstance(value, dict) else value for key, value in counts.items() if key != "nodes"})
    return to_packs([results], RESULT_TYPES)


def tally(results: list[dict]) -> tuple[dict, list[dict]]:
    """What write results count for: ({restored, passed and skipped by reason, failed, megapixels,
    nodes}, failure lines). The one place a result is classified (progress line and summary)."""
    counts = {"restored": 0, "passed": {}, "skipped": {}, "failed": 0, "megapixels": 0.0, "nodes": set()}
    failures = []
    for row in results:
        if row["part"]:  # a tile of an image not complete yet: its megapixels only
            counts["megapixels"] += row["megapixels"]
        elif row["skipped"]:
            counts["skipped"][row["skipped"]] = counts["skipped"].get(row["skipped"], 0) + 1
        elif row["error"]:
            failures.append({"path": row["path"], "reason": row["error"]})
            counts["failed"] += 1
        elif row["passed"]:
            counts["passed"][row["passed"]] = counts["passed"].get(row["passed"], 0) + 1
        else:
            counts["restored"] += 1
            counts["megapixels"] += row["megapixels"]
            counts["nodes"].add(row["node"])
    return counts, failures


def _store_tile(row: dict, *, dst_fs, dst_root: str, tracker) -> tuple[dict, Optional[DecodedImage]]:
    """A restored tile -> its tiles folder. Returns (result, None) while the image is incomplete
    (result `part: tile`) or failed, else (result, the stitched image) for encoding."""
    folder = tiles_folder(dst_root, row["path"])
    result = {k: row[k] for k in ("path", "output", "error", "skipped", "passed", "node")}
    result.update(part="tile", megapixels=0.0)
    if row["error"]:  # the image fails once, however many of its tiles failed
        if ray.get(tracker.tile_failed.remote(row["path"])):
            result["part"] = ""
        else:
            result["error"] = ""
        return result, None
    core = from_row(row).pixels
    result["megapixels"] = core.shape[0] * core.shape[1] / 1e6
    buffer = io.BytesIO()
    np.save(buffer, core)
    try:
        storage.write_bytes_atomic(dst_fs, storage.join(folder, f"{int(row['tile']):06d}.npy"), buffer.getvalue())
    except OSError as exc:
        result["error"] = f"cannot store a restored tile: {exc}"
        result["part"] = "" if ray.get(tracker.tile_failed.remote(row["path"])) else "tile"
        return result, None
    if not ray.get(tracker.tile_done.remote(row["path"], int(row["tile"]), int(row["tiles"]))):
        return result, None
    try:
        whole = stitch(dst_fs, folder)
    except (OSError, ValueError, KeyError) as exc:
        return {**result, "part": "", "error": f"cannot stitch its tiles: {exc}"}, None
    tracker.stitched.remote(row["path"])
    storage.delete_dir_if_exists(dst_fs, folder)
    release_free_memory()
    return {**result, "part": ""}, whole


def encode_row(row: dict, *, fmt: str, quality: int, image: Optional[DecodedImage] = None) -> dict:
    """Restored (or passed-through) pixels -> output file bytes. `image`: the pixels when they are
    not in the row (a stitched large image)."""
    out = {k: row[k] for k in ("path", "output", "error", "skipped", "passed", "node")}
    out.update(data=b"", megapixels=0.0)
    if row["error"] or row["skipped"]:
        return out
    try:
        out["megapixels"] = row["megapixels"] if image is not None else row["height"] * row["width"] / 1e6
        out["data"] = encode_image(image if image is not None else from_row(row), fmt, quality)
    except Exception as exc:  # a codec refusing an image must not stop the job
        out["error"] = f"cannot encode as {fmt}: {exc}"
    return out


# --- the job's shared state: attempts per image and progress counts (one small actor) ---


@ray.remote(num_cpus=0, max_restarts=-1)
class JobTracker:
    """Counts restoring attempts per image or tile, the restored tiles of each large image (both
    only while in flight, so their size is bounded by the pool, not the collection), and the
    write tasks' running totals for the progress line."""

    def __init__(self):
        self.attempts: dict[str, int] = {}
        self.tiles: dict[str, set] = {}
        self.failed_images: set = set()
        self.totals: dict[str, float] = {}

    def begin(self, keys: list[str]) -> list[int]:
        """Count a start of each key (a pack, an image or a tile); returns the counts."""
        for key in keys:
            self.attempts[key] = self.attempts.get(key, 0) + 1
        return [self.attempts[key] for key in keys]

    def end(self, keys: list[str]) -> None:
        for key in keys:
            self.attempts.pop(key, None)

    def tile_done(self, path: str, index: int, total: int) -> bool:
        """True when every tile of `path` is stored (again True for a retried last write, until
        :meth:`stitched`)."""
        done = self.tiles.setdefault(path, set())
        done.add(index)
        return len(done) == total and path not in self.failed_images

    def stitched(self, path: str) -> None:
        self.tiles.pop(path, None)

    def tile_failed(self, path: str) -> bool:
        """True the first time one of `path`'s tiles fails: the image fails once."""
        if path in self.failed_images:
            return False
        self.failed_images.add(path)
        return True

    def add(self, counts: dict) -> None:
        for key, value in counts.items():
            if isinstance(value, (int, float)):
                self.totals[key] = self.totals.get(key, 0) + value

    def snapshot(self) -> dict:
        return dict(self.totals)


@functools.lru_cache(maxsize=None)
def _malloc_trim():
    """glibc's malloc_trim, looked up once per process (None where there is no glibc)."""
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def release_free_memory() -> None:
    """Give the heap's free pages back to the system (glibc keeps them otherwise): a worker that
    just restored or stitched a large image would hold its peak for the rest of the job."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def attempt_key(row: dict) -> str:
    return row["path"] if row["tile"] == WHOLE else f"{row['path']}#tile{row['tile']}"


class Restorer:
    """map_batches callable class: loads the models once per actor and restores the images and
    tiles of one pack per call, at the quality the decode stage chose, `tile_batch` windows per
    forward pass where they share a shape (see :meth:`restore`).

    A pack whose actor died while restoring it is tried again by Ray. The tracker counts the starts
    of each pack (one call per pack); a pack that starts again is restored one image at a time with
    each image's starts counted (and cleared once it is done), so the image that kills its actor is
    the one whose count grows: after `max_attempts` it becomes a failure line, and the others of its
    pack are restored."""

    def __init__(self, model_files: dict[str, bytes], tile: int, threads: int, tracker, max_attempts: int, tta: bool = False,
                 precision: str = "fp32", onnx: Optional[dict] = None, tile_batch: int = 1):
        from .quantize import setup_restoring_process

        self.device, self.models = setup_restoring_process(model_files, precision, threads, onnx)
        self.tile, self.tracker, self.max_attempts, self.tta, self.tile_batch = tile, tracker, max_attempts, tta, tile_batch
        self.node = ray.get_runtime_context().get_node_id()  # the summary reports which nodes restored

    def __call__(self, table: pa.Table) -> pa.Table:
        packs = unpack(table)
        work = [row for pack in packs for row in pack if not (row["error"] or row["skipped"] or row["passed"])]
        pack_key = f"pack:{attempt_key(work[0])}+{len(work)}" if work else ""
        retried = bool(work) and ray.get(self.tracker.begin.remote([pack_key]))[0] > 1
        if not retried:
            self.restore(work)
        for row in work if retried else ():  # its actor died on this pack before: which image? one at a time, counted
            key = attempt_key(row)
            attempt = ray.get(self.tracker.begin.remote([key]))[0]
            if attempt > self.max_attempts:  # its count stays: a retried pack fails it again at once
                row.update(_empty_row(row["path"], row["output"], error=KILLED.format(attempt - 1)), tile=row["tile"], tiles=row["tiles"])
                continue
            self.restore([row])
            self.tracker.end.remote([key])
        if work:
            self.tracker.end.remote([pack_key])
        result = to_packs(packs, IMAGE_TYPES)
        del packs
        release_free_memory()
        return result

    def restore(self, rows: list[dict]) -> None:
        """Restore rows in place. Tile windows and images no larger than a tile go through the network
        `tile_batch` at a time (one forward per batch of one shape); larger images tile by tile.
        A batch that fails is restored again row by row, so an error lands on its own row only."""
        fits = [r for r in rows if not self.tta and (r["tile"] != WHOLE or max(r["height"], r["width"]) <= self.tile)]
        if fits:
            try:
                self._restore_batched(fits)
            except Exception:  # noqa: BLE001 - which row? each on its own below says
                for row in fits:
                    self._restore_one(row)
        fitted = {id(r) for r in fits}
        for row in rows:
            if id(row) not in fitted:
                self._restore_one(row)

    def _restore_batched(self, rows: list[dict]) -> None:
        from .restore import pick_model, restore_in_batches

        images = [from_row(row) for row in rows]
        items = [(pick_model(self.models, image), image.pixels, row["quality"]) for row, image in zip(rows, images)]
        for row, pixels in zip(rows, restore_in_batches(items, self.device, self.tile_batch)):
            self._keep(row, pixels)

    def _restore_one(self, row: dict) -> None:
        from .restore import restore_image

        try:
            image = from_row(row)
            whole_window = row["tile"] != WHOLE  # a window of a large image is restored in one piece
            tile = max(image.pixels.shape[:2]) if whole_window else self.tile
            self._keep(row, restore_image(self.models, image, tile, self.device, row["quality"], self.tta).pixels)
        except MemoryError:
            row.update(error="out of memory while restoring (lower --tile)", pixels=b"")
        except Exception as exc:  # keep the job alive; the reason goes to _failures.jsonl
            row.update(error=f"restoration failed: {type(exc).__name__}: {exc}", pixels=b"")

    def _keep(self, row: dict, restored: np.ndarray) -> None:
        """The restored pixels into the row; a tile window keeps only its core."""
        if row["tile"] != WHOLE:
            y0, y1, x0, x1 = row["crop"]
            restored = np.ascontiguousarray(restored[y0:y1, x0:x1])
            row.update(height=y1 - y0, width=x1 - x0)
        row["pixels"] = restored.tobytes()
        row["node"] = self.node


# --- the sink ---


class ImageSink(Datasink):
    """Counts what the rows say (the outputs were written by :func:`encode_and_write`) and writes
    this task's failure lines as one part file; returns small counts only, so the driver holds
    nothing per image."""

    def __init__(self, fs: pafs.FileSystem, root: str):
        self.fs, self.root = fs, root
        self.totals: dict = {"restored": 0, "passed": {}, "skipped": {}, "failed": 0, "megapixels": 0.0, "nodes": set()}

    def write(self, blocks, ctx) -> dict:
        from ray.data.block import BlockAccessor

        rows = [row for block in blocks for pack in unpack(BlockAccessor.for_block(block).to_arrow()) for row in pack]
        counts, failures = tally(rows)
        if failures:  # on storage now: a driver that dies later loses none of them
            # Named by the rows it covers: a task that Ray runs again (its node was lost after it
            # wrote) rewrites the same part instead of adding a second line for each failure.
            digest = hashlib.sha1("\n".join(row["path"] for row in rows).encode()).hexdigest()
            part = storage.join(self.root, WORK_DIR, "failures", f"{digest}.jsonl")
            for wait in (1, 2, 4, 8, 16, 0):  # a store that is briefly away (restarts) must not end the job
                try:
                    storage.write_jsonl(self.fs, part, failures)
                    break
                except OSError:
                    if not wait:
                        raise
                    time.sleep(wait)
        return counts

    def on_write_complete(self, write_result) -> None:
        for r in write_result.write_returns:
            for key in ("restored", "failed", "megapixels"):
                self.totals[key] += r[key]
            for key in ("passed", "skipped"):
                for reason, n in r[key].items():
                    self.totals[key][reason] = self.totals[key].get(reason, 0) + n
            self.totals["nodes"] |= r["nodes"]


# --- where the keys come from (driver) ---


def _check_locations(cfg: "InferConfig", src_root: str, dst_root: str) -> None:
    same_kind = storage.is_uri(cfg.input) == storage.is_uri(cfg.output)
    if same_kind and (dst_root == src_root or dst_root.startswith(src_root.rstrip("/") + "/")):
        raise storage.StorageError(f"{cfg.output} is inside {cfg.input}: a re-run would read its own outputs; choose another output")


def list_into_parts(src_fs, src_root: str, dst_fs, listing_root: str, include_hidden: bool, say=print) -> tuple[list[str], int, dict]:
    """Walk the input one folder at a time and write the keys to restore as Parquet parts of
    LISTING_PART_ROWS keys: the driver never holds the whole listing. Returns (part paths,
    keys written, {skip reason: count} for what was listed but not written)."""
    storage.delete_dir_if_exists(dst_fs, listing_root)
    parts, batch, written, skipped = [], [], 0, {}
    last_said = time.monotonic()

    def flush():
        nonlocal batch
        path = storage.join(listing_root, f"part-{len(parts):06d}.parquet")
        with storage.atomic_output(dst_fs, path) as stream:
            pq.write_table(pa.table({"key": pa.array(batch, pa.string())}), stream)
        parts.append(path)
        batch = []

    for rel, _size in storage.walk_files(src_fs, src_root):
        reason = skip_reason(rel, include_hidden)
        if reason:
            skipped[reason] = skipped.get(reason, 0) + 1
            continue
        batch.append(rel)
        written += 1
        if len(batch) >= LISTING_PART_ROWS:
            flush()
        if time.monotonic() - last_said > PROGRESS_EVERY_S:
            say(f"carray: listed {written} images so far ({sum(skipped.values())} other files)")
            last_said = time.monotonic()
    if batch:
        flush()
    return parts, written, skipped


# Keys per pack when reading key files: each pack is a row and a block of its own (the run sets a
# tiny target block size), the unit Ray Data hands to one task or actor call.
KEY_CHUNK = PACK_KEYS


def _key_pack(keys: list[str]) -> pa.Table:
    return pa.table({"key": pa.array([keys], pa.list_(pa.string()))})


def _relative(key: str, prefix: str) -> str:
    key = key.strip()
    return key[len(prefix) + 1 :] if prefix and key.startswith(prefix + "/") else key


def read_key_files(batch: dict, *, fs, kind: str, column: Optional[str], names: Optional[list], prefix: str):
    """map_batches generator: each key file of the batch -> packs of keys (one row, a list of
    KEY_CHUNK keys), streamed (a part of millions of keys never sits whole in one task's memory).
    kind: 'text' (one key a line), 'csv' (a header, or `names` for headerless inventory parts;
    .gz read as gzip; keys URL-decoded when `names` is given, as S3 Inventory encodes them) or
    'parquet'. Keys are made relative to `prefix` when they are full keys under it."""
    import pyarrow.csv as pacsv
    from urllib.parse import unquote

    for path in batch["path"]:
        path = str(path)
        if kind == "parquet":
            with fs.open_input_file(path) as f:
                parquet = pq.ParquetFile(f)
                name = column if column in parquet.schema_arrow.names else parquet.schema_arrow.names[0]
                for part in parquet.iter_batches(batch_size=KEY_CHUNK, columns=[name]):
                    yield _key_pack([_relative(str(k), prefix) for k in part.column(0).to_pylist()])
            continue
        data = storage.read_bytes(fs, path)
        if path.endswith(".gz"):  # inventory parts; one part is tens of MB at most
            import gzip

            data = gzip.decompress(data)
        with pa.BufferReader(data) as f:
            if kind == "text":
                chunk = []
                for line in io.TextIOWrapper(f, encoding="utf-8"):
                    if line.strip():
                        chunk.append(_relative(line, prefix))
                    if len(chunk) >= KEY_CHUNK:
                        yield _key_pack(chunk)
                        chunk = []
                if chunk:
                    yield _key_pack(chunk)
                continue
            read_options = pacsv.ReadOptions(column_names=names) if names else pacsv.ReadOptions()
            reader = pacsv.open_csv(f, read_options=read_options, convert_options=pacsv.ConvertOptions(
                column_types={c: pa.string() for c in (names or [])} or None))
            name = column if column in reader.schema.names else reader.schema.names[0]
            for part in reader:
                keys = part.column(name).to_pylist()
                for i in range(0, len(keys), KEY_CHUNK):
                    yield _key_pack([_relative(unquote(str(k)) if names else str(k), prefix) for k in keys[i : i + KEY_CHUNK]])


def keys_dataset(paths: list[str], fs, kind: str, column: Optional[str] = "key", names: Optional[list] = None, prefix: str = ""):
    """A Dataset with one `key` column from key files, one task per file, streamed: the way both
    listings and manifests enter the pipeline. (Not ray.data.read_*: their file-listing step asks
    for a whole CPU, which a 1-CPU node beside a half-CPU actor never has.)"""
    ds = ray.data.from_items([{"path": p} for p in paths], override_num_blocks=max(1, len(paths)))
    return ds.map_batches(
        read_key_files, batch_size=1, fn_kwargs=dict(fs=fs, kind=kind, column=column, names=names, prefix=prefix), **PLAN_CPUS
    )


def read_manifest(location: str, s3, src_root: str):
    """A Ray Dataset with one `key` column from a manifest: text (one key a line), CSV or Parquet
    with a `key` column, or an S3 Inventory manifest.json (its CSV or Parquet parts, one task each).
    Keys relative to --input (an inventory lists bucket keys: the --input prefix is taken off)."""
    fs, path = storage.resolve(location, s3)
    if not storage.exists(fs, path):
        raise storage.StorageError(f"--manifest {location}: does not exist")
    name = path.lower()
    if name.endswith("manifest.json"):  # S3 Inventory: {"fileFormat", "fileSchema", "files": [{"key"}], ...}
        inventory = json.loads(storage.read_bytes(fs, path))
        bucket = path.split("/", 1)[0]
        files = [storage.join(bucket, f["key"]) for f in inventory.get("files", [])]
        if not files:
            raise storage.StorageError(f"--manifest {location}: an inventory manifest that lists no files")
        fmt = str(inventory.get("fileFormat", "CSV")).upper()
        prefix = src_root.split("/", 1)[1] if "/" in src_root else ""
        if fmt == "PARQUET":
            return keys_dataset(files, fs, "parquet", column="key", prefix=prefix)
        if fmt == "CSV":
            columns = [c.strip() for c in str(inventory.get("fileSchema", "Bucket, Key")).split(",")]
            return keys_dataset(files, fs, "csv", column="Key" if "Key" in columns else columns[1], names=columns, prefix=prefix)
        raise storage.StorageError(f"--manifest {location}: inventory format {fmt} is not supported (CSV or Parquet)")
    kind = "parquet" if name.endswith(".parquet") else "csv" if name.endswith((".csv", ".csv.gz")) else "text"
    return keys_dataset([path], fs, kind)


def failures_as_manifest(dst_fs, dst_root: str) -> Optional[list[str]]:
    """The paths of the last run's _failures.jsonl (for --retry-failed)."""
    path = storage.join(dst_root, FAILURES_FILE)
    if not storage.exists(dst_fs, path):
        return None
    return [json.loads(line)["path"] for line in storage.read_bytes(dst_fs, path).decode().splitlines() if line.strip()]


def merge_failure_parts(fs, root: str) -> int:
    """Concatenate the write tasks' failure parts into _failures.jsonl, one part at a time (in the
    order the store lists them). Returns the number of lines."""
    folder = storage.join(root, WORK_DIR, "failures")
    lines = 0
    parts = fs.get_file_info(pafs.FileSelector(folder, recursive=True, allow_not_found=True))
    with storage.atomic_output(fs, storage.join(root, FAILURES_FILE)) as out:
        for info in parts:
            if info.type == pafs.FileType.File:
                data = storage.read_bytes(fs, info.path)
                out.write(data)
                lines += data.count(b"\n")
    return lines


def restore_margin(files: dict[str, bytes]) -> int:
    """The context a tile of a large image is read with: the widest of the models' margins."""
    from .model import load_model_bytes
    from .restore import tile_margin

    return max(tile_margin(load_model_bytes(data, kind)[0]) for kind, data in files.items())


def model_digests(files: dict[str, bytes]) -> dict[str, str]:
    return {kind: hashlib.sha256(data).hexdigest() for kind, data in files.items()}


class _ProgressPrinter:
    """A line every PROGRESS_EVERY_S seconds: done / total, MP/s, images/s, failures, ETA."""

    def __init__(self, tracker, total: Optional[int], say=print):
        self.tracker, self.total, self.say = tracker, total, say
        self.started = time.monotonic()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def line(self) -> str:
        t = ray.get(self.tracker.snapshot.remote(), timeout=30)
        seconds = max(time.monotonic() - self.started, 1e-6)
        done = int(t.get("restored", 0) + t.get("passed", 0) + t.get("skipped", 0) + t.get("failed", 0))
        rate = done / seconds
        of = f"{done}/{self.total}" if self.total is not None else f"{done} (total not known yet)"
        eta = f", ETA {(self.total - done) / rate / 60:.1f} min" if self.total and rate > 0 else ""
        return (
            f"carray: {of} done | {t.get('megapixels', 0) / seconds:.2f} MP/s, {t.get('restored', 0) / seconds:.1f} images/s | "
            f"{int(t.get('failed', 0))} failed{eta}"
        )

    def _run(self):
        while not self.stop.wait(PROGRESS_EVERY_S):
            try:
                self.say(self.line())
            except Exception:  # progress is best effort; the job's result never depends on it
                pass

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()


def run_infer(cfg: "InferConfig", say=print) -> dict:
    """Run the infer job; returns its summary (also written to ``_summary.json``).

    Raises storage.StorageError when the input does not exist or holds no images."""
    from .modelfiles import model_files
    from .runtime import connect, tune_data_context

    started = time.time()
    policy = cfg.policy()
    src_fs, src_root = storage.resolve(cfg.input, cfg.s3())
    dst_fs, dst_root = storage.resolve(cfg.output, cfg.s3())
    _check_locations(cfg, src_root, dst_root)
    if cfg.max_attempts < 1:
        raise OptionError(f"--max-attempts must be at least 1, got {cfg.max_attempts}")
    if cfg.tile_batch < 0:
        raise OptionError(f"--tile-batch must be 0 (auto) or a number of windows per forward pass, got {cfg.tile_batch}")
    if cfg.split_above < 0:
        raise OptionError(f"--split-above must be 0 (never cut) or a number of megapixels, got {cfg.split_above}")
    if cfg.actors_per_gpu < 1:
        raise OptionError(f"--actors-per-gpu must be at least 1, got {cfg.actors_per_gpu}")
    files = model_files(cfg.model, cfg.s3())
    storage.make_output_root(dst_fs, dst_root, cfg.output, cfg.create_bucket)
    storage.remove_stale_temporaries(dst_fs, dst_root)  # left by a run that was killed mid-write
    for stale in ("failures", "tiles"):  # from a run that was killed
        storage.delete_dir_if_exists(dst_fs, storage.join(dst_root, WORK_DIR, stale))
    connect(cfg.address)
    tune_data_context()
    # One pack per block: a block is what Ray Data hands to one task or actor call, so every pack
    # is scheduled on its own and packs spread over every actor. Set before the first Dataset is
    # made (each copies the context). (Not Dataset.repartition: its task asks for a whole CPU,
    # which a 1-CPU node beside a half-CPU actor never has.)
    context = ray.data.DataContext.get_current()
    block_size, context.target_max_block_size = context.target_max_block_size, 1
    try:
        return _run(cfg, policy, files, src_fs, src_root, dst_fs, dst_root, started, say)
    finally:  # the context belongs to the process: a later job here gets its own default back
        context.target_max_block_size = block_size


def _run(cfg: "InferConfig", policy: Policy, files: dict, src_fs, src_root: str, dst_fs, dst_root: str, started: float, say) -> dict:
    from ray.data import ActorPoolStrategy

    from .quantize import RUNTIME_NAMES, plan_networks
    from .runtime import plan_pool

    listed_skips: dict[str, int] = {}
    total: Optional[int] = None
    overwrite = cfg.overwrite
    if cfg.retry_failed:
        keys = failures_as_manifest(dst_fs, dst_root)
        if keys is None:
            raise storage.StorageError(f"--retry-failed: {cfg.output}/{FAILURES_FILE} does not exist (no earlier run)")
        packs = [{"key": keys[i : i + KEY_CHUNK]} for i in range(0, len(keys), KEY_CHUNK)]
        keys_ds, total, overwrite = ray.data.from_items(packs, override_num_blocks=max(1, len(packs))), len(keys), True
        say(f"carray: retrying the {total} inputs of the last {FAILURES_FILE}")
    elif cfg.manifest:
        keys_ds = read_manifest(cfg.manifest, cfg.s3(), src_root)
        say(f"carray: keys from the manifest {cfg.manifest}")
    else:
        parts, total, listed_skips = list_into_parts(src_fs, src_root, dst_fs, storage.join(dst_root, WORK_DIR, "listing"), cfg.include_hidden, say)
        say(f"carray: listed {total} images in {cfg.input}" + "".join(f"; {n} skipped: {r}" for r, n in listed_skips.items()))
        if not total:
            raise storage.StorageError(f"{cfg.input}: no images found (looked for {', '.join(IMAGE_EXTENSIONS)})")
        keys_ds = keys_dataset(parts, dst_fs, "parquet")

    # Named (carray-tracker-…, namespace carray), so an operator finds the job's tracker in the dashboard.
    tracker = JobTracker.options(name=f"carray-tracker-{uuid.uuid4().hex[:12]}", namespace="carray").remote()
    pool = plan_pool(cfg.actors, cfg.gpu, per_gpu=cfg.actors_per_gpu)
    precision, runtime, onnx = plan_networks(files, cfg.precision, cfg.runtime, cuda=bool(pool.gpus), say=say)
    say(f"carray: {pool.actors} restoring actor(s) on {'GPU' if pool.gpus else 'CPU'} ({pool.reason}); precision {precision} ({RUNTIME_NAMES[runtime]})")
    tile_batch = cfg.tile_batch or (GPU_TILE_BATCH if pool.gpus else 1)
    ds = keys_ds.map_batches(
        plan_keys, batch_size=1, batch_format="pyarrow", **PLAN_CPUS,
        fn_kwargs=dict(fmt=cfg.format, dst_fs=dst_fs, dst_root=dst_root, overwrite=overwrite, include_hidden=cfg.include_hidden),
    )
    ds = ds.map_batches(
        decode_packs, batch_size=1, batch_format="pyarrow", **READ_CPUS,
        fn_kwargs=dict(src_fs=src_fs, src_root=src_root, max_pixels=cfg.max_pixels, policy=policy, split_above=cfg.split_above,
                       tile=cfg.tile, margin=restore_margin(files), dst_fs=dst_fs, dst_root=dst_root, tile_batch=tile_batch),
    )
    ds = ds.map_batches(
        Restorer,
        fn_constructor_kwargs={
            "model_files": files, "tile": cfg.tile, "threads": pool.threads, "tracker": tracker,
            "max_attempts": cfg.max_attempts, "tta": cfg.tta, "precision": precision, "onnx": onnx, "tile_batch": tile_batch,
        },
        compute=ActorPoolStrategy(min_size=pool.min_actors, max_size=pool.actors),
        batch_size=1, batch_format="pyarrow",  # one pack per call
        num_cpus=pool.cpus,
        num_gpus=pool.gpus,
        # No scheduling_strategy: Ray Data spreads an actor pool over the nodes by itself (model
        # replicas on as many nodes as possible), and Ray 2.64 drops the argument.
    )
    ds = ds.map_batches(  # the sink's resources: Ray Data fuses the two into one task per pack
        write_pack, batch_size=1, batch_format="pyarrow", **PLAN_CPUS,
        fn_kwargs={"fmt": cfg.format, "quality": cfg.jpeg_quality, "dst_fs": dst_fs, "dst_root": dst_root, "tracker": tracker},
    )
    sink = ImageSink(dst_fs, dst_root)
    try:
        with _ProgressPrinter(tracker, total, say):
            ds.write_datasink(sink, ray_remote_args=PLAN_CPUS)  # Ray's default, a whole CPU, waits for the actors to finish
    finally:  # the tracker lives as long as its driver: one that runs several jobs (tests, a notebook) would keep one per job
        ray.kill(tracker)

    failed = merge_failure_parts(dst_fs, dst_root)
    storage.delete_dir_if_exists(dst_fs, storage.join(dst_root, WORK_DIR))
    totals = sink.totals
    skipped = dict(totals["skipped"])
    for reason, n in listed_skips.items():
        skipped[reason] = skipped.get(reason, 0) + n
    seconds = time.time() - started
    summary = {
        "input": cfg.input, "output": cfg.output,
        "seen": totals["restored"] + sum(totals["passed"].values()) + sum(skipped.values()) + failed,
        "restored": totals["restored"], "passed_through": sum(totals["passed"].values()), "passed_through_by_reason": totals["passed"],
        "skipped": sum(skipped.values()), "skipped_by_reason": skipped, "failed": failed,
        "megapixels": round(totals["megapixels"], 3), "seconds": round(seconds, 2),
        "megapixels_per_second": round(totals["megapixels"] / seconds, 3), "images_per_second": round(totals["restored"] / seconds, 2),
        "nodes": len(totals["nodes"]), "precision": precision, "runtime": runtime, "driver_peak_rss_mb": round(driver_peak_rss_mb(), 1), "model": cfg.model or "shipped", "model_sha256": model_digests(files),
        "carray_version": __version__, "config": asdict(cfg),
    }
    storage.write_json(dst_fs, storage.join(dst_root, SUMMARY_FILE), summary)
    return summary


def driver_peak_rss_mb() -> float:
    """This process's peak resident memory: the driver's share of the job. VmHWM, not getrusage:
    ru_maxrss survives exec, so a driver started by a big process would report its parent's peak."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration, ValueError):  # not Linux
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def format_summary(summary: dict) -> str:
    lines = [
        f"infer: {summary['restored']} restored, {summary['passed_through']} passed through unchanged, "
        f"{summary['skipped']} skipped, {summary['failed']} failed (see {FAILURES_FILE}) of {summary['seen']} seen | "
        f"{summary['megapixels']:.1f} MP in {summary['seconds']:.1f} s, {summary['megapixels_per_second']:.2f} MP/s",
        f"output: {summary['output']}",
    ]
    lines += [f"passed through: {n} — {reason}" for reason, n in sorted(summary["passed_through_by_reason"].items())]
    lines += [f"skipped: {n} — {reason}" for reason, n in sorted(summary["skipped_by_reason"].items())]
    return "\n".join(lines)
