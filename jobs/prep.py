"""prep job: `ray job submit --working-dir . -- python jobs/prep.py --input ... --output ...`."""
import sys

from carray.cli import build_prep_parser as build_parser  # noqa: F401  (re-exported for launchers)
from carray.cli import prep_main


def main(argv=None) -> int:
    return prep_main(argv, prog="jobs/prep.py")


if __name__ == "__main__":
    sys.exit(main())
