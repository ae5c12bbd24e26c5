"""infer job: `ray job submit --working-dir . -- python jobs/infer.py --input s3://... --output s3://...`."""
import sys

from carray.cli import build_infer_parser as build_parser  # noqa: F401  (re-exported for launchers)
from carray.cli import infer_main


def main(argv=None) -> int:
    return infer_main(argv, prog="jobs/infer.py")


if __name__ == "__main__":
    sys.exit(main())
