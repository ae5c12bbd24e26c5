"""Where a job reads and writes: the input and output locations, travelling together, and the
paths of the work folder inside the output. No Ray here."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pyarrow.fs as pafs

from .. import storage

FAILURES_FILE = storage.FAILURES_FILE
SUMMARY_FILE = "_summary.json"
#: One line per restored file whose output could not keep all of its input's metadata, and why.
METADATA_FILE = "_metadata.jsonl"
#: Inside the output: the failure and metadata parts and the waiting tiles of this run.
WORK_DIR = "_carray"


@dataclass(frozen=True)
class Locations:
    """The input and output of a job: a pyarrow filesystem and a root path each. Picklable, so one
    object reaches every task and actor."""

    src_fs: pafs.FileSystem
    src_root: str
    dst_fs: pafs.FileSystem
    dst_root: str

    @classmethod
    def resolve(cls, source: str, output: str, s3) -> "Locations":
        """From the user's --input and --output. Raises StorageError when the output lies inside
        the input (a re-run would read its own outputs)."""
        src_fs, src_root = storage.resolve(source, s3)
        dst_fs, dst_root = storage.resolve(output, s3)
        same_kind = storage.is_uri(source) == storage.is_uri(output)
        if same_kind and (dst_root == src_root or dst_root.startswith(src_root.rstrip("/") + "/")):
            raise storage.StorageError(f"{output} is inside {source}: a re-run would read its own outputs; choose another output")
        return cls(src_fs, src_root, dst_fs, dst_root)

    def input_path(self, relative: str) -> str:
        return storage.join(self.src_root, relative)

    def output_path(self, relative: str) -> str:
        return storage.join(self.dst_root, relative)

    def work_path(self, *parts: str) -> str:
        return storage.join(self.dst_root, WORK_DIR, *parts)

    def tiles_folder(self, path: str) -> str:
        """Where the restored tiles of one large input wait for their stitching (inside the output,
        so every node reaches it and a dead actor loses only the tile it was restoring)."""
        return self.work_path("tiles", hashlib.sha1(path.encode()).hexdigest()[:24])
