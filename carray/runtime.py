"""Connecting to Ray and sizing work for it: the one place jobs meet the cluster.

Ray's own `ray.init()` retries for minutes when RAY_ADDRESS, or the cluster recorded by the last
`ray start` on this machine, does not answer. Jobs check first and fail within seconds instead,
with a message that says what to do.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass
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


# Ray ends a worker process that has been idle for a second when there are more than one per CPU;
# our pipelines' short tasks then pay a new process (importing Ray, pyarrow, carray: ~1 CPU-s) again
# and again: on 2 CPUs that cost the infer job 10 % on small files (bench/infer.py). Idle workers
# are kept for a minute instead. (A cluster-wide setting: cluster/local.sh and cluster/aws.yaml
# start their heads with it.)
SYSTEM_CONFIG = {"idle_worker_killing_time_threshold_ms": 60_000}


def _start_local(num_cpus: Optional[int]) -> None:
    # The dashboard (on 127.0.0.1) serves the state API that Ray Train's controller polls.
    ray.init(address="local", num_cpus=num_cpus, dashboard_host="127.0.0.1", _system_config=SYSTEM_CONFIG)


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
    quiet_console()


def quiet_console() -> None:
    """The user's console shows carray's lines; Ray Data's own (its plan, progress and summary at
    INFO, its operators' warnings about concurrency that a pipeline of packs meets by design) go to
    Ray Data's log file only (the session's logs/ray-data/ray-data.log), where `ray logs` finds them.
    Warnings at WARNING and above still reach the console."""
    import logging
    import warnings

    data_logger = logging.getLogger("ray.data")
    for handler in data_logger.handlers:
        if not isinstance(handler, logging.FileHandler) and type(handler).__name__ != "SessionFileHandler":
            handler.setLevel(logging.WARNING)
    if getattr(warnings.showwarning, "carray_quiet", False):
        return
    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if f"{os.sep}ray{os.sep}" in filename:  # raised inside Ray: logged, not printed
            data_logger.info("%s:%s: %s: %s", filename, lineno, category.__name__, message)
            return
        shown(message, category, filename, lineno, file, line)

    show.carray_quiet = True
    warnings.showwarning = show


# --- sizing: how many actors/workers, with what resources, on what device ---


@dataclass(frozen=True)
class Offer:
    """What the cluster has now and what its autoscaler can add (None: no autoscaler config)."""

    cpus: float
    gpus: float
    max_gpus: Optional[float] = None
    gpu_node_cpus: float = 0.0  # CPUs of the smallest node type that has a GPU, per GPU

    @property
    def gpus_possible(self) -> float:
        return max(self.gpus, self.max_gpus or 0.0)


def _node_types_from_gcs() -> Optional[list[tuple[dict, int]]]:
    """(resources, max nodes) per node type, as the autoscaler reported them to the GCS (what Ray
    Train and Ray Data consult; set by autoscaler v2 deployments). None when nothing was reported."""
    try:
        from ray._private.state import state  # not public API: degrade quietly

        config = state.get_cluster_config()
    except Exception:
        return None
    if config is None or not config.node_group_configs:
        return None
    return [({k: float(v) for k, v in g.resources.items()}, int(g.max_count) if g.max_count >= 0 else 1024) for g in config.node_group_configs]


def _node_types_from_monitor() -> Optional[list[tuple[dict, int]]]:
    """The same from the autoscaling config file the head's autoscaler (monitor.py) was started
    with (`ray start --head --autoscaling-config=...`, ~/ray_bootstrap_config.yaml under the cluster
    launcher): a job's driver runs on the head, where that process is visible."""
    import glob

    import yaml

    for cmdline in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            with open(cmdline, "rb") as f:
                args = f.read().decode(errors="replace").split("\0")
        except OSError:
            continue
        if not any(a.endswith("autoscaler/_private/monitor.py") for a in args):
            continue
        for arg in args:
            if arg.startswith("--autoscaling-config="):
                try:
                    with open(os.path.expanduser(arg.split("=", 1)[1])) as f:
                        config = yaml.safe_load(f)
                    return [
                        ({k: float(v) for k, v in (t.get("resources") or {}).items()}, int(t.get("max_workers", 0)))
                        for t in config.get("available_node_types", {}).values()
                    ]
                except (OSError, ValueError, AttributeError, yaml.YAMLError):
                    return None
    return None


def cluster_offer() -> Offer:
    """Resources of the connected cluster, and the GPUs its autoscaler can start: a GPU node type
    of an autoscaling cluster may be at zero nodes and then shows no GPU in
    ray.cluster_resources() until a GPU is asked for."""
    total = ray.cluster_resources()
    cpus, gpus = float(total.get("CPU", 1)), float(total.get("GPU", 0))
    node_types = _node_types_from_gcs() or _node_types_from_monitor()
    max_gpus, per_gpu = None, 0.0
    if node_types is not None:
        max_gpus = 0.0
        for resources, count in node_types:
            node_gpus = resources.get("GPU", 0.0)
            if node_gpus <= 0 or count <= 0:
                continue
            max_gpus += node_gpus * count
            node_cpus = resources.get("CPU", 0.0) / node_gpus
            per_gpu = node_cpus if per_gpu == 0 else min(per_gpu, node_cpus)
    if gpus > 0 and per_gpu == 0:
        per_gpu = max(cpus / gpus, 1.0)
    return Offer(cpus=cpus, gpus=gpus, max_gpus=max_gpus, gpu_node_cpus=per_gpu)


def wait_for_gpu(timeout: float, poll: float = 2.0) -> float:
    """Ask the autoscaler for one GPU and wait until one is in the cluster; returns the GPUs then
    up (0 after `timeout`). For --gpu on clusters whose node types we could not read (KubeRay's
    autoscaler runs in its own container): the request starts a GPU node if the cluster can."""
    import time

    from ray.autoscaler.sdk import request_resources

    request_resources(bundles=[{"GPU": 1}])
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            gpus = float(ray.cluster_resources().get("GPU", 0))
            if gpus > 0:
                return gpus
            time.sleep(poll)
        return 0.0
    finally:
        request_resources(bundles=[])  # the job's own demand scales the cluster from here on


class NoGpu(JobError):
    """--gpu was asked for, but the cluster has no GPU and cannot start one."""


#: How long --gpu waits for a first GPU when the autoscaler's node types are unknown.
GPU_WAIT_S = float(os.environ.get("CARRAY_GPU_WAIT_S", "900"))


def choose_gpu(asked: Optional[bool], offer: Offer) -> tuple[bool, str]:
    """(use GPUs, why) from --gpu/--no-gpu/default and what the cluster offers."""
    who = "--gpu" if asked else "default"
    if asked is False:
        return False, "--no-gpu"
    if offer.gpus > 0:
        return True, f"{who}: the cluster has {offer.gpus:g} GPUs"
    if offer.max_gpus:
        return True, f"{who}: no GPU node is up yet; the autoscaler can start up to {offer.max_gpus:g} GPUs"
    if asked and offer.max_gpus == 0:
        raise NoGpu("--gpu was asked for, but the cluster has no GPU and no autoscaler node type with GPUs")
    if asked:  # node types unknown: ask, and wait for a bounded time
        found = wait_for_gpu(GPU_WAIT_S)
        if not found:
            raise NoGpu(f"--gpu was asked for, but no GPU joined the cluster within {GPU_WAIT_S:g} s of asking the autoscaler for one")
        return True, f"--gpu: the autoscaler started a GPU node ({found:g} GPUs up)"
    return False, f"default: no GPU in the cluster nor in its autoscaler's node types; {offer.cpus:g} CPUs"


@dataclass(frozen=True)
class Pool:
    """An actor pool: between min_actors and actors actors, each with cpus / gpus, torch threads,
    and `calls` packs restored at once (threads that decode and encode while the GPU restores)."""

    actors: int
    min_actors: int
    cpus: float
    gpus: float
    threads: int
    reason: str
    calls: int = 1


def gpu_actor_cpus(offer: Offer) -> float:
    """CPUs a GPU actor reserves on its node: half of the node's CPUs per GPU (at least 0.5, at
    most 4), so the decode and encode tasks feeding it still fit beside it on the same node."""
    return float(min(4.0, max(0.5, offer.gpu_node_cpus / 2)))


def restorer_gpu_cpus(offer: Offer) -> float:
    """CPUs a GPU restoring actor of infer reserves on its node: three quarters of the node's CPUs
    per GPU (at least 0.5). It decodes and encodes for its GPU in as many threads; the rest of the
    node reads the inputs and stitches the tiles of large images."""
    return float(max(0.5, offer.gpu_node_cpus * 3 / 4))


def plan_pool(actors: int = 0, gpu: Optional[bool] = None, offer: Optional[Offer] = None, per_gpu: int = 1, codecs: bool = False) -> Pool:
    """The restoring actor pool of infer and evaluate. codecs: the actors decode and encode
    themselves (infer): a GPU actor reserves most of its node's CPUs and restores that many packs at
    once (Pool.calls).

    CPU actors ask for half a CPU each, so on a small node they never take every CPU from the
    read, decode and write tasks (a pool of whole-CPU actors on 2 CPUs starves them and hangs).
    GPU actors: `per_gpu` share each GPU (1/per_gpu of a GPU and of the CPUs a GPU actor reserves
    each), from one GPU's worth up to `per_gpu` per GPU the autoscaler can offer. Sharing is for
    the actor's own CPU work (unpacking, colour conversion, stitching) that one Python thread does
    while the GPU waits.
    """
    offer = offer or cluster_offer()
    use_gpu, why = choose_gpu(gpu, offer)
    if use_gpu:
        per_gpu = max(1, per_gpu)
        most = actors or per_gpu * max(1, int(offer.gpus_possible))
        least = actors or per_gpu * max(1, int(offer.gpus))
        cpus = round((restorer_gpu_cpus(offer) if codecs else gpu_actor_cpus(offer)) / per_gpu, 3)
        return Pool(most, min(least, most), cpus, 1.0 / per_gpu, 1, why, calls=max(2, int(cpus)) if codecs else 1)
    count = actors or max(1, int(offer.cpus))
    return Pool(count, count, 0.5, 0.0, max(1, int(offer.cpus // count)), why)


def plan_train_workers(workers: int, gpu: Optional[bool], threads: int = 0, offer: Optional[Offer] = None) -> tuple[bool, dict, int, str]:
    """(use GPUs, resources per worker, torch threads per CPU worker, why) for Ray Train.

    CPU workers leave one CPU free for Ray Data's read tasks: a 2-CPU cluster with two 1-CPU
    workers starves them and hangs (measured: "Cluster resources are not enough to run any task from
    ReadFilesParquet"); with 0.5 CPU each it runs.
    """
    offer = offer or cluster_offer()
    use_gpu, why = choose_gpu(gpu, offer)
    if use_gpu:
        if offer.gpus_possible < workers:
            raise NoGpu(f"{workers} GPU workers asked for, but the cluster can have at most {offer.gpus_possible:g} GPUs")
        return True, {"CPU": gpu_actor_cpus(offer)}, 1, why  # ScalingConfig(use_gpu) adds one GPU each
    per_worker = max(0.1, min(1.0, (offer.cpus - 1) / workers)) if offer.cpus > 1 else 0.5
    return False, {"CPU": round(per_worker, 2)}, threads or max(1, int(offer.cpus // workers)), why
