"""The prepared GPU call: every step of the GPU programme in one rehearsed command (bench/device/run.sh).

Call 1 carries `.device/call1` (Ray for Python 3.12 and the clean colour sources that fit beside it,
bench/device/pack.py) and runs, each step time-boxed (BUDGETS) with its results written to $OUT as
it finishes, so a call cut short still returns the steps before:

  a. install   Ray from the carry into .device/site (kept on a warm machine for call 2), nvidia-smi,
               versions, a 12 MP photo's upload from pinned kept buffers (bench/device/upload.py) -> env.json
  b. network   bench/gpu.py on the colour network: fp32/fp16/bf16 x tile batch, channels_last off,
               CUDA graphs, torch.compile; share of peak; LIVE1 PSNR against fp32  -> network.json
  c. infer     >= 500 colour photos of 12 MP made on the node from the carried images; the real
               jobs/infer.py on a local Ray of the node's CPUs and GPU: the default output at
               --precision auto, then the best precision and tile batch of b; nvidia-smi and the
               CPUs sampled every second                                       -> infer.json, gpu.csv
  d. train     prep (Ray Data on the node's CPUs) of the carried images, then jobs/train.py (Ray Train,
               one GPU worker, batch 256) from the shipped colour model for the time left
                                                                               -> train.json, model.pt, metrics.csv
Call 2 (optional, if device time is left: `run.sh 2`, carrying `.device/call2`: CBSD432) trains on
from call 1's model with every carried image. log.txt holds every step's output.

--toy runs the same steps at toy sizes on this CPU with the project's own environment (tests/test_device.py,
in `make test`), so the call cannot rot between lent machines (step c's second job only, and call 2 on call 1's
pairs: the images are the same); the toy run also blocks the packages
pack.py trims from Ray (bench/device/blocked/), so a job that needs one fails here, not there.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEVICE = REPO / ".device"
SITE = DEVICE / "site"  # Ray unpacked: git-ignored, so a warm machine keeps it for the next call
WORK = DEVICE / "work"

#: Seconds per step of call 1 (9 minutes in all: a call may run 10, a lent machine 15 with its start).
BUDGETS = {"install": 60, "network": 120, "infer": 170, "train": 180}
BUDGETS_CALL2 = {"install": 20, "train": 190}  # call 2 fits the minutes call 1 leaves (about 4)
#: Full size on the device; --toy on this CPU.
SIZES = {
    "device": dict(photos=500, photo_mp=12.0, tile=512, batches=[1, 4, 8, 16, 32, 64], seconds=2.0, psnr_images=0,
                   variants=["contiguous", "graphs", "compile", "compile-graphs"], batch_size=256, patch=48, split="90/10/0", psnr=True),
    # The toy skips --psnr (a whole LIVE1 photo through the colour network at each precision: a
    # minute here); best_setting then keeps fp32, as it would on a device where PSNR was not measured.
    "toy": dict(photos=3, photo_mp=0.05, tile=64, batches=[1, 2], seconds=0.2, psnr_images=1, variants=["contiguous", "graphs"],
                batch_size=8, patch=32, split="60/40/0", psnr=False),
}


class Call:
    """One call: where it writes, how big, how long each step may take, and the log."""

    def __init__(self, out: Path, toy: bool, budgets: dict):
        self.out, self.toy, self.budgets = out, toy, budgets
        self.size = SIZES["toy" if toy else "device"]
        self.work = out / "work" if toy else WORK
        self.started = time.monotonic()
        out.mkdir(parents=True, exist_ok=True)
        self.work.mkdir(parents=True, exist_ok=True)
        self.log = open(out / "log.txt", "a", buffering=1)

    def say(self, line: str) -> None:
        stamp = f"[{time.monotonic() - self.started:6.1f}s] "
        print(stamp + line, flush=True)
        self.log.write(stamp + line + "\n")

    def env(self) -> dict:
        """What the steps' processes run with: the carried Ray (none in --toy), the checkout's carray,
        and in --toy the blocker of what pack.py trims."""
        paths = [str(REPO)]
        if self.toy:
            paths.insert(0, str(REPO / "bench" / "device" / "blocked"))
        elif (SITE / "site").is_dir():
            paths.insert(0, str(SITE / "site"))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths + [os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
                   PYTHONUNBUFFERED="1", RAY_USAGE_STATS_ENABLED="0")
        return env

    def run(self, command: list[str], seconds: float) -> int:
        """A step's command, its output into the log as it comes, killed at `seconds`."""
        self.say("$ " + " ".join(command))
        process = subprocess.Popen(command, cwd=REPO, env=self.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True, start_new_session=True)
        timer = threading.Timer(max(seconds, 1), lambda: os.killpg(process.pid, 9))
        timer.start()
        for line in process.stdout:
            self.log.write(line)
            if line.startswith(("carray", "infer:", "prep:", "train:", "device", "precision", "   ", "LIVE1", "pack")) or "MP/s" in line:
                print(line, end="", flush=True)
        code = process.wait()
        timer.cancel()
        if code:
            self.say(f"exit {code}" + (" (time box reached)" if code in (-9, 137) else ""))
        return code

    def write(self, name: str, result: dict) -> None:
        (self.out / name).write_text(json.dumps(result, indent=1, default=str))
        self.say(f"wrote {name}")

    def left(self, total: float) -> float:
        return total - (time.monotonic() - self.started)


# --- a. install ---


def install(call: Call, carried: Path) -> dict:
    """Ray from the carry into .device/site (once: a warm machine keeps it), then what the node is."""
    result = {"ray_from": "the project's environment (--toy)" if call.toy else None}
    if not call.toy:
        archive = carried / "site.tar.xz"
        if (SITE / "site" / "ray").is_dir():
            result["ray_from"] = f"{SITE} (kept from an earlier call)"
        elif archive.is_file():
            started = time.monotonic()
            SITE.mkdir(parents=True, exist_ok=True)
            with tarfile.open(archive) as tar:
                tar.extractall(SITE, filter="tar")
            result["ray_from"] = f"{archive}, unpacked in {time.monotonic() - started:.1f} s"
        else:
            result["ray_from"] = "missing: neither .device/site (an earlier call) nor the carried site.tar.xz"
    probe = ("import json, platform, numpy, PIL, pyarrow, torch; r = {'python': platform.python_version(), 'torch': torch.__version__, "
             "'cuda': torch.version.cuda, 'gpu': torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "
             "'numpy': numpy.__version__, 'pillow': PIL.__version__, 'pyarrow': pyarrow.__version__, 'cpus': __import__('os').cpu_count()}\n"
             "try:\n import ray, ray.data, ray.train; r['ray'] = ray.__version__\n"
             "except Exception as e: r['ray'] = 'not importable: %s: %s' % (type(e).__name__, e)\nprint('ENV ' + json.dumps(r))")
    output = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=call.env(), capture_output=True, text=True, timeout=120)
    call.log.write(output.stdout + output.stderr)
    for line in output.stdout.splitlines():
        if line.startswith("ENV "):
            result.update(json.loads(line[4:]))
    try:  # a GPU actor's kept buffers: pinned, and what their upload saves (bench/device/upload.py)
        output = subprocess.run([sys.executable, "bench/device/upload.py"], cwd=REPO, env=call.env(), capture_output=True, text=True, timeout=60)
        call.log.write(output.stdout + output.stderr)
        result.update(next((json.loads(line[7:]) for line in output.stdout.splitlines() if line.startswith("UPLOAD ")),
                           {"upload": f"no result (exit {output.returncode})"}))
    except subprocess.TimeoutExpired:
        result["upload"] = "timed out after 60 s"
    smi = shutil.which("nvidia-smi")
    result["nvidia_smi"] = subprocess.run([smi], capture_output=True, text=True).stdout if smi else "no nvidia-smi (no GPU here)"
    call.say(f"install: python {result.get('python')}, torch {result.get('torch')} (CUDA {result.get('cuda')}), GPU {result.get('gpu')}, "
             f"Ray {result.get('ray')}, {result.get('cpus')} CPUs")
    call.write("env.json", result)
    return result


# --- b. the network ---


def network(call: Call) -> dict:
    s = call.size
    command = [sys.executable, "bench/gpu.py", "--model", "carray/models/color.pt", "--tile", str(s["tile"]), "--seconds", str(s["seconds"]),
               "--photo-mp", str(s["photo_mp"]), "--batches", *map(str, s["batches"]), "--variants", *s["variants"],
               "--json", str(call.out / "network.json")] + (["--psnr", "--psnr-images", str(s["psnr_images"])] if s["psnr"] else [])
    if not call.toy:
        command += ["--precisions", "fp32", "fp16", "bf16"]
    call.run(command, call.budgets["network"])
    path = call.out / "network.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def best_setting(figures: dict) -> dict:
    """The precision and tile batch of step b fastest on the actors' path among those whose LIVE1
    PSNR is within 0.01 dB of fp32's at every quality (fp32 itself when PSNR was not measured)."""
    psnr = figures.get("psnr", {})

    def close_to_fp32(precision: str) -> bool:
        if not psnr:
            return precision == "fp32"
        return all(abs(by_precision[precision][q] - by_precision["fp32"][q]) <= 0.01
                   for by_precision in psnr.values() if precision in by_precision for q in by_precision[precision])

    rows = [r for r in figures.get("rows", []) if close_to_fp32(r["precision"])]
    best = max(rows, key=lambda r: r["actor_mp_per_s"], default=None)
    return {"precision": best["precision"], "tile_batch": best["batch"]} if best else {}


# --- c. the infer job ---


def make_photos(call: Call, sources: list[Path], folder: Path) -> float:
    """`photos` colour JPEGs (q50) of `photo_mp` megapixels, 4:3, mosaics of the carried images, made
    in parallel on the node's CPUs. Returns the megapixels written."""
    from concurrent.futures import ProcessPoolExecutor

    s = call.size
    height = max(8, round((s["photo_mp"] * 1e6 * 3 / 4) ** 0.5))
    width = round(height * 4 / 3)
    folder.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(max_workers=os.cpu_count()) as pool:
        list(pool.map(_write_photo, [(str(folder / f"photo{n:04d}.jpg"), [str(p) for p in sources], height, width, n) for n in range(s["photos"])]))
    return s["photos"] * height * width / 1e6


def _write_photo(job) -> None:
    path, sources, height, width, n = job
    import numpy as np
    from PIL import Image

    sys.path.insert(0, str(REPO / "bench"))
    from common import mosaic

    images = [np.asarray(Image.open(p).convert("RGB")) for p in sources[n % 7 :: 7] or sources]
    Image.fromarray(mosaic(images, height, width, start=n)).save(path, quality=50)


class Sampler:
    """nvidia-smi and the CPUs' busy share, every second, into gpu.csv while a job runs."""

    def __init__(self, path: Path):
        self.path, self.stop = path, threading.Event()
        self.rows: list[dict] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        smi = shutil.which("nvidia-smi")
        previous = _cpu_times()
        while not self.stop.wait(1.0):
            now = _cpu_times()
            busy = 1 - (now[1] - previous[1]) / max(now[0] - previous[0], 1)
            previous = now
            row = {"t": time.time(), "cpu_busy": round(busy, 3)}
            if smi:
                out = subprocess.run([smi, "--query-gpu=utilization.gpu,memory.used,power.draw", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True).stdout.strip().split(",")
                if len(out) == 3:
                    row.update(gpu_util=float(out[0]), gpu_mem_mb=float(out[1]), gpu_watts=float(out[2]))
            self.rows.append(row)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        with open(self.path, "a") as f:
            for row in self.rows:
                f.write(json.dumps(row) + "\n")

    def means(self) -> dict:
        keys = ("cpu_busy", "gpu_util")
        return {k: round(sum(r[k] for r in self.rows if k in r) / max(1, sum(k in r for r in self.rows)), 3) for k in keys}


def _cpu_times() -> tuple[float, float]:
    with open("/proc/stat") as f:
        values = [float(v) for v in f.readline().split()[1:]]
    return sum(values), values[3] + values[4]  # total, idle + iowait


def infer(call: Call, sources: list[Path], setting: dict, network_figures: dict) -> dict:
    photos = call.work / "photos"
    shutil.rmtree(photos, ignore_errors=True)
    started = time.monotonic()
    megapixels = make_photos(call, sources, photos)
    result = {"photos": call.size["photos"], "megapixels": megapixels, "made_in_s": round(time.monotonic() - started, 1), "runs": []}
    call.say(f"infer: {result['photos']} photos, {megapixels:.0f} MP made in {result['made_in_s']} s")
    runs = [("default output, --precision auto", [])]
    if setting:
        runs.append((f"--precision {setting['precision']} --tile-batch {setting['tile_batch']} (best of step b)",
                     ["--precision", setting["precision"], "--tile-batch", str(setting["tile_batch"])]))
    if call.toy:  # the second run's command is the first's with step b's flags: at toy size it alone (each job's start is 13 s here)
        runs = runs[-1:]
    for label, options in runs:
        out = call.work / f"infer-{len(result['runs'])}"
        shutil.rmtree(out, ignore_errors=True)
        seconds = min(call.budgets["infer"] / len(runs), call.left(sum(call.budgets.values())) - 5)
        with Sampler(call.out / "gpu.csv") as sampler:
            code = call.run([sys.executable, "jobs/infer.py", "--input", str(photos), "--output", str(out), *options], seconds)
        summary_path = out / "_summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
        run = {"label": label, "exit": code, **sampler.means(), **{k: summary.get(k) for k in (
            "restored", "failed", "seconds", "megapixels_per_second", "steady_megapixels_per_second", "seconds_to_first_output",
            "precision", "runtime", "restoring_actors", "gpus", "cpus")}}
        matching = [r for r in network_figures.get("rows", []) if r["precision"] == summary.get("precision")]
        if matching:  # the network alone under the job's own settings, from step b
            run["network_actor_path_mp_per_s"] = max(r["actor_mp_per_s"] for r in matching)
        result["runs"].append(run)
        call.write("infer.json", result)
    return result


# --- d. training ---


def train(call: Call, sources: list[Path], name: str, init: Path, seconds: float) -> dict:
    """Pairs made by the prep job on the node's CPUs, then the train job for `seconds` in all."""
    s = call.size
    started = time.monotonic()
    images, prep, output = call.work / f"train-src-{name}", call.work / f"prep-{name}", call.work / f"train-{name}"
    shutil.rmtree(images, ignore_errors=True)
    images.mkdir(parents=True)
    for path in sources:
        (images / f"{path.parent.name}-{path.name}").symlink_to(path.resolve())
    listing = "\n".join(sorted(str(path.resolve()) for path in sources))
    earlier = [p for p in sorted(call.work.glob("prep-*.sources")) if p.read_text() == listing and p.with_suffix("").is_dir()]
    if earlier:  # call 2 on the very images of call 1 (the toy's): its pairs as they are
        prep, code = earlier[0].with_suffix(""), 0
        call.say(f"prep: the pairs of {prep.name} reused (the same {len(sources)} sources)")
    else:
        shutil.rmtree(prep, ignore_errors=True)
        code = call.run([sys.executable, "jobs/prep.py", "--input", str(images), "--output", str(prep), "--color",
                         "--quality", "10", "20", "30", "40", "50-100", "--range-samples", "2", "--double", "10-95", "--vary-chroma", "0.5",
                         "--patch-size", str(s["patch"]), "--stride", str(s["patch"]), "--split", s["split"]], seconds / 3)
        if code == 0:
            prep.with_suffix(".sources").write_text(listing)
    result = {"sources": len(sources), "prep_exit": code, "prep_s": round(time.monotonic() - started, 1)}
    if code:
        call.write(f"train-{name}.json" if name != "1" else "train.json", result)
        return result
    limit = max(10, seconds - (time.monotonic() - started) - 45)  # the job's start and its export after the limit
    # Steps: what the limit allows at a rate measured on an H100 (about 9 k patches/s of 48x48), so
    # the cosine schedule ends near the limit; --time-limit stops it in any case.
    steps = max(100, int(limit * 9000 / s["batch_size"]))
    if call.toy:  # call 1 ends by its steps, call 2 by its time limit: both ends rehearsed
        steps, limit = (10, limit) if name == "1" else (100_000, 8)
    shutil.rmtree(output, ignore_errors=True)
    command = [sys.executable, "jobs/train.py", "--data", str(prep), "--output", str(output), "--init-from", str(init),
               "--batch-size", str(s["batch_size"]), "--lr", "1e-4", "--lr-schedule", "cosine", "--warmup-steps", str(min(200, steps // 10)),
               "--ema", "0.999", "--steps", str(steps), "--time-limit", str(int(limit)), "--val-every", str(max(10, steps // 20)),
               "--checkpoint-every", str(max(10, steps // 5)), "--val-patches", "64" if call.toy else "4096"]
    result["train_exit"] = call.run(command, seconds - (time.monotonic() - started))
    for file in ("model.pt", "metrics.csv"):
        if (output / file).is_file():
            shutil.copy(output / file, call.out / (file if name == "1" else f"{Path(file).stem}-{name}{Path(file).suffix}"))
    metrics = (output / "metrics.csv").read_text().splitlines() if (output / "metrics.csv").is_file() else []
    result.update(steps_planned=steps, time_limit_s=int(limit), seconds=round(time.monotonic() - started, 1), metrics_rows=len(metrics) - 1,
                  last_metrics=metrics[-1] if len(metrics) > 1 else None, metrics_header=metrics[0] if metrics else None)
    call.write("train.json" if name == "1" else f"train-{name}.json", result)
    return result


def carried_images(call: Call, carried: Path) -> list[Path]:
    """The clean colour sources of this call: unpacked from the carry, or in --toy the bundled
    LIVE1 colour pair and Classic5 (gray, made RGB by prep --color): enough for a validation split."""
    if call.toy:
        return sorted((REPO / "tests" / "data" / "LIVE1_color").glob("*.png")) + sorted((REPO / "tests" / "data" / "Classic5").glob("*.bmp"))
    archive, folder = carried / "images.tar", DEVICE / "images"
    if archive.is_file():
        with tarfile.open(archive) as tar:
            tar.extractall(DEVICE, filter="data")
    return sorted(p for p in folder.rglob("*") if p.is_file())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("call", nargs="?", type=int, default=1, choices=[1, 2])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "/tmp/carray-device-out")))
    parser.add_argument("--toy", action="store_true", help="toy sizes on this machine's CPUs (the rehearsal in make test)")
    args = parser.parse_args(argv)
    budgets = BUDGETS if args.call == 1 else BUDGETS_CALL2
    call = Call(args.out, args.toy, budgets)
    carried = DEVICE / f"call{args.call}"
    call.say(f"call {args.call}{' (toy)' if args.toy else ''}: budgets {budgets} s, {sum(budgets.values())} s in all")
    environment = install(call, carried)
    if "not importable" in str(environment.get("ray")):
        call.say("Ray is not importable: the steps that need it are skipped (see env.json)")
    images = carried_images(call, carried)
    total = sum(budgets.values())
    if args.call == 1:
        figures = network(call)
        setting = best_setting(figures)
        call.say(f"network: best within 0.01 dB of fp32 on the actors' path: {setting}")
        infer(call, images, setting, figures)
        train(call, images, "1", REPO / "carray" / "models" / "color.pt", call.left(total))
    else:
        first = call.work / "train-1" / "model.pt"
        init = first if first.is_file() else REPO / "carray" / "models" / "color.pt"
        call.say(f"call 2: training from {init} on {len(images)} images")
        train(call, images, "2", init, call.left(total))
    call.say("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
