"""Faults: lose a node, kill the driver, restart the bucket server, kill a training worker, crash
prep, feed mutated JPEGs. After each, every input ends exactly once: one output or one failure line.
The helpers live in tests/support/faults.py."""
import filecmp
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from carray import jpeg
from carray.cli import main as cli_main
from carray.config import PrepConfig
from carray.infer import decode_to_row, encode_row
from carray.infer.restoring import RowRestorer
from carray.model import build_model, model_bytes, save_model
from carray.prep import run_prep
from carray.quality import Policy
from support.images import png_bytes, smooth_image
from support.faults import count_files, kill_process_group, kill_ray_actor, restart_server_when, wait_for
from support.jobs import job_env, resumed_from, run_job, start_job

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("ray_session")
IMAGES = 24


@pytest.fixture(scope="module")
def collection(tmp_path_factory, ray_session):
    """24 JPEGs big enough that a run lasts several seconds and spans two packs (at most 4 MP
    each: the outputs of one pack appear together, so a run of one pack could not be interrupted part-way),
    one broken file, a model, and the outputs of an undisturbed run to compare against."""
    root = tmp_path_factory.mktemp("faults")
    src = root / "in"
    (src / "sub").mkdir(parents=True)
    for i in range(IMAGES):
        (src / ("sub" if i % 3 else "") / f"img{i:02d}.jpg").write_bytes(jpeg.compress(smooth_image(512, 512, seed=i), 10))
    (src / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 broken")
    model = root / "arcnn.pt"
    save_model(build_model("arcnn"), str(model))
    reference = root / "reference"
    assert cli_main(["infer", "--input", str(src), "--output", str(reference), "--model", str(model)]) == 0
    return src, model, reference


def assert_exactly_once(src: Path, dst: Path, reference: Path) -> None:
    inputs = sorted(p.relative_to(src).as_posix() + ".jpg" for p in src.rglob("*.jpg"))
    outputs = sorted(p.relative_to(dst).as_posix() for p in dst.rglob("*.jpg.jpg"))
    failures = [json.loads(line)["path"] for line in (dst / "_failures.jsonl").read_text().splitlines()]
    assert len(failures) == len(set(failures)) == 1 and failures == ["broken.jpg"]
    assert sorted(outputs + [f + ".jpg" for f in failures]) == inputs
    for rel in outputs:
        assert filecmp.cmp(dst / rel, reference / rel, shallow=False), f"{rel} differs from the undisturbed run"
    assert not list(dst.rglob("*.tmp")), "no temporary file is left"


def test_node_lost_during_infer(collection, tmp_path):
    src, model, reference = collection
    dst = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, str(REPO / "tests" / "support" / "multinode.py"), str(src), str(dst), str(model), "--remove-worker-after", "5"],
        capture_output=True, text=True, timeout=500, env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["removed_after"] is not None and summary["removed_after"] < IMAGES, "the node went mid-run"
    assert_exactly_once(src, dst, reference)


def test_node_lost_while_rewriting_shards(collection, tmp_path):
    """The collection's JPEGs as six WebDataset shards (key.jpg beside key.txt); a worker node is
    removed once the first output shard exists: every shard is still written once, whole."""
    import tarfile

    src, model, _ = collection
    shards, dst = tmp_path / "shards", tmp_path / "out"
    shards.mkdir()
    images = sorted(src.rglob("img*.jpg"))
    for n in range(6):
        with tarfile.open(shards / f"{n:05d}.tar", "w") as tar:
            for path in images[n * 4 : n * 4 + 4]:
                tar.add(path, arcname=f"{path.stem}.jpg")
                caption = tarfile.TarInfo(f"{path.stem}.txt")
                caption.size = len(path.stem)
                tar.addfile(caption, io.BytesIO(path.stem.encode()))
    run = subprocess.run(
        [sys.executable, str(REPO / "tests" / "support" / "multinode.py"), str(shards), str(dst), str(model),
         "--remove-worker-after", "1", "--outputs", "*.tar"],
        capture_output=True, text=True, timeout=500, env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["removed_after"] is not None and summary["removed_after"] < 6, "the node went mid-run"
    assert (summary["restored"], summary["failed"], summary["samples"]) == (IMAGES, 0, IMAGES)
    for n in range(6):
        with tarfile.open(dst / f"{n:05d}.tar") as out, tarfile.open(shards / f"{n:05d}.tar") as original:
            assert out.getnames() == original.getnames(), "every sample, once, in order"
    assert (dst / "_failures.jsonl").read_text() == "" and not list(dst.rglob("*.tmp"))


def test_driver_killed_then_rerun(collection, tmp_path):
    src, model, reference = collection
    dst = tmp_path / "out"
    args = ["--input", str(src), "--output", str(dst), "--model", str(model)]
    driver = start_job("infer.py", args, tmp_path / "killed.log")
    wait_for(lambda: count_files(dst, "*.jpg.jpg") >= 3 or driver.poll() is not None, what="the first outputs")
    written = count_files(dst, "*.jpg.jpg")
    kill_process_group(driver)
    assert 0 < written < IMAGES, "killed part-way"
    for output in dst.rglob("*.jpg.jpg"):  # what is visible is complete
        Image.open(output).load()
    code, log = run_job("infer.py", args, tmp_path / "rerun.log")
    assert code == 0, log[-3000:]
    # Writes run in Ray's tasks, not in the driver: one in flight when the driver died may still
    # have finished, so the re-run skips at least what was there when the kill was seen.
    import re

    restored = int(re.search(r"infer: (\d+) restored", log).group(1))
    exists = int(re.search(r"skipped: (\d+) — output exists", log).group(1))
    assert restored + exists == IMAGES and exists >= written, log[-2000:]
    assert_exactly_once(src, dst, reference)


@pytest.mark.s3
def test_bucket_server_restarted_mid_run(collection, s3_server, bucket, tmp_path, monkeypatch):
    """The S3 server goes down for 2 s mid-run. What this proves: the outage never corrupts or
    duplicates anything. The first run either rides it out (pyarrow's retries) or ends with the
    affected images as failure lines (never a crash); either way a plain re-run then completes, and
    every input ends exactly once, byte-identical to an undisturbed run. Whether the first run
    survives depends on when the outage hits, so both outcomes are accepted, each checked."""
    src, model, reference = collection
    options, name = bucket
    fs = options.filesystem()
    for path in src.rglob("*.jpg"):
        with fs.open_output_stream(f"{name}/in/{path.relative_to(src).as_posix()}") as f:
            f.write(path.read_bytes())
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)

    def outputs_in_bucket() -> int:
        try:
            return sum(1 for i in fs.get_file_info(pafs.FileSelector(f"{name}/out", recursive=True, allow_not_found=True)) if i.path.endswith(".jpg.jpg"))
        except OSError:
            return 0

    restart = restart_server_when(s3_server, lambda: outputs_in_bucket() >= 3, progress=outputs_in_bucket)
    args = ["infer", "--input", f"s3://{name}/in", "--output", f"s3://{name}/out", "--model", str(model)]
    first = cli_main(args)
    # The restart happened (a timeout in its thread fails here), while images were in flight.
    assert 3 <= restart.result()["progress_at_stop"] < IMAGES - 1, "the server went down mid-run (23 good images), not after it"
    assert first in (0, 1), "the outage is reported as failures, not a crash"
    if first != 0 or outputs_in_bucket() < IMAGES:  # failed clearly: a re-run completes the rest
        failures = fs.open_input_stream(f"{name}/out/_failures.jsonl").read().decode().splitlines()
        assert len(failures) >= 2, "each image the outage hit is a failure line (besides broken.jpg)"
        assert cli_main(args) == 0
    local = tmp_path / "out"
    for info in fs.get_file_info(pafs.FileSelector(f"{name}/out", recursive=True)):
        if info.type == pafs.FileType.File:
            target = local / Path(info.path).relative_to(f"{name}/out")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(fs.open_input_stream(info.path).read())
    assert_exactly_once(src, local, reference)


def registered_checkpoint_step(run: Path) -> int:
    """The step of the latest checkpoint Ray Train's controller has registered (0 if none yet).

    Not the checkpoint folders on disk: a worker writes its folder before the controller takes
    the report, and a worker killed in between loses that report (Ray Train drops the queued
    results of a dead worker), so the folders can run one or two intervals ahead of what a
    restart resumes from."""
    try:
        snapshot = json.loads((run / "checkpoint_manager_snapshot.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):  # not written yet, or caught mid-write
        return 0
    latest = snapshot.get("latest_checkpoint_result") or {}
    return int(latest.get("metrics", {}).get("step", 0))


def test_training_worker_killed_resumes_from_checkpoint(tmp_path, ray_session):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(6):
        (images / f"i{i}.png").write_bytes(png_bytes(smooth_image(96, 96, seed=i)))
    run_prep(PrepConfig(input=str(images), output=str(tmp_path / "data"), quality=("10",), split="80/20/0"))
    out = tmp_path / "run"
    interval = 10
    args = ["--data", str(tmp_path / "data"), "--output", str(out), "--steps", "60", "--batch-size", "16",
            "--checkpoint-every", str(interval), "--keep-checkpoints", "20", "--val-every", "1000", "--max-failures", "2"]
    job = start_job("train.py", args, tmp_path / "train.log")
    wait_for(lambda: registered_checkpoint_step(out / "train") >= 2 * interval or job.poll() is not None, what="two registered checkpoints")
    saved = registered_checkpoint_step(out / "train")
    kill_ray_actor("RayTrainWorker", address=ray_session.get_runtime_context().gcs_address)
    job.wait(timeout=400)
    log = (tmp_path / "train.log").read_text()
    assert job.returncode == 0, log[-3000:]
    # The driver's summary line, not the worker's "resuming" line: worker output reaches the log
    # through Ray's log forwarding, which gives no promise of arriving before the job ends.
    resumed = resumed_from(log)
    assert resumed >= saved, f"resumed from step {resumed}, but step {saved} was checkpointed before the kill:\n{log[-3000:]}"
    from carray.modelfiles import load_model

    model, training = load_model(str(out / "model.pt"))
    assert training["steps"] > 0


def test_prep_killed_then_rerun_gives_the_same_patches(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(60):
        (images / f"i{i:02d}.png").write_bytes(png_bytes(smooth_image(160, 160, seed=i)))
    reference = tmp_path / "reference"
    cfg = ["--input", str(images), "--quality", "10", "20", "30", "40", "--stride", "8"]
    assert cli_main(["prep", *cfg, "--output", str(reference)]) == 0
    out = tmp_path / "out"
    job = start_job("prep.py", [*cfg, "--output", str(out)], tmp_path / "prep.log")
    wait_for(lambda: count_files(out / "train", "*.parquet") >= 1 or job.poll() is not None, what="the first Parquet file")
    kill_process_group(job)
    for path in (out / "train").glob("*.parquet"):  # every visible file is whole
        pq.read_table(path)
    code, log = run_job("prep.py", [*cfg, "--output", str(out)], tmp_path / "rerun.log")
    assert code == 0, log[-2000:]

    def per_image(root):
        counts = {}
        for split in ("train", "val"):
            table = pads.dataset(str(root / split), format="parquet").to_table(columns=["image"])
            for image in table.column("image").to_pylist():
                counts[(split, image)] = counts.get((split, image), 0) + 1
        return counts

    assert per_image(out) == per_image(reference)
    assert (out / "test.txt").read_text() == (reference / "test.txt").read_text()


# --- fuzzed inputs through the job's own stages: decode (header, policy), the actor's restore, encode ---

_SEED_JPEG = jpeg.compress(smooth_image(24, 32, color=True), 30)
_FUZZ_RESTORER = RowRestorer(  # what every Restorer actor runs, without Ray around it
    {kind: model_bytes(build_model("fast-arcnn", channels=c)) for kind, c in (("gray", 1), ("color", 3))},
    tile=512, threads=1, precision="fp32", tile_batch=2,
)
# The reasons decoding gives for a file it cannot use (carray.images.ImageError); anything else,
# the last resort's "unexpected error while decoding" included, is an exception nobody anticipated.
DECODE_REASONS = ("empty file", "not an image Pillow can identify", "decompression bomb", "cannot decode: ",
                  "invalid size", "unsupported image mode", "floating-point images")


@st.composite
def mutated_jpegs(draw):
    data = bytearray(_SEED_JPEG)
    kind = draw(st.sampled_from(["flip", "truncate", "header"]))
    if kind == "flip":
        for position in draw(st.lists(st.integers(0, len(data) - 1), min_size=1, max_size=8)):
            data[position] ^= 1 << draw(st.integers(0, 7))
    elif kind == "truncate":
        data = data[: draw(st.integers(0, len(data) - 1))]
    else:  # rewrite bytes inside the headers (markers, sizes, tables)
        start = draw(st.integers(0, 200))
        data[start : start + 4] = draw(st.binary(min_size=4, max_size=4))
    return bytes(data)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_jpegs())
def test_fuzzed_jpegs_end_as_output_or_failure(data):
    """Each mutated file is refused by the decoder with one of its reasons, or passed through as
    its own bytes, or restored and encoded, by the same functions the job's tasks and actors run."""
    row = decode_to_row("fuzz.jpg", "fuzz.jpg.png", data, max_pixels=4_000_000, policy=Policy())
    if row["error"]:
        assert row["error"].startswith(DECODE_REASONS), row["error"]
        return
    if not row["passed"]:  # as the actor: passed-through rows are not its work
        _FUZZ_RESTORER.restore([row, dict(row)])  # a batch of two: the actors' batched path
        assert not row["error"], row["error"]
    out = encode_row(row, fmt="png", quality=95)
    assert not out["error"], out["error"]
    if row["passed"]:
        assert out["data"] == data and row["output"] == "fuzz.jpg"
    else:
        assert Image.open(io.BytesIO(out["data"])).size == (row["width"], row["height"])


def test_an_image_that_kills_its_actor_becomes_one_failure_and_the_rest_is_restored(tmp_path):
    """--max-attempts: the actor restoring kill-me.jpg dies (SIGKILL) every time; Ray restarts it and
    retries its pack; the tracker finds the image that kills it, which ends as one failure line after
    2 attempts, while the images packed with it are restored."""
    src = tmp_path / "in"
    src.mkdir()
    for i in range(5):
        (src / f"ok{i}.jpg").write_bytes(jpeg.compress(smooth_image(64, 64, seed=i), 10))
    (src / "kill-me.jpg").write_bytes(jpeg.compress(smooth_image(64, 64, seed=9), 10))
    model = tmp_path / "fast.pt"
    save_model(build_model("fast-arcnn"), str(model))
    hook = {"runtime_env": {"worker_process_setup_hook": "actor_killer.install",
                            "env_vars": {"PYTHONPATH": str(REPO / "tests" / "support")}}}
    env = job_env({"RAY_JOB_CONFIG_JSON_ENV_VAR": json.dumps(hook)})  # how `ray job submit --runtime-env-json` passes it
    out = tmp_path / "out"
    code, log = run_job("infer.py", ["--input", str(src), "--output", str(out), "--model", str(model), "--max-attempts", "2"],
                        tmp_path / "log", env=env, timeout=240)
    assert code == 0, log
    summary = json.loads((out / "_summary.json").read_text())
    assert (summary["restored"], summary["failed"]) == (5, 1), summary
    failures = [json.loads(line) for line in (out / "_failures.jsonl").read_text().splitlines()]
    assert [f["path"] for f in failures] == ["kill-me.jpg"] and "killed while restoring, 2 times" in failures[0]["reason"]
    assert sorted(p.name for p in out.glob("*.jpg")) == [f"ok{i}.jpg.jpg" for i in range(5)]
