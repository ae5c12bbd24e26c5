"""prep: images -> Parquet patch pairs, on Ray Data.

Driver: list the input once, split images by a hash of their path (train/val/test), then per split
run one streaming pipeline: items -> map_batches (read, decode, compress, patchify, write
Parquet; parallel tasks). The test split is written as a list of images for whole-image evaluation.
Bad inputs never stop the job: each is recorded in ``_failures.jsonl`` (path, reason).
"""
from __future__ import annotations

import hashlib
import math
import posixpath
import time
from dataclasses import asdict

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from . import storage
from .config import PrepConfig, parse_qualities, parse_split
from .errors import OptionError
from .images import IMAGE_EXTENSIONS, ImageError
from .pairs import COLUMNS, assign_split, double_plan, pairs_from_clean, pairs_from_files, qualities_for, to_arrow

LOSSLESS_EXTENSIONS = (".png", ".bmp", ".tif", ".tiff", ".webp")
JPEG_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".jfif")
FAILURES_FILE = storage.FAILURES_FILE
MANIFEST_FILE = "_prep.json"
TEST_LIST_FILE = "test.txt"
IMAGES_PER_BLOCK = 8  # images per task; with the largest images first, the last tasks are short
FLUSH_BYTES = 256 * 2**20  # a task writes a Parquet file whenever this much is pending


def plan_items(relative_paths: list[str], pairs: bool) -> tuple[list[dict], list[dict]]:
    """The work items (image, original, jpeg) and the failures known from names alone.

    Clean mode: every image is an item. Pairs mode: name.{png,bmp,tif,...} + name.jpg; a JPEG
    without its original is a failure, a lossless image without a JPEG too.
    """
    if not pairs:
        return [{"image": p, "original": p, "jpeg": ""} for p in relative_paths], []
    stems: dict[str, dict[str, str]] = {}
    for path in relative_paths:
        stem, ext = posixpath.splitext(path)
        kind = "jpeg" if ext.lower() in JPEG_EXTENSIONS else "original"
        stems.setdefault(stem, {})[kind] = path
    items, failures = [], []
    for stem, found in sorted(stems.items()):
        if "original" in found and "jpeg" in found:
            items.append({"image": found["original"], "original": found["original"], "jpeg": found["jpeg"]})
        elif "jpeg" in found:
            failures.append({"path": found["jpeg"], "reason": "JPEG without its original (no lossless file with the same name)"})
        else:
            failures.append({"path": found["original"], "reason": "original without its JPEG (no name.jpg beside it)"})
    return items, failures


def _write_parquet_atomic(fs: pafs.FileSystem, path: str, table: pa.Table) -> None:
    """One Parquet file, visible only once complete (see storage.write_bytes_atomic)."""
    with storage.atomic_output(fs, path) as stream:
        pq.write_table(table, stream)


def patchify_batch(
    batch: dict[str, np.ndarray],
    *,
    cfg: PrepConfig,
    src_fs: pafs.FileSystem,
    src_root: str,
    out_fs: pafs.FileSystem,
    out_root: str,
) -> dict[str, np.ndarray]:
    """map_batches function: read, decode, compress and patchify each image of the batch, and
    write each split's patches as one Parquet file.

    Writing here rather than through Dataset.write_parquet keeps the patches out of Ray's block
    machinery (bench/prep.py measured write_parquet at about half the throughput). Returns one
    small row per image: its split, its patch count, and the reason when it failed.
    """
    pa.set_cpu_count(1)  # Ray gave this task one CPU; pyarrow's own pool would oversubscribe it
    fixed, ranges = parse_qualities(cfg.quality)
    first_fixed, first_ranges = parse_qualities(cfg.double) if cfg.double else ((), ())
    first_choices = tuple((q, q) for q in first_fixed) + first_ranges
    pending: dict[str, list[pa.Table]] = {}
    parts = 0
    patches, reasons = [], []
    # Files are named after the batch's images: a retried task replaces its own files, never adds.
    batch_id = hashlib.sha1("\n".join(batch["image"]).encode()).hexdigest()[:20]

    def flush(split: str) -> None:
        nonlocal parts
        path = storage.join(out_root, split, f"{batch_id}-{parts}.parquet")
        _write_parquet_atomic(out_fs, path, pa.concat_tables(pending.pop(split)))
        parts += 1

    for image, original, jpeg_path, split in zip(batch["image"], batch["original"], batch["jpeg"], batch["split"]):
        try:
            original_bytes = storage.read_bytes(src_fs, storage.join(src_root, original))
            if jpeg_path:
                jpeg_bytes = storage.read_bytes(src_fs, storage.join(src_root, jpeg_path))
                rows = pairs_from_files(original_bytes, jpeg_bytes, image, cfg.color, cfg.patch_size, cfg.stride, cfg.max_pixels)
            else:
                qualities = qualities_for(image, fixed, ranges, cfg.range_samples, cfg.seed)
                double = double_plan(image, first_choices, qualities, cfg.seed) if first_choices else None
                rows = pairs_from_clean(original_bytes, image, qualities, cfg.color, cfg.patch_size, cfg.stride, cfg.max_pixels, double,
                                        cfg.downscale, cfg.vary_chroma, cfg.seed)
        except Exception as exc:  # ImageError, OSError, or anything else: this image only
            patches.append(0)
            reasons.append(str(exc) if isinstance(exc, ImageError) else f"{type(exc).__name__}: {exc}")
            continue
        pending.setdefault(split, []).append(to_arrow(rows))
        patches.append(len(rows["y"]))
        reasons.append("")
        if sum(t.nbytes for t in pending[split]) >= FLUSH_BYTES:  # bounded memory for large photos
            flush(split)
    for split in list(pending):
        flush(split)
    return {"image": batch["image"], "split": batch["split"], "patches": np.array(patches), "reason": np.array(reasons, dtype=object)}


def _patchify_all(items: list[dict], cfg: PrepConfig, src_fs, src_root, out_fs, out_root) -> list[dict]:
    """The Ray Data pipeline: items -> map_batches(patchify_batch) in parallel tasks. Returns the
    per-image results (small rows; the patches themselves went straight to Parquet)."""
    import ray  # the Ray layer stays in this one function

    if not items:
        return []
    from .runtime import tune_data_context

    tune_data_context()
    ds = ray.data.from_items(items, override_num_blocks=max(1, math.ceil(len(items) / IMAGES_PER_BLOCK)))
    ds = ds.map_batches(
        patchify_batch,
        batch_size=None,
        fn_kwargs=dict(cfg=cfg, src_fs=src_fs, src_root=src_root, out_fs=out_fs, out_root=out_root),
    )
    return ds.take_all()


def run_prep(cfg: PrepConfig) -> dict:
    """Run the prep job; returns its summary (also written to ``_prep.json``).

    Raises storage.StorageError when the input does not exist or holds no images.
    """
    from .runtime import connect

    started = time.time()
    shares = parse_split(cfg.split)
    parse_qualities(cfg.quality)  # fail on a bad --quality or --double before any work starts
    if cfg.double:
        parse_qualities(cfg.double)
        if cfg.pairs:
            raise OptionError("--double makes JPEGs from clean images; it cannot be used with --pairs")
    if not 0 <= cfg.vary_chroma <= 1:
        raise OptionError(f"--vary-chroma is a share of the compressions, 0..1; got {cfg.vary_chroma}")
    if cfg.vary_chroma and (cfg.pairs or not cfg.color):
        raise OptionError("--vary-chroma codes the chroma of colour JPEGs made from clean images: it needs --color and no --pairs")
    if cfg.downscale != 1 and (cfg.pairs or cfg.downscale < 1):
        raise OptionError("--downscale wants a factor >= 1 and clean images (not --pairs)")
    src_fs, src_root = storage.resolve(cfg.input, cfg.s3())
    out_fs, out_root = storage.resolve(cfg.output, cfg.s3())
    extensions = LOSSLESS_EXTENSIONS + JPEG_EXTENSIONS if cfg.pairs else IMAGE_EXTENSIONS
    sizes = storage.list_file_sizes(src_fs, src_root, extensions)
    paths = sorted(sizes)
    if not paths:
        raise storage.StorageError(f"{cfg.input}: no images found (looked for {', '.join(extensions)})")
    items, failures = plan_items(paths, cfg.pairs)
    by_split: dict[str, list[dict]] = {"train": [], "val": [], "test": []}
    for item in items:
        by_split[assign_split(item["image"], shares, cfg.seed)].append(item)
    for failure in failures:
        failure["split"] = assign_split(failure["path"], shares, cfg.seed)

    storage.make_output_root(out_fs, out_root, cfg.output, cfg.create_bucket)
    for split in ("train", "val"):  # a re-run replaces, never mixes with, an earlier output
        storage.delete_dir_if_exists(out_fs, storage.join(out_root, split))
    connect(cfg.address)
    work = [dict(item, split=split) for split in ("train", "val") for item in by_split[split]]
    # Largest files first: blocks run in order, so the long tasks start early and the last ones
    # are short, and no core idles at the end waiting for one big image (LPT scheduling).
    work.sort(key=lambda item: -(sizes[item["original"]] + sizes.get(item["jpeg"], 0)))
    results = _patchify_all(work, cfg, src_fs, src_root, out_fs, out_root)
    failures += [{"path": r["image"], "split": r["split"], "reason": r["reason"]} for r in results if r["reason"]]
    failures.sort(key=lambda f: f["path"])

    failed = {f["path"] for f in failures}
    test_images = [i["image"] for i in by_split["test"]]
    storage.write_bytes_atomic(out_fs, storage.join(out_root, TEST_LIST_FILE), "".join(p + "\n" for p in test_images).encode())
    storage.write_jsonl(out_fs, storage.join(out_root, FAILURES_FILE), failures)
    patches = {s: int(sum(r["patches"] for r in results if r["split"] == s)) for s in ("train", "val")}
    seconds = time.time() - started
    summary = {
        "input": cfg.input,
        "output": cfg.output,
        "images": {s: sum(1 for i in by_split[s] if i["image"] not in failed) for s in by_split},
        "patches": patches,
        "failures": len(failures),
        "seconds": round(seconds, 2),
        "patches_per_second": round(sum(patches.values()) / seconds, 1),
        "patch_size": cfg.patch_size,
        "channels": 3 if cfg.color else 1,
        "columns": list(COLUMNS),
        "config": asdict(cfg),
    }
    storage.write_json(out_fs, storage.join(out_root, MANIFEST_FILE), summary)
    return summary


def format_summary(summary: dict) -> str:
    images, patches = summary["images"], summary["patches"]
    return (
        f"prep: images train {images['train']}, val {images['val']}, test {images['test']} | "
        f"patches train {patches['train']}, val {patches['val']} | failures {summary['failures']} "
        f"(see {FAILURES_FILE}) | {summary['seconds']:.1f} s, {summary['patches_per_second']:.0f} patches/s\n"
        f"output: {summary['output']}"
    )
