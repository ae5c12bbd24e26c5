"""Shared fixtures: one real local Ray per session, one real S3 server (SeaweedFS) per session.

Tests run with their own HOME and Ray temp dir, so the auth token and the `ray_current_cluster`
record that `ray.init()` writes never leak into a developer's later `ray start`.
"""
from __future__ import annotations

import os
import shutil
import tempfile

import pytest

from support.images import DATA, png_bytes, smooth_image  # noqa: F401  (shared helpers live in support/)
from support.s3 import SeaweedS3

# Before Ray is imported anywhere: a private HOME for the token file Ray writes, and a private
# RAY_TMPDIR for the `ray_current_cluster` record that ray.cluster_utils.Cluster writes into
# $RAY_TMPDIR/ray/ (default /tmp/ray/, which does not exist on a machine where Ray never ran:
# the multi-node tests failed there with FileNotFoundError).
_SESSION_HOME = tempfile.mkdtemp(prefix="carray-home-")
os.environ["HOME"] = _SESSION_HOME
_RAY_TMPDIR = tempfile.mkdtemp(prefix="crt-", dir="/tmp")  # short: Ray's socket paths live below it
os.makedirs(os.path.join(_RAY_TMPDIR, "ray"), exist_ok=True)
os.environ["RAY_TMPDIR"] = _RAY_TMPDIR
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# Ray Train's controller looks at its workers every 2 s by default, so a run's start, its end and a
# dead worker are each seen up to 2 s late; the suite runs a dozen short trainings (7 s less on three of them).
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
os.environ.pop("RAY_ADDRESS", None)


def pytest_unconfigure(config):
    """After every fixture (the session's Ray included) has ended: the private HOME and RAY_TMPDIR go too."""
    for folder in (_SESSION_HOME, _RAY_TMPDIR):
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def ray_session():
    """A real local Ray with 2 CPUs, started once, private temp dir (short path: socket limits)."""
    import ray

    temp_dir = tempfile.mkdtemp(prefix="cr-", dir="/tmp")
    # With the dashboard (127.0.0.1): Ray Train's controller polls the state API it serves.
    ray.init(num_cpus=2, dashboard_host="127.0.0.1", _temp_dir=temp_dir, logging_level="WARNING")
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3-compatible server on 127.0.0.1 with an access key and secret; see support/s3.py."""
    server = SeaweedS3(tmp_path_factory.mktemp("seaweed"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def bucket(s3_server, request):
    """A fresh, empty bucket for one test: (S3Options, bucket name)."""
    name = "t" + format(abs(hash(request.node.nodeid)) % 10**10, "010d")
    s3_server.filesystem().create_dir(name)
    return s3_server.options(), name


@pytest.fixture
def image_folder(tmp_path):
    """A few clean gray images (two nested) and a colour one, each 96x80."""
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    for i in range(4):
        (root / f"img{i}.png").write_bytes(png_bytes(smooth_image(80, 96, seed=i)))
    (root / "sub" / "nested.png").write_bytes(png_bytes(smooth_image(80, 96, seed=9)))
    (root / "sub" / "colour.png").write_bytes(png_bytes(smooth_image(80, 96, color=True, seed=5)))
    return root
