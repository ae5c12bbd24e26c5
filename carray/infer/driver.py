"""infer's entry point: the driver chooses the mode, the preview (carray.infer.preview: a sample of
files or of the images inside shards, scanned, restored and shown on a page) or the job
(carray.infer.job: every input, files or shards)."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import InferConfig


def run_infer(cfg: "InferConfig", say=print) -> dict:
    """Run infer as `cfg` asks; returns the summary (also written to ``_summary.json``)."""
    from .job import check_input, input_kind, run_job

    cfg.check()
    if not cfg.preview:
        return run_job(cfg, say)
    check_input(cfg)
    from .preview import run_preview, run_shard_preview

    return (run_preview if input_kind(cfg) == "files" else run_shard_preview)(cfg, say)
