"""The restoring actor: one model per actor; packs of images in (as file bytes, or decoded tiles of
large images), decoded, restored, encoded and written here; attempts counted."""
from __future__ import annotations

import threading
import time
from typing import Optional

import pyarrow as pa
import ray

from .decode import decode_row
from .layout import Locations
from .memory import TRIM_ABOVE_PIXELS, keep_freed_memory, release_free_memory
from .packs import IMAGE_TYPES, PACK_PIXELS, WHOLE, empty_row, in_groups, to_packs, unpack, weight
from .restoring import RowRestorer, needs_restoring
from .write import encode_row, write_output

# The actors' CPU time by step (thread time: calls may run at once), summed by the tracker into the
# summary's actor_cpu_seconds: where a node's CPUs go (docs/benchmarks.md, the ceiling). Beside them,
# STARTUP: each actor's process CPU until it was ready (Ray's worker, the imports, the models loaded),
# a cost per actor, not per pixel.
CPU_STEPS = ("decode", "restore", "encode", "write")
STARTUP = "startup"
KILLED = "killed while restoring, {} times (out of memory? lower --tile or --max-pixels)"
# --tile-batch 0 on a GPU: tile windows per forward pass (a few hundred MB of activations for 576x576
# gray windows at the shipped width). CPUs get 1: one forward at a time measured faster there.
GPU_TILE_BATCH = 8


def attempt_key(row: dict) -> str:
    return row["path"] if row["tile"] == WHOLE else f"{row['path']}#tile{row['tile']}"


class Restorer(RowRestorer):
    """map_batches callable class: loads the models once per actor; per call, one pack: its images
    decoded from their files' bytes, restored at the quality the read stage chose
    (:class:`RowRestorer`), encoded and written, so that their pixels never leave this process; the
    tiles of a large image come decoded and go on restored, to be stitched by the write stage.

    Calls may run at once in threads (`calls` > 1, a GPU actor): decoding and encoding release
    Python's lock and run side by side, the network runs one call at a time (its memory bounded).

    A pack whose actor died while restoring it is tried again by Ray. The tracker counts the starts
    of each pack (one call per pack); a pack that starts again is restored one image at a time with
    each image's starts counted (and cleared once it is done), so the image that kills its actor is
    the one whose count grows: after `max_attempts` it becomes a failure line, and the others of its
    pack are restored."""

    def __init__(self, model_files: dict[str, bytes], tile: int, threads: int, tracker, max_attempts: int, tta: bool = False,
                 precision: str = "fp32", onnx: Optional[dict] = None, tile_batch: int = 1, *, where: Locations,
                 max_pixels: Optional[int], fmt: str, quality: int):
        node = ray.get_runtime_context().get_node_id()  # the summary reports which nodes restored
        keep_freed_memory()
        super().__init__(model_files, tile, threads, tta, precision, onnx, tile_batch, node)
        self.tracker, self.max_attempts = tracker, max_attempts
        self.where, self.max_pixels, self.fmt, self.quality = where, max_pixels, fmt, quality
        self.network = threading.Lock()
        tracker.add.remote({f"cpu_{STARTUP}": time.process_time()})

    def __call__(self, table: pa.Table) -> pa.Table:
        packs = unpack(table)
        work = [row for pack in packs for row in pack if needs_restoring(row)]
        pixels = max((weight(row) for row in work), default=0)
        pack_key = f"pack:{attempt_key(work[0])}+{len(work)}" if work else ""
        # A pack that starts again: its actor died on it. Which image? One at a time, counted.
        retried = bool(work) and ray.get(self.tracker.begin.remote([pack_key]))[0] > 1
        spent = self._finish_counted(work) if retried else self.finish(work)
        if work:
            self.tracker.end.remote([pack_key])
            self.tracker.add.remote({f"cpu_{step}": seconds for step, seconds in spent.items()})
        result = to_packs(packs, IMAGE_TYPES)
        del packs, work
        if pixels > TRIM_ABOVE_PIXELS:  # an unusually large image: do not hold its peak for the rest of the job
            release_free_memory()
        return result

    def finish(self, rows: list[dict]) -> dict:
        """Decode, restore, and encode + write the whole images, in place, about PACK_PIXELS at a
        time: a whole image's row ends `written` (no pixels) or with its error; a tile's ends with
        its restored pixels. Returns the CPU seconds of each step."""
        spent = dict.fromkeys(CPU_STEPS, 0.0)
        for group in in_groups(rows, PACK_PIXELS):
            started = time.thread_time()
            for row in group:
                decode_row(row, self.max_pixels, as_bytes=False, allocate=self.buffers.array)
            decoded = [row for row in group if not row["error"]]
            with self.network:
                restoring = time.thread_time()
                self.restore(decoded)
                spent["restore"] += time.thread_time() - restoring
            spent["decode"] += restoring - started
            for row in decoded:
                if row["tile"] == WHOLE and not row["error"]:
                    self._write(row, spent)
        return spent

    def _write(self, row: dict, spent: dict) -> None:
        started = time.thread_time()
        out = encode_row(row, fmt=self.fmt, quality=self.quality)
        encoded = time.thread_time()
        out = write_output(out, where=self.where)
        spent["encode"] += encoded - started
        spent["write"] += time.thread_time() - encoded
        row.update(error=out["error"], notes=out["notes"], pixels=b"", alpha=b"", written=not out["error"])

    def _finish_counted(self, rows: list[dict]) -> dict:
        spent = dict.fromkeys(CPU_STEPS, 0.0)
        for row in rows:
            key = attempt_key(row)
            attempt = ray.get(self.tracker.begin.remote([key]))[0]
            if attempt > self.max_attempts:  # its count stays: a retried pack fails it again at once
                row.update(empty_row(row["path"], row["output"], error=KILLED.format(attempt - 1)), tile=row["tile"], tiles=row["tiles"])
                continue
            spent = {step: seconds + spent[step] for step, seconds in self.finish([row]).items()}
            self.tracker.end.remote([key])
        return spent
