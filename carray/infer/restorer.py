"""The restoring actor: one model per actor, packs in, restored packs out, attempts counted."""
from __future__ import annotations

from typing import Optional

import pyarrow as pa
import ray

from .memory import release_free_memory
from .packs import IMAGE_TYPES, WHOLE, empty_row, to_packs, unpack
from .restoring import RowRestorer, needs_restoring

KILLED = "killed while restoring, {} times (out of memory? lower --tile or --max-pixels)"
# --tile-batch 0 on a GPU: tile windows per forward pass (a few hundred MB of activations for 576x576
# gray windows at the shipped width). CPUs get 1: one forward at a time measured faster there.
GPU_TILE_BATCH = 8


def attempt_key(row: dict) -> str:
    return row["path"] if row["tile"] == WHOLE else f"{row['path']}#tile{row['tile']}"


class Restorer(RowRestorer):
    """map_batches callable class: loads the models once per actor and restores the images and
    tiles of one pack per call, at the quality the decode stage chose (:class:`RowRestorer`).

    A pack whose actor died while restoring it is tried again by Ray. The tracker counts the starts
    of each pack (one call per pack); a pack that starts again is restored one image at a time with
    each image's starts counted (and cleared once it is done), so the image that kills its actor is
    the one whose count grows: after `max_attempts` it becomes a failure line, and the others of its
    pack are restored."""

    def __init__(self, model_files: dict[str, bytes], tile: int, threads: int, tracker, max_attempts: int, tta: bool = False,
                 precision: str = "fp32", onnx: Optional[dict] = None, tile_batch: int = 1):
        node = ray.get_runtime_context().get_node_id()  # the summary reports which nodes restored
        super().__init__(model_files, tile, threads, tta, precision, onnx, tile_batch, node)
        self.tracker, self.max_attempts = tracker, max_attempts

    def __call__(self, table: pa.Table) -> pa.Table:
        packs = unpack(table)
        work = [row for pack in packs for row in pack if needs_restoring(row)]
        pack_key = f"pack:{attempt_key(work[0])}+{len(work)}" if work else ""
        retried = bool(work) and ray.get(self.tracker.begin.remote([pack_key]))[0] > 1
        if retried:  # its actor died on this pack before: which image? one at a time, counted
            self._restore_counted(work)
        else:
            self.restore(work)
        if work:
            self.tracker.end.remote([pack_key])
        result = to_packs(packs, IMAGE_TYPES)
        del packs
        release_free_memory()
        return result

    def _restore_counted(self, rows: list[dict]) -> None:
        for row in rows:
            key = attempt_key(row)
            attempt = ray.get(self.tracker.begin.remote([key]))[0]
            if attempt > self.max_attempts:  # its count stays: a retried pack fails it again at once
                row.update(empty_row(row["path"], row["output"], error=KILLED.format(attempt - 1)), tile=row["tile"], tiles=row["tiles"])
                continue
            self.restore([row])
            self.tracker.end.remote([key])
