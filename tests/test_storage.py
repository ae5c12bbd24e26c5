"""Storage on the real S3 server: writes are all-or-nothing, buckets are never created by accident;
and on a local disk, outputs written once leave the page cache."""
import time

import pyarrow.fs as pafs
import pytest

from carray import storage
from carray.cli import main as cli_main
from carray.storage import S3Options

pytestmark = pytest.mark.s3


def test_an_interrupted_s3_write_publishes_nothing(bucket):
    options, name = bucket
    fs = options.filesystem()
    with pytest.raises(RuntimeError, match="interrupted"):
        with storage.atomic_output(fs, f"{name}/out/part.bin") as stream:
            stream.write(b"a" * (6 * 2**20))  # more than one multipart part
            raise RuntimeError("interrupted mid-write")
    assert fs.get_file_info(f"{name}/out/part.bin").type == pafs.FileType.NotFound
    storage.write_bytes_atomic(fs, f"{name}/out/whole.bin", b"b" * 10)
    assert fs.open_input_stream(f"{name}/out/whole.bin").read() == b"b" * 10


def test_an_output_goes_up_from_its_own_bytes_in_parts_and_arrives_whole(bucket, monkeypatch):
    """write_bytes_atomic to a bucket: the bytes in one write, not gathered in a buffer first (a copy
    of every output: bench/infer.py --cases bucket-writes), in 10 MB parts; the object is the bytes."""
    import os

    import pyarrow as pa

    options, name = bucket
    fs = options.filesystem()
    data = os.urandom(23 << 20)

    def gathered(*args, **kwargs):
        raise AssertionError("the output was gathered in memory before its upload")

    monkeypatch.setattr(pa, "BufferOutputStream", gathered)
    storage.write_bytes_atomic(fs, f"{name}/out/large.jpg", data)
    assert fs.open_input_stream(f"{name}/out/large.jpg").read() == data


def test_a_spilled_output_goes_up_whole_from_its_file_and_an_interrupted_one_not_at_all(bucket, monkeypatch):
    """atomic_output(spill=True), the shard job's: written piece by piece into a local file, uploaded
    in one write from it mapped into memory (three parts here: nothing of ours runs between them);
    a body that raises publishes nothing."""
    import os

    options, name = bucket
    fs = options.filesystem()
    pieces = [os.urandom(1 << 20) for _ in range(23)]
    writes, put_whole = [], storage._put_whole
    monkeypatch.setattr(storage, "_put_whole", lambda fs, path, data: (writes.append(len(data)), put_whole(fs, path, data)))
    with storage.atomic_output(fs, f"{name}/out/shard.tar", spill=True) as target:
        for piece in pieces:
            target.write(piece)
    assert fs.open_input_stream(f"{name}/out/shard.tar").read() == b"".join(pieces)
    assert writes == [23 << 20], "the spilled file went up in more than one write"
    with pytest.raises(RuntimeError, match="interrupted"):
        with storage.atomic_output(fs, f"{name}/out/cut.tar", spill=True) as target:
            target.write(pieces[0])
            raise RuntimeError("interrupted mid-shard")
    assert fs.get_file_info(f"{name}/out/cut.tar").type == pafs.FileType.NotFound


def requests_made(server, action) -> dict[str, int]:
    """The S3 requests, by type, the server served while `action` ran. The server counts a request
    after answering it: its counters are read until they hold still (a count one short was seen)."""
    before = server.requests()
    action()
    after, deadline = server.requests(), time.time() + 5
    while time.time() < deadline:
        time.sleep(0.3)
        again = server.requests()
        if again == after:
            break
        after = again
    return {key: count - before.get(key, 0) for key, count in after.items() if count != before.get(key, 0)}


def test_an_output_under_10_mb_is_one_put_request(s3_server, bucket):
    """What a bucket bills per output: one PUT, not a multipart upload's POST, PUT, POST."""
    options, name = bucket
    fs = options.filesystem()
    assert requests_made(s3_server, lambda: storage.write_bytes_atomic(fs, f"{name}/photo.jpg", b"j" * 300_000)) == {"PUT": 1}
    assert fs.open_input_stream(f"{name}/photo.jpg").read() == b"j" * 300_000


def test_whether_outputs_exist_costs_one_head_each_and_no_listing(s3_server, bucket, tmp_path):
    """The planning's "already done?" on a bucket: one HEAD per name (get_file_info adds a LIST for
    every missing key, to see whether it is a folder; LISTs bill 12.5x a HEAD)."""
    options, name = bucket
    fs = options.filesystem()
    def write() -> None:
        storage.write_bytes_atomic(fs, f"{name}/d/a.jpg", b"a")
        storage.write_bytes_atomic(fs, f"{name}/d/empty.jpg", b"")  # what a failed upload's close can leave: to be redone

    requests_made(s3_server, write)  # (counted until the server's counters hold still)
    paths = [f"{name}/d/a.jpg", f"{name}/d/missing.jpg", f"{name}/d", f"{name}/d/empty.jpg"]
    found = []
    assert requests_made(s3_server, lambda: found.extend(storage.files_exist(fs, paths))) == {"GET": 4}
    assert found == [True, False, False, False]
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.jpg").write_bytes(b"a")
    (tmp_path / "d" / "empty.jpg").write_bytes(b"")
    local = pafs.LocalFileSystem()
    assert storage.files_exist(local, [str(tmp_path / "d" / n) for n in ("a.jpg", "missing.jpg", "", "empty.jpg")]) == [True, False, False, False]


def test_a_missing_output_bucket_is_an_error_unless_asked_to_create_it(s3_server, tmp_path, monkeypatch, capsys):
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(b"")  # never read: the bucket check comes first
    args = ["infer", "--input", str(tmp_path / "in"), "--output", "s3://no-such-bucket-x1/out"]
    assert cli_main(args) == 2
    assert "bucket 'no-such-bucket-x1' does not exist" in capsys.readouterr().err
    admin = s3_server.filesystem()
    assert admin.get_file_info("no-such-bucket-x1").type == pafs.FileType.NotFound, "no bucket was made"
    fs, path = storage.resolve("s3://made-on-request-x1/out", S3Options(create_bucket=True))
    storage.make_output_root(fs, path, "s3://made-on-request-x1/out", create_bucket=True)
    assert admin.get_file_info("made-on-request-x1").type == pafs.FileType.Directory


def test_session_tokens_travel_with_the_keys(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIA-test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "token-from-sso")
    fs = S3Options(endpoint_url="http://127.0.0.1:9").filesystem()
    # The filesystem pickles to every worker; its credentials must include the session token.
    import pickle

    assert b"token-from-sso" in pickle.dumps(fs)


def resident_bytes(path) -> int:
    """How much of the file is in the page cache, as util-linux's fincore reports it."""
    import subprocess

    return int(subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)], capture_output=True, text=True,
                              check=True).stdout)


def test_outputs_written_once_leave_the_page_cache_and_other_files_stay(monkeypatch):
    """read_again=False (the jobs' outputs): a file's pages leave the page cache `keep` such files
    later, once written back; a file written as usual stays cached. Each reads back whole."""
    import os
    import shutil
    import tempfile
    from pathlib import Path

    folder = Path(tempfile.mkdtemp(dir="/var/tmp"))  # a disk: /tmp may be a tmpfs (CI mounts one), whose pages never leave
    try:
        pages = storage.WrittenPages(keep=2)
        monkeypatch.setattr(storage, "WRITTEN_PAGES", pages)
        fs, data = pafs.LocalFileSystem(), os.urandom(1 << 20)
        storage.write_bytes_atomic(fs, f"{folder}/kept.bin", data)
        storage.write_bytes_atomic(fs, f"{folder}/out0.bin", data, read_again=False)
        os.sync()  # out0 written back (its writeback started as it was written); no dirty page stays cached
        assert resident_bytes(folder / "out0.bin") == resident_bytes(folder / "kept.bin") == len(data)
        for i in (1, 2):
            storage.write_bytes_atomic(fs, f"{folder}/out{i}.bin", data, read_again=False)
        assert resident_bytes(folder / "out0.bin") == 0, "dropped two outputs later"
        assert resident_bytes(folder / "out2.bin") == len(data), "the last `keep` outputs are not dropped yet"
        assert resident_bytes(folder / "kept.bin") == len(data), "a file that may be read again stays cached"
        assert sorted(p.name for p in folder.iterdir()) == ["kept.bin", "out0.bin", "out1.bin", "out2.bin"]
        assert all(storage.read_bytes(fs, str(path)) == data for path in folder.iterdir())
    finally:
        shutil.rmtree(folder, ignore_errors=True)
