"""Connecting to Ray: the one place jobs start or join a cluster.

Ray's own `ray.init()` retries for minutes when RAY_ADDRESS, or the cluster recorded by the last
`ray start` on this machine, does not answer. Jobs check first and fail within seconds instead,
with a message that says what to do.
"""
from __future__ import annotations

import os
import socket
from typing import Optional

import ray

from .errors import JobError


class RayUnreachable(JobError):
    """No Ray cluster answers at the address a job was given."""


def _recorded_local_cluster() -> Optional[str]:
    """The GCS address the last `ray start` on this machine recorded, if any."""
    try:
        from ray._common.utils import get_ray_address_file  # not public API: degrade quietly
    except ImportError:  # pragma: no cover - older/newer Ray layouts
        return None
    path = get_ray_address_file(None)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return f.read().strip() or None


def _answers(address: str, timeout: float = 3.0) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def _start_local(num_cpus: Optional[int]) -> None:
    # The dashboard (on 127.0.0.1) serves the state API that Ray Train's controller polls.
    ray.init(address="local", num_cpus=num_cpus, dashboard_host="127.0.0.1")


def connect(address: Optional[str] = None, num_cpus: Optional[int] = None) -> None:
    """Join the cluster at `address` (or RAY_ADDRESS, or the one `ray start` recorded), or start a
    private local one when there is none. `address="local"` always starts a private one."""
    if ray.is_initialized():
        return
    target = address or os.environ.get("RAY_ADDRESS") or None
    if target == "local":
        _start_local(num_cpus)
        return
    if target is None or target == "auto":
        recorded = _recorded_local_cluster()
        if recorded is None:
            _start_local(num_cpus)
            return
        if not _answers(recorded):
            raise RayUnreachable(
                f"A local Ray cluster was recorded at {recorded} by an earlier `ray start`, but it "
                "does not answer. Run `ray stop --force` to clear it, start it again with "
                "`cluster/local.sh start`, or pass --address local to run on a private Ray."
            )
        target = recorded
    if "://" not in target and not _answers(target):
        raise RayUnreachable(
            f"No Ray cluster answers at {target} (from --address or RAY_ADDRESS). Check that the "
            "head is running (`ray status`), or unset RAY_ADDRESS / pass --address local to run on "
            "a private local Ray."
        )
    ray.init(address=target)


def tune_data_context() -> None:
    """Ray Data settings for our pipelines (driver-side, per job).

    By default Ray Data reserves a share of the CPUs for each operator; on a 2-CPU node that leaves
    a one-operator pipeline running a single task at a time and starves the actor pool's inputs
    (measured with bench/prep.py and bench/infer.py). Without the reservation, backpressure still
    bounds memory.
    """
    ray.data.DataContext.get_current().op_resource_reservation_enabled = False
