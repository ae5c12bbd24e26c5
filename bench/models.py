"""Restoration speed of each architecture on this machine: megapixels/s of whole-image restoration
(tiles of 512, as the infer job runs them) on the bundled LIVE1 gray images, in one process, with the
cost in multiply-adds per pixel. Ratios are against ARCNN, measured in the same run.

    python bench/models.py              # torch threads = all cores
    python bench/models.py --threads 1
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from PIL import Image

from carray.model import ARCHITECTURES, build_model, multiply_adds_per_pixel
from carray.restore import prepare_model, restore_pixels

from common import LIVE1_GRAY as BUNDLED  # noqa: E402  (bench/ is on sys.path when a script runs)


def megapixels_per_second(model, images: list[np.ndarray], repeats: int) -> float:
    restore_pixels(model, images[0])  # warm-up: oneDNN builds its kernels for the first shapes
    started, pixels = time.perf_counter(), 0
    for _ in range(repeats):
        for image in images:
            restore_pixels(model, image)
            pixels += image.size
    return pixels / 1e6 / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    parser.add_argument("--images", type=int, default=8, help="LIVE1 images to restore per repeat")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    images = [np.asarray(Image.open(p).convert("L")) for p in sorted(BUNDLED.glob("*.png"))[: args.images]]
    rates = {}
    for arch in ARCHITECTURES:
        model = prepare_model(build_model(arch), torch.device("cpu"))
        rates[arch] = megapixels_per_second(model, images, args.repeats)
        print(f"{arch:15s} {multiply_adds_per_pixel(build_model(arch)) / 1e3:6.1f} k MACs/px  {rates[arch]:6.3f} MP/s  "
              f"x{rates[arch] / rates['arcnn']:.2f} of arcnn", flush=True)
    print(f"({torch.get_num_threads()} torch threads, {sum(i.size for i in images) / 1e6:.1f} MP per repeat)")


if __name__ == "__main__":
    main()
