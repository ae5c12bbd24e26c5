"""--preview on shards: a sample of the images inside them, for the preview to look at as it looks
at files. No Ray here.

A seeded choice of up to PREVIEW_SHARDS shards is streamed by the driver: every image member's header
is read from its bytes (the tables-only scan), a seeded bottom-k sample of the members is kept
(carray.infer.sample: uniform over the shards read), and the first --preview of it keep their bytes,
to be written as files SHARD/MEMBER for the job to restore. The collection's image count is the shards'
count times the images per shard read.
"""
from __future__ import annotations

import heapq
import posixpath
import random
from dataclasses import dataclass, field
from typing import Optional

from .. import storage
from ..images import read_header, ImageError
from ..quality import Policy
from .layout import Locations
from .sample import BottomK, priority
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
    if not name.lower().endswith((".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".mpo", ".jpe", ".jfif")):
        try:
            name += EXTENSIONS.get(read_header(data).format, ".jpg")
        except ImageError:
            name += ".jpg"  # listed, and then reported as failing, as the job would
    return posixpath.join(shard, name)


def sample_shards(where: Locations, keys: list[str], single: bool, *, scan: int, shown: int, seed: int, max_pixels: Optional[int],
                  policy: Policy, image_keys, image_column: Optional[str]) -> ShardSample:
    """Stream the chosen shards; scan every image member; keep the sample (`scan` members) and the
    bytes of its first `shown`."""
    result = ShardSample(shards=len(keys))
    bottom = BottomK(max(scan, shown), seed)
    rows: dict[str, dict] = {}
    kept: list[tuple[int, str]] = []  # (-priority, path) of the `shown` of lowest priority so far
    data_of: dict[str, bytes] = {}
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
                bottom.add(at)
                rows[at] = scan_data(at, data, max_pixels, policy)
                item = (-priority(at, seed), at)
                if len(kept) < shown:
                    heapq.heappush(kept, item)
                    data_of[at] = data
                elif item > kept[0]:
                    data_of.pop(heapq.heapreplace(kept, item)[1], None)
                    data_of[at] = data
        result.shards_read += 1
        keep = set(bottom.keys())  # rows of members out of the sample are dropped as the shards go
        rows = {k: v for k, v in rows.items() if k in keep}
    result.scanned = [rows[k] for k in bottom.keys()]
    result.shown = {k: data_of[k] for k in bottom.keys()[:shown]}
    return result


def write_sample(sample: ShardSample, where: Locations, folder: str) -> None:
    """The shown members as files under OUT/`folder` (the job restores them from there)."""
    for path, data in sample.shown.items():
        storage.write_bytes_atomic(where.dst_fs, where.output_path(f"{folder}/{path}"), data)
