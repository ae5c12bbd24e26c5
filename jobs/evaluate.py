"""evaluate job: `ray job submit --working-dir . -- python jobs/evaluate.py ...` (options: --help)."""
import sys

from carray.cli import build_parser as _build_parser
from carray.cli import stage_main


def build_parser():
    return _build_parser("evaluate", prog="jobs/evaluate.py")


def main(argv=None) -> int:
    return stage_main("evaluate", argv, prog="jobs/evaluate.py")


if __name__ == "__main__":
    sys.exit(main())
