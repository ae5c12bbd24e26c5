"""`make demo`: the pipeline on bundled images, local Ray, local storage.

Runs prep on the bundled Classic5 and LIVE1 gray images and prints where everything is.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / "tests" / "data"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", default="demo-output", help="where the demo writes")
    parser.add_argument("--images", default=str(BUNDLED / "LIVE1_gray"), help="clean images to use")
    args = parser.parse_args(argv)
    out = Path(args.output).resolve()

    from .cli import prep_main

    print(f"== prep: {args.images} -> {out / 'patches'} (JPEG q10 and q30, gray 32x32 patches)")
    code = prep_main(["--input", args.images, "--output", str(out / "patches"), "--quality", "10", "30"], prog="demo prep")
    if code:
        return code
    print(f"\nDemo done. Patches: {out / 'patches'} (train/, val/, test.txt, _prep.json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
