"""prep job: `ray job submit --working-dir . -- python jobs/prep.py ...` (options: --help)."""
import sys

from carray.cli import stage_main


def main(argv=None) -> int:
    return stage_main("prep", argv, prog="jobs/prep.py")


if __name__ == "__main__":
    sys.exit(main())
