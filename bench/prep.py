"""Prep throughput: the Ray Data job on N CPUs against a single-process loop doing the same work
(read, decode, JPEG at each quality, patchify, write Parquet) on the same images.

    python bench/prep.py                       # bundled LIVE1 gray, copied --copies times
    python bench/prep.py --input ../shared/data/Train400 --copies 1

Prints patches/s for both and the ratio (Ray / loop). Ray's start-up (and a warm-up run on one copy) is
outside the timings;
the job's own listing, planning and summary are inside the Ray one.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import ray

from carray import prep
from carray.config import PrepConfig, parse_split
from carray.pairs import assign_split, pairs_from_clean, to_arrow

from common import LIVE1_GRAY as BUNDLED  # noqa: E402  (bench/ is on sys.path when a script runs)


def make_input(source: Path, copies: int, into: Path) -> Path:
    for k in range(copies):
        shutil.copytree(source, into / f"copy{k}")
    return into


def plain_loop(cfg: PrepConfig, root: Path, out: Path) -> int:
    """The same work in one process and one thread (as each Ray task runs it): every train/val
    image, each quality, one Parquet per image."""
    pa.set_cpu_count(1)
    shares = parse_split(cfg.split)
    qualities = [int(q) for q in cfg.quality]
    count = 0
    for i, path in enumerate(sorted(root.rglob("*.png"))):
        rel = path.relative_to(root).as_posix()
        if assign_split(rel, shares, cfg.seed) == "test":
            continue
        rows = pairs_from_clean(path.read_bytes(), rel, qualities, cfg.color, cfg.patch_size, cfg.stride)
        pq.write_table(to_arrow(rows), out / f"{i}.parquet")
        count += len(rows["y"])
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", type=Path, default=BUNDLED)
    parser.add_argument("--copies", type=int, default=4, help="copies of the input, for a workload that dwarfs start-up")
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--quality", nargs="+", default=["10", "20", "30", "40"])
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = make_input(args.input, args.copies, tmp / "in")
        cfg = PrepConfig(input=str(root), output=str(tmp / "ray-out"), quality=tuple(args.quality))

        (tmp / "loop-out").mkdir()
        started = time.perf_counter()
        loop_patches = plain_loop(cfg, root, tmp / "loop-out")
        loop_rate = loop_patches / (time.perf_counter() - started)

        ray.init(num_cpus=args.cpus, include_dashboard=False, logging_level="ERROR")
        ray.data.DataContext.get_current().enable_progress_bars = False
        # Warm-up on one copy: worker processes and their imports are Ray's start-up too.
        prep.run_prep(PrepConfig(input=str(args.input), output=str(tmp / "warm-out"), quality=tuple(args.quality)))
        started = time.perf_counter()
        summary = prep.run_prep(cfg)
        ray_seconds = time.perf_counter() - started
        ray_patches = sum(summary["patches"].values())
        ray_rate = ray_patches / ray_seconds
        ray.shutdown()

    assert ray_patches == loop_patches, (ray_patches, loop_patches)
    images = sum(summary["images"][s] for s in ("train", "val"))
    print(f"workload: {images} images x {len(args.quality)} qualities -> {loop_patches} patches, {os.cpu_count()} cores")
    print(f"plain loop (1 process): {loop_rate:10.0f} patches/s")
    print(f"ray data ({args.cpus} CPUs):     {ray_rate:10.0f} patches/s")
    print(f"ratio ray/loop: {ray_rate / loop_rate:.2f}")


if __name__ == "__main__":
    main()
