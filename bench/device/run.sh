#!/usr/bin/env bash
# The prepared GPU call, as the device tool runs it (docs/benchmarks.md, "The prepared GPU call"):
#   run(command="bash bench/device/run.sh 1", carry=[".device/call1"], timeout_s=600)
#   run(command="bash bench/device/run.sh 2", carry=[".device/call2"], timeout_s=300)   # if time is left
# Results land in $OUT as each step finishes; `python bench/device/report.py RESULTS` turns them into docs.
# Here, `bash bench/device/run.sh 1 --toy` rehearses it at toy sizes (tests/test_device.py does, in make test).
set -uo pipefail
cd "$(dirname "$0")/../.."
PY=python3
if [ -x .venv/bin/python ]; then PY=.venv/bin/python; fi  # this checkout's environment; the device has none
exec "$PY" -u bench/device/call.py "$@"
