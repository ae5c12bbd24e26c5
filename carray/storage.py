"""Storage: a local folder or any pyarrow filesystem URI (``s3://bucket/prefix``). No Ray here.

Filesystems are built once on the driver and handed to Ray as objects: a pyarrow
``S3FileSystem`` pickles with its endpoint and credentials, so every worker reaches the same
bucket, not only the driver (environment variables set in the driver do not reach workers on a
``ray start`` cluster).
"""
from __future__ import annotations

import json
import os
import posixpath
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterable, Iterator, Optional

import pyarrow.fs as pafs

from .errors import JobError


#: The failure list every job writes beside its outputs: one JSON line per input that failed.
FAILURES_FILE = "_failures.jsonl"


class StorageError(JobError):
    """A location that does not exist or cannot be reached; the message names it."""


@dataclass(frozen=True)
class S3Options:
    """How to reach S3. Unset fields fall back to the standard AWS environment variables
    (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION);
    without keys, pyarrow's own AWS credential chain runs on each node (AWS_PROFILE and ~/.aws,
    web identity as IRSA sets it, the instance role). Keys found here are carried inside the
    pickled filesystem to every Ray worker; so is a session token (SSO, assumed roles), which
    expires: for runs longer than its lifetime rely on roles on every node instead.

    create_bucket: whether a missing bucket may be created (--create-bucket); never by default,
    so a typo in an output location is an error, not a new bucket."""

    endpoint_url: Optional[str] = None
    access_key: Optional[str] = None
    secret_key: Optional[str] = None
    session_token: Optional[str] = None
    region: Optional[str] = None
    create_bucket: bool = False

    def filesystem(self, probe: bool = False) -> pafs.S3FileSystem:
        """The filesystem the jobs use (ten attempts per request: stores restart, networks drop), or
        with `probe` one for a first look that answers within seconds when nothing is there."""
        endpoint = self.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        access = self.access_key or os.environ.get("AWS_ACCESS_KEY_ID")
        secret = self.secret_key or os.environ.get("AWS_SECRET_ACCESS_KEY")
        token = self.session_token or (None if self.access_key else os.environ.get("AWS_SESSION_TOKEN"))
        region = self.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        kwargs = {"allow_bucket_creation": self.create_bucket, "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=2 if probe else 10),
                  # An output stream opened at its first write, not at open: an object under 10 MB (a
                  # restored photo, a Parquet part) is then one PutObject where pyarrow otherwise makes a
                  # multipart upload of it (create, one part, complete): 3 requests, and 3 round trips.
                  "allow_delayed_open": True}
        if probe:
            kwargs.update(connect_timeout=3, request_timeout=10)
        if endpoint:
            scheme, _, host = endpoint.partition("://")
            kwargs.update(endpoint_override=host if host else endpoint, scheme=scheme if host else "https")
        if access and secret:
            kwargs.update(access_key=access, secret_key=secret)
            if token:
                kwargs["session_token"] = token
        if region:
            kwargs["region"] = region
        return pafs.S3FileSystem(**kwargs)


def is_uri(location: str) -> bool:
    return "://" in location


def resolve(location: str, s3: Optional[S3Options] = None) -> tuple[pafs.FileSystem, str]:
    """'s3://bucket/prefix' or a local path -> (filesystem, path inside it, without a trailing /)."""
    if location.startswith("s3://"):
        return (s3 or S3Options()).filesystem(), location[len("s3://") :].rstrip("/")
    if is_uri(location) and not location.startswith("file://"):
        fs, path = pafs.FileSystem.from_uri(location)
        return fs, path.rstrip("/")
    path = location[len("file://") :] if location.startswith("file://") else location
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(path))


def absolute(location: Optional[str]) -> Optional[str]:
    """A local path made absolute (workers run in other folders); URIs and None unchanged."""
    if not location or is_uri(location):
        return location
    return os.path.abspath(os.path.expanduser(location))


def join(*parts: str) -> str:
    """Join path parts; pyarrow paths use '/' on every filesystem."""
    return posixpath.join(*parts)


def exists(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def files_exist(fs: pafs.FileSystem, paths: list[str]) -> list[bool]:
    """Whether each path is a file with something in it. On an object store one HEAD request per
    path: get_file_info asks about a missing key twice (HEAD, then a LIST to see whether it is a
    folder), and a LIST bills 12.5x a HEAD. A folder is not a file, and an empty one does not count:
    no image is empty, and an upload that fails to start (pyarrow's CreateMultipartUpload, for an
    object above 10 MB) can leave one behind when its stream is closed (it then PUTs what it holds:
    nothing), which a re-run must redo rather than skip."""
    if isinstance(fs, pafs.LocalFileSystem):
        return [info.type == pafs.FileType.File and info.size > 0 for info in fs.get_file_info(paths)]
    return [_is_object(fs, path) for path in paths]


def _is_object(fs: pafs.FileSystem, path: str) -> bool:
    try:
        with fs.open_input_file(path) as f:  # a HEAD: opening reads the size, not the bytes
            return f.size() > 0
    except (FileNotFoundError, IsADirectoryError):  # a missing key; a folder (where a store has folders)
        return False


def list_files(fs: pafs.FileSystem, root: str, extensions: Iterable[str]) -> list[str]:
    """Paths of the files under `root` (recursively) whose extension is in `extensions`,
    relative to `root`, sorted. Names starting with '.' or '_' (ours and hidden ones) are skipped.

    Raises StorageError when `root` does not exist.
    """
    return sorted(list_file_sizes(fs, root, extensions))


def list_file_sizes(fs: pafs.FileSystem, root: str, extensions: Iterable[str]) -> dict[str, int]:
    """As list_files, with each file's size in bytes (the listing has it at no extra cost)."""
    wanted = tuple(e.lower() for e in extensions)
    return {
        rel: size for rel, size in walk_files(fs, root)
        if rel.lower().endswith(wanted) and not any(part.startswith((".", "_")) for part in rel.split("/"))
    }


def read_bytes(fs: pafs.FileSystem, path: str) -> bytes:
    with fs.open_input_stream(path) as stream:
        return stream.read()


@contextmanager
def atomic_output(fs: pafs.FileSystem, path: str, spill: bool = False) -> Iterator:
    """A writable stream for `path` that no reader ever sees half-written, and that leaves nothing
    at `path` when the body raises.

    Local: a hidden temporary beside the target, renamed over it on success (atomic on POSIX) and
    removed on failure. Object stores: the bytes are gathered in memory and uploaded only once the
    body has finished, in one write (:func:`_put_whole`): pyarrow's S3 stream completes a multipart
    upload on close() even when an exception interrupted the writing, which would publish a
    truncated object. `spill`: gathered in a local temporary file instead (a shard of gigabytes),
    uploaded in one write from the file mapped into memory: no read of ours between two parts that
    could fail half-way, and no copy of each piece.
    """
    if not isinstance(fs, pafs.LocalFileSystem):
        if spill:
            import mmap
            import tempfile

            with tempfile.TemporaryFile() as local:
                yield local  # an exception here propagates before anything was sent
                local.flush()
                size = local.seek(0, os.SEEK_END)
                # The mapping has its own descriptor, and goes when the upload lets go of it.
                _put_whole(fs, path, mmap.mmap(local.fileno(), size, access=mmap.ACCESS_READ) if size else b"")
            return
        import pyarrow as pa

        buffer = pa.BufferOutputStream()
        yield buffer  # an exception here propagates before anything was sent
        _put_whole(fs, path, buffer.getvalue())
        return
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as stream:
            yield stream
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _put_whole(fs: pafs.FileSystem, path: str, data) -> None:
    """Complete bytes to an object store in one write: the object is published once the upload
    completes, which pyarrow's stream does only when every part has been stored (a part that fails
    leaves nothing), and no code of ours runs between the parts to interrupt it half-way. (An upload
    that fails to start can leave an empty object as its stream closes: files_exist does not count it.)"""
    with fs.open_output_stream(path) as stream:
        stream.write(data)


def write_bytes_atomic(fs: pafs.FileSystem, path: str, data: bytes, *, read_again: bool = True) -> None:
    """`data` as the whole of `path`, never seen half-written: locally through :func:`atomic_output`;
    to an object store in one write of the bytes as they are (:func:`_put_whole`). Gathering them
    first, as atomic_output must for a body that writes piece by piece, copied every output once
    more: 2.5-3 ms of CPU per 5 MB output, a 12 MP camera photo's q98 JPEG, 5.5 per 15 MB
    (bench/infer.py --cases bucket-writes; docs/benchmarks.md, session 21).

    `read_again=False`: a file this process will not read back (a job's output): locally its pages
    leave the page cache once written (:data:`WRITTEN_PAGES`)."""
    if isinstance(fs, pafs.LocalFileSystem):
        with atomic_output(fs, path) as stream:
            stream.write(data)
            if not read_again:
                WRITTEN_PAGES.start_writeback(stream)
        if not read_again:
            WRITTEN_PAGES.release_later(path)
        return
    _put_whole(fs, path, data)


class WrittenPages:
    """The page cache of local files written once and not read again, given back to the kernel.

    A job writes each output once and never reads it; the kernel keeps its pages cached (dirty, then
    written back) until memory runs short, so every output takes memory new to the process's node: 5 MB
    for a 12 MP photo at q98, 1.4 TB an hour at 1000 MP/s. Each file's writeback is started as it is
    written (Linux's sync_file_range, which does not wait) and its pages are dropped `keep` files
    later (posix_fadvise DONTNEED, which leaves pages still being written), so the next outputs
    reuse that memory; PostgreSQL's backend_flush_after and RocksDB's bytes_per_sync bound their
    dirty data the same way. On this project's dev VM, where memory the kernel frees goes back to the
    host and costs a host fault on its next use, a kept 5 MB output cost 14-27 ms of CPU to write, 2-4
    this way (bench/writes.py; docs/benchmarks.md, session 23). Where either call is missing (not
    Linux), a no-op."""

    SYNC_FILE_RANGE_WRITE = 2

    def __init__(self, keep: int = 4):
        import collections
        import threading

        self.keep, self.paths, self.lock = keep, collections.deque(), threading.Lock()
        self.sync_file_range = _libc_sync_file_range()
        self.fadvise = getattr(os, "posix_fadvise", None)

    def start_writeback(self, stream) -> None:
        if self.sync_file_range is None:
            return
        stream.flush()
        self.sync_file_range(stream.fileno(), 0, 0, self.SYNC_FILE_RANGE_WRITE)  # a failure only leaves the pages cached

    def release_later(self, path: str) -> None:
        if self.fadvise is None:
            return
        with self.lock:  # restoring actors may write from several threads
            self.paths.append(path)
            due = [self.paths.popleft() for _ in range(len(self.paths) - self.keep)]
        for old in due:
            self.release(old)

    def release(self, path: str) -> None:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:  # gone already (a user's clean-up): nothing cached either
            return
        try:
            self.fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        except OSError:
            pass
        finally:
            os.close(fd)


def _libc_sync_file_range():
    """sync_file_range(fd, offset, nbytes, flags) from the C library, or None (not Linux); Python's os has none."""
    import ctypes

    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint)
    return function


#: This process's written-once files (restored and passed-through outputs).
WRITTEN_PAGES = WrittenPages()


def remove_stale_temporaries(fs: pafs.FileSystem, root: str) -> int:
    """Delete the hidden temporaries that :func:`atomic_output` leaves when its process is killed
    mid-write (local folders only; object stores never show an unfinished upload). Returns how many."""
    if not isinstance(fs, pafs.LocalFileSystem) or not os.path.isdir(root):
        return 0
    removed = 0
    for folder, _, files in os.walk(root):
        for name in files:
            if name.startswith(".") and name.endswith(".tmp"):
                os.unlink(os.path.join(folder, name))
                removed += 1
    return removed


def write_json(fs: pafs.FileSystem, path: str, obj) -> None:
    write_bytes_atomic(fs, path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def write_jsonl(fs: pafs.FileSystem, path: str, rows: Iterable[dict]) -> None:
    write_bytes_atomic(fs, path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode())


def make_dirs(fs: pafs.FileSystem, path: str) -> None:
    fs.create_dir(path, recursive=True)


def make_output_root(fs: pafs.FileSystem, path: str, location: str, create_bucket: bool = False) -> None:
    """Create a job's output folder or prefix. On an object store the bucket must exist already,
    unless `create_bucket` (--create-bucket): checked before any work starts."""
    if isinstance(fs, pafs.S3FileSystem):
        bucket = path.split("/", 1)[0]
        try:
            found = fs.get_file_info(bucket).type != pafs.FileType.NotFound
        except OSError as exc:
            raise StorageError(f"{location}: cannot reach bucket '{bucket}' ({exc})") from None
        if not found:
            if not create_bucket:
                raise StorageError(f"{location}: bucket '{bucket}' does not exist (check the name, or pass --create-bucket to create it)")
            fs.create_dir(bucket)
        if "/" not in path:
            return
    fs.create_dir(path, recursive=True)


def delete_file_if_exists(fs: pafs.FileSystem, path: str) -> None:
    try:
        fs.delete_file(path)
    except FileNotFoundError:
        pass
    except OSError:
        if exists(fs, path):
            raise


def delete_dir_if_exists(fs: pafs.FileSystem, path: str) -> None:
    if exists(fs, path):
        try:
            fs.delete_dir(path)
        except FileNotFoundError:  # object stores: a prefix can look like a folder and hold nothing
            pass


def walk_files(fs: pafs.FileSystem, root: str) -> Iterator[tuple[str, int]]:
    """(path relative to `root`, size) of every file under `root`, one folder level at a time:
    memory holds one folder's entries, not the whole tree (S3 lists a prefix with a delimiter).

    Raises StorageError when `root` does not exist or is a file."""
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise StorageError(f"{root}: does not exist")
    if info.type == pafs.FileType.File:
        raise StorageError(f"{root}: is a file; give the folder or prefix that holds the images")
    base = root.replace(os.sep, "/").rstrip("/")
    pending = [root]
    while pending:
        folder = pending.pop()
        entries = fs.get_file_info(pafs.FileSelector(folder, recursive=False))
        for item in sorted(entries, key=lambda e: e.path, reverse=True):
            if item.type == pafs.FileType.Directory:
                pending.append(item.path)
            elif item.type == pafs.FileType.File:
                yield posixpath.relpath(item.path.replace(os.sep, "/"), base), item.size or 0
