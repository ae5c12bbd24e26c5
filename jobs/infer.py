"""infer job: `ray job submit --working-dir . -- python jobs/infer.py ...` (options: --help)."""
import sys

from carray.cli import stage_main
from carray.console import filter_ray_notices


def main(argv=None) -> int:
    return stage_main("infer", argv, prog="jobs/infer.py")


if __name__ == "__main__":
    filter_ray_notices()  # Ray's C++ notices about itself stay in Ray's logs (carray/console.py)
    sys.exit(main())
