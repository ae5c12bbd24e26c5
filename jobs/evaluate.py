"""evaluate job: `ray job submit --working-dir . -- python jobs/evaluate.py --images ... --output ...`."""
import sys

from carray.cli import build_evaluate_parser as build_parser  # noqa: F401  (re-exported for launchers)
from carray.cli import evaluate_main


def main(argv=None) -> int:
    return evaluate_main(argv, prog="jobs/evaluate.py")


if __name__ == "__main__":
    sys.exit(main())
