"""Cluster use: the local head script (loopback only, token auth, job submission on a bucket),
the real-cluster configs, and a multi-node run."""
import filecmp
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from carray import jpeg
from carray.cli import main as cli_main
from carray.model import build_model, save_model
from carray.runtime import SYSTEM_CONFIG
from support.images import smooth_image

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"


# --- configs for real clusters ---


def test_aws_launcher_config():
    cfg = yaml.safe_load((CLUSTER / "aws.yaml").read_text())
    assert cfg["provider"]["type"] == "aws" and cfg["head_node_type"] in cfg["available_node_types"]
    gpu_types = [n for n in cfg["available_node_types"].values() if n["resources"].get("GPU")]
    assert gpu_types, "a GPU worker node type"
    worker = gpu_types[0]
    assert worker["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
    assert worker["min_workers"] < worker["max_workers"] <= cfg["max_workers"]
    # Every node type reaches the bucket through an instance profile (the launcher gives its default
    # profile to the head only).
    for name, node in cfg["available_node_types"].items():
        assert node["node_config"]["IamInstanceProfile"]["Arn"].startswith("arn:aws:iam::"), name
    # The autoscaler sees the GPU type's CPUs too (the jobs size GPU actors from them).
    assert worker["resources"]["CPU"] >= 1
    setup = " ".join(cfg["setup_commands"] + cfg["worker_setup_commands"])
    assert "ray[train,data,default]==2.60.0" in setup and "pip install -q -e \"/home/ubuntu/carray[int8]\"" in setup
    assert "download.pytorch.org/whl/cu" in " ".join(cfg["worker_setup_commands"]), "a CUDA torch on GPU nodes"
    assert {"**/.venv", "**/runs"} <= set(cfg["rsync_exclude"])
    head_start = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start and "RAY_AUTH_MODE=token" in head_start
    assert "--system-config='" + json.dumps(SYSTEM_CONFIG, separators=(",", ":")) + "'" in head_start, "idle workers kept (runtime.SYSTEM_CONFIG)"
    open_ports = {p["FromPort"] for p in cfg["provider"]["security_group"]["IpPermissions"]}
    assert open_ports == {22}, "the dashboard (8265) and GCS (6379) are never opened"


def test_docker_build_pins_ray_and_a_cuda_torch_and_leaves_the_venv_out():
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    assert "ARG RAY_VERSION=2.60.0" in dockerfile and "rayproject/ray:${RAY_VERSION}-py311-gpu" in dockerfile
    assert "download.pytorch.org/whl/cu" in dockerfile
    assert '"ray[train,data,default]==${RAY_VERSION}"' in dockerfile
    assert '-e "/home/ray/carray[int8]"' in dockerfile, "ONNX Runtime for CPU actors (--runtime auto)"
    ignored = (REPO / ".dockerignore").read_text().split()
    assert ".venv/" in ignored and "runs/" in ignored


@pytest.mark.parametrize("name, script", [("rayjob-train.yaml", "jobs/train.py"), ("rayjob-infer.yaml", "jobs/infer.py")])
def test_kuberay_rayjobs(name, script):
    import jsonschema
    import kubernetes_validate

    from support.kuberay import KUBERNETES_VERSION, RAYJOB_SCHEMA, pod_templates

    text = (CLUSTER / "kuberay" / name).read_text()
    job = yaml.safe_load(text)
    jsonschema.validate(job, RAYJOB_SCHEMA)  # KubeRay v1.5.1's RayJob fields, no unknown ones
    for template in pod_templates(job):
        kubernetes_validate.validate(
            {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": template}, KUBERNETES_VERSION, strict=True
        )
    spec = job["spec"]
    assert spec["entrypoint"].startswith(f"python {script}")
    assert "working_dir" in yaml.safe_load(spec["runtimeEnvYAML"])
    assert spec["shutdownAfterJobFinishes"] is True
    cluster = spec["rayClusterSpec"]
    assert cluster["authOptions"]["mode"] == "token"
    # The submitter pod and the operator reach the job API through the head Service: not loopback.
    assert cluster["headGroupSpec"]["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    for group in cluster["workerGroupSpecs"]:
        pod = group["template"]["spec"]
        assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
        assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        if group["maxReplicas"] > group["replicas"]:  # without it KubeRay never scales past replicas
            assert cluster["enableInTreeAutoscaling"] is True
        assert group["minReplicas"] == 0 and group["replicas"] == 0, "GPU pods only while a job asks for GPUs"
        assert pod["serviceAccountName"] == "carray"
    assert cluster["headGroupSpec"]["template"]["spec"]["serviceAccountName"] == "carray"
    assert "serviceaccount.yaml" in text


def test_kuberay_service_account_carries_an_iam_role():
    import kubernetes_validate

    from support.kuberay import KUBERNETES_VERSION

    account = yaml.safe_load((CLUSTER / "kuberay" / "serviceaccount.yaml").read_text())
    kubernetes_validate.validate(account, KUBERNETES_VERSION, strict=True)
    assert account["metadata"]["name"] == "carray"
    assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")


def test_local_sh_banner_runs_no_command():
    """The banner is printed, never executed: no unquoted heredoc (a backtick inside ran a command)."""
    script = (CLUSTER / "local.sh").read_text()
    assert "<<EOF" not in script and "<< EOF" not in script


def test_cluster_readme_names_every_config():
    readme = (CLUSTER / "README.md").read_text()
    for path in ["cluster/aws.yaml", "cluster/kuberay/rayjob-train.yaml", "cluster/kuberay/rayjob-infer.yaml", "cluster/local.sh start"]:
        assert path in readme


# --- the local head ---


def _free_base() -> int:
    while True:
        base = random.randint(21000, 29000)
        ok = True
        for port in range(base, base + 6):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
        if ok:
            return base


def _listening_addresses(pgid: int) -> list[str]:
    pids = {p for p in os.listdir("/proc") if p.isdigit() and _pgid(int(p)) == pgid}
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout
    found = []
    for line in out.splitlines():
        if any(f"pid={pid}," in line for pid in pids):
            found.append(line.split()[3])
    return found


def _pgid(pid: int):
    try:
        return os.getpgid(pid)
    except OSError:
        return None


@pytest.fixture
def local_head():
    base = _free_base()
    state = tempfile.mkdtemp(prefix="crh-", dir="/tmp")  # short: Ray's socket paths are limited to 107 bytes
    env = dict(os.environ, CARRAY_RAY_DIR=state, CARRAY_RAY_PORT=str(base), CARRAY_DASHBOARD_PORT=str(base + 6))
    env.pop("RAY_ADDRESS", None)
    started = subprocess.run([str(CLUSTER / "local.sh"), "start", "--cpus", "2"], env=env, capture_output=True, text=True, timeout=240)
    assert started.returncode == 0, started.stdout + started.stderr
    yield env, started.stdout, base
    subprocess.run([str(CLUSTER / "local.sh"), "stop"], env=env, capture_output=True, timeout=60)
    shutil.rmtree(state, ignore_errors=True)


@pytest.mark.s3
def test_local_head_is_loopback_only_needs_the_token_and_runs_infer_on_a_bucket(local_head, s3_server, bucket, tmp_path):
    env, printed, base = local_head
    pgid = int((Path(env["CARRAY_RAY_DIR"]) / "head.pgid").read_text())
    addresses = _listening_addresses(pgid)
    assert len(addresses) >= 4, addresses  # GCS, raylet, dashboard, agents
    assert all(a.startswith(("127.0.0.1:", "[::ffff:127.0.0.1]:", "[::1]:")) for a in addresses), addresses
    assert f"ray job submit --address http://127.0.0.1:{base + 6}" in printed and "RAY_AUTH_TOKEN_PATH" in printed

    # Inputs in the bucket; the S3 endpoint and credentials travel in the job's runtime_env only.
    options, name = bucket
    fs = options.filesystem()
    for i in range(3):
        with fs.open_output_stream(f"{name}/in/d/img{i}.jpg") as f:
            f.write(jpeg.compress(smooth_image(48, 40, seed=i), 10))
    model = tmp_path / "m.pt"
    save_model(build_model("fast-arcnn"), str(model))
    runtime_env = json.dumps({"env_vars": s3_server.env()})
    ray_bin = str(Path(sys.executable).parent / "ray")
    token_env = dict(env, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(Path(env["CARRAY_RAY_DIR"]) / "auth_token"))
    for key in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        token_env.pop(key, None)
    submit = subprocess.run(
        [ray_bin, "job", "submit", "--address", f"http://127.0.0.1:{base + 6}", "--working-dir", str(REPO),
         "--runtime-env-json", runtime_env, "--", "python", "jobs/infer.py",
         "--input", f"s3://{name}/in", "--output", f"s3://{name}/out", "--model", str(model)],
        env=token_env, capture_output=True, text=True, timeout=300,
    )
    assert submit.returncode == 0, submit.stdout[-3000:] + submit.stderr[-3000:]
    assert "3 restored" in submit.stdout
    assert s3_server.env()["AWS_SECRET_ACCESS_KEY"] not in submit.stdout + submit.stderr
    outputs = sorted(i.path for i in fs.get_file_info(__import__("pyarrow.fs").fs.FileSelector(f"{name}/out/d")))
    assert outputs == [f"{name}/out/d/img{i}.jpg.jpg" for i in range(3)]

    # Without the token the job API refuses the submission.
    anonymous = {k: v for k, v in env.items() if not k.startswith("RAY_AUTH")}
    anonymous["HOME"] = str(tmp_path / "no-token-home")
    refused = subprocess.run(
        [ray_bin, "job", "submit", "--address", f"http://127.0.0.1:{base + 6}", "--", "python", "-c", "print(1)"],
        env=anonymous, capture_output=True, text=True, timeout=120,
    )
    assert refused.returncode != 0 and "authentication" in (refused.stdout + refused.stderr).lower()


# --- several nodes ---


@pytest.mark.usefixtures("ray_session")
def test_multinode_infer_uses_every_node_and_matches_one_node(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(24):
        (src / f"i{i}.jpg").write_bytes(jpeg.compress(smooth_image(64, 72, seed=i), 10))
    model = tmp_path / "m.pt"
    save_model(build_model("arcnn"), str(model))
    run = subprocess.run(
        [sys.executable, str(REPO / "tests" / "support" / "multinode.py"), str(src), str(tmp_path / "multi"), str(model)],
        capture_output=True, text=True, timeout=400, env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["restored"] == 24, summary
    # Every node holds a restoring actor (placement, from the state API: deterministic). Which
    # actor restores which image depends on which one finished loading first, so the count of
    # nodes that restored something is not asserted.
    assert summary["actor_nodes"] == 3, "a restoring actor on every node"
    assert cli_main(["infer", "--input", str(src), "--output", str(tmp_path / "single"), "--model", str(model)]) == 0
    for i in range(24):
        assert filecmp.cmp(tmp_path / "multi" / f"i{i}.jpg.jpg", tmp_path / "single" / f"i{i}.jpg.jpg", shallow=False)


# --- an autoscaling cluster whose GPU nodes start from zero ---


@pytest.mark.usefixtures("ray_session")
def test_gpu_jobs_scale_gpu_nodes_from_zero_on_the_fake_autoscaler(tmp_path, image_folder):
    """infer --gpu and train --gpu on Ray's fake autoscaling provider: no GPU node is up when the jobs
    start; they ask for GPUs, the autoscaler starts GPU nodes, every restoring actor holds a GPU."""
    images = tmp_path / "jpegs"
    images.mkdir()
    for i in range(5):
        (images / f"p{i}.jpg").write_bytes(jpeg.compress(smooth_image(64, 72, seed=i), 20))
    prep = tmp_path / "prep"
    assert cli_main(["prep", "--input", str(image_folder), "--output", str(prep), "--split", "50/50/0"]) == 0
    temp = tempfile.mkdtemp(prefix="crf-", dir="/tmp")  # short: Ray's socket paths are limited
    try:
        run = subprocess.run(
            ["unshare", "-fpm", "--mount-proc", sys.executable, str(REPO / "tests" / "support" / "fake_gpu_cluster.py"),
             str(images), str(prep), str(tmp_path / "fake"), temp],
            capture_output=True, text=True, timeout=900, env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
        )
    finally:  # the namespace ended with the script: nothing writes there any more
        shutil.rmtree(temp, ignore_errors=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["infer_rc"] == 0, result["infer_log"][-3000:]
    assert result["restored"] == 5, result["infer_log"][-3000:]
    assert "restoring actor(s) on GPU (--gpu: no GPU node is up yet; the autoscaler can start up to 2 GPUs)" in result["infer_log"]
    assert "Adding 1 node(s) of type gpu_worker" in result["infer_log"]
    assert result["actors"], "restoring actors were listed"
    for actor in result["actors"]:
        assert actor["required"].get("GPU") == 1 and actor["node_gpus"] >= 1, result["actors"]
    assert result["train_rc"] == 0, result["train_log"][-3000:]
    assert result["model"] and "1 GPU training worker" in result["train_log"], result["train_log"][-3000:]


def test_gpu_actors_share_each_gpu_when_asked():
    from carray.runtime import Offer, plan_pool

    offer = Offer(cpus=16, gpus=2, gpu_node_cpus=8)
    alone = plan_pool(offer=offer)
    assert (alone.actors, alone.min_actors, alone.gpus, alone.cpus) == (2, 2, 1.0, 4.0)
    shared = plan_pool(offer=offer, per_gpu=4)  # what one GPU actor reserved, split four ways
    assert (shared.actors, shared.min_actors, shared.gpus, shared.cpus) == (8, 8, 0.25, 1.0)
    scaling = plan_pool(offer=Offer(cpus=4, gpus=0, max_gpus=3, gpu_node_cpus=8), per_gpu=2)
    assert (scaling.actors, scaling.min_actors, scaling.gpus) == (6, 2, 0.5)
    cpus = plan_pool(gpu=False, offer=Offer(cpus=2, gpus=0), per_gpu=4)
    assert (cpus.actors, cpus.gpus) == (2, 0.0)
