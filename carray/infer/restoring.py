"""Restoring the rows of a pack in place: batched where shapes allow, one by one otherwise. No Ray here.

The actor (carray/infer/restorer.py) adds what needs Ray: attempt counting and the node's name.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from .memory import PixelBuffers, new_host_buffer
from .packs import WHOLE, from_row, row_coding


class RowRestorer:
    """The networks of one process and the settings they run with; :meth:`restore` restores rows
    (images, or tile windows of large ones) in place: their `pixels` become the restored pixels, or
    their `error` says why not."""

    def __init__(self, model_files: dict[str, bytes], tile: int, threads: int, tta: bool = False, precision: str = "fp32",
                 onnx: Optional[dict] = None, tile_batch: int = 1, node: str = ""):
        from ..quantize import setup_restoring_process

        self.device, self.models = setup_restoring_process(model_files, precision, threads, onnx)
        self.tile, self.tta, self.tile_batch, self.node = tile, tta, tile_batch, node
        self.buffers = PixelBuffers(new_buffer=_buffer_maker(self.device))  # photos' memory, reused from one to the next

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
        from ..restore import pick_model, restore_in_batches

        images = [from_row(row) for row in rows]
        items = [(pick_model(self.models, image), image.pixels, row_coding(row)) for row, image in zip(rows, images)]
        for row, pixels in zip(rows, restore_in_batches(items, self.device, self.tile_batch, self.buffers.array)):
            self._keep(row, pixels)

    def _restore_one(self, row: dict) -> None:
        from ..restore import restore_image

        try:
            image = from_row(row)
            whole_window = row["tile"] != WHOLE  # a window of a large image is restored in one piece
            tile = max(image.pixels.shape[:2]) if whole_window else self.tile
            restored = restore_image(self.models, image, tile, self.device, row_coding(row), self.tta, self.tile_batch, self.buffers.array)
            self._keep(row, restored.pixels)
        except MemoryError:
            row.update(error="out of memory while restoring (lower --tile)", pixels=b"")
        except Exception as exc:  # keep the job alive; the reason goes to _failures.jsonl
            row.update(error=f"restoration failed: {type(exc).__name__}: {exc}", pixels=b"")

    def _keep(self, row: dict, restored: np.ndarray) -> None:
        """The restored pixels into the row: a whole image's as an array (it is encoded in this
        process); a tile window's core as bytes (it travels on to be stitched)."""
        if row["tile"] != WHOLE:
            y0, y1, x0, x1 = row["crop"]
            restored = np.ascontiguousarray(restored[y0:y1, x0:x1])
            row.update(height=y1 - y0, width=x1 - x0)
        row["pixels"] = np.ascontiguousarray(restored) if row["tile"] == WHOLE else restored.tobytes()
        row["node"] = self.node


def _buffer_maker(device):
    """A GPU actor keeps its photos in pinned host memory: decoded there, they upload without the
    copy into pinned memory each would otherwise take (carray.ondevice._upload); others in numpy's."""
    if device is None or device.type != "cuda":
        return new_host_buffer
    from ..ondevice import pinned_host_buffer

    return pinned_host_buffer


def needs_restoring(row: dict) -> bool:
    return not (row["error"] or row["skipped"] or row["passed"])
