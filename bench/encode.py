"""What an output format costs: encoding speed per core, bytes, and the PSNR the encoding takes from
the restored image. One command, one table (docs/benchmarks.md, "Output formats").

    python bench/encode.py                 # LIVE1 colour (../shared/data) and gray (bundled), q10-q50
    python bench/encode.py --qualities 10 50 --limit 8

For each input quality q, every LIVE1 image is compressed at q (as evaluate does), restored by the
shipped model, and the restored pixels are encoded with each setting below. Per setting:
  MP/s per core   one thread encoding the restored images (and, separately, one 9.4 MP photo-sized
                  mosaic of them, where per-call costs vanish)
  bytes / q50     output bytes over the bytes of a q50 JPEG of the same original (a collection's
                  typical input), and over the bytes of the q JPEG that was restored
  PSNR cost       PSNR(original, restored) - PSNR(original, decoded output), dB (0 for lossless)
Settings needing a package that is not installed (imagecodecs) are left out with a line saying so.
"""
from __future__ import annotations

import argparse
import io
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # encoders are measured per core; keep torch to one too

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from carray import jpeg, metrics  # noqa: E402
from carray.images import decode_image  # noqa: E402
from carray.modelfiles import load_model, shipped_path  # noqa: E402
from carray.restore import restore_pixels  # noqa: E402

from common import BUNDLED, mosaic  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def pillow(fmt: str, **options):
    def encode(pixels: np.ndarray) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format=fmt, **options)
        return buf.getvalue()

    return encode


def codecs():
    """name -> (encode(uint8 pixels) -> bytes, lossless)."""
    table = {
        "PNG, Pillow level 6 (default)": (pillow("PNG"), True),
        "PNG, Pillow level 1": (pillow("PNG", compress_level=1), True),
        "JPEG q95 4:2:0 (Pillow)": (pillow("JPEG", quality=95), False),
        "JPEG q95 4:4:4 (Pillow)": (pillow("JPEG", quality=95, subsampling=0), False),
        "JPEG q98 4:4:4 (Pillow)": (pillow("JPEG", quality=98, subsampling=0), False),
        "WebP q95 method 0 (Pillow)": (pillow("WEBP", quality=95, method=0), False),
        "WebP lossless method 0 (Pillow)": (pillow("WEBP", lossless=True, quality=0, method=0), True),
    }
    try:
        import imagecodecs

        table["PNG, libspng (imagecodecs)"] = (lambda p: imagecodecs.spng_encode(p), True)
        table["PNG, libpng level 1 (imagecodecs)"] = (lambda p: imagecodecs.png_encode(p, level=1), True)
        table["JPEG XL lossless effort 1 (imagecodecs)"] = (lambda p: imagecodecs.jpegxl_encode(p, lossless=True, effort=1, numthreads=1), True)
    except ImportError:
        print("(imagecodecs not installed: its encoders are left out; pip install imagecodecs)")
    return table


def decode_any(data: bytes, like: np.ndarray) -> np.ndarray:
    """The output decoded back, in the mode of `like` (WebP gives gray back as R = G = B)."""
    try:
        pixels = decode_image(data, None).pixels
    except Exception:  # JPEG XL: Pillow cannot read it
        import imagecodecs

        pixels = imagecodecs.imread(data)
    if pixels.ndim == 3 and like.ndim == 2:
        pixels = pixels[..., 0]
    return pixels


def timed(encode, pixels: np.ndarray, repeat: int = 1) -> tuple[bytes, float]:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        data = encode(pixels)
        best = min(best, time.perf_counter() - started)
    return data, best


def measure(mode: str, folder: Path, qualities: list[int], limit: int, table: dict) -> None:
    import torch

    torch.set_num_threads(1)
    model, _ = load_model(str(shipped_path("color" if mode == "colour" else "gray")))
    convert = "RGB" if mode == "colour" else "L"
    originals = [np.asarray(Image.open(p).convert(convert)) for p in sorted(folder.iterdir())[:limit]]
    if mode == "gray" and folder.name != "LIVE1_gray":
        originals = [np.asarray(Image.fromarray(o).convert("L")) for o in originals]
    stats = {name: {"seconds": 0.0, "pixels": 0, "bytes": 0, "q50": 0, "input": 0, "cost": []} for name in table}
    restored_all = []
    for q in qualities:
        for original in originals:
            compressed = jpeg.compress(original, q)
            q50 = len(jpeg.compress(original, 50))
            restored = restore_pixels(model, decode_image(compressed).pixels, quality=q)
            restored_all.append(restored)
            base = metrics.psnr(original, restored)
            for name, (encode, _) in table.items():
                data, seconds = timed(encode, restored)
                s = stats[name]
                s["seconds"] += seconds
                s["pixels"] += restored.shape[0] * restored.shape[1]
                s["bytes"] += len(data)
                s["q50"] += q50
                s["input"] += len(compressed)
                s["cost"].append(base - metrics.psnr(original, decode_any(data, original)))
    photo = mosaic(restored_all, 2304, 4096)
    print(f"\n{mode}: {len(originals)} LIVE1 images x q{'/'.join(map(str, qualities))}, restored by the shipped model; "
          f"one thread; photo = a {photo.shape[1]}x{photo.shape[0]} mosaic of the restored images")
    print("| setting | MP/s per core (LIVE1 / 9.4 MP photo) | bytes per pixel | bytes / q50 JPEG | bytes / input JPEG | PSNR cost, dB (mean / max) |")
    print("|---|---|---|---|---|---|")
    for name, (encode, lossless) in table.items():
        s = stats[name]
        _, photo_seconds = timed(encode, photo, repeat=2)
        cost = np.array(s["cost"])
        cost_text = "0 (lossless)" if lossless else f"{cost.mean():.3f} / {cost.max():.3f}"
        print(f"| {name} | {s['pixels'] / 1e6 / s['seconds']:.1f} / {photo.shape[0] * photo.shape[1] / 1e6 / photo_seconds:.1f} | "
              f"{s['bytes'] / s['pixels']:.3f} | {s['bytes'] / s['q50']:.1f} | {s['bytes'] / s['input']:.1f} | {cost_text} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--qualities", nargs="+", type=int, default=[10, 20, 30, 40, 50])
    parser.add_argument("--limit", type=int, default=29, help="LIVE1 images per mode")
    parser.add_argument("--modes", nargs="+", default=["colour", "gray"], choices=["colour", "gray"])
    args = parser.parse_args()
    table = codecs()
    folders = {"colour": SHARED / "LIVE1_color" if (SHARED / "LIVE1_color").is_dir() else BUNDLED / "LIVE1_color",
               "gray": BUNDLED / "LIVE1_gray"}
    for mode in args.modes:
        measure(mode, folders[mode], args.qualities, args.limit, table)


if __name__ == "__main__":
    main()
