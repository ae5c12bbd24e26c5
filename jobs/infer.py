"""infer job: `ray job submit --working-dir . -- python jobs/infer.py ...` (options: --help)."""
import sys

from carray.cli import stage_main


def main(argv=None) -> int:
    return stage_main("infer", argv, prog="jobs/infer.py")


if __name__ == "__main__":
    sys.exit(main())
