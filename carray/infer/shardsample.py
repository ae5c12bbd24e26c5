"""--preview on shards: a sample of the images inside them, for the preview to look at as it looks
at files. No Ray here.

A seeded choice of up to PREVIEW_SHARDS shards is streamed by the driver: a seeded bottom-k sample of
their image members is kept (carray.infer.sample: uniform over the shards read), each sampled member's
header read from its bytes (the tables-only scan), and the first --preview of it keep their bytes,
to be written as files SHARD/MEMBER for the job to restore. The collection's image count is the shards'
count times the images per shard read.
"""
from __future__ import annotations

import posixpath
import random
from dataclasses import dataclass, field
from typing import Optional

from .. import storage
from ..images import IMAGE_EXTENSIONS, ImageError, read_header
from ..quality import Policy
from .layout import Locations
from .sample import BottomK
from .scan import scan_data
from .shards import iter_images, shard_kind

PREVIEW_SHARDS = 8  # shards read for a preview: enough to spread the sample, few enough to take seconds
# A Parquet sample's file name needs an image extension for the job to list it.
EXTENSIONS = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "WEBP": ".webp", "TIFF": ".tif", "BMP": ".bmp"}


@dataclass
class ShardSample:
    scanned: list = field(default_factory=list)  # scan rows of the sample, in priority order; path = SHARD/MEMBER
    shown: dict = field(default_factory=dict)  # path -> the image's bytes, for the first --preview of the sample
    images_read: int = 0
    shards_read: int = 0
    shards: int = 0

    @property
    def estimated_images(self) -> int:
        return round(self.images_read * self.shards / max(self.shards_read, 1))


def choose_shards(keys: list[str], seed: int, most: int = PREVIEW_SHARDS) -> list[str]:
    """A seeded choice of up to `most` shards, in their own order."""
    if len(keys) <= most:
        return list(keys)
    chosen = set(random.Random(seed).sample(range(len(keys)), most))
    return [k for i, k in enumerate(keys) if i in chosen]


def sample_path(shard: str, member: str, data: bytes) -> Optional[str]:
    """Where a member goes as a file: SHARD/MEMBER, with an image extension when it has none (Parquet
    rows); None for a member name that would leave the folder."""
    parts = [p for p in member.split("/") if p not in ("", ".")]
    if ".." in parts or not parts:
        return None
    name = "/".join(parts)
    if not name.lower().endswith(IMAGE_EXTENSIONS):
        try:
            name += EXTENSIONS.get(read_header(data).format, ".jpg")
        except ImageError:
            name += ".jpg"  # listed, and then reported as failing, as the job would
    return posixpath.join(shard, name)


def sample_shards(where: Locations, keys: list[str], single: bool, *, scan: int, shown: int, seed: int, max_pixels: Optional[int],
                  policy: Policy, image_keys, image_column: Optional[str]) -> ShardSample:
    """Stream the chosen shards, keeping the sample (`scan` members) with their headers scanned, and
    the bytes of its first `shown`."""
    result = ShardSample(shards=len(keys))
    sample, front = BottomK(max(scan, shown), seed), BottomK(shown, seed)  # front: the sample's first `shown`
    rows: dict[str, dict] = {}  # of the members in the sample so far
    data_of: dict[str, bytes] = {}  # of the members in front so far
    for shard in choose_shards(keys, seed):
        path = where.src_root if single else where.input_path(shard)
        name = shard or posixpath.basename(where.src_root)
        kind = shard_kind(path)
        opener = where.src_fs.open_input_stream if kind == "webdataset" else where.src_fs.open_input_file
        with opener(path) as source:
            for member, data in iter_images(source, kind, image_keys, image_column):
                at = sample_path(name, member, data)
                if at is None:
                    continue
                result.images_read += 1
                _keep(sample.add(at), rows, at, lambda: scan_data(at, data, max_pixels, policy))
                _keep(front.add(at), data_of, at, lambda: data)
        result.shards_read += 1
    result.scanned = [rows[k] for k in sample.keys()]
    result.shown = {k: data_of[k] for k in front.keys()}
    return result


def _keep(added: tuple, store: dict, key: str, value) -> None:
    """What a bottom-k sample's add said, applied to what is kept per sampled key."""
    kept, pushed_out = added
    if kept:
        store[key] = value()
    store.pop(pushed_out, None)


def write_sample(sample: ShardSample, where: Locations, folder: str) -> None:
    """The shown members as files under OUT/`folder` (the job restores them from there)."""
    for path, data in sample.shown.items():
        storage.write_bytes_atomic(where.dst_fs, where.output_path(f"{folder}/{path}"), data)
