"""Counting what the job did, the failure lines and the metadata notes, without the driver holding
anything per image.

Write tasks record failures (and metadata that could not be kept) as part files in the work folder
(readable even if the driver died); :func:`merge_parts` joins them into ``_failures.jsonl`` and
``_metadata.jsonl`` when the run ends.
"""
from __future__ import annotations

import hashlib
import json
import time
from typing import Optional

import pyarrow.fs as pafs
from ray.data import Datasink

from .. import storage
from .layout import FAILURES_FILE, METADATA_FILE, Locations
from .packs import split_notes, unpack

#: The work folder's part files, and the file each becomes when the run ends.
PARTS = {"failures": FAILURES_FILE, "metadata": METADATA_FILE}


def read_failures(fs, path: str) -> Optional[dict[str, str]]:
    """A _failures.jsonl as {input path: reason}, in its order; None when it does not exist."""
    if not storage.exists(fs, path):
        return None
    lines = storage.read_bytes(fs, path).decode().splitlines()
    return {entry["path"]: entry["reason"] for entry in map(json.loads, filter(str.strip, lines))}


def new_counts() -> dict:
    return {"restored": 0, "passed": {}, "skipped": {}, "failed": 0, "megapixels": 0.0, "metadata_not_kept": 0, "nodes": set()}


def tally(results: list[dict]) -> tuple[dict, dict[str, list[dict]]]:
    """What write results count for: ({restored, passed and skipped by reason, failed, megapixels,
    metadata_not_kept, nodes}, {"failures": lines, "metadata": lines}). The one place a result is
    classified (progress line and summary)."""
    counts = new_counts()
    failures, notes = [], []
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
            if row["notes"]:
                notes.append({"path": row["path"], "output": row["output"], "not_kept": list(split_notes(row["notes"]))})
                counts["metadata_not_kept"] += 1
    return counts, {"failures": failures, "metadata": notes}


def add_counts(totals: dict, counts: dict) -> None:
    for key in ("restored", "failed", "megapixels", "metadata_not_kept"):
        totals[key] += counts[key]
    for key in ("passed", "skipped"):
        for reason, n in counts[key].items():
            totals[key][reason] = totals[key].get(reason, 0) + n
    totals["nodes"] |= counts["nodes"]


class ImageSink(Datasink):
    """Counts what the rows say (the outputs were written by the write stage) and writes this
    task's failure lines and metadata notes as a part file each; returns small counts only."""

    def __init__(self, where: Locations):
        self.where = where
        self.totals: dict = new_counts()

    def write(self, blocks, ctx) -> dict:
        from ray.data.block import BlockAccessor

        rows = [row for block in blocks for pack in unpack(BlockAccessor.for_block(block).to_arrow()) for row in pack]
        counts, lines = tally(rows)
        # Named by the rows it covers: a task that Ray runs again (its node was lost after it
        # wrote) rewrites the same part instead of adding a second line for each failure.
        digest = hashlib.sha1("\n".join(row["path"] for row in rows).encode()).hexdigest()
        for kind, entries in lines.items():
            if entries:  # on storage now: a driver that dies later loses none of them
                self._write_part(self.where.work_path(kind, f"{digest}.jsonl"), entries)
        return counts

    def _write_part(self, part: str, entries: list[dict]) -> None:
        for wait in (1, 2, 4, 8, 16, 0):  # a store that is briefly away (restarts) must not end the job
            try:
                storage.write_jsonl(self.where.dst_fs, part, entries)
                return
            except OSError:
                if not wait:
                    raise
                time.sleep(wait)

    def on_write_complete(self, write_result) -> None:
        for counts in write_result.write_returns:
            add_counts(self.totals, counts)


def merge_failure_parts(where: Locations) -> int:
    """_failures.jsonl from the write tasks' failure parts; returns the number of lines."""
    return merge_parts(where, "failures")


def merge_parts(where: Locations, kind: str) -> int:
    """Concatenate the write tasks' parts of one kind (:data:`PARTS`) into its file, one part at a
    time (in the order the store lists them). Returns the number of lines. Each run writes its own
    file, as it writes its own summary."""
    fs = where.dst_fs
    lines = 0
    parts = fs.get_file_info(pafs.FileSelector(where.work_path(kind), recursive=True, allow_not_found=True))
    with storage.atomic_output(fs, where.output_path(PARTS[kind])) as out:
        for info in parts:
            if info.type == pafs.FileType.File:
                data = storage.read_bytes(fs, info.path)
                out.write(data)
                lines += data.count(b"\n")
    return lines
