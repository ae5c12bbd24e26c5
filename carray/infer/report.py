"""What the job tells its user: a progress line while it runs, the summary when it ends."""
from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import asdict
from typing import Optional

import ray

from .. import __version__
from .layout import FAILURES_FILE, METADATA_FILE

PROGRESS_EVERY_S = 10.0


class ProgressPrinter:
    """A line every PROGRESS_EVERY_S seconds: done / total, MP/s, images/s, failures, ETA."""

    def __init__(self, tracker, total: Optional[int], say=print):
        self.tracker, self.total, self.say = tracker, total, say
        self.started = time.monotonic()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def line(self) -> str:
        t = ray.get(self.tracker.snapshot.remote(), timeout=30)
        seconds = max(time.monotonic() - self.started, 1e-6)
        done = int(t.get("restored", 0) + t.get("passed", 0) + t.get("skipped", 0) + t.get("failed", 0))
        rate = done / seconds
        listed = int(t.get("listed", 0))
        of = f"{done}/{self.total}" if self.total is not None else f"{done} of {listed} listed so far" if listed else f"{done} (total not known yet)"
        eta = f", ETA {(self.total - done) / rate / 60:.1f} min" if self.total and rate > 0 else ""
        return (
            f"carray: {of} done | {t.get('megapixels', 0) / seconds:.2f} MP/s, {t.get('restored', 0) / seconds:.1f} images/s | "
            f"{int(t.get('failed', 0))} failed{eta}"
        )

    def _run(self):
        while not self.stop.wait(PROGRESS_EVERY_S):
            try:
                self.say(self.line())
            except Exception:  # progress is best effort; the job's result never depends on it
                pass

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()


def model_digests(files: dict[str, bytes]) -> dict[str, str]:
    return {kind: hashlib.sha256(data).hexdigest() for kind, data in files.items()}


def driver_peak_rss_mb() -> float:
    """This process's peak resident memory: the driver's share of the job. VmHWM, not getrusage:
    ru_maxrss survives exec, so a driver started by a big process would report its parent's peak."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration, ValueError):  # not Linux
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build_summary(cfg, totals: dict, listed_skips: dict, failed: int, started: float, networks: dict, files: dict) -> dict:
    """The dict written to _summary.json. `totals`: the sink's counts; `listed_skips`: what the
    listing counted and did not hand on; `started`: the job's time.time() at its start;
    `networks`: {"precision", "runtime", "actors", "gpus", "cpus", "first_restored"} the restoring
    pool ran with (first_restored: the tracker's (time, megapixels) of the first restored pack)."""
    ended = time.time()
    seconds = ended - started
    skipped = dict(totals["skipped"])
    for reason, n in listed_skips.items():
        skipped[reason] = skipped.get(reason, 0) + n
    passed = totals["passed"]
    megapixels = totals["megapixels"]
    rate = megapixels / seconds
    return {
        "input": cfg.input, "output": cfg.output,
        "seen": totals["restored"] + sum(passed.values()) + sum(skipped.values()) + failed,
        "restored": totals["restored"], "passed_through": sum(passed.values()), "passed_through_by_reason": passed,
        "skipped": sum(skipped.values()), "skipped_by_reason": skipped, "failed": failed,
        # Restored files whose output lacks some of the input's metadata (each, and why: _metadata.jsonl).
        "metadata_not_kept": totals.get("metadata_not_kept", 0),
        "megapixels": round(megapixels, 6), "seconds": round(seconds, 2),
        "megapixels_per_second": round(rate, 6), "images_per_second": round(totals["restored"] / seconds, 2),
        **steady_rate(networks.get("first_restored"), started, ended, megapixels),
        "nodes": len(totals["nodes"]), "precision": networks["precision"], "runtime": networks["runtime"],
        # The user's units for cost: the job's rate per GPU it restored on, or per CPU of the cluster.
        "restoring_actors": networks["actors"], "gpus": networks["gpus"], "cpus": networks["cpus"],
        "megapixels_per_second_per_gpu": round(rate / networks["gpus"], 6) if networks["gpus"] else None,
        "megapixels_per_second_per_cpu": round(rate / networks["cpus"], 6) if networks["cpus"] else None,
        # CPU seconds of the restoring actors by step (decode, restore, encode, write): which one limits.
        "actor_cpu_seconds": networks.get("actor_cpu") or {},
        "driver_peak_rss_mb": round(driver_peak_rss_mb(), 1), "model": cfg.model or "shipped", "model_sha256": model_digests(files),
        "carray_version": __version__, "config": asdict(cfg),
    }


def steady_rate(first_restored, started: float, ended: float, megapixels: float) -> dict:
    """The start-up (seconds to the first restored pack) and the rate after it: what a longer run
    of the same kind of images would keep up (None when everything came in the first pack)."""
    if not first_restored:
        return {"seconds_to_first_output": None, "steady_megapixels_per_second": None}
    at, first_megapixels = first_restored
    after = ended - at
    rate = (megapixels - first_megapixels) / after if after > 0 and megapixels > first_megapixels else None
    return {"seconds_to_first_output": round(at - started, 2), "steady_megapixels_per_second": None if rate is None else round(rate, 6)}


def _per_device(summary: dict) -> str:
    if summary.get("megapixels_per_second_per_gpu"):
        return f" ({summary['megapixels_per_second_per_gpu']:.2f} per GPU, {summary['gpus']:g} GPUs)"
    if summary.get("megapixels_per_second_per_cpu"):
        return f" ({summary['megapixels_per_second_per_cpu']:.3f} per CPU core, {summary['cpus']:g} CPUs)"
    return ""


def format_summary(summary: dict) -> str:
    lines = [
        f"infer: {summary['restored']} restored, {summary['passed_through']} passed through unchanged, "
        f"{summary['skipped']} skipped, {summary['failed']} failed (see {FAILURES_FILE}) of {summary['seen']} seen | "
        f"{summary['megapixels']:.1f} MP in {summary['seconds']:.1f} s, {summary['megapixels_per_second']:.2f} MP/s{_per_device(summary)}",
        f"output: {summary['output']}",
    ]
    if summary.get("shards"):
        shards = summary["shards"]
        lines.insert(1, f"shards: {shards['shards_written']} written, {shards['shards_skipped']} skipped (output exists), "
                        f"{shards['shards_failed']} with an error, of {shards['shards']}; {summary['samples']} samples, {summary['images']} images")
    lines += [f"passed through: {n} — {reason}" for reason, n in sorted(summary["passed_through_by_reason"].items())]
    lines += [f"skipped: {n} — {reason}" for reason, n in sorted(summary["skipped_by_reason"].items())]
    if summary.get("metadata_not_kept"):
        lines.append(f"metadata: {summary['metadata_not_kept']} restored file(s) could not keep all of their input's metadata (why: {METADATA_FILE})")
    return "\n".join(lines)
