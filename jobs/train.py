"""train job: `ray job submit --working-dir . -- python jobs/train.py --data ... --output ...`."""
import sys

from carray.cli import build_train_parser as build_parser  # noqa: F401  (re-exported for launchers)
from carray.cli import train_main


def main(argv=None) -> int:
    return train_main(argv, prog="jobs/train.py")


if __name__ == "__main__":
    sys.exit(main())
