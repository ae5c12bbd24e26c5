"""Inference throughput and memory: the infer job against a plain PyTorch loop, same images, same
cores, in one command. Every figure is a ratio against a baseline measured in the same run.

    python bench/infer.py                       # every case below
    python bench/infer.py --cases small large   # some of them
    python bench/infer.py --large-mp 100        # the 100 MP memory check

Cases:
  collection  MP/s of the job on the bundled LIVE1 gray JPEGs (x4) against a decode-model-encode loop
              (no Ray, torch threads = CPUs, same model, same tiles).
  small       images/s on 3000 JPEGs of 128x128 against the same loop on them: --repeat jobs, loop
              runs before, between and after them; mean job rate over mean loop rate; the driver's peak RSS.
              --split: also 6000, giving the job's rate per extra image and its fixed cost per job.
              The job runs the network as users get it (--job-runtime auto: ONNX Runtime fp32 on CPUs),
              the loop with PyTorch (--loop-runtime); both on ONNX Runtime (or both on PyTorch) compare
              the pipelines alone.
  large       one gray JPEG of --large-mp megapixels, cut into tiles that every actor restores
              (--split-above 16): MP/s
              (ratio to the loop's collection MP/s) and the peak RSS of all processes above idle Ray.
  precision   the large image through the job at --precision int8 and fp32 (ONNX Runtime, the default on
              CPUs), and fp32 on PyTorch (--runtime torch): MP/s and their ratios.
  driver      the driver's peak RSS for 10 k and 100 k inputs (all but 64 already done, so the run
              measures what the driver holds per input, not restoration).
  ceiling     --photos colour JPEGs of 9.4 MP (mosaics of ../shared/data/Urban100, q50) through the job with
              a network that costs nothing (bench/identity.py): MP/s per CPU core of everything else,
              per output --formats; what a GPU node's CPUs can feed its GPU. Beside it, in the same
              command, a bare loop that reads, decodes and encodes the same photos; the job's steady
              rate (its second half) against it; CPU per MP of each kind of process (bench/stages.py);
              object-store bytes per input MP (Ray Data's own stats); Ray's CPU while it idles (10 s before
              the jobs: a cost per node and second) and the ratios less it. --ceiling-photos DIR: your own colour
              JPEGs instead (camera photos, as they are), repeated to --photos.
  bucket-writes  --bucket-outputs outputs of --bucket-output-mb MB to a SeaweedFS bucket as the job writes them
              (one write of the bytes) and gathered in memory first (the code before): CPU per output.
  listing     --keys objects in --folders folders on a SeaweedFS bucket (the tests' S3 server), 64 small
              JPEGs among text files: keys/s of a sequential walk, the job's keys/s end to end, and the
              seconds from the job's start to its first output.
  shards      --shard-images small colour JPEGs (128x128, q30) on a SeaweedFS bucket, once as one object
              each and once as WebDataset shards of --shard-size (key.jpg + key.txt, as img2dataset
              writes them): the job on each, wall time, S3 requests by type counted by the server,
              bytes in and out; images/s of the shard path against the file path.
  shard-memory one WebDataset shard of --shard-photos colour JPEGs of 9.4 MP against the same photos as
              files: peak memory (PSS) of all processes above idle Ray for each, and MP/s.
  passthrough --passthrough JPEGs at q97 (passed through as their own bytes, decided from the header)
              against copying the folder, and 100 q20 ones restored: images/s of each.
The job's figures come from its own `_summary.json` (wall time from the job's start: listing, actor
start-up and the tail included).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import ray
import torch
from PIL import Image

from carray import jpeg
from carray import config as carray_config
from carray.config import InferConfig
from carray.images import decode_image, encode_image, jpeg_quality
from carray.infer import run_infer
from carray.modelfiles import load_model, shipped_path
from carray.onnxnet import OnnxNetwork
from carray.quantize import onnx_files
from carray.restore import prepare_model, restore_image
from carray.runtime import SYSTEM_CONFIG

from common import BUNDLED as BUNDLED_ROOT  # noqa: E402  (bench/ is on sys.path when a script runs)
from common import LIVE1_GRAY as BUNDLED  # noqa: E402
from common import mosaic  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# The job's default output format; the loop encodes the same. (PNG before it had a name: this script
# also runs against older commits, to measure "before".)
OUTPUT_FORMAT = getattr(carray_config, "DEFAULT_OUTPUT_FORMAT", "png")


def live1_gray() -> list[np.ndarray]:
    return [np.asarray(Image.open(p).convert("L")) for p in sorted(BUNDLED.glob("*.png"))]


def make_jpegs(folder: Path, count: int | None = None, crop: int | None = None, quality: int = 10) -> None:
    folder.mkdir(parents=True)
    sources = live1_gray()
    count = count or len(sources)
    for i in range(count):
        img = sources[i % len(sources)]
        if crop:
            y, x = (i * 37) % (img.shape[0] - crop), (i * 53) % (img.shape[1] - crop)
            img = img[y : y + crop, x : x + crop]
        (folder / f"{i:05d}.jpg").write_bytes(jpeg.compress(img, quality))


def make_large_jpeg(path: Path, megapixels: float, quality: int = 10) -> None:
    """A square gray JPEG of about `megapixels`: LIVE1 images side by side (real textures)."""
    side = int((megapixels * 1e6) ** 0.5) // 8 * 8
    canvas = mosaic(live1_gray(), side, side)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(jpeg.compress(canvas, quality))


def plain_loop(folder: Path, model_path: str, threads: int, runtime: str = "torch") -> tuple[float, float]:
    """(MP/s, images/s) of decode -> model -> encode (the job's default output format), one image
    after the other, no Ray; the network run by PyTorch (a bare loop's natural choice), or by ONNX
    Runtime with --loop-runtime."""
    torch.set_num_threads(threads)
    model = prepare_model(load_model(model_path)[0], torch.device("cpu"))
    if runtime == "onnxruntime":
        files = {"gray": Path(model_path).read_bytes()}
        model = OnnxNetwork(onnx_files(files, "fp32")["gray"], threads)
    paths = sorted(folder.glob("*.jpg"))
    started, pixels = time.perf_counter(), 0
    for path in paths:
        data = path.read_bytes()
        image = decode_image(data)
        encode_image(restore_image({"gray": model}, image, quality=jpeg_quality(data)), OUTPUT_FORMAT)
        pixels += image.pixels.shape[0] * image.pixels.shape[1]
    seconds = time.perf_counter() - started
    return pixels / 1e6 / seconds, len(paths) / seconds


def tree_memory(detail: bool = False):
    """Proportional set size (PSS: resident pages, each shared page split between the processes
    that map it, so shared libraries and Ray's object store count once) of this process and all its
    descendants (Ray's raylet, workers...), from /proc. detail: also {pid: (name, bytes)}."""
    parents, pss, names = {}, {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
            names[int(entry)] = stat.split("(", 1)[1].rsplit(")", 1)[0]
            with open(f"/proc/{entry}/smaps_rollup") as f:
                pss[int(entry)] = next(int(line.split()[1]) * 1024 for line in f if line.startswith("Pss:"))
        except (OSError, StopIteration, ValueError):
            continue
    tree, frontier = {os.getpid()}, [os.getpid()]
    while frontier:
        children = [pid for pid, parent in parents.items() if parent in frontier and pid not in tree]
        tree.update(children)
        frontier = children
    total = sum(pss.get(pid, 0) for pid in tree)
    return (total, {pid: (names.get(pid, "?"), pss.get(pid, 0)) for pid in tree}) if detail else total


class PeakMemory:
    """Samples tree_memory() every second while in the `with` block; keeps the breakdown at the peak."""

    def __enter__(self):
        self.peak, self.at_peak, self.stop = 0, {}, threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while not self.stop.is_set():
            total, detail = tree_memory(detail=True)
            if total > self.peak:
                self.peak, self.at_peak = total, detail
            time.sleep(1.0)  # reading smaps of every process is not free: sample sparingly

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def job(src: Path, dst: Path, model_path: str, **options) -> dict:
    return run_infer(InferConfig(input=str(src), output=str(dst), model=model_path, **options), say=lambda line: None)


def job_in_subprocess(src: Path, dst: Path, model_path: str, address: str, runtime: str = "auto") -> dict:
    """The job as users run it (its own driver process), on this bench's Ray; its summary."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-m", "carray", "infer", "--input", str(src), "--output", str(dst), "--model", model_path,
                    "--address", address, "--runtime", runtime], check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return json.loads((dst / "_summary.json").read_text())


def case_collection(tmp: Path, model_path: str, cpus: int, copies: int, loop_runtime: str) -> dict:
    make_jpegs(tmp / "live1", count=29 * copies)
    loop_mp, _ = plain_loop(tmp / "live1", model_path, cpus, loop_runtime)
    summary = job(tmp / "live1", tmp / "live1-out", model_path)
    ratio = summary["megapixels_per_second"] / loop_mp
    print(f"collection: {summary['seen']} LIVE1 JPEGs ({summary['megapixels']:.1f} MP): job ({summary['runtime']}) {summary['megapixels_per_second']:.3f} MP/s, "
          f"loop ({loop_runtime}) {loop_mp:.3f} MP/s, ratio {ratio:.2f}")
    return {"loop_mp_per_s": loop_mp, "job_mp_per_s": summary["megapixels_per_second"], "ratio": ratio}


def case_small(tmp: Path, model_path: str, cpus: int, count: int, address: str, split: bool, repeat: int,
               job_runtime: str, loop_runtime: str) -> dict:
    make_jpegs(tmp / "small", count=count, crop=128)
    # Loop and job alternate, loop first and last (loop, job, loop, ..., job, loop); the figure is the
    # mean job rate over the mean loop rate, and each job is also shown against the two loop runs
    # beside it. On this kind of VM one run alone swings by 10 % or more (loop: 83-115 images/s;
    # its two torch threads share every image, so a busy neighbour slows both), more than the
    # difference being measured.
    loops, jobs = [plain_loop(tmp / "small", model_path, cpus, loop_runtime)[1]], []
    for i in range(repeat):
        jobs.append(job_in_subprocess(tmp / "small", tmp / f"small-out-{i}", model_path, address, job_runtime))
        loops.append(plain_loop(tmp / "small", model_path, cpus, loop_runtime)[1])
    job_rates = [s["images_per_second"] for s in jobs]
    job_images, loop_images = float(np.mean(job_rates)), float(np.mean(loops))
    ratio = job_images / loop_images
    beside = [rate / ((loops[i] + loops[i + 1]) / 2) for i, rate in enumerate(job_rates)]
    rss = max(s["driver_peak_rss_mb"] for s in jobs)
    print(f"small: {count} JPEGs of 128x128, {repeat} jobs ({jobs[0]['runtime']}) between {repeat + 1} loop runs ({loop_runtime}): job {job_images:.1f} images/s, "
          f"loop {loop_images:.1f} images/s, ratio {ratio:.3f}; each job against the loop runs beside it: "
          f"{', '.join(f'{r:.3f}' for r in beside)} (jobs {', '.join(f'{r:.1f}' for r in job_rates)}; "
          f"loops {', '.join(f'{r:.1f}' for r in loops)}); driver peak RSS {rss:.0f} MB")
    result = {"loop_images_per_s": loop_images, "loop_runs": loops, "job_images_per_s": job_images, "job_runs": job_rates,
              "ratio": ratio, "ratios_beside": beside, "driver_peak_rss_mb": rss}
    if split:  # a job on twice the files: what each image costs, and what a job costs once
        make_jpegs(tmp / "small-twice", count=2 * count, crop=128)
        twice = job_in_subprocess(tmp / "small-twice", tmp / "small-twice-out", model_path, address, job_runtime)
        once = float(np.mean([s["seconds"] for s in jobs]))
        marginal = count / (twice["seconds"] - once)
        fixed = once - count / marginal
        print(f"small, split: {2 * count} JPEGs in {twice['seconds']:.1f} s vs {count} in {once:.1f} s (mean): "
              f"{marginal:.1f} images/s per extra image (ratio {marginal / loop_images:.2f} to the loop), {fixed:.1f} s fixed per job")
        result.update(marginal_images_per_s=marginal, marginal_ratio=marginal / loop_images, fixed_seconds=fixed)
    return result


# The large and precision cases cut their image into tiles, as they always measured (the job's
# default --split-above on GPU actors, 64 MP since session 19, would restore a 64 MP image whole).
LARGE_SPLIT_ABOVE = 16.0
# The ceiling is a GPU node's CPU side: its photos are cut as on GPU actors (the job's default there).
CEILING_SPLIT_ABOVE = getattr(carray_config, "SPLIT_ABOVE_MP_GPU", 64.0)


def case_large(tmp: Path, model_path: str, megapixels: float, loop_mp: float | None, tile: int) -> dict:
    make_large_jpeg(tmp / "large" / "scan.jpg", megapixels)
    time.sleep(2)  # let the previous job's workers exit
    idle = tree_memory()
    with PeakMemory() as peak:
        summary = job(tmp / "large", tmp / "large-out", model_path, tile=tile, split_above=LARGE_SPLIT_ABOVE)
    above = (peak.peak - idle) / 2**30
    line = (f"large: one {summary['megapixels']:.1f} MP gray JPEG, --tile {tile}: {summary['megapixels_per_second']:.3f} MP/s in {summary['seconds']:.0f} s; "
            f"peak memory (PSS) of all processes {above:.2f} GiB above idle Ray ({idle / 2**30:.2f} GiB)")
    biggest = sorted(peak.at_peak.values(), key=lambda item: -item[1])[:6]
    print("  at the peak: " + ", ".join(f"{name} {size / 2**20:.0f} MB" for name, size in biggest))
    if loop_mp:
        line += f"; ratio to the loop's collection MP/s {summary['megapixels_per_second'] / loop_mp:.2f}"
    print(line)
    return {"mp_per_s": summary["megapixels_per_second"], "peak_above_idle_gib": above}


def case_precision(tmp: Path, model_path: str, megapixels: float) -> dict:
    image = tmp / "precision" / "scan.jpg"
    if not image.exists():
        make_large_jpeg(image, megapixels)
    rates = {}
    os.environ["CARRAY_CACHE"] = str(tmp / "cache")  # a model of your own: the first int8 run quantizes, the next reads the cache
    runs = (("int8", "int8-first", "auto"), ("fp32", "fp32", "auto"), ("int8", "int8", "auto"), ("fp32", "fp32-torch", "torch"))
    for precision, label, runtime in runs:
        summary = job(image.parent, tmp / f"precision-{label}", model_path, precision=precision, runtime=runtime, split_above=LARGE_SPLIT_ABOVE)
        rates[label] = summary["megapixels_per_second"]
        print(f"precision: {summary['megapixels']:.1f} MP gray JPEG at {label} ({summary['runtime']}): {rates[label]:.3f} MP/s in {summary['seconds']:.0f} s")
    print(f"precision: int8 / fp32 MP/s: {rates['int8'] / rates['fp32']:.2f} (first int8 run: {rates['int8-first'] / rates['fp32']:.2f}; "
          "the shipped models' int8 networks come in the package, a model of your own is quantized then); "
          f"fp32 on ONNX Runtime / on PyTorch: {rates['fp32'] / rates['fp32-torch']:.2f}")
    return {"mp_per_s": rates, "ratio": rates["int8"] / rates["fp32"], "fp32_runtime_ratio": rates["fp32"] / rates["fp32-torch"]}


def case_driver(tmp: Path, model_path: str, address: str) -> dict:
    """Inputs of a few hundred bytes; all but 64 already have their output, so the job plans,
    skips and counts every input while restoring only a few."""
    tiny = jpeg.compress(np.full((8, 8), 128, np.uint8), 50)
    peaks = {}
    for count in (10_000, 100_000):
        src, dst = tmp / f"d{count}", tmp / f"d{count}-out"
        for i in range(count):
            folder = f"{i // 1000:03d}"
            (src / folder).mkdir(parents=True, exist_ok=True)
            (src / folder / f"{i:06d}.jpg").write_bytes(tiny)
            if i >= 64:
                (dst / folder).mkdir(parents=True, exist_ok=True)
                (dst / folder / f"{i:06d}.jpg.jpg").write_bytes(b"done")
        summary = job_in_subprocess(src, dst, model_path, address)
        assert summary["seen"] == count and summary["restored"] == 64, summary
        peaks[count] = summary["driver_peak_rss_mb"]
        print(f"driver: {count} inputs in {summary['seconds']:.0f} s, driver peak RSS {peaks[count]:.0f} MB")
    ratio = peaks[100_000] / peaks[10_000]
    print(f"driver: peak RSS 100 k / 10 k inputs: {ratio:.2f}")
    return {"driver_peak_rss_mb": peaks, "ratio": ratio}


SHARED = REPO.parent / "shared" / "data"


def make_photos(folder: Path, count: int, quality: int = 50, sources: Path = SHARED / "Urban100") -> float:
    """`count` colour JPEGs of about 9.4 MP (4096x2304, a phone photo's size): mosaics of real
    photographs (Urban100 by default; the bundled LIVE1 colour pair without ../shared), each
    mosaic a different arrangement. Returns the megapixels written."""
    paths = sorted(sources.glob("*.png")) if sources.is_dir() else sorted((BUNDLED_ROOT / "LIVE1_color").glob("*.png"))
    images = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    folder.mkdir(parents=True)
    height, width = 2304, 4096
    for n in range(count):  # each a different arrangement
        (folder / f"photo{n:03d}.jpg").write_bytes(jpeg.compress(mosaic(images, height, width, start=n * 7), quality))
    return count * height * width / 1e6


def take_photos(source: Path, folder: Path, count: int) -> tuple[float, dict[str, float]]:
    """`count` hard links in `folder` to the colour JPEGs in `source` (camera photos the project
    does not have, used as they are: their sizes, subsampling, metadata), cycled to `count`.
    Returns the megapixels linked and each link's megapixels by name."""
    paths = sorted(p for p in source.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
    sizes = {}
    for path in paths:
        try:
            with Image.open(path) as img:
                img.load()  # the bare loops decode every photo with Pillow: a truncated one is left out
                if img.mode == "RGB":
                    sizes[path] = img.width * img.height / 1e6
        except OSError as exc:
            print(f"--ceiling-photos: {path.name} left out ({exc})")
    if not sizes:
        raise SystemExit(f"--ceiling-photos {source}: no colour JPEG there")
    folder.mkdir(parents=True)
    chosen = list(sizes)
    by_name = {}
    for n in range(count):
        path = chosen[n % len(chosen)]
        name = f"photo{n:03d}.jpg"
        os.link(path, folder / name)
        by_name[name] = sizes[path]
    return sum(by_name.values()), by_name


def codec_loop(paths: list[Path], fmt: str, out: Path) -> dict:
    """The bare loops the ceiling is held against, one photo after the other in this thread:
    `pillow`: Pillow alone, each photo decoded and encoded as the job encodes (--format, its quality,
    4:4:4 for JPEG), no numpy, no metadata: the codecs' own pace through Pillow; `turbo` (JPEG only):
    libjpeg-turbo through simplejpeg, straight to and from numpy, as the job now decodes and encodes
    JPEGs; `carray`: read, header, decode and encode through carray.images as the job calls them
    (metadata carried). Beside them, `write`: each Pillow output written as a new file under `out`
    (the job writes its outputs; the loops' rates leave that out). Seconds per MP of each step,
    and MP/s of each loop (= per core)."""
    import io

    import simplejpeg

    from carray.images import OUTPUT_FORMATS, read_header

    pillow_format = OUTPUT_FORMATS[fmt][0]
    options = {"quality": InferConfig.jpeg_quality, "subsampling": 0} if fmt == "jpeg" else {"quality": InferConfig.jpeg_quality} if fmt == "webp" else {"compress_level": 1}
    turbo = fmt == "jpeg"
    steps = dict.fromkeys(("pillow decode", "pillow encode", "turbo decode", "turbo encode", "read", "header", "decode", "encode", "write"), 0.0)
    out.mkdir(parents=True, exist_ok=True)
    pixels = 0
    for path in paths:
        t0 = time.thread_time()
        data = path.read_bytes()
        t1 = time.thread_time()
        image = Image.open(io.BytesIO(data))
        image.load()
        t2 = time.thread_time()
        buffer = io.BytesIO()
        image.save(buffer, pillow_format, **options)
        t3 = time.thread_time()
        read_header(data, None)
        t4 = time.thread_time()
        decoded = decode_image(data, upright=False)
        t5 = time.thread_time()
        encode_image(decoded, fmt, InferConfig.jpeg_quality)
        t6 = time.thread_time()
        array = simplejpeg.decode_jpeg(data) if turbo else None
        t7 = time.thread_time()
        if turbo:
            simplejpeg.encode_jpeg(array, quality=InferConfig.jpeg_quality, colorsubsampling="444")
        t8 = time.thread_time()
        (out / path.name).write_bytes(buffer.getvalue())
        t9 = time.thread_time()
        for step, seconds in zip(steps, (t2 - t1, t3 - t2, t7 - t6, t8 - t7, t1 - t0, t4 - t3, t5 - t4, t6 - t5, t9 - t8)):
            steps[step] += seconds
        pixels += image.width * image.height
    shutil.rmtree(out)
    megapixels = pixels / 1e6
    pillow = steps["pillow decode"] + steps["pillow encode"]
    carray = steps["read"] + steps["header"] + steps["decode"] + steps["encode"]
    turbo_seconds = steps["turbo decode"] + steps["turbo encode"]
    return {"megapixels": megapixels, "pillow_mp_per_s": megapixels / pillow, "carray_mp_per_s": megapixels / carray,
            "turbo_mp_per_s": megapixels / turbo_seconds if turbo else None,
            "core_ms_per_mp": {k: v / megapixels * 1e3 for k, v in steps.items() if v or not k.startswith("turbo")}}


def parallel_codec_loop(paths: list[Path], fmt: str, out: Path, processes: int) -> dict:
    """codec_loop in `processes` processes at once, each on its share of the photos: the codecs'
    pace per core with every core busy, as the job's are (codec_loop alone leaves the others idle).
    MP/s per core of each loop."""
    import multiprocessing

    shares = [paths[i::processes] for i in range(processes)]
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        runs = pool.starmap(codec_loop, [(share, fmt, out / str(i)) for i, share in enumerate(shares)])

    def per_core(key: str) -> float | None:
        if not runs[0][key]:
            return None
        return sum(run["megapixels"] for run in runs) / sum(run["megapixels"] / run[key] for run in runs)

    return {"pillow_mp_per_s": per_core("pillow_mp_per_s"), "turbo_mp_per_s": per_core("turbo_mp_per_s"),
            "carray_mp_per_s": per_core("carray_mp_per_s"), "processes": processes}


def object_store_bytes() -> dict[str, int]:
    """Bytes each operator of the last finished Ray Data run put in the object store: its
    `bytes_task_outputs_generated`, from the metrics Ray Data logs as each operator completes, in
    the newest per-dataset log of this Ray session."""
    import re

    folder = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs" / "ray-data"
    logs = sorted(folder.glob("ray-data-dataset_*.log"), key=lambda p: p.stat().st_mtime)
    text = logs[-1].read_text(errors="replace") if logs else ""
    found = {}
    for m in re.finditer(r"Operator \w+\[(.+?)\] completed\. Operator Metrics:(.*?)(?=Operator \w+\[|\Z)", text, re.S):
        if out := re.search(r"'bytes_task_outputs_generated': (\d+)", m.group(2)):
            found[m.group(1)] = int(out.group(1))
    return found


# Stages that run ahead of the restoring actors: the read tasks read and plan photos as fast as the
# object store takes their bytes, so on 200 photos all of them were read before the window of
# steady_window opened (0.00 ms per MP inside it, 0.3-0.9 in the steady state; docs/benchmarks.md,
# session 22). Inside the run they are charged at their steady-state cost.
RUN_AHEAD = ("read + header + decode (tasks)", "listing + planning (tasks)")


def steady_window(out: Path, cpu, megapixels_by_name: dict[str, float], low: float = 0.25, high: float = 0.9) -> tuple[dict[str, float], float]:
    """CPU core-seconds per MP inside one run, by kind of process: every process's CPU between the
    times its outputs at the `low` and `high` quantiles were written (start-up before, the last
    packs' tail after) over the megapixels written in between. One run, so it is not the difference
    of two noisy ones. Also the window's wall seconds per MP."""
    # Outputs are named input + ".jpg" (photo000.jpg -> photo000.jpg.jpg).
    written = sorted((path.stat().st_mtime, megapixels_by_name[path.name.removesuffix(".jpg")]) for path in out.glob("*.jpg"))
    times = [t for t, _ in written]
    first, last = int(len(times) * low), int(len(times) * high)
    megapixels = sum(mp for _, mp in written[first + 1 : last + 1])  # those written after the window opened, up to its end
    per_mp = {stage: seconds / megapixels for stage, seconds in cpu.between(times[first], times[last]).items()}
    return per_mp, (times[last] - times[first]) / megapixels


def idle_background(seconds: float = 10.0) -> dict[str, float]:
    """CPU seconds per wall second of every process, by kind, while Ray idles (no job running): its
    raylet, GCS, dashboard and agents, and its idle workers, poll and report whatever the node
    restores. A cost per node and second, not per pixel: on this 2-core VM at ~100 MP/s it is
    ~0.8 ms per MP, on a 16-CPU GPU node at 1000 MP/s a tenth of that."""
    from stages import CpuByStage

    with CpuByStage() as idle:
        time.sleep(seconds)
    return {stage: spent / seconds for stage, spent in idle.seconds.items() if spent}


def case_ceiling(tmp: Path, cpus: int, count: int, formats: list[str], shard_size: int = 0, source: Path | None = None) -> dict:
    """The job with a network that costs nothing (bench/identity.py), on real-size colour photos:
    MP/s per CPU core of everything else (listing, reading, decoding, the actors' own work, encoding,
    writing) — the rate at which a node's CPUs could feed its GPU — beside the bare codec loop on the
    same photos (codec_loop). The steady rate is the second half's: the job on the first half of the
    photos and on all of them, (MP all - MP half) / (seconds all - seconds half), so start-up (Ray
    workers, actors, the first photos filling the pipeline) cancels and is reported on its own; and,
    less noisy, inside the run of all photos (steady_window, with the tasks that run ahead at their steady cost)."""
    from identity import save_identity_model
    from stages import CpuByStage

    if source:
        megapixels, by_name = take_photos(source, tmp / "photos", count)
        described = f"{count} colour JPEGs from {source} ({megapixels / count:.1f} MP on average)"
    else:
        megapixels = make_photos(tmp / "photos", count)
        by_name = {f"photo{n:03d}.jpg": megapixels / count for n in range(count)}
        described = f"{count} colour JPEGs of 9.4 MP (q50)"
    half = tmp / "photos-half"
    half.mkdir()
    paths = sorted((tmp / "photos").glob("*.jpg"))
    for path in paths[: count // 2]:
        os.link(path, half / path.name)
    model = save_identity_model(str(tmp / "identity.pt"))
    make_photos(tmp / "photos-warm", 1)  # actors that import torch (the identity network runs on it) start once before the timing
    job(tmp / "photos-warm", tmp / "ceiling-warm", model, runtime="torch")
    time.sleep(2)  # the warm job's actors gone
    background = idle_background()
    idle_rate = sum(background.values())  # CPU seconds per second
    results = {"photos": count, "megapixels": megapixels, "idle_background_cpu_per_s": background}
    # Every photo is restored (pass_through_from=101): camera photos at q95 and up would otherwise be
    # passed through as their own bytes, and the ceiling measures the restoring path. Photos are cut
    # into tiles as on a GPU node (CEILING_SPLIT_ABOVE), whose CPU side the ceiling measures.
    options = dict(runtime="torch", pass_through_from=101, split_above=CEILING_SPLIT_ABOVE)
    for fmt in formats:
        loop = codec_loop(paths, fmt, tmp / "loop-out")
        busy = parallel_codec_loop(paths, fmt, tmp / "loop-out", cpus)
        job(half, tmp / f"ceiling-cold-{fmt}", model, format=fmt, **options)  # starts the workers a longer run uses
        with CpuByStage() as cpu_half:
            first = job(half, tmp / f"ceiling-half-{fmt}", model, format=fmt, **options)
        with CpuByStage() as cpu:
            summary = job(tmp / "photos", tmp / f"ceiling-{fmt}", model, format=fmt, **options)
        stored = object_store_bytes()
        again = codec_loop(paths, fmt, tmp / "loop-out")  # the machine's pace can drift: the loops before and after the jobs, averaged
        assert summary["restored"] == count and first["restored"] == count // 2, (summary, first)
        extra_mp = summary["megapixels"] - first["megapixels"]
        # Steady state: what the second half of the photos added, in CPU of every process and in wall
        # time. Start-up cancels in the difference only as far as it is the same in both runs; a
        # core-second more in one is ±0.8 ms per MP of the 1,200 MP the second half adds. The actors'
        # own (Ray's worker, importing torch, the model loaded: 2.5-3 core-s each here) is reported by
        # each actor (summary actor_cpu_seconds "startup") and taken out of both runs.
        actor_startup = {run: run_summary.get("actor_cpu_seconds", {}).pop("startup", 0.0) for run, run_summary in (("all", summary), ("half", first))}
        stages = {k: (cpu.seconds.get(k, 0.0) - cpu_half.seconds.get(k, 0.0)) / extra_mp for k in set(cpu.seconds) | set(cpu_half.seconds)}
        actor_stage = next((k for k in sorted(stages) if k.startswith("restoring actor")), None)
        if actor_stage:
            stages[actor_stage] -= (actor_startup["all"] - actor_startup["half"]) / extra_mp
        actor_steps = {k: (v - first.get("actor_cpu_seconds", {}).get(k, 0.0)) / extra_mp for k, v in summary.get("actor_cpu_seconds", {}).items()}
        used = sum(cpu.seconds.values())  # every process's CPU in the run of all photos, start-up included
        steady_all, steady_half = used - actor_startup["all"], sum(cpu_half.seconds.values()) - actor_startup["half"]
        marginal = (steady_all - steady_half) / extra_mp  # core-seconds per MP
        per_core = 1 / marginal
        within_stages, within_wall = steady_window(tmp / f"ceiling-{fmt}", cpu, by_name) if fmt == "jpeg" else ({}, 0.0)
        if within_stages:  # the tasks that run ahead did their work for the window's photos before it opened
            within_stages.update({stage: max(0.0, stages.get(stage, 0.0)) for stage in RUN_AHEAD})
        within = sum(within_stages.values()) or None
        wall_rate = extra_mp / (summary["seconds"] - first["seconds"])
        pillow = (loop["pillow_mp_per_s"] + again["pillow_mp_per_s"]) / 2
        carray_loop = (loop["carray_mp_per_s"] + again["carray_mp_per_s"]) / 2
        turbo = (loop["turbo_mp_per_s"] + again["turbo_mp_per_s"]) / 2 if loop["turbo_mp_per_s"] else None
        write = (loop["core_ms_per_mp"]["write"] + again["core_ms_per_mp"]["write"]) / 2e3  # core-seconds per MP
        network = actor_steps.get("restore", 0.0)  # the identity network's device work: a GPU's on a GPU node
        startup_cpu = used - marginal * summary["megapixels"]
        print(f"ceiling, --format {fmt}: {described}, {megapixels:.0f} MP, identity network, {cpus} CPUs")
        print(f"  bare loops, one thread, before and after the jobs: Pillow alone {loop['pillow_mp_per_s']:.1f} / {again['pillow_mp_per_s']:.1f} MP/s; "
              + (f"libjpeg-turbo alone (simplejpeg) {loop['turbo_mp_per_s']:.1f} / {again['turbo_mp_per_s']:.1f} MP/s; " if turbo else "")
              + f"through carray.images {loop['carray_mp_per_s']:.1f} / {again['carray_mp_per_s']:.1f} MP/s")
        print("    ms per MP: " + ", ".join(f"{k} {v:.2f}" for k, v in loop["core_ms_per_mp"].items()))
        print(f"  the same loops in {cpus} processes at once (every core busy, as in the job): Pillow alone {busy['pillow_mp_per_s']:.1f}"
              + (f", libjpeg-turbo alone {busy['turbo_mp_per_s']:.1f}" if busy["turbo_mp_per_s"] else "")
              + f", through carray.images {busy['carray_mp_per_s']:.1f} MP/s per core")
        print(f"  job: all {count} photos {summary['megapixels_per_second']:.1f} MP/s in {summary['seconds']:.1f} s (first output after "
              f"{summary['seconds_to_first_output']:.1f} s); the first {count // 2} in {first['seconds']:.1f} s")
        print(f"  steady state (what the second {count - count // 2} photos added, the restoring actors' own start-up taken out of both runs: "
              f"{actor_startup['half']:.1f} and {actor_startup['all']:.1f} core-s): {marginal * 1e3:.2f} ms of CPU per MP = "
              f"{per_core:.1f} MP/s per core = {per_core / pillow:.2f}x Pillow alone, {per_core / carray_loop:.2f}x the carray.images loop; "
              f"wall {wall_rate:.1f} MP/s on {cpus} CPUs")
        if turbo:
            print(f"    = {per_core / turbo:.2f}x libjpeg-turbo alone (the job's own codec calls)")
        if within:
            print(f"    within the run of all {count} (between its 25th and 90th percentile outputs' times; the tasks that run ahead at their "
                  f"steady cost): {within * 1e3:.2f} ms of CPU per MP "
                  f"= {1 / within:.1f} MP/s per core = {1 / within / pillow:.2f}x Pillow alone; "
                  f"{1 / within / busy['pillow_mp_per_s']:.2f}x Pillow alone with every core busy")
            print("      by kind of process: " + ", ".join(f"{stage} {seconds * 1e3:.2f}"
                                                       for stage, seconds in sorted(within_stages.items(), key=lambda kv: -kv[1])) + " ms per MP")
        print(f"    the loops write nothing; Pillow alone + writing each output as a new file ({write * 1e3:.2f} ms per MP here): "
              f"{1 / (1 / pillow + write):.1f} MP/s = the job at {per_core * (1 / pillow + write):.2f}x")
        if network:
            print(f"    without the network's own step ({network * 1e3:.2f} ms per MP: the identity's float conversions, a GPU's work on a "
                  f"GPU node): {1 / (marginal - network):.1f} MP/s per core = {1 / (marginal - network) / pillow:.2f}x Pillow alone")
        idle_steady = idle_rate / wall_rate  # core-seconds per MP of the steady state's wall time
        net = 1 / (marginal - idle_steady)
        print(f"    Ray idling, before the jobs (10 s, no job): {idle_rate * 1e3:.0f} ms of CPU per s ("
              + ", ".join(f"{stage} {rate * 1e3:.0f}" for stage, rate in sorted(background.items(), key=lambda kv: -kv[1]))
              + f"): a cost per node and second, here {idle_steady * 1e3:.2f} ms per MP of the steady state, "
              f"{idle_rate:.3f} ms per MP on a node at 1000 MP/s")
        print(f"      the steady state less it: {net:.1f} MP/s per core = {net / pillow:.2f}x Pillow alone"
              + (f"; inside the run {1 / (within - idle_rate * within_wall) / pillow:.2f}x" if within else ""))
        print(f"  start-up: {startup_cpu:.1f} core-s beyond the steady cost (workers, actors importing torch and loading the model; "
              f"the actors' own {actor_startup['all']:.1f})")
        print("  steady CPU per MP by kind of process:")
        for stage, seconds in sorted(stages.items(), key=lambda kv: -kv[1]):
            print(f"    {stage}: {seconds * 1e3:.2f} ms per MP")
        if actor_steps:
            print("  the restoring actors' steps (their own thread times, summary actor_cpu_seconds): "
                  + ", ".join(f"{k} {v * 1e3:.2f}" for k, v in actor_steps.items()) + " ms per MP")
        print("  object store, bytes put per input MP by operator: "
              + (", ".join(f"{op} {b / summary['megapixels'] / 1e6:.3f} MB" for op, b in stored.items() if b) or "none"))
        results[fmt] = {"pillow_mp_per_s_per_core": pillow, "carray_loop_mp_per_s_per_core": carray_loop, "turbo_mp_per_s_per_core": turbo,
                        "loop_write_core_ms_per_mp": write * 1e3, "within_run_core_ms_per_mp": within and within * 1e3,
                        "within_run_ratio_to_pillow": within and 1 / within / pillow,
                        "idle_background_core_ms_per_mp": idle_steady * 1e3, "ratio_to_pillow_less_idle_background": net / pillow,
                        "within_run_ratio_to_pillow_less_idle_background": within and 1 / (within - idle_rate * within_wall) / pillow,
                        "within_run_stage_core_ms_per_mp": {k: v * 1e3 for k, v in within_stages.items()},
                        "busy_loops_mp_per_s_per_core": busy, "within_run_ratio_to_busy_pillow": within and 1 / within / busy["pillow_mp_per_s"],
                        "ratio_to_turbo": per_core / turbo if turbo else None,
                        "ratio_to_pillow_and_write": per_core * (1 / pillow + write),
                        "loop_core_ms_per_mp": loop["core_ms_per_mp"],
                        "job_mp_per_s": summary["megapixels_per_second"], "seconds": summary["seconds"], "half_seconds": first["seconds"],
                        "steady_core_ms_per_mp": marginal * 1e3, "steady_mp_per_s_per_core": per_core,
                        "ratio_to_pillow": per_core / pillow, "ratio_to_carray_loop": per_core / carray_loop,
                        "network_core_ms_per_mp": network * 1e3, "steady_wall_mp_per_s": wall_rate, "startup_core_s": startup_cpu,
                        "actor_startup_core_s": actor_startup,
                        "stage_core_ms_per_mp": {k: v * 1e3 for k, v in stages.items()},
                        "actor_step_core_ms_per_mp": {k: v * 1e3 for k, v in actor_steps.items()},
                        "object_store_bytes_per_mp": {k: v / summary["megapixels"] for k, v in stored.items()}}
    if shard_size:
        results["shards"] = ceiling_shards(tmp, model, paths, shard_size, results)
    return results


def ceiling_shards(tmp: Path, model: str, paths: list[Path], shard_size: int, results: dict) -> dict:
    """The ceiling's photos as WebDataset shards (key.jpg, plain tarfile as img2dataset writes them)
    through the job: MP/s against the files' run in the same command."""
    import tarfile

    folder = tmp / "ceiling-shards"
    folder.mkdir()
    for first in range(0, len(paths), shard_size):
        with tarfile.open(folder / f"{first // shard_size:05d}.tar", "w") as tar:
            for path in paths[first : first + shard_size]:
                tar.add(path, arcname=path.name)
    summary = job(folder, tmp / "ceiling-shards-out", model, runtime="torch", format="jpeg")
    files = results.get("jpeg", {}).get("job_mp_per_s")
    print(f"ceiling as shards of {shard_size}: {summary['restored']} photos {summary['megapixels_per_second']:.1f} MP/s in {summary['seconds']:.1f} s"
          + (f" = {summary['megapixels_per_second'] / files:.2f}x the files' run ({files:.1f} MP/s)" if files else ""))
    return {"mp_per_s": summary["megapixels_per_second"], "seconds": summary["seconds"], "ratio_to_files": summary["megapixels_per_second"] / files if files else None}


@contextlib.contextmanager
def bench_bucket(folder: Path):
    """The tests' SeaweedFS server (tests/support/s3.py) in `folder`, with a bucket named bench:
    (server, its pyarrow filesystem); stopped at the end."""
    sys.path.insert(0, str(REPO / "tests"))
    from support.s3 import SeaweedS3

    server = SeaweedS3(folder)
    server.start()
    try:
        fs = server.filesystem()
        fs.create_dir("bench")
        yield server, fs
    finally:
        server.stop()


def put_objects(fs, items) -> None:
    """(name, bytes) pairs into the bench bucket, 32 uploads at a time."""
    from concurrent.futures import ThreadPoolExecutor

    def put(item) -> None:
        with fs.open_output_stream(f"bench/{item[0]}") as f:
            f.write(item[1])

    with ThreadPoolExecutor(32) as pool:
        list(pool.map(put, items))


def case_bucket_writes(tmp: Path, outputs: int, size_mb: float, rounds: int = 4) -> dict:
    """Outputs written to a bucket (the tests' SeaweedFS server) as the job writes them
    (carray.storage.write_bytes_atomic: the bytes in one write) against the bytes gathered in memory
    first (atomic_output's object-store path, what write_bytes_atomic did until session 21): this
    process's CPU per output (pyarrow's upload threads included), the two alternating, round 1 a
    warm-up."""
    from carray import storage

    data = np.random.default_rng(0).integers(0, 256, int(size_mb * 2**20), dtype=np.uint8).tobytes()

    def gathered(fs, path: str) -> None:
        with storage.atomic_output(fs, path) as stream:
            stream.write(data)

    def direct(fs, path: str) -> None:
        storage.write_bytes_atomic(fs, path, data)

    spent: dict[str, list[float]] = {"gathered": [], "direct": []}
    with bench_bucket(tmp / "bucket-writes") as (_, fs):
        for _ in range(rounds):
            for name, write in (("gathered", gathered), ("direct", direct)):
                started = time.process_time()
                for i in range(outputs):
                    write(fs, f"bench/{name}-{i}.jpg")
                spent[name].append((time.process_time() - started) / outputs * 1e3)
    median = {name: float(np.median(ms[1:])) for name, ms in spent.items()}
    print(f"bucket writes: {outputs} outputs of {size_mb:g} MB, {rounds} rounds each, CPU ms per output: "
          + "; ".join(f"{name} " + ", ".join(f"{v:.1f}" for v in ms) for name, ms in spent.items())
          + f"; median after the first: gathered {median['gathered']:.1f}, in one write {median['direct']:.1f} "
          f"({median['gathered'] - median['direct']:.1f} ms saved per output, {median['direct'] / median['gathered']:.2f}x)")
    return {"outputs": outputs, "size_mb": size_mb, "cpu_ms_per_output": spent, "median_after_first": median}


def case_listing(tmp: Path, model_path: str, keys: int, folders: int) -> dict:
    """A bucket of `keys` objects on the SeaweedFS server the tests use (tests/support/s3.py), in
    `folders` folders: one small JPEG first in each folder (64 in all at most), the rest small text
    files that are listed and counted as skipped. Figures: keys/s of a plain sequential listing (the
    folder-by-folder walk a driver would do, carray.storage.walk_files), the job's keys/s end to end
    (listing, planning, skipping and restoring the JPEGs), and the seconds from the job's start to
    its first output."""
    import pyarrow.fs as pafs

    from carray import storage

    with bench_bucket(tmp / "seaweed") as (server, fs):
        tiny = jpeg.compress(np.full((16, 16), 128, np.uint8), 20)
        names = [f"src/f{i % folders:04d}/{'a' if i < folders and i < 64 else 'z'}{i:08d}.{'jpg' if i < folders and i < 64 else 'txt'}" for i in range(keys)]
        started = time.perf_counter()
        put_objects(fs, ((name, tiny if name.endswith(".jpg") else b"x") for name in names))
        print(f"listing: {keys} objects written in {time.perf_counter() - started:.0f} s")
        started = time.perf_counter()
        listed = sum(1 for _ in storage.walk_files(fs, "bench/src"))
        walk_seconds = time.perf_counter() - started
        assert listed == keys, listed

        first: dict = {}
        stop = threading.Event()

        def watch(t0: float) -> None:
            while not stop.is_set():
                try:
                    found = fs.get_file_info(pafs.FileSelector("bench/out", recursive=True, allow_not_found=True))
                    if any(i.type == pafs.FileType.File and "/_" not in i.path for i in found):  # an output, not the work folder
                        first["seconds"] = time.perf_counter() - t0
                        return
                except OSError:
                    pass
                time.sleep(0.05)

        for key, value in server.env().items():
            os.environ[key] = value
        t0 = time.perf_counter()
        watcher = threading.Thread(target=watch, args=(t0,), daemon=True)
        watcher.start()
        summary = job_in_bucket("s3://bench/src", "s3://bench/out", model_path)
        stop.set()
        watcher.join(timeout=5)
        assert summary["seen"] == keys and summary["restored"] == min(folders, 64), summary
    rates = {"walk": keys / walk_seconds, "job": keys / summary["seconds"]}
    print(f"listing: {keys} keys in {folders} folders on SeaweedFS: a sequential walk lists {rates['walk']:.0f} keys/s ({walk_seconds:.1f} s); "
          f"the job {rates['job']:.0f} keys/s end to end ({summary['seconds']:.1f} s, {summary['restored']} restored); "
          f"first output {first.get('seconds', float('nan')):.1f} s after the job started")
    return {"keys_per_s": rates, "first_output_seconds": first.get("seconds"), "job_seconds": summary["seconds"]}


def case_shards(tmp: Path, model_path: str, images: int, shard_size: int) -> dict:
    """The same small images as files and as shards, on the tests' SeaweedFS server, through the job:
    seconds, the server's own count of S3 requests by type (what a store bills), bytes moved."""
    import io
    import tarfile

    with bench_bucket(tmp / "seaweed-shards") as (server, fs):
        photos = [jpeg.compress(np.roll(_small_colour(), i * 7, axis=1), 30) for i in range(64)]
        started = time.perf_counter()
        put_objects(fs, ((f"files/{i // 1000:04d}/{i:09d}.jpg", photos[i % 64]) for i in range(images)))
        shards = []
        for first in range(0, images, shard_size):
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w") as tar:
                for i in range(first, min(images, first + shard_size)):
                    for name, data in ((f"{i:09d}.jpg", photos[i % 64]), (f"{i:09d}.txt", f"caption {i}".encode())):
                        info = tarfile.TarInfo(name)
                        info.size = len(data)
                        tar.addfile(info, io.BytesIO(data))
            shards.append((f"shards/{first // shard_size:05d}.tar", buf.getvalue()))
        put_objects(fs, shards)
        print(f"shards: {images} images written as files and as {len(shards)} shards in {time.perf_counter() - started:.0f} s")
        for key, value in server.env().items():
            os.environ[key] = value
        figures = {}
        for kind in ("files", "shards"):
            before = server.requests()
            summary = job_in_bucket(f"s3://bench/{kind}", f"s3://bench/out-{kind}", model_path)
            after = server.requests()
            requests = {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) - before.get(k, 0)}
            assert summary["restored"] == images, summary
            figures[kind] = {"seconds": summary["seconds"], "images_per_s": images / summary["seconds"], "requests": requests,
                             "requests_total": sum(requests.values()), "mp_per_s": summary["megapixels_per_second"]}
            print(f"shards: {kind}: {summary['seconds']:.1f} s, {images / summary['seconds']:.0f} images/s, "
                  f"S3 requests {sum(requests.values())} ({', '.join(f'{k} {v}' for k, v in sorted(requests.items()))})")
    ratio = figures["shards"]["images_per_s"] / figures["files"]["images_per_s"]
    print(f"shards: images/s of the shard path / the file path = {ratio:.2f}; requests per image "
          f"{figures['files']['requests_total'] / images:.2f} (files) vs {figures['shards']['requests_total'] / images:.4f} (shards)")
    return {"images": images, "shard_size": shard_size, **figures, "ratio": ratio}


def case_shard_memory(tmp: Path, model_path: str, photos: int) -> dict:
    """One shard of `photos` 9.4 MP colour JPEGs streamed through one actor, against the same photos as
    files: the peak memory above idle Ray of each (the shard must not be held decoded)."""
    import tarfile

    megapixels = make_photos(tmp / "shard-photos", photos)
    shard = tmp / "shard-in" / "00000.tar"
    shard.parent.mkdir()
    with tarfile.open(shard, "w") as tar:
        for path in sorted((tmp / "shard-photos").glob("*.jpg")):
            tar.add(path, arcname=path.name)
    figures = {}
    for kind, src in (("files", tmp / "shard-photos"), ("shard", shard.parent)):
        time.sleep(2)  # the previous job's workers exit
        idle = tree_memory()
        with PeakMemory() as peak:
            summary = job(src, tmp / f"shard-memory-{kind}", model_path)
        assert summary["restored"] == photos, summary
        figures[kind] = {"peak_above_idle_gib": (peak.peak - idle) / 2**30, "mp_per_s": summary["megapixels_per_second"]}
        print(f"shard-memory: {kind}: {photos} photos ({megapixels:.0f} MP, {shard.stat().st_size / 1e6:.0f} MB as one shard): "
              f"{summary['megapixels_per_second']:.2f} MP/s, peak memory (PSS) {figures[kind]['peak_above_idle_gib']:.2f} GiB above idle Ray")
    return figures


def _small_colour() -> np.ndarray:
    """A 128x128 colour crop of the bundled LIVE1 pair: real texture for small test images."""
    with Image.open(BUNDLED_ROOT / "LIVE1_color" / sorted(os.listdir(BUNDLED_ROOT / "LIVE1_color"))[0]) as img:
        return np.asarray(img.convert("RGB"))[:128, :128].copy()


def job_in_bucket(src: str, dst: str, model_path: str) -> dict:
    return run_infer(InferConfig(input=src, output=dst, model=model_path), say=lambda line: None)


def case_passthrough(tmp: Path, model_path: str, count: int, restored: int) -> dict:
    """`count` and 2 x `count` JPEGs whose tables say q97 (passed through: their own bytes, decided
    from the header), which split the job's time into a rate per extra image and a fixed cost per
    job; against copying `count` of them with pyarrow, file by file, as the job writes (read, write
    to a temporary name, rename), and `restored` q20 JPEGs of the same images restored."""
    from carray import storage

    make_jpegs(tmp / "q97", count=2 * count, quality=97)
    (tmp / "q97-half").mkdir()
    for path in sorted((tmp / "q97").glob("*.jpg"))[:count]:
        os.link(path, tmp / "q97-half" / path.name)
    make_jpegs(tmp / "q20", count=restored, quality=20)
    fs, _ = storage.resolve(str(tmp))
    started = time.perf_counter()
    for path in sorted((tmp / "q97-half").glob("*.jpg")):
        storage.write_bytes_atomic(fs, str(tmp / "q97-copy" / path.name), storage.read_bytes(fs, str(path)))
    copy_seconds = time.perf_counter() - started
    (tmp / "q97-warm").mkdir()
    for path in sorted((tmp / "q97").glob("*.jpg"))[:50]:
        os.link(path, tmp / "q97-warm" / path.name)
    job(tmp / "q97-warm", tmp / "q97-warm-out", model_path)  # the first job after another case starts new workers
    # Alternating, three of each: the first jobs of a process pay worker start-ups that later ones do
    # not (measured: 4.3 s, then 1.9 s for the same 1000 files); the medians are compared.
    runs = {"once": [], "twice": []}
    for i in range(3):
        for name, folder, n in (("once", "q97-half", count), ("twice", "q97", 2 * count)):
            summary = job(tmp / folder, tmp / f"{folder}-out-{i}", model_path)
            assert summary["passed_through"] == n, summary
            runs[name].append(summary["seconds"])
    once, twice = ({"seconds": float(np.median(runs[k]))} for k in ("once", "twice"))
    restoring = job(tmp / "q20", tmp / "q20-out", model_path)
    megabytes = sum(p.stat().st_size for p in (tmp / "q97-half").glob("*.jpg")) / 1e6
    marginal = count / (twice["seconds"] - once["seconds"])
    fixed = once["seconds"] - count / marginal
    rates = {"passed": marginal, "restored": restoring["images_per_second"], "copy": count / copy_seconds}
    print(f"passthrough: {count} q97 JPEGs ({megabytes:.0f} MB) in {once['seconds']:.2f} s, {2 * count} in {twice['seconds']:.2f} s (medians of "
          f"{', '.join(f'{x:.2f}' for x in runs['once'])} and {', '.join(f'{x:.2f}' for x in runs['twice'])}): "
          f"{marginal:.0f} images/s ({marginal * megabytes / count:.0f} MB/s) per extra image, {fixed:.1f} s fixed per job; "
          f"copying {count} file by file (pyarrow, temporary name + rename, one thread): {copy_seconds:.2f} s ({rates['copy']:.0f} images/s); "
          f"{restored} q20 JPEGs of the same images restored at {rates['restored']:.2f} images/s: a pass-through costs "
          f"1/{marginal / rates['restored']:.0f} of a restore")
    return {"images_per_s": rates, "fixed_seconds": fixed, "copy_seconds": copy_seconds}


def case_scan(tmp: Path, model_path: str, photos: int, links: int) -> dict:
    """The preview's tables-only scan (carray.infer.scan.scan_key: the first 64 KiB of a file,
    its header, the policy's decision) against reading and decoding the same files, alternating,
    three rounds each, in this process on one core: `photos` 9.4 MP colour JPEGs, `links` hard links
    each (distinct paths). Then a preview job over them (2 samples restored) for its own
    headers_per_second, which adds Ray tasks and start-up on a cluster of this size."""
    import pyarrow.fs as pafs

    from carray import storage
    from carray.images import decode_image
    from carray.infer.layout import Locations
    from carray.infer.scan import scan_key
    from carray.quality import Policy

    make_photos(tmp / "scan-src", photos)
    folder = tmp / "scan"
    folder.mkdir()
    for path in sorted((tmp / "scan-src").glob("*.jpg")):
        for n in range(links):
            os.link(path, folder / f"{path.stem}-{n}.jpg")
    names = sorted(p.name for p in folder.glob("*.jpg"))
    where = Locations(pafs.LocalFileSystem(), str(folder), pafs.LocalFileSystem(), str(tmp / "scan-out"))
    policy = Policy()

    def scan() -> None:
        for name in names:
            assert scan_key(where, name, None, policy)["decision"] == "restore"

    def decode() -> None:
        for name in names:
            decode_image(storage.read_bytes(where.src_fs, where.input_path(name)), None)

    times = {"scan": [], "decode": []}
    for _ in range(3):
        for name, run in (("scan", scan), ("decode", decode)):
            started = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - started)
    rates = {k: len(names) / float(np.median(v)) for k, v in times.items()}
    summary = run_infer(InferConfig(input=str(folder), output=str(tmp / "scan-preview"), model=model_path, preview=2,
                                    preview_scan=len(names)), say=lambda line: None)
    print(f"scan: {len(names)} colour JPEGs of 9.4 MP ({photos} photos x {links} links), one core: the tables-only scan "
          f"{rates['scan']:.0f} files/s, reading + decoding {rates['decode']:.1f} files/s ({rates['scan'] / rates['decode']:.0f}x); "
          f"the preview job read {summary['headers_per_second']:.0f} headers/s (Ray tasks, {summary['listing_seconds']:.1f} s listing)")
    return {"files_per_s": rates, "preview_headers_per_s": summary["headers_per_second"]}


def case_preview(tmp: Path, shown: int, photos: int) -> dict:
    """A preview of `shown` samples against the full run of the same inputs, with the shipped models:
    `photos` colour JPEGs of 1.2 MP (mosaics of Urban100) at q10-q50, one in 8 at q97 (passed
    through), one in 10 a PNG (passed through). Prints the preview's estimates beside what the full run did."""
    paths = sorted(SHARED.joinpath("Urban100").glob("*.png")) if SHARED.joinpath("Urban100").is_dir() else sorted((BUNDLED_ROOT / "LIVE1_color").glob("*.png"))
    images = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    src = tmp / "preview-src"
    for n in range(photos):
        pixels = mosaic(images, 960, 1280, start=n * 5)
        folder = src / f"day{n % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        if n % 10 == 9:
            Image.fromarray(pixels).save(folder / f"img{n:03d}.png")
        else:
            (folder / f"img{n:03d}.jpg").write_bytes(jpeg.compress(pixels, 97 if n % 8 == 7 else 10 + 10 * (n % 5)))
    preview = run_infer(InferConfig(input=str(src), output=str(tmp / "preview-out"), preview=shown), say=lambda line: None)
    full = run_infer(InferConfig(input=str(src), output=str(tmp / "preview-full")), say=lambda line: None)
    est, here = preview["estimated"], preview["cost"]["this_cluster"]
    print(f"preview: {photos} colour JPEGs/PNGs of 1.2 MP, {shown} samples, preview took {preview['seconds']:.1f} s. "
          f"Estimated / full run: restored {est['restored']} / {full['restored']}, passed through {est['passed_through']} / "
          f"{full['passed_through']}, failed {est['failed']} / {full['failed']}; megapixels to restore "
          f"{preview['cost']['megapixels_to_restore']:.1f} / {full['megapixels']:.1f}; time {here['hours'] * 3600:.1f} s / "
          f"{full['seconds']:.1f} s ({here['megapixels_per_second']:.3f} MP/s measured on the samples, "
          f"{full['megapixels_per_second']:.3f} MP/s in the full run)")
    return {"preview": {k: preview[k] for k in ("estimated", "cost", "sample_run", "seconds")},
            "full": {k: full[k] for k in ("restored", "passed_through", "failed", "megapixels", "seconds", "megapixels_per_second")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cases = ["collection", "small", "large", "precision", "driver", "passthrough", "ceiling", "listing", "scan", "preview", "shards", "shard-memory",
             "bucket-writes"]
    parser.add_argument("--cases", nargs="+", default=cases, choices=cases)
    parser.add_argument("--model", default=None, help="model file (default: the shipped gray model)")
    parser.add_argument("--copies", type=int, default=4, help="times the 29 LIVE1 images are restored in the collection case")
    parser.add_argument("--small", type=int, default=3000, help="JPEGs of 128x128 in the small-files case")
    parser.add_argument("--repeat", type=int, default=3, help="small case: jobs, each between two loop runs (at least 1)")
    parser.add_argument("--split", action="store_true",
                        help="small case: also run the job on twice the files, to split its time into a cost per image and a cost per job")
    parser.add_argument("--large-mp", type=float, default=64.0, help="megapixels of the large image")
    parser.add_argument("--tile", type=int, default=512, help="--tile of the job in the large case (its tiles' core side)")
    parser.add_argument("--passthrough", type=int, default=1000, help="q97 JPEGs in the passthrough case")
    parser.add_argument("--keys", type=int, default=100_000, help="objects in the listing case's bucket")
    parser.add_argument("--folders", type=int, default=100, help="folders they are spread over in the listing case")
    parser.add_argument("--photos", type=int, default=16, help="9.4 MP colour JPEGs in the ceiling case")
    parser.add_argument("--formats", nargs="+", default=["png", "jpeg"], help="the ceiling case's --format runs")
    parser.add_argument("--ceiling-photos", type=Path, default=None,
                        help="ceiling case: a folder of your own colour JPEGs (camera photos), used as they are and repeated to --photos")
    parser.add_argument("--ceiling-shards", type=int, default=0,
                        help="ceiling case: also the same photos as WebDataset shards of this many (key.jpg), through the job, against the files")
    parser.add_argument("--scan-photos", type=int, default=20, help="9.4 MP colour JPEGs in the scan case")
    parser.add_argument("--scan-links", type=int, default=10, help="hard links to each in the scan case (distinct paths)")
    parser.add_argument("--preview-photos", type=int, default=80, help="1.2 MP photos in the preview case")
    parser.add_argument("--preview-shown", type=int, default=8, help="samples restored by the preview case's preview")
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--job-runtime", default="auto", choices=["auto", "torch", "onnxruntime"],
                        help="small case: the job's --runtime (auto: ONNX Runtime for fp32 on CPUs, as users get it)")
    parser.add_argument("--loop-runtime", default="torch", choices=["torch", "onnxruntime"],
                        help="the bare loop's runtime (torch: what a bare loop runs; onnxruntime: the same runtime as the job's default)")
    parser.add_argument("--shard-images", type=int, default=100_000, help="small JPEGs in the shards case, as files and as shards")
    parser.add_argument("--shard-size", type=int, default=1000, help="images per WebDataset shard in the shards case")
    parser.add_argument("--shard-photos", type=int, default=24, help="9.4 MP photos in the shard-memory case's one shard")
    parser.add_argument("--bucket-outputs", type=int, default=24, help="outputs per round in the bucket-writes case")
    parser.add_argument("--bucket-output-mb", type=float, default=5.0,
                        help="their size in MB (5: a 12 MP camera photo's q98 4:4:4 JPEG, 0.36-0.58 bytes per pixel)")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    model_path = args.model or str(shipped_path("gray"))
    results = {"cpus": args.cpus, "model": model_path}
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # no token written to ~/.ray by a bench
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR", "/var/tmp")) as tmp:
        tmp = Path(tmp)
        # As the job's own private Ray and cluster/local.sh start it (carray.runtime.SYSTEM_CONFIG).
        # Every worker knows the bench-only identity network (the ceiling case's model file).
        path = os.pathsep.join(p for p in (str(REPO / "bench"), os.environ.get("PYTHONPATH", "")) if p)
        hook = {"worker_process_setup_hook": "identity.install_when_imported", "env_vars": {"PYTHONPATH": path}}
        context = ray.init(num_cpus=args.cpus, logging_level="ERROR", include_dashboard=False, _system_config=SYSTEM_CONFIG, runtime_env=hook)
        ray.data.DataContext.get_current().enable_progress_bars = False
        address = context.address_info["gcs_address"]
        make_jpegs(tmp / "warm", count=4, crop=128)
        job(tmp / "warm", tmp / "warm-out", model_path)  # workers started, kernels built
        if "collection" in args.cases:
            results["collection"] = case_collection(tmp, model_path, args.cpus, args.copies, args.loop_runtime)
        if "small" in args.cases:
            results["small"] = case_small(tmp, model_path, args.cpus, args.small, address, args.split, args.repeat, args.job_runtime, args.loop_runtime)
        if "large" in args.cases:
            loop_mp = results.get("collection", {}).get("loop_mp_per_s")
            results["large"] = case_large(tmp, model_path, args.large_mp, loop_mp, args.tile)
        if "precision" in args.cases:
            results["precision"] = case_precision(tmp, model_path, args.large_mp)
        if "driver" in args.cases:
            results["driver"] = case_driver(tmp, model_path, address)
        if "listing" in args.cases:
            results["listing"] = case_listing(tmp, model_path, args.keys, args.folders)
        if "ceiling" in args.cases:
            results["ceiling"] = case_ceiling(tmp, args.cpus, args.photos, args.formats, args.ceiling_shards, args.ceiling_photos)
        if "scan" in args.cases:
            results["scan"] = case_scan(tmp, model_path, args.scan_photos, args.scan_links)
        if "preview" in args.cases:
            results["preview"] = case_preview(tmp, args.preview_shown, args.preview_photos)
        if "passthrough" in args.cases:
            results["passthrough"] = case_passthrough(tmp, model_path, args.passthrough, 100)
        if "shards" in args.cases:
            results["shards"] = case_shards(tmp, model_path, args.shard_images, args.shard_size)
        if "shard-memory" in args.cases:
            results["shard-memory"] = case_shard_memory(tmp, model_path, args.shard_photos)
        if "bucket-writes" in args.cases:
            results["bucket-writes"] = case_bucket_writes(tmp, args.bucket_outputs, args.bucket_output_mb)
        ray.shutdown()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
