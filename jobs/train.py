"""train job: `ray job submit --working-dir . -- python jobs/train.py ...` (options: --help)."""
import sys

from carray.cli import stage_main


def main(argv=None) -> int:
    return stage_main("train", argv, prog="jobs/train.py")


if __name__ == "__main__":
    sys.exit(main())
