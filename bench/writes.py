"""What writing an output costs the writing thread: outputs kept in the page cache, as a plain write
leaves them, against outputs whose pages are let go (carray.storage.WrittenPages, what the jobs do),
alternating in one process (docs/benchmarks.md, session 23).

    python bench/writes.py                          # 100 outputs of 5 MB per round, 3 rounds, in /var/tmp
    python bench/writes.py --size-mb 5 --gap-ms 80 --dir /data/scratch

Between two outputs the thread computes for --gap-ms (the actor's decode, restore and encode of the
next photo: about 150 ms for a 12 MP one on a core here), so the kernel does what it does between two
writes of a job. Each mode writes new files, as a job does; they are removed between rounds.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import pyarrow.fs as pafs

from carray import storage


def write_round(folder: Path, count: int, data: bytes, gap_s: float, read_again: bool) -> float:
    """Thread CPU seconds per output over `count` new files written with write_bytes_atomic."""
    fs = pafs.LocalFileSystem()
    folder.mkdir(parents=True)
    spent = 0.0
    for i in range(count):
        started = time.thread_time()
        storage.write_bytes_atomic(fs, str(folder / f"out{i:05d}.jpg"), data, read_again=read_again)
        spent += time.thread_time() - started
        busy_until = time.perf_counter() + gap_s
        while time.perf_counter() < busy_until:  # compute, as the actor does between two outputs
            pass
    return spent / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=100, help="outputs per mode and round (default 100)")
    parser.add_argument("--size-mb", type=float, default=5.0, help="bytes of each output, MB (default 5: a 12 MP photo at q98)")
    parser.add_argument("--gap-ms", type=float, default=80.0, help="computing between two outputs, ms (default 80)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", default="/var/tmp", help="where the outputs go: a disk, not a tmpfs (default /var/tmp)")
    args = parser.parse_args()

    data = os.urandom(int(args.size_mb * 1e6))
    root = Path(tempfile.mkdtemp(prefix="carray-writes-", dir=args.dir))
    print(f"{args.count} outputs of {args.size_mb:g} MB per mode and round, {args.gap_ms:g} ms of computing between two, in {root}")
    try:
        for n in range(args.rounds):
            kept = write_round(root / f"kept{n}", args.count, data, args.gap_ms / 1e3, read_again=True)
            released = write_round(root / f"released{n}", args.count, data, args.gap_ms / 1e3, read_again=False)
            print(f"  round {n + 1}: kept in the page cache {kept * 1e3:.2f} ms of CPU per output, pages let go {released * 1e3:.2f} "
                  f"({kept / released:.1f}x)")
            shutil.rmtree(root / f"kept{n}")
            shutil.rmtree(root / f"released{n}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
