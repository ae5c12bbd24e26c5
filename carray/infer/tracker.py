"""The job's shared state: attempts per image, tiles per large image, progress counts (one small actor)."""
from __future__ import annotations

import time
import uuid

import ray


@ray.remote(num_cpus=0, max_restarts=-1)
class JobTracker:
    """Counts restoring attempts per image or tile, the restored tiles of each large image (both
    only while in flight, so their size is bounded by the pool, not the collection), and the
    write tasks' running totals for the progress line."""

    def __init__(self):
        self.attempts: dict[str, int] = {}
        self.tiles: dict[str, set] = {}
        self.failed_images: set = set()
        self.totals: dict[str, float] = {}
        self.listings: dict[str, tuple[int, dict]] = {}  # listing item -> (keys handed on, {skip reason: count})
        self.first_output: tuple[float, float] | None = None  # (time.time(), its megapixels) of the first restored pack

    def begin(self, keys: list[str]) -> list[int]:
        """Count a start of each key (a pack, an image or a tile); returns the counts."""
        for key in keys:
            self.attempts[key] = self.attempts.get(key, 0) + 1
        return [self.attempts[key] for key in keys]

    def end(self, keys: list[str]) -> None:
        for key in keys:
            self.attempts.pop(key, None)

    def tiles_done(self, tiles: list[tuple[str, int, int]]) -> list[bool]:
        """The stored tiles of a pack, each (path, index, total), in one call: for each, True when it
        completes its image (every tile of `path` stored; again True for a retried last write, until
        :meth:`stitched`), True once per image in a call."""
        completed, answers = set(), []
        for path, index, total in tiles:
            done = self.tiles.setdefault(path, set())
            done.add(index)
            answers.append(len(done) == total and path not in self.failed_images and path not in completed)
            if answers[-1]:
                completed.add(path)
        return answers

    def stitched(self, path: str) -> None:
        self.tiles.pop(path, None)

    def tile_failed(self, path: str) -> bool:
        """True the first time one of `path`'s tiles fails: the image fails once."""
        if path in self.failed_images:
            return False
        self.failed_images.add(path)
        return True

    def add(self, counts: dict) -> None:
        if self.first_output is None and counts.get("megapixels"):
            self.first_output = (time.time(), float(counts["megapixels"]))
        for key, value in counts.items():
            if isinstance(value, (int, float)):
                self.totals[key] = self.totals.get(key, 0) + value

    def listed(self, item: str, keys: int, skipped: dict) -> None:
        """A listing task's counts so far for its item: set, not added, so a retried task counts once."""
        self.listings[item] = (keys, dict(skipped))

    def listing_skips(self) -> dict:
        """{reason: count} of the keys the listing tasks did not hand on (hidden, not an image)."""
        merged: dict[str, int] = {}
        for _, skipped in self.listings.values():
            for reason, n in skipped.items():
                merged[reason] = merged.get(reason, 0) + n
        return merged

    def first_restored(self) -> tuple[float, float] | None:
        """(when, megapixels) of the first pack written with restored pixels: the job's start-up ends there."""
        return self.first_output

    def actor_cpu(self) -> dict:
        """{step: CPU seconds} the restoring actors spent (carray.infer.restorer.CPU_STEPS), and their start-up (STARTUP)."""
        return {key[4:]: round(value, 4) for key, value in self.totals.items() if key.startswith("cpu_")}

    def snapshot(self) -> dict:
        listed = sum(keys + sum(skipped.values()) for keys, skipped in self.listings.values())
        return {**self.totals, "listed": listed, "skipped": self.totals.get("skipped", 0) + sum(self.listing_skips().values())}


def ask(call, attempts: int = 30, wait_s: float = 1.0):
    """`ray.get(call())` for a query of the tracker's state, asked again while the tracker is
    restarting: a node lost near the end of a job (spot, autoscaler) made the job's last questions
    fail with ActorUnavailableError after every image was written (seen in the node-lost test)."""
    for attempt in range(attempts):
        try:
            return ray.get(call())
        except ray.exceptions.ActorUnavailableError:
            if attempt == attempts - 1:
                raise
            time.sleep(wait_s)


def start_tracker():
    """A tracker for one job, named (carray-tracker-…, namespace carray) so an operator finds it in
    the dashboard. Kill it when the job ends (ray.kill): it lives as long as its driver otherwise.

    It lives on the driver's node: a tracker on a worker node that goes away (spot, autoscaler) is
    restarted, but the actors' calls made meanwhile fail, and with them the packs they were restoring."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=True)
    return JobTracker.options(name=f"carray-tracker-{uuid.uuid4().hex[:12]}", namespace="carray", scheduling_strategy=here).remote()
