"""Where a job's CPU time goes, by stage: every process of this machine is sampled from /proc while
the job runs (user + system CPU time), and each sample's CPU is charged to what the process was
doing then, from its title (Ray names a worker after the task or actor it runs: `ray::MapBatches(decode_packs)`).

Ray Data fuses stages into one task (`ray::ReadX->MapBatches(plan_keys)`), so a stage here is what
one kind of Ray process ran: the numbers say which process paid, and the bench's in-process codec
timings (bench/infer.py case_ceiling) split a stage into its codec work and the rest.
"""
from __future__ import annotations

import os
import threading
import time
from collections import defaultdict

TICK = os.sysconf("SC_CLK_TCK")

# (label, what in a process's title or command line marks it), first match wins
STAGES = (
    ("restoring actor (decode + restore + encode + write)", ("MapWorker(MapBatches(Restorer))->", "MapBatches(Restorer)->")),
    ("restoring actor", ("Restorer",)),
    ("shard actor", ("ShardRestorer",)),
    ("read + header + decode (tasks)", ("decode_packs", "read_packs")),
    ("encode + write (tasks)", ("write_pack",)),
    ("listing + planning (tasks)", ("list_keys", "plan_keys", "read_key_files", "ReadRange", "FromItems")),
    ("idle Ray workers (between tasks)", ("ray::IDLE",)),
    ("Ray's own processes (raylet, GCS, agents)", ("raylet", "gcs_server", "ray::", "dashboard", "log_monitor", "autoscaler", "ray/_private")),
)


def stage_of(title: str, driver_pid: int, pid: int) -> str:
    if pid == driver_pid:
        return "driver (Ray Data's executor, progress)"
    for label, marks in STAGES:
        if any(mark in title for mark in marks):
            return label
    return "other processes"


def _read(pid: str) -> tuple[str, int] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            title = f.read(300).replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None
    return title, int(fields[11]) + int(fields[12])  # utime + stime, in clock ticks


class CpuByStage:
    """`with CpuByStage() as cpu: ...` -> cpu.seconds: {stage: CPU seconds} while in the block.
    A process's CPU between two samples goes to the title it had at the later one, unless that one
    is idle (`ray::IDLE`): then to the task it ran at the earlier one (a task that ends between two
    samples did that work). 0.1 s samples keep the smear small."""

    def __init__(self, interval: float = 0.1):
        self.interval, self.driver = interval, os.getpid()

    def __enter__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self.timeline: list[tuple[float, dict[str, float]]] = []  # (wall time, seconds so far) at each sample
        self.last = self._sample()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> dict[int, tuple[str, int]]:
        seen = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit() and (found := _read(entry)):
                seen[int(entry)] = found
        return seen

    def _charge(self) -> None:
        now = self._sample()
        for pid, (title, ticks) in now.items():
            earlier, before = self.last.get(pid, (title, 0))
            if ticks > before:
                charged = earlier if "ray::IDLE" in title else title
                self.seconds[stage_of(charged, self.driver, pid)] += (ticks - before) / TICK
        self.last = now
        self.timeline.append((time.time(), dict(self.seconds)))

    def between(self, start: float, end: float) -> dict[str, float]:
        """CPU seconds by stage from wall time `start` to `end` (the samples at or before each; the
        sampler's own CPU taken from the driver's in proportion)."""
        def at(t: float) -> dict[str, float]:
            return next((seconds for when, seconds in reversed(self.timeline) if when <= t), {})

        first, last = at(start), at(end)
        spent = {stage: last.get(stage, 0.0) - first.get(stage, 0.0) for stage in last}
        driver = stage_of("", self.driver, self.driver)
        span = self.timeline[-1][0] - self.timeline[0][0] if len(self.timeline) > 1 else 0.0
        if driver in spent and span:
            spent[driver] = max(0.0, spent[driver] - self.own * (end - start) / span)
        return spent

    def _run(self) -> None:
        started = time.thread_time()
        while not self.stop.wait(self.interval):
            self._charge()
        self.own = time.thread_time() - started

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self._charge()
        driver = stage_of("", self.driver, self.driver)
        self.seconds[driver] = max(0.0, self.seconds[driver] - self.own)  # the sampling is the bench's, not the job's
