"""infer: restore a JPEG collection from a folder or bucket into another, on Ray Data.

    keys (keys.py: a --manifest, or the input listed into Parquet parts as it is walked)
    -> plan (plan.py: output name, already done?) -> read + decode (decode.py: the header decides
    restore or pass through, and a passed-through input is written there as its own bytes; large
    images cut into tiles, tiles.py) -> Restorer (restorer.py: actor
    pool, one model per actor, GPUs when present) -> encode + write (write.py: one file per input)
    -> ImageSink (sink.py: counts, failure parts); job.py drives it, report.py tells the user.

Rows are *packs* of images (packs.py). Nothing on the driver grows with the collection: keys stream
from storage, each row computes its own output name and checks its own output, and the write tasks
record the failures as they go (parts in ``OUTPUT/_carray/failures/``, merged into
``_failures.jsonl`` at the end; readable even if the driver died). Every input is accounted for in
``_summary.json``: restored, passed through (by reason), skipped (by reason) or failed. Rows carry
an ``error`` column: a stage that fails on one image records why and passes the row on, so bad
input never stops the job; an image whose actor dies ``--max-attempts`` times becomes a failure line.

Shards (WebDataset tars, Parquet files of images) take another road: shardjob.py hands each shard to
one actor, which streams it through shards.py (member by member, every other member copied) into an
output shard of the same name, written whole.

Layers: layout, packs, plan, tiles, decode, shards and memory import no Ray (and no torch); tracker,
keys, sink, write, restorer, shardjob and report are the Ray layer; job (every input) and preview (a
sample, shown on a page) are the two modes on top, and driver chooses between them.
"""
import importlib

# The public names, and the module each lives in. Imported on first use (PEP 562), so importing the
# Ray-free modules (carray.infer.packs, ...) does not import Ray through this file.
_HOMES = {
    "decode_to_row": "decode", "run_infer": "driver", "FAILURES_FILE": "layout", "METADATA_FILE": "layout", "SUMMARY_FILE": "layout", "WORK_DIR": "layout",
    "Locations": "layout", "from_row": "packs", "to_row": "packs", "SKIP_EXISTS": "plan", "SKIP_HIDDEN": "plan",
    "SKIP_NOT_IMAGE": "plan", "SKIP_OUTSIDE": "plan", "output_name": "plan", "passed_name": "plan", "skip_reason": "plan", "format_summary": "report",
    "Restorer": "restorer", "encode_row": "write",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
