"""Training throughput: the Ray Train job with 1 worker against a plain PyTorch loop over the same
Parquet data with the same torch threads, in one command.

    python bench/train.py [--steps 80] [--arch arcnn]

Both read the Parquet written from the bundled LIVE1 gray images (q10, 32x32 patches), batch 64,
and time 10-step windows; the figure is the median window after the first (start-up excluded),
in samples/s. Prints both and the ratio (Ray / loop).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import pyarrow.dataset as pads
import pyarrow.parquet as pq
import ray
import torch
import torch.nn.functional as F

from carray.config import TrainConfig
from carray.model import ARCHITECTURES, build_model
from carray.pairs import COMPRESSED, ORIGINAL, pairs_from_clean, to_arrow
from carray.train import run_train, to_tensor

from common import LIVE1_GRAY as BUNDLED  # noqa: E402  (bench/ is on sys.path when a script runs)
WINDOW = 10


def write_data(root: Path) -> None:
    for split, files in (("train", sorted(BUNDLED.glob("*.png"))[:24]), ("val", sorted(BUNDLED.glob("*.png"))[24:])):
        (root / split).mkdir(parents=True)
        for i, path in enumerate(files):
            rows = pairs_from_clean(path.read_bytes(), path.name, [10], False, 32, 16)
            pq.write_table(to_arrow(rows), root / split / f"{i}.parquet")


def plain_loop(root: Path, arch: str, steps: int, batch: int, threads: int) -> float:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_model(arch).to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    windows, step, start = [], 0, time.perf_counter()
    dataset = pads.dataset(root / "train", format="parquet")
    while step < steps:
        for record_batch in dataset.to_batches(columns=[COMPRESSED, ORIGINAL], batch_size=batch):
            if record_batch.num_rows < batch:
                continue
            x, y = to_tensor(record_batch.column(COMPRESSED)), to_tensor(record_batch.column(ORIGINAL))
            loss = F.mse_loss(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if step % WINDOW == 0:
                windows.append(WINDOW * batch / (time.perf_counter() - start))
                start = time.perf_counter()
            if step >= steps:
                break
    return statistics.median(windows[1:])


def ray_train(root: Path, out: Path, arch: str, steps: int, batch: int) -> tuple[float, int]:
    cfg = TrainConfig(
        data=str(root), output=str(out), arch=arch, workers=1, steps=steps, batch_size=batch,
        val_every=WINDOW, val_patches=0, checkpoint_every=steps, augment=False,
    )
    run_train(cfg)
    import csv

    rows = list(csv.DictReader(open(out / "metrics.csv")))
    return statistics.median(float(r["samples_per_s"]) for r in rows[1:]), len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--arch", default="arcnn", choices=sorted(ARCHITECTURES))
    parser.add_argument("--cpus", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        write_data(root)
        ray.init(num_cpus=args.cpus, logging_level="ERROR", dashboard_host="127.0.0.1")
        ray.data.DataContext.get_current().enable_progress_bars = False
        ray_rate, windows = ray_train(root, Path(tmp) / "run", args.arch, args.steps, args.batch_size)
        ray.shutdown()
        threads = args.cpus  # what the job gives its single CPU worker
        loop_rate = plain_loop(root, args.arch, args.steps, args.batch_size, threads)
    print(f"{args.arch}, batch {args.batch_size}, {args.steps} steps, {threads} torch threads, CPU")
    print(f"plain PyTorch loop:     {loop_rate:8.1f} samples/s")
    print(f"Ray Train, 1 worker:    {ray_rate:8.1f} samples/s")
    print(f"ratio ray/loop: {ray_rate / loop_rate:.2f}")


if __name__ == "__main__":
    main()
