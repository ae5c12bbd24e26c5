"""Inference throughput and memory: the infer job against a plain PyTorch loop, same images, same
cores, in one command.

    python bench/infer.py                 # bundled LIVE1 gray (4 times) at JPEG q10, the shipped architecture
    python bench/infer.py --arch arcnn --copies 2

1. Throughput: megapixels/s of the Ray Data job (2 CPUs, after a warm-up run) against a loop that
   only decodes, runs the same model on the same tiles and encodes (no Ray, torch threads = CPUs).
2. Memory: peak resident memory of all the job's processes (driver + Ray) restoring 50 and 500
   small images (128x128 crops), each in a fresh Ray; it should stay flat.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import ray
import torch
from PIL import Image

from carray import jpeg
from carray.config import InferConfig
from carray.images import decode_image, encode_image
from carray.quality import jpeg_quality
from carray.infer import run_infer
from carray.model import ARCHITECTURES, build_model, save_model
from carray.restore import prepare_model, restore_image

from common import LIVE1_GRAY as BUNDLED  # noqa: E402  (bench/ is on sys.path when a script runs)


def make_jpegs(folder: Path, count: int | None = None, crop: int | None = None, quality: int = 10) -> None:
    folder.mkdir(parents=True)
    sources = [np.asarray(Image.open(p).convert("L")) for p in sorted(BUNDLED.glob("*.png"))]
    count = count or len(sources)
    for i in range(count):
        img = sources[i % len(sources)]
        if crop:
            y, x = (i * 37) % (img.shape[0] - crop), (i * 53) % (img.shape[1] - crop)
            img = img[y : y + crop, x : x + crop]
        (folder / f"{i:04d}.jpg").write_bytes(jpeg.compress(img, quality))


def plain_loop(folder: Path, model_path: str, threads: int) -> float:
    from carray.modelfiles import load_model

    torch.set_num_threads(threads)
    model = prepare_model(load_model(model_path)[0], torch.device("cpu"))
    started, pixels = time.perf_counter(), 0
    for path in sorted(folder.glob("*.jpg")):
        data = path.read_bytes()
        image = decode_image(data)
        encode_image(restore_image({"gray": model}, image, quality=jpeg_quality(data)), "png")
        pixels += image.pixels.shape[0] * image.pixels.shape[1]
    return pixels / 1e6 / (time.perf_counter() - started)


def _tree_rss() -> int:
    """Resident bytes of this process and all its descendants (Ray's raylet, workers...), from /proc."""
    parents, rss = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/status") as f:
                rss[int(entry)] = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
        except (OSError, StopIteration, ValueError):
            continue
    tree, frontier = {os.getpid()}, [os.getpid()]
    while frontier:
        children = [pid for pid, parent in parents.items() if parent in frontier and pid not in tree]
        tree.update(children)
        frontier = children
    return sum(rss.get(pid, 0) for pid in tree)


def peak_memory_of_job(src: Path, dst: Path, model_path: str, cpus: int) -> float:
    """Peak summed RSS (GiB) of this process and its Ray children during one infer job."""
    ray.init(num_cpus=cpus, logging_level="ERROR", include_dashboard=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    peak, stop = 0, threading.Event()

    def sample():
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, _tree_rss())
            time.sleep(0.2)

    sampler = threading.Thread(target=sample)
    sampler.start()
    run_infer(InferConfig(input=str(src), output=str(dst), model=model_path))
    stop.set()
    sampler.join()
    ray.shutdown()
    return peak / 2**30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="unshuffled-cnn", choices=sorted(ARCHITECTURES))
    parser.add_argument("--copies", type=int, default=4, help="times the 29 LIVE1 images are restored: the job's fixed "
                        "start-up (two actor processes importing torch and loading the model, ~3 CPU-s) is then a small share")
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_path = str(tmp / "model.pt")
        save_model(build_model(args.arch), model_path)  # the cost does not depend on the weights
        make_jpegs(tmp / "live1", count=29 * args.copies)
        make_jpegs(tmp / "warm", count=4, crop=128)

        loop_rate = plain_loop(tmp / "live1", model_path, args.cpus)

        ray.init(num_cpus=args.cpus, logging_level="ERROR", include_dashboard=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        run_infer(InferConfig(input=str(tmp / "warm"), output=str(tmp / "warm-out"), model=model_path))
        summary = run_infer(InferConfig(input=str(tmp / "live1"), output=str(tmp / "live1-out"), model=model_path))
        ray.shutdown()
        ray_rate = summary["megapixels_per_second"]
        print(f"{args.arch} on {summary['seen']} LIVE1 JPEGs (each image {args.copies} times) ({summary['megapixels']:.1f} MP), {args.cpus} CPUs")
        print(f"plain PyTorch loop (decode, model, encode): {loop_rate:6.3f} MP/s")
        print(f"infer job (Ray Data, actor pool):          {ray_rate:6.3f} MP/s")
        print(f"ratio ray/loop: {ray_rate / loop_rate:.2f}")

        if not args.skip_memory:
            peaks = {}
            for count in (50, 500):
                make_jpegs(tmp / f"m{count}", count=count, crop=128)
                peaks[count] = peak_memory_of_job(tmp / f"m{count}", tmp / f"m{count}-out", model_path, args.cpus)
            print(f"peak RSS, all processes: 50 images {peaks[50]:.2f} GiB, 500 images {peaks[500]:.2f} GiB, "
                  f"ratio {peaks[500] / peaks[50]:.2f}")


if __name__ == "__main__":
    main()
