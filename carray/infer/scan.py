"""The tables-only scan: what each file's header says and what the policy would do with it, read
without decoding pixels (the first HEAD_BYTES of a file, all of it only when its header is longer),
and the collection's make-up from the scanned sample. No Ray here."""
from __future__ import annotations

from collections import Counter
from typing import Optional

import pyarrow as pa

from .. import storage
from ..images import ImageError, read_header
from ..quality import Policy
from .layout import Locations

HEAD_BYTES = 64 * 1024  # a JPEG's tables come before its pixels; EXIF or ICC data can push them past this

RESTORE, PASS, FAIL = "restore", "pass through", "fail"
SCAN_TYPES = {
    "path": pa.string(), "bytes": pa.int64(), "format": pa.string(), "width": pa.int32(), "height": pa.int32(),
    "quality": pa.int32(), "chroma_quality": pa.int32(), "subsampling": pa.string(),
    "decision": pa.string(), "reason": pa.string(),
}
MEGAPIXEL_BINS = ((1, "< 1"), (4, "1-4"), (8, "4-8"), (16, "8-16"), (32, "16-32"), (float("inf"), "≥ 32"))
QUALITY_BIN = 10  # the quality histogram's bins: 1-10, 11-20, ... 91-100


def read_head(where: Locations, path: str) -> tuple[bytes, int]:
    """The first HEAD_BYTES of an input and its size in bytes (one ranged read on S3)."""
    with where.src_fs.open_input_file(where.input_path(path)) as f:
        size = f.size()
        return f.read(min(size, HEAD_BYTES)), size


def scan_key(where: Locations, path: str, max_pixels: Optional[int], policy: Policy) -> dict:
    """One input -> what its header says and what the job would do with it (never raises)."""
    row = _unread(path)
    try:
        head, row["bytes"] = read_head(where, path)
        try:
            header = read_header(head, max_pixels)
        except ImageError:
            if row["bytes"] <= len(head):
                raise
            header = read_header(storage.read_bytes(where.src_fs, where.input_path(path)), max_pixels)  # a long header
    except (OSError, storage.StorageError) as exc:
        row["reason"] = f"cannot read: {exc}"
        return row
    except ImageError as exc:
        row["reason"] = str(exc)
        return row
    return _decided(row, header, policy)


def scan_data(path: str, data: bytes, max_pixels: Optional[int], policy: Policy) -> dict:
    """An image's bytes in memory (a shard's member) -> the same row as :func:`scan_key` (never raises)."""
    row = dict(_unread(path), bytes=len(data))
    try:
        header = read_header(data, max_pixels)
    except ImageError as exc:
        row["reason"] = str(exc)
        return row
    return _decided(row, header, policy)


def _unread(path: str) -> dict:
    return {"path": path, "bytes": 0, "format": "", "width": 0, "height": 0, "quality": None,
            "chroma_quality": None, "subsampling": None, "decision": FAIL, "reason": ""}


def _decided(row: dict, header, policy: Policy) -> dict:
    """The row with what the header says and what the policy would do."""
    row.update(format=header.format, width=header.width, height=header.height, quality=header.quality,
               chroma_quality=header.chroma_quality, subsampling=header.subsampling)
    quality, passed = policy.decide(header.quality)
    row["decision"], row["reason"] = (PASS, passed) if passed else (RESTORE, f"restored at quality {quality}")
    return row


def scan_pack(table: pa.Table, *, where: Locations, max_pixels: Optional[int], policy: Policy) -> pa.Table:
    """map_batches stage: rows of keys -> rows of what their headers say."""
    rows = [scan_key(where, str(path), max_pixels, policy) for path in table.column("path").to_pylist()]
    return pa.Table.from_pylist(rows, schema=pa.schema(SCAN_TYPES))


def megapixel_bin(megapixels: float) -> str:
    return next(label for bound, label in MEGAPIXEL_BINS if megapixels < bound)


def quality_bin(quality: int) -> str:
    low = (max(quality, 1) - 1) // QUALITY_BIN * QUALITY_BIN + 1
    return f"{low}-{low + QUALITY_BIN - 1}"


def make_up(rows: list[dict]) -> dict:
    """The scanned sample's make-up: counts by decision (and reason), format, JPEG quality (bins of
    QUALITY_BIN), chroma subsampling and size; the megapixels and bytes of each decision."""
    headed = [r for r in rows if r["format"]]  # a header was read (a file can fail later, while decoding)
    jpegs = [r for r in headed if r["quality"] is not None]
    by_decision = {d: [r for r in rows if r["decision"] == d] for d in (RESTORE, PASS, FAIL)}
    return {
        "scanned": len(rows),
        "decisions": {d: len(rs) for d, rs in by_decision.items()},
        "reasons": {d: dict(Counter(r["reason"] for r in rs).most_common()) for d, rs in by_decision.items() if d != RESTORE},
        "formats": dict(Counter(r["format"] for r in headed).most_common()),
        "quality_histogram": {label: n for label, n in sorted(Counter(quality_bin(r["quality"]) for r in jpegs).items(),
                                                               key=lambda item: int(item[0].split("-")[0]))},
        "qualities": dict(sorted(Counter(r["quality"] for r in jpegs).items())),
        "subsampling": dict(Counter(r["subsampling"] or "?" for r in jpegs).most_common()),
        "megapixel_histogram": {label: n for _, label in MEGAPIXEL_BINS
                                if (n := sum(megapixel_bin(r["width"] * r["height"] / 1e6) == label for r in headed))},
        "megapixels": {d: round(sum(r["width"] * r["height"] for r in rs) / 1e6, 6) for d, rs in by_decision.items()},
        "bytes": {d: sum(r["bytes"] for r in rs) for d, rs in by_decision.items()},
    }
