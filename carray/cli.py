"""`python -m carray {prep,train,infer,evaluate,export}`: one parser and one main per stage.

The jobs/ scripts are thin wrappers over these, so `ray job submit -- python jobs/X.py` and
`python -m carray X` behave the same. Every main returns the process exit code: 0 done, 1 the job
ran but did not do what was asked, 2 it could not start (the message says why).
"""
from __future__ import annotations

import sys
from typing import Callable

from . import config
from .errors import JobError

PREP_DESCRIPTION = (
    "Turn clean images (or lossless+JPEG pairs) into Parquet patch pairs for training, on Ray Data. "
    "Images are split train/val/test by a hash of their path; train and val become Parquet, test a "
    "list of images. Bad files are skipped and listed in OUTPUT/_failures.jsonl."
)
TRAIN_DESCRIPTION = (
    "Train the artifact-reduction CNN data-parallel with Ray Train on the prep job's Parquet: GPU "
    "workers when the cluster has GPUs, CPU workers otherwise. Checkpoints go to OUTPUT/NAME/; "
    "re-running with the same --output and --name resumes. Writes OUTPUT/model.pt (the best "
    "checkpoint by validation PSNR gain), metrics.csv and loss.png."
)
INFER_DESCRIPTION = (
    "Restore a collection of JPEGs (folder, s3://bucket/prefix, or a --manifest of keys) into OUTPUT "
    "with Ray Data: one file per input at its relative path plus the format's extension, written "
    "atomically. Each JPEG is restored at the quality its own quantization tables say; JPEGs of "
    "quality 95 and above and images without tables (PNG, WebP, ...) are passed through unchanged "
    "unless --quality-override is given. Bad files are listed in OUTPUT/_failures.jsonl and never "
    "stop the job; OUTPUT/_summary.json counts every input (restored, passed through, skipped, "
    "failed, with reasons); a re-run skips what is done. Exits non-zero when the input is missing "
    "or empty, or when every image failed."
)
EVALUATE_DESCRIPTION = (
    "Compress each clean image at each quality, restore it, and score JPEG and carray against the "
    "original with the published conventions (gray = MATLAB Y, colour = RGB): PSNR, SSIM, PSNR-B. "
    "Writes results.csv (per image), results.md (means per quality) and figures/."
)
EXPORT_DESCRIPTION = (
    "Export a model for use outside Ray and Python, as ONNX or TorchScript: float32 (n, c, h, w) on "
    "[0, 1] in, the restored image clamped to [0, 1] out, any size. The file is checked against "
    "PyTorch (max difference <= 1e-4) before it is written."
)


# Errors whose message already says what they are; others are prefixed with their kind.
_PLAIN_ERRORS = ("JobError", "OptionError")


def _fail(message: str, code: int = 2) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def _run_stage(cls, description: str, argv, prog, run: Callable, report: Callable) -> int:
    """Parse, run, report: `report(summary, cfg)` prints the summary and returns the exit code."""
    try:
        cfg = config.parse(cls, argv, description, prog)
        summary = run(cfg)
    except JobError as exc:  # what the user can fix: one line, no traceback (real bugs keep theirs)
        return _fail(f"{type(exc).__name__}: {exc}" if type(exc).__name__ not in _PLAIN_ERRORS else str(exc))
    return report(summary, cfg)


def _report_prep(summary, cfg) -> int:
    from .prep import format_summary

    print(format_summary(summary))
    if summary["patches"]["train"] + summary["patches"]["val"] == 0:
        return _fail("no patches were produced; see _failures.jsonl for the reasons", 1)
    return 0


def _report_train(summary, cfg) -> int:
    last, gain = summary["last"], summary["val_psnr_gain"]
    print(
        f"train: {summary['steps']} steps (resumed from step {summary['resumed_from']}) in {summary['seconds']:.0f} s"
        f"{' (stopped by --time-limit)' if summary.get('stopped_by_time_limit') else ''} | "
        f"last train loss {last.get('train_loss', float('nan')):.3g}, {last.get('samples_per_s', 0):.0f} samples/s | "
        f"exported step {summary['exported_step']} (val PSNR gain {'n/a' if gain is None else f'{gain:.3f}'} dB)\n"
        f"model: {summary['model']}  metrics: {summary['output']}/metrics.csv  figure: {summary['output']}/loss.png"
    )
    return 0


def _report_infer(summary, cfg) -> int:
    from .infer import format_summary

    if cfg.preview:
        from .infer.preview import format_preview

        print(format_preview(summary))
        return 0
    print(format_summary(summary))
    from .infer import SKIP_EXISTS

    done = summary["restored"] + summary["passed_through"] + summary["skipped_by_reason"].get(SKIP_EXISTS, 0)
    shards = summary.get("shards")
    if shards and shards["shards_failed"] and not (shards["shards_written"] or shards["shards_skipped"]):
        return _fail("no shard could be rewritten; see _failures.jsonl", 1)
    if shards:
        done += shards["shards_skipped"]
    if summary["failed"] and not done:
        return _fail("every image failed; see _failures.jsonl", 1)
    return 0


def _report_evaluate(summary, cfg) -> int:
    from .evaluate import markdown

    print(markdown(summary["table"], f"{cfg.images} ({'colour' if cfg.color else 'gray'})"))
    print(f"report: {cfg.output}/results.md, results.csv, figures/  ({summary['seconds']:.0f} s)")
    return 0


def _report_export(summary, cfg) -> int:
    print(
        f"export: {summary['model']} ({summary['arch']}, {summary['channels']} channel(s)) -> {summary['output']} "
        f"[{summary['format']}] | max difference to PyTorch {summary['max_difference']:.1e} | {summary['seconds']:.1f} s"
    )
    return 0


def _lazy(module: str, function: str) -> Callable:
    """Import the stage's module only when it runs: `--help` stays fast and Ray-free."""

    def call(cfg):
        import importlib

        return getattr(importlib.import_module(f"carray.{module}"), function)(cfg)

    return call


STAGES = {
    "prep": (config.PrepConfig, PREP_DESCRIPTION, _lazy("prep", "run_prep"), _report_prep),
    "train": (config.TrainConfig, TRAIN_DESCRIPTION, _lazy("train", "run_train"), _report_train),
    "infer": (config.InferConfig, INFER_DESCRIPTION, _lazy("infer", "run_infer"), _report_infer),
    "evaluate": (config.EvaluateConfig, EVALUATE_DESCRIPTION, _lazy("evaluate", "run_evaluate"), _report_evaluate),
    "export": (config.ExportConfig, EXPORT_DESCRIPTION, _lazy("export", "run_export"), _report_export),
}


def stage_main(stage: str, argv=None, prog=None) -> int:
    cls, description, run, report = STAGES[stage]
    return _run_stage(cls, description, argv, prog or f"carray {stage}", run, report)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in STAGES:
        print(f"usage: python -m carray {{{','.join(STAGES)}}} [options]  (each stage has --help)", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    stage = argv.pop(0)
    return stage_main(stage, argv)
