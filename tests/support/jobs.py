"""Run a job script as its own driver process against the session's Ray cluster."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def job_env(extra: dict | None = None) -> dict:
    import ray

    env = dict(os.environ)
    env["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def start_job(script: str, args: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    """Start `python jobs/<script> args...` in its own process group, output to `log`."""
    return subprocess.Popen(
        [sys.executable, str(REPO / "jobs" / script), *args],
        stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=env or job_env(), cwd=REPO, start_new_session=True,
    )


def run_job(script: str, args: list[str], log: Path, env: dict | None = None, timeout: float = 300) -> tuple[int, str]:
    process = start_job(script, args, log, env)
    process.wait(timeout=timeout)
    return process.returncode, log.read_text(errors="replace")


def resumed_from(log: str) -> int:
    """The step in the train job's summary line "(resumed from step N)"; fails naming what the log
    says instead when the line is not there (a run that never got that far)."""
    import re

    found = re.search(r"resumed from step (\d+)", log)
    assert found, f"no 'resumed from step N' in the job's log:\n{log[-3000:]}"
    return int(found.group(1))
