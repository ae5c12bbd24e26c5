"""`python -m carray {prep,train,infer,evaluate}`: one parser and one main per stage.

The jobs/ scripts are thin wrappers over these, so `ray job submit -- python jobs/X.py` and
`python -m carray X` behave the same. Every main returns the process exit code.
"""
from __future__ import annotations

import sys

from . import config

PREP_DESCRIPTION = (
    "Turn clean images (or lossless+JPEG pairs) into Parquet patch pairs for training, on Ray Data. "
    "Images are split train/val/test by a hash of their path; train and val become Parquet, test a "
    "list of images. Bad files are skipped and listed in OUTPUT/_failures.jsonl."
)


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def build_prep_parser(prog=None):
    return config.build_parser(config.PrepConfig, PREP_DESCRIPTION, prog)


def prep_main(argv=None, prog=None) -> int:
    from .prep import format_summary, run_prep
    from .runtime import RayUnreachable
    from .storage import StorageError

    cfg = config.parse(config.PrepConfig, argv, PREP_DESCRIPTION, prog)
    try:
        summary = run_prep(cfg)
    except (StorageError, RayUnreachable, ValueError) as exc:
        return _fail(str(exc))
    print(format_summary(summary))
    if summary["patches"]["train"] + summary["patches"]["val"] == 0:
        return _fail("no patches were produced; see _failures.jsonl for the reasons")
    return 0


TRAIN_DESCRIPTION = (
    "Train the artifact-reduction CNN data-parallel with Ray Train on the prep job's Parquet: GPU "
    "workers when the cluster has GPUs, CPU workers otherwise. Checkpoints go to OUTPUT/NAME/; "
    "re-running with the same --output and --name resumes. Writes OUTPUT/model.pt (the best "
    "checkpoint by validation PSNR gain), metrics.csv and loss.png."
)


def build_train_parser(prog=None):
    return config.build_parser(config.TrainConfig, TRAIN_DESCRIPTION, prog)


def train_main(argv=None, prog=None) -> int:
    from .runtime import RayUnreachable
    from .storage import StorageError
    from .train import DataError, TrainingDiverged, run_train

    cfg = config.parse(config.TrainConfig, argv, TRAIN_DESCRIPTION, prog)
    try:
        summary = run_train(cfg)
    except (DataError, StorageError, RayUnreachable, TrainingDiverged) as exc:
        return _fail(str(exc))
    last = summary["last"]
    print(
        f"train: {summary['steps']} steps (resumed from step {summary['resumed_from']}) in {summary['seconds']:.0f} s | last train loss {last.get('train_loss', float('nan')):.3g}, "
        f"{last.get('samples_per_s', 0):.0f} samples/s | exported step {summary['exported_step']} "
        f"(val PSNR gain {summary['val_psnr_gain'] if summary['val_psnr_gain'] is None else round(summary['val_psnr_gain'], 3)} dB)\n"
        f"model: {summary['model']}  metrics: {summary['output']}/metrics.csv  figure: {summary['output']}/loss.png"
    )
    return 0


INFER_DESCRIPTION = (
    "Restore a collection of JPEGs (folder or s3://bucket/prefix, nested folders kept) into OUTPUT "
    "with Ray Data: one restored file per input at the same relative path, written atomically; "
    "bad files are listed in OUTPUT/_failures.jsonl and never stop the job; a re-run skips what "
    "is done. Exits non-zero when the input is missing or empty, or when every image failed."
)


def build_infer_parser(prog=None):
    return config.build_parser(config.InferConfig, INFER_DESCRIPTION, prog)


def infer_main(argv=None, prog=None) -> int:
    from .infer import format_summary, run_infer
    from .model import ModelFileError
    from .runtime import RayUnreachable
    from .storage import StorageError

    cfg = config.parse(config.InferConfig, argv, INFER_DESCRIPTION, prog)
    try:
        summary = run_infer(cfg)
    except (StorageError, RayUnreachable, ModelFileError, ValueError) as exc:
        return _fail(str(exc))
    print(format_summary(summary))
    if summary["failed"] and not summary["restored"] and not summary["skipped"]:
        print("error: every image failed; see _failures.jsonl", file=sys.stderr)
        return 1
    return 0


EVALUATE_DESCRIPTION = (
    "Compress each clean image at each quality, restore it, and score JPEG and carray against the "
    "original with the published conventions (gray = MATLAB Y, colour = RGB): PSNR, SSIM, PSNR-B. "
    "Writes results.csv (per image), results.md (means per quality) and figures/."
)


def build_evaluate_parser(prog=None):
    return config.build_parser(config.EvaluateConfig, EVALUATE_DESCRIPTION, prog)


def evaluate_main(argv=None, prog=None) -> int:
    from .evaluate import markdown, run_evaluate
    from .model import ModelFileError
    from .runtime import RayUnreachable
    from .storage import StorageError

    cfg = config.parse(config.EvaluateConfig, argv, EVALUATE_DESCRIPTION, prog)
    try:
        summary = run_evaluate(cfg)
    except (StorageError, RayUnreachable, ModelFileError, ValueError) as exc:
        return _fail(str(exc))
    print(markdown(summary["table"], f"{cfg.images} ({'colour' if cfg.color else 'gray'})"))
    print(f"report: {cfg.output}/results.md, results.csv, figures/  ({summary['seconds']:.0f} s)")
    return 0


STAGES = {"prep": prep_main, "train": train_main, "infer": infer_main, "evaluate": evaluate_main}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in STAGES:
        print(f"usage: python -m carray {{{','.join(STAGES)}}} [options]  (each stage has --help)", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    stage = argv.pop(0)
    return STAGES[stage](argv, prog=f"carray {stage}")
