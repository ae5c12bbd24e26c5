"""`make demo`: the pipeline on bundled images, on a local Ray and local storage.

1. prep: the bundled LIVE1 gray images -> Parquet patch pairs (JPEG q10 and q30);
2. infer: the bundled Classic5 images (gray) and two LIVE1 colour images, saved as JPEG at q10 and
   q20, restored in one job with the shipped models (gray images by the gray model, colour images
   by the colour model);
3. the gain: PSNR of each restored image and of its JPEG against the original (gray: Y, colour: RGB);
4. a preview of the same JPEGs (infer --preview 4): demo-output/preview/index.html, what a collection
   owner looks at before a full run.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

# The demo's images are the test images of a source checkout (they are not in the wheel: a
# package install gets the models, not the data). --images points it at a copy elsewhere.
CHECKOUT_IMAGES = Path(__file__).resolve().parents[1] / "tests" / "data"
NEEDED = ("LIVE1_gray", "Classic5", "LIVE1_color")


def make_jpegs(clean: Path, out: Path, qualities: list[int], mode: str) -> dict[str, np.ndarray]:
    """JPEGs (mode 'L' or 'RGB') of each clean image at each quality; returns {jpeg relative path: original}."""
    from . import jpeg

    originals = {}
    for path in sorted(clean.glob("*")):
        original = np.asarray(Image.open(path).convert(mode))
        for q in qualities:
            rel = f"q{q}/{path.stem}.jpg"
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            (out / rel).write_bytes(jpeg.compress(original, q))
            originals[rel] = original
    return originals


def report_gain(originals: dict[str, np.ndarray], jpegs: Path, restored: Path) -> None:
    from . import metrics
    from .config import DEFAULT_OUTPUT_FORMAT
    from .infer import output_name

    print(f"\n{'image':22s} {'mode':>5s} {'JPEG PSNR':>10s} {'carray PSNR':>12s} {'gain':>7s}")
    gains = []
    for rel, original in originals.items():
        mode = "RGB" if original.ndim == 3 else "L"
        before = metrics.psnr(original, np.asarray(Image.open(jpegs / rel).convert(mode)))
        after = metrics.psnr(original, np.asarray(Image.open(restored / output_name(rel, DEFAULT_OUTPUT_FORMAT))))
        gains.append(after - before)
        print(f"{rel:22s} {mode:>5s} {before:10.2f} {after:12.2f} {after - before:+7.2f}")
    print(f"{'mean gain':22s} {'':5s} {'':10s} {'':12s} {np.mean(gains):+7.2f} dB")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="demo-output", help="where the demo writes")
    parser.add_argument(
        "--images", default=str(CHECKOUT_IMAGES),
        help="folder holding LIVE1_gray/, Classic5/ and LIVE1_color/ (a source checkout's tests/data)",
    )
    args = parser.parse_args(argv)
    out = Path(args.output).resolve()
    bundled = Path(args.images)
    missing = [name for name in NEEDED if not (bundled / name).is_dir()]
    if missing:
        print(
            f"error: the demo needs the bundled test images ({', '.join(missing)} not found in {bundled}). They come "
            "with a source checkout (tests/data/); run `make demo` there, or pass --images FOLDER.",
            file=sys.stderr,
        )
        return 2

    from .cli import stage_main
    from .runtime import connect

    connect("local", num_cpus=2)  # one private Ray for both jobs
    print(f"== prep: {bundled / 'LIVE1_gray'} -> {out / 'patches'}")
    code = stage_main("prep", ["--input", str(bundled / "LIVE1_gray"), "--output", str(out / "patches"), "--quality", "10", "30"], prog="demo prep")
    if code:
        return code

    originals = make_jpegs(bundled / "Classic5", out / "jpeg", [10, 20], "L")
    originals.update(make_jpegs(bundled / "LIVE1_color", out / "jpeg", [10, 20], "RGB"))
    print(f"\n== infer: {out / 'jpeg'} -> {out / 'restored'} (shipped models)")
    code = stage_main("infer", ["--input", str(out / "jpeg"), "--output", str(out / "restored"), "--overwrite"], prog="demo infer")
    if code:
        return code
    report_gain(originals, out / "jpeg", out / "restored")
    print(f"\n== infer --preview 4: {out / 'jpeg'} -> {out / 'preview'}")
    code = stage_main("infer", ["--input", str(out / "jpeg"), "--output", str(out / "preview"), "--preview", "4"], prog="demo preview")
    if code:
        return code
    print(f"\nDemo done.\n  patches:  {out / 'patches'}\n  JPEGs:    {out / 'jpeg'}\n  restored: {out / 'restored'}\n"
          f"  preview:  {out / 'preview' / 'index.html'} (open it in a browser)")
    return 0


if __name__ == "__main__":
    from .console import filter_ray_notices

    filter_ray_notices()  # Ray's C++ notices about itself stay in Ray's logs (carray/console.py)
    sys.exit(main())
