"""Run the infer job on a multi-node local cluster (ray.cluster_utils.Cluster) in its own process.

    python tests/support/multinode.py SRC DST MODEL [--workers 2] [--remove-worker-after N] [--outputs GLOB]

Prints one JSON line: the job's summary. With --remove-worker-after N, a worker node is removed
once N outputs (files matching --outputs, default *.jpg.jpg; *.tar for shards) exist in DST (a
fault: the job must still finish every input).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

# Before Ray is imported: Cluster records its address in $RAY_TMPDIR/ray/ray_current_cluster
# (default /tmp/ray, absent on a new machine). A folder of this run's own keeps that record
# private and makes sure the folder exists.
_TEMP = tempfile.mkdtemp(prefix="crm-", dir="/tmp")
os.makedirs(os.path.join(_TEMP, "ray"), exist_ok=True)
os.environ["RAY_TMPDIR"] = _TEMP

import ray  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from carray.config import InferConfig
from carray.infer import run_infer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("src")
    parser.add_argument("dst")
    parser.add_argument("model")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--remove-worker-after", type=int, default=0)
    parser.add_argument("--outputs", default="*.jpg.jpg")
    args = parser.parse_args()

    temp_dir = _TEMP
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": None, "temp_dir": temp_dir})
    workers = [cluster.add_node(num_cpus=1, temp_dir=temp_dir) for _ in range(args.workers)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="WARNING")
    ray.data.DataContext.get_current().enable_progress_bars = False
    removed = {}

    def remove_when_started():
        while not removed and len(list(Path(args.dst).rglob(args.outputs))) < args.remove_worker_after:
            time.sleep(0.05)
        if not removed:
            cluster.remove_node(workers[-1], allow_graceful=False)
            removed["after"] = len(list(Path(args.dst).rglob(args.outputs)))

    if args.remove_worker_after:
        threading.Thread(target=remove_when_started, daemon=True).start()
    summary = run_infer(InferConfig(input=args.src, output=args.dst, model=args.model, actors=1 + args.workers))
    removed.setdefault("after", None)
    summary["removed_after"] = removed["after"]
    # Where the restoring actors ran (the state API is served by the head's dashboard).
    from ray.util.state import list_actors

    restorers = ("MapWorker(MapBatches(Restorer))", "MapWorker(MapBatches(ShardRestorer))")
    actors = [a for a in list_actors(address=cluster.address, detail=True, raise_on_missing_output=False, limit=10_000) if a.class_name in restorers]
    summary["actor_nodes"] = len({a.node_id for a in actors})
    print(json.dumps(summary))
    ray.shutdown()
    cluster.shutdown()


if __name__ == "__main__":
    try:
        main()
    finally:  # the cluster's processes are gone (shut down, or killed with this process's exit): its logs with them
        shutil.rmtree(_TEMP, ignore_errors=True)
