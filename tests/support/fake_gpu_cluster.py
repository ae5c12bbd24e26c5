"""GPU jobs on Ray's fake autoscaling provider: a 2-CPU head and a `gpu_worker` node type
{CPU: 1, GPU: 1} that starts at zero nodes and may grow to two.

    unshare -fpm --mount-proc python tests/support/fake_gpu_cluster.py IMAGES PREP WORK TEMP

Run it in its own PID namespace: everything it starts (the head, the autoscaler, the fake nodes it
launches) ends with it, and `ray stop`, which would end every Ray on the machine, is never needed.
TEMP: an empty folder with a short path (Ray's socket paths are limited) for the cluster's sessions
and logs; the caller removes it once this process, and so the namespace, has ended.
The fake nodes' autoscaler reaches the head's GCS on port 6379, which is why the head uses it.
Prints one JSON line: what the infer and train jobs did and where their actors ran.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

# Before Ray is imported (it reads this once): the cluster lives in its own PID namespace for this
# run only, with token auth off.
os.environ["RAY_AUTH_MODE"] = "disabled"
REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

CONFIG = {
    "cluster_name": "fake-gpu",
    "max_workers": 2,
    "upscaling_speed": 1.0,
    "idle_timeout_minutes": 5,
    "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True, "disable_launch_config_check": True},
    "auth": {"ssh_user": "ubuntu"},
    "available_node_types": {
        "ray.head.default": {"resources": {"CPU": 2}, "node_config": {}, "max_workers": 0},
        "gpu_worker": {"resources": {"CPU": 1, "GPU": 1}, "node_config": {}, "min_workers": 0, "max_workers": 2},
    },
    "head_node_type": "ray.head.default",
    **{key: [] for key in ("cluster_synced_files", "rsync_exclude", "rsync_filter", "initialization_commands", "setup_commands",
                          "head_setup_commands", "worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands")},
    "file_mounts": {},
    "file_mounts_sync_continuously": False,
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _job(args: list[str], env: dict, log: Path) -> int:
    with open(log, "wb") as out:
        return subprocess.run([sys.executable, *args], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=420).returncode


def _restorer_actors() -> list[dict]:
    import ray
    from ray.util.state import list_actors, list_nodes

    ray.init(address=os.environ["RAY_ADDRESS"], logging_level="WARNING")
    nodes = {n.node_id: n.resources_total for n in list_nodes(detail=True)}
    actors = list_actors(filters=[("class_name", "=", "MapWorker(MapBatches(Restorer))")], detail=True, raise_on_missing_output=False)
    found = [{"required": dict(a.required_resources or {}), "node_gpus": nodes.get(a.node_id, {}).get("GPU", 0)} for a in actors]
    ray.shutdown()
    return found


def main() -> None:
    images, prep, work, temp = (Path(p) for p in sys.argv[1:5])
    work.mkdir(parents=True, exist_ok=True)
    (temp / "ray").mkdir()
    config = work / "autoscaler.json"
    config.write_text(json.dumps(CONFIG))
    from ray._private.services import get_node_ip_address

    # The head records its address under --temp-dir, not where `auto` looks: name it explicitly.
    address = f"{get_node_ip_address()}:6379"
    env = dict(os.environ, RAY_TMPDIR=str(temp), HOME=str(work), RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1", RAY_ADDRESS=address)
    env["RAY_AUTH_MODE"] = "disabled"  # this cluster lives in its own PID namespace, for this run only
    os.environ.update({k: env[k] for k in ("RAY_TMPDIR", "HOME", "RAY_ADDRESS", "RAY_AUTH_MODE")})
    subprocess.run(
        [str(BIN / "ray"), "start", "--head", "--port=6379", "--num-cpus=2", f"--autoscaling-config={config}",
         f"--temp-dir={temp}/t", f"--dashboard-port={_free_port()}", "--dashboard-host=127.0.0.1", "--disable-usage-stats"],
        env=env, check=True, capture_output=True, timeout=180,
    )
    result = {}
    result["infer_rc"] = _job(["jobs/infer.py", "--input", str(images), "--output", str(work / "restored"), "--gpu"], env, work / "infer.log")
    result["restored"] = len(list((work / "restored").glob("*.jpg.jpg")))
    result["infer_log"] = (work / "infer.log").read_text(errors="replace")
    result["actors"] = _restorer_actors()
    result["train_rc"] = _job(
        ["jobs/train.py", "--data", str(prep), "--output", str(work / "run"), "--gpu", "--workers", "1", "--steps", "4",
         "--batch-size", "8", "--val-every", "2", "--checkpoint-every", "2", "--val-patches", "16", "--arch", "fast-arcnn"],
        env, work / "train.log",
    )
    result["train_log"] = (work / "train.log").read_text(errors="replace")
    result["model"] = (work / "run" / "model.pt").is_file()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
