"""Fault helpers: kill a process, remove a node, restart the bucket server, wait for progress.

Each returns quickly and is safe to call from a test's helper thread; together they keep fault
tests short: start the job, wait_for(progress), inject the fault, check every input ended once.
"""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable


def wait_for(condition: Callable[[], bool], timeout: float = 240, what: str = "condition", poll: float = 0.1) -> None:
    """Poll `condition` until true; raise TimeoutError naming `what` otherwise."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        time.sleep(poll)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")


def count_files(folder: Path, pattern: str) -> int:
    return sum(1 for _ in Path(folder).rglob(pattern)) if Path(folder).exists() else 0


def kill_process_group(process: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """SIGKILL a job started with start_new_session=True, and everything it spawned in its group."""
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass
    process.wait(timeout=60)


def kill_ray_actor(class_name: str, address: str | None = None) -> int:
    """SIGKILL the process of one live actor of `class_name` (via the state API); returns its pid."""
    from ray.util.state import list_actors

    actors = list_actors(address=address, filters=[("class_name", "=", class_name), ("state", "=", "ALIVE")], detail=True)
    if not actors:
        raise LookupError(f"no live actor of class {class_name}")
    pid = int(actors[0].pid)
    os.kill(pid, signal.SIGKILL)
    return pid


class Fault(threading.Thread):
    """A fault injected from a daemon thread. :meth:`result` waits for it and re-raises what went
    wrong there (a timeout waiting for progress included), so a fault that never happened fails
    the test instead of passing unseen; it returns what the fault recorded."""

    def __init__(self, fault: Callable[[], dict]):
        super().__init__(daemon=True)
        self.fault, self.error, self.record = fault, None, None

    def run(self):
        try:
            self.record = self.fault()
        except BaseException as exc:  # noqa: BLE001 - handed to the test by result()
            self.error = exc

    def result(self, timeout: float = 300) -> dict:
        self.join(timeout)
        if self.is_alive():
            raise TimeoutError(f"the fault did not finish within {timeout} s")
        if self.error is not None:
            raise self.error
        return self.record


def restart_server_when(server, condition: Callable[[], bool], progress: Callable[[], int], down_seconds: float = 2.0) -> Fault:
    """Once `condition` holds, stop the S3 server, keep it down for `down_seconds`, start it again.
    Records `progress()` at the moment of the stop (read before stopping) as "progress_at_stop"."""

    def fault() -> dict:
        wait_for(condition, what="progress before the restart")
        at_stop = progress()
        server.stop()
        time.sleep(down_seconds)
        server.start()
        return {"progress_at_stop": at_stop}

    thread = Fault(fault)
    thread.start()
    return thread
