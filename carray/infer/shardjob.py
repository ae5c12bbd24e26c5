"""infer on shards: WebDataset tars or Parquet files of images in, the same shards out.

Rows are shards. Each goes to one restoring actor, which streams it (carray/infer/shards.py): every
image member is read, decided on by the policy from its header, decoded, restored and encoded in its
own format one at a time, and every other member copied; the output shard is written under the
input's name atomically (nothing is visible before it is whole), so a shard is done exactly once:
a re-run skips shards whose output exists, a shard whose actor died is started again by Ray, and
`--retry-failed` redoes the shards that had failures. An image that cannot be restored keeps its own
bytes and gets a failure line naming the shard and the sample.
"""
from __future__ import annotations

import json
import posixpath
import threading
import time
from typing import TYPE_CHECKING, Optional

import pyarrow as pa
import pyarrow.fs as pafs
import ray
from ray.data import Datasink

from .. import storage
from ..images import ImageError, encode_image
from .decode import decode_row, plan_row
from .layout import FAILURES_FILE, SUMMARY_FILE, Locations
from .memory import keep_freed_memory
from .packs import from_row
from .restoring import RowRestorer
from .shards import ShardResult, expand_braces, rewrite_parquet, rewrite_tar, shard_kind
from .sink import read_failures

if TYPE_CHECKING:
    from ..config import InferConfig

SKIP_SHARD_EXISTS = "output shard exists (--overwrite rewrites it)"
FAILURE_DIR = "_failures"
READ_AHEAD = 8 << 20
#: The output format of a restored image member: the format it came in (its name says so in a tar).
MEMBER_FORMATS = {"JPEG": "jpeg", "MPO": "jpeg", "PNG": "png", "WEBP": "webp"}


def shard_keys(cfg: "InferConfig", where: Locations) -> list[str]:
    """The shards to rewrite, relative to the input: --retry-failed's, a --manifest's, the input's
    brace pattern expanded, or the .tar/.parquet files under the input. Raises StorageError for none."""
    if cfg.retry_failed:
        failed = read_failures(where.dst_fs, where.output_path(FAILURES_FILE))
        if failed is None:
            raise storage.StorageError(f"--retry-failed: {cfg.output}/{FAILURES_FILE} does not exist (no earlier run)")
        return list(failed)
    if cfg.manifest:
        fs, path = storage.resolve(cfg.manifest, cfg.s3())
        return [line.strip() for line in storage.read_bytes(fs, path).decode().splitlines() if line.strip()]
    if "{" in cfg.input:  # shards/{00000..00099}.tar: the input root is the pattern's folder
        return [posixpath.basename(name) for name in expand_braces(cfg.input)]
    info = where.src_fs.get_file_info(where.src_root)
    if info.type == pafs.FileType.File:
        return [""]  # one shard named as the input
    keys = [rel for rel, _ in storage.walk_files(where.src_fs, where.src_root) if shard_kind(rel) and not rel.startswith(("_", "."))]
    if not keys:
        raise storage.StorageError(f"{cfg.input}: no .tar or .parquet shards found")
    return sorted(keys)


class ShardRestorer(RowRestorer):
    """map_batches callable class: one shard per call, streamed from the input to its output. Calls
    may run at once in threads (a GPU actor, Pool.calls): the network takes one image at a time."""

    def __init__(self, model_files: dict, where: Locations, policy, max_pixels: Optional[int], tile: int, threads: int,
                 precision: str, onnx: Optional[dict], tile_batch: int, jpeg_quality: int, image_keys: tuple,
                 image_column: Optional[str], overwrite: bool, single: bool):
        keep_freed_memory()
        super().__init__(model_files, tile, threads, False, precision, onnx, tile_batch, ray.get_runtime_context().get_node_id())
        self.where, self.policy, self.max_pixels, self.quality = where, policy, max_pixels, jpeg_quality
        self.image_keys, self.image_column, self.overwrite, self.single = image_keys, image_column, overwrite, single
        self.network = threading.Lock()

    def __call__(self, batch: dict) -> dict:
        rows = [self.rewrite(str(shard)) for shard in batch["shard"]]
        return {key: [row[key] for row in rows] for key in rows[0]}

    def rewrite(self, shard: str) -> dict:
        """One shard -> its counts row; its output written atomically, or the reason it was not."""
        src = self.where.src_root if self.single else self.where.input_path(shard)
        dst = self.where.output_path(shard or posixpath.basename(self.where.src_root))
        row = {"shard": shard or posixpath.basename(src), "skipped": "", "error": "", "samples": 0, "images": 0, "restored": 0,
               "passed": "{}", "failures": "[]", "megapixels": 0.0, "node": self.node}
        if not self.overwrite and storage.exists(self.where.dst_fs, dst):
            row["skipped"] = SKIP_SHARD_EXISTS
            return row
        kind = shard_kind(src)
        try:
            result = self._rewrite(kind, src, dst)
        except (OSError, ValueError, pa.ArrowException) as exc:
            row["error"] = f"cannot rewrite the shard: {type(exc).__name__}: {exc}"
            return row
        row.update(samples=result.samples, images=result.images, restored=result.restored, passed=json.dumps(result.passed),
                   failures=json.dumps(result.failures), megapixels=result.megapixels, error=result.error)
        if not (result.failures or result.error):
            storage.delete_file_if_exists(self.where.dst_fs, self.failure_file(row["shard"]))
        return row

    def failure_file(self, shard: str) -> str:
        return self.where.output_path(f"{FAILURE_DIR}/{shard}.jsonl")

    def _rewrite(self, kind: str, src: str, dst: str) -> ShardResult:
        """Read, restore and write the shard; its failure lines are written first (a shard whose
        output appeared without them would hide its failures from --retry-failed)."""
        megapixels = [0.0]  # of this call's images: calls may run at once

        def restore(key: str, data: bytes) -> tuple[bytes, str]:
            out, outcome, restored = self.restore_member(key, data)
            megapixels[0] += restored
            return out, outcome

        shard = posixpath.relpath(dst, self.where.dst_root)
        with storage.atomic_output(self.where.dst_fs, dst, spill=True) as target:
            if kind == "webdataset":
                # Read ahead in 8 MB pieces: tarfile reads in blocks of a few KB, and an unbuffered
                # S3 stream makes each one a ranged GET (measured: 200 GETs per 500-image shard).
                with self.where.src_fs.open_input_stream(src, buffer_size=READ_AHEAD) as source:
                    result = rewrite_tar(source, target, restore, self.image_keys)
            else:
                with self.where.src_fs.open_input_file(src) as source:
                    result = rewrite_parquet(source, target, restore, self.image_column)
            lines = [{"path": shard, "key": key, "reason": reason} for key, reason in result.failures]
            if result.error:
                lines.append({"path": shard, "key": "", "reason": result.error})
            if lines:
                storage.write_jsonl(self.where.dst_fs, self.failure_file(shard), lines)
        result.megapixels = megapixels[0]
        return result

    def restore_member(self, key: str, data: bytes) -> tuple[bytes, str, float]:
        """An image's bytes -> (the bytes to write, outcome, megapixels restored) as the file job
        decides (shards.Restore)."""
        row = plan_row(key, key, data, self.max_pixels, self.policy)
        if row["passed"]:
            return data, f"passed: {row['passed']}", 0.0
        fmt = MEMBER_FORMATS.get(row["format"], "jpeg")
        decode_row(row, self.max_pixels, as_bytes=False, allocate=self.buffers.array)
        if row["error"]:
            return data, f"failed: {row['error']}", 0.0
        with self.network:
            self.restore([row])
        if row["error"]:
            return data, f"failed: {row['error']}", 0.0
        try:
            out = encode_image(from_row(row), fmt, self.quality)
        except (ImageError, OSError, ValueError) as exc:
            return data, f"failed: cannot encode as {fmt}: {exc}", 0.0
        return out, "restored", row["height"] * row["width"] / 1e6


class ShardSink(Datasink):
    """Counts the shard rows (their failure lines are on storage already, beside each shard)."""

    def __init__(self):
        self.totals = {**new_shard_counts(), "nodes": set()}

    def write(self, blocks, ctx) -> dict:
        from ray.data.block import BlockAccessor

        return tally_shards([row for block in blocks for row in BlockAccessor.for_block(block).to_arrow().to_pylist()])

    def on_write_complete(self, write_result) -> None:
        for counts in write_result.write_returns:
            for key, value in counts.items():
                if key == "passed":
                    for reason, n in value.items():
                        self.totals["passed"][reason] = self.totals["passed"].get(reason, 0) + n
                elif key == "nodes":
                    self.totals["nodes"] |= set(value)
                else:
                    self.totals[key] += value


def new_shard_counts() -> dict:
    return {"shards": 0, "shards_written": 0, "shards_skipped": 0, "shards_failed": 0, "samples": 0, "images": 0, "restored": 0,
            "passed": {}, "failed": 0, "megapixels": 0.0, "nodes": []}


def tally_shards(rows: list[dict]) -> dict:
    """Shard rows -> counts: shards written, skipped and failed; samples; images restored, passed
    through (by reason) and failed."""
    counts = new_shard_counts()
    for row in rows:
        counts["shards"] += 1
        if row["skipped"]:
            counts["shards_skipped"] += 1
            continue
        counts["shards_failed"] += bool(row["error"])
        counts["shards_written"] += bool(row["samples"] or not row["error"])
        for key in ("samples", "images", "restored", "megapixels"):
            counts[key] += row[key]
        counts["failed"] += len(json.loads(row["failures"]))
        for reason, n in json.loads(row["passed"]).items():
            counts["passed"][reason] = counts["passed"].get(reason, 0) + n
        counts["nodes"].append(row["node"])
    return counts


def merge_shard_failures(where: Locations) -> int:
    """_failures.jsonl from every shard's failure file (this run's and the kept shards' of earlier
    runs). Returns the number of lines."""
    fs, lines = where.dst_fs, 0
    infos = fs.get_file_info(pafs.FileSelector(where.output_path(FAILURE_DIR), recursive=True, allow_not_found=True))
    with storage.atomic_output(fs, where.output_path(FAILURES_FILE)) as out:
        for info in sorted(infos, key=lambda i: i.path):
            if info.type == pafs.FileType.File and info.path.endswith(".jsonl"):
                data = storage.read_bytes(fs, info.path)
                out.write(data)
                lines += data.count(b"\n")
    return lines


def run_shards(cfg: "InferConfig", where: Locations, files: dict, say=print) -> dict:
    """The infer job on shards; returns its summary (also written to _summary.json)."""
    from ray.data import ActorPoolStrategy

    from ..quantize import RUNTIME_NAMES, plan_networks
    from ..runtime import plan_pool
    from .report import build_summary

    started = time.time()
    keys = shard_keys(cfg, where)
    kinds = {shard_kind(k or where.src_root) for k in keys}
    say(f"carray: {len(keys)} shard(s) ({', '.join(sorted(k or '?' for k in kinds))}); each streamed by one actor, written whole")
    pool = plan_pool(cfg.actors, cfg.gpu, per_gpu=cfg.actors_per_gpu, codecs=True)
    precision, runtime, onnx = plan_networks(files, cfg.precision, cfg.runtime, cuda=bool(pool.gpus), say=say)
    say(f"carray: {pool.actors} restoring actor(s) on {'GPU' if pool.gpus else 'CPU'} ({pool.reason}); precision {precision} ({RUNTIME_NAMES[runtime]})")
    ds = ray.data.from_items([{"shard": k} for k in keys], override_num_blocks=max(1, len(keys)))
    ds = ds.map_batches(
        ShardRestorer, batch_size=1,
        compute=ActorPoolStrategy(min_size=pool.min_actors, max_size=pool.actors, max_concurrent_calls_per_actor=pool.calls,
                                  enable_true_multi_threading=pool.calls > 1),
        num_cpus=pool.cpus, num_gpus=pool.gpus,
        fn_constructor_kwargs=dict(
            model_files=files, where=where, policy=cfg.policy(), max_pixels=cfg.max_pixels, tile=cfg.tile, threads=pool.threads,
            precision=precision, onnx=onnx, tile_batch=cfg.tile_batch or 1, jpeg_quality=cfg.jpeg_quality,
            image_keys=tuple(cfg.image_keys), image_column=cfg.image_column, overwrite=cfg.overwrite or cfg.retry_failed,
            single=keys == [""],
        ),
    )
    sink = ShardSink()
    ds.write_datasink(sink)
    totals = sink.totals
    # A shard's temporary left by an actor whose node was lost mid-write (its retry wrote the shard).
    storage.remove_stale_temporaries(where.dst_fs, where.dst_root)
    merge_shard_failures(where)
    storage.delete_dir_if_exists(where.dst_fs, where.work_path())
    networks = {"precision": precision, "runtime": runtime, "actors": pool.actors, "gpus": round(pool.actors * pool.gpus, 3),
                "cpus": ray.cluster_resources().get("CPU", 0), "first_restored": None}
    image_totals = {"restored": totals["restored"], "passed": totals["passed"], "skipped": {}, "failed": 0,
                    "megapixels": totals["megapixels"], "nodes": totals["nodes"]}
    summary = build_summary(cfg, image_totals, {}, totals["failed"], started, networks, files)
    summary.update(
        kind="shards", seen=totals["images"], samples=totals["samples"], images=totals["images"], failed=totals["failed"],
        shards={key: totals[key] for key in ("shards", "shards_written", "shards_skipped", "shards_failed")},
    )
    storage.write_json(where.dst_fs, where.output_path(SUMMARY_FILE), summary)
    return summary
