"""evaluate job: `ray job submit --working-dir . -- python jobs/evaluate.py ...` (options: --help)."""
import sys

from carray.cli import stage_main


def main(argv=None) -> int:
    return stage_main("evaluate", argv, prog="jobs/evaluate.py")


if __name__ == "__main__":
    sys.exit(main())
