"""Where the keys come from: the input listed by parallel tasks, a manifest, or the last run's failures.

Nothing here holds a collection's keys in the driver's memory: the input is listed by Ray Data tasks,
one per top-level folder, that hand packs of KEY_CHUNK keys to the pipeline as they walk (restoring
starts with the first pack, not after the last LIST), and key files are read by tasks the same way.
"""
from __future__ import annotations

import io
import json
import os
import posixpath
from typing import Optional

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray

from .. import storage
from .layout import FAILURES_FILE, Locations
from .packs import PACK_KEYS
from .plan import skip_reason
from .resources import PLAN_CPUS
from .sink import read_failures

# Keys per pack when reading key files: each pack is a row and a block of its own (the run sets a
# tiny target block size), the unit Ray Data hands to one task or actor call.
KEY_CHUNK = PACK_KEYS
LISTING_TASKS = 4  # listing tasks in flight at once (see listing_dataset)


def listing_items(where: Locations) -> list[dict]:
    """What the listing tasks walk, decided by one listing of the input's top level: the files
    there (one item) and each folder below it (an item each, walked whole by one task). Raises
    StorageError when the input does not exist, is a file, or is empty."""
    info = where.src_fs.get_file_info(where.src_root)
    if info.type == pafs.FileType.NotFound:
        raise storage.StorageError(f"{where.src_root}: does not exist")
    if info.type == pafs.FileType.File:
        raise storage.StorageError(f"{where.src_root}: is a file; give the folder or prefix that holds the images")
    entries = where.src_fs.get_file_info(pafs.FileSelector(where.src_root, recursive=False))
    base = where.src_root.replace(os.sep, "/").rstrip("/")
    folders = sorted(posixpath.relpath(e.path.replace(os.sep, "/"), base) for e in entries if e.type == pafs.FileType.Directory)
    if not entries:
        raise storage.StorageError(f"{where.src_root}: is empty")
    return [{"folder": "", "recursive": False}] + [{"folder": f, "recursive": True} for f in folders]


def list_keys(batch: dict, *, where: Locations, include_hidden: bool, tracker):
    """map_batches generator: each listing item of the batch -> packs of KEY_CHUNK keys to restore
    (relative to the input), yielded as the walk goes, so restoring starts while the rest is still
    being listed. The walk goes one folder level at a time (S3: a LIST with a delimiter per prefix).
    Keys that are not candidates (hidden, not an image: :func:`skip_reason`) are only counted, by
    reason, in the tracker: a bucket of logs and thumbnails costs its listing, not a pipeline row each."""
    for folder, recursive in zip(batch["folder"], batch["recursive"]):
        folder, chunk, handed, skipped = str(folder), [], 0, {}
        for rel in _walk(where, folder, bool(recursive)):
            reason = skip_reason(rel, include_hidden)
            if reason:
                skipped[reason] = skipped.get(reason, 0) + 1
                continue
            chunk.append(rel)
            if len(chunk) >= KEY_CHUNK:
                handed += len(chunk)
                tracker.listed.remote(folder, handed, skipped)
                yield key_pack(chunk)
                chunk = []
        handed += len(chunk)
        # Waited for: the folder's final counts are in the tracker before this task ends, so a driver
        # that reads them once the listing is done (the preview, the summary) never misses the last ones.
        ray.get(tracker.listed.remote(folder, handed, skipped))
        if chunk:
            yield key_pack(chunk)


def _walk(where: Locations, folder: str, recursive: bool):
    """Relative paths of the files in `folder` (the input's top level when ""), below it too when recursive."""
    root = storage.join(where.src_root, folder) if folder else where.src_root
    if recursive:
        for rel, _size in storage.walk_files(where.src_fs, root):
            yield f"{folder}/{rel}"
        return
    entries = where.src_fs.get_file_info(pafs.FileSelector(root, recursive=False))
    base = root.replace(os.sep, "/").rstrip("/")
    for entry in sorted(entries, key=lambda e: e.path):
        if entry.type == pafs.FileType.File:
            yield posixpath.relpath(entry.path.replace(os.sep, "/"), base)


def listing_dataset(where: Locations, include_hidden: bool, tracker):
    """The input listed by parallel tasks, one per top-level folder, streamed into the pipeline."""
    items = listing_items(where)
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    # A few listing tasks at a time: each holds a CPU share while its walk waits on storage; more
    # would only start worker processes that compete with the actors starting beside them.
    return ds.map_batches(list_keys, batch_size=1, fn_kwargs=dict(where=where, include_hidden=include_hidden, tracker=tracker),
                          compute=ray.data.TaskPoolStrategy(size=LISTING_TASKS), **PLAN_CPUS)


def key_pack(keys: list[str]) -> pa.Table:
    """One row holding a pack of keys."""
    return pa.table({"key": pa.array([keys], pa.list_(pa.string()))})


def _relative(key: str, prefix: str) -> str:
    key = key.strip()
    return key[len(prefix) + 1 :] if prefix and key.startswith(prefix + "/") else key


def read_key_files(batch: dict, *, fs, kind: str, column: Optional[str], names: Optional[list], prefix: str):
    """map_batches generator: each key file of the batch -> packs of keys (one row, a list of
    KEY_CHUNK keys), streamed (a part of millions of keys never sits whole in one task's memory).
    kind: 'text' (one key a line), 'csv' (a header, or `names` for headerless inventory parts;
    .gz read as gzip; keys URL-decoded when `names` is given, as S3 Inventory encodes them) or
    'parquet'. Keys are made relative to `prefix` when they are full keys under it."""
    for path in batch["path"]:
        path = str(path)
        if kind == "parquet":
            yield from _parquet_keys(fs, path, column, prefix)
            continue
        data = storage.read_bytes(fs, path)
        if path.endswith(".gz"):  # inventory parts; one part is tens of MB at most
            import gzip

            data = gzip.decompress(data)
        if kind == "text":
            yield from _text_keys(data, prefix)
        else:
            yield from _csv_keys(data, column, names, prefix)


def _parquet_keys(fs, path: str, column: Optional[str], prefix: str):
    with fs.open_input_file(path) as f:
        parquet = pq.ParquetFile(f)
        name = column if column in parquet.schema_arrow.names else parquet.schema_arrow.names[0]
        for part in parquet.iter_batches(batch_size=KEY_CHUNK, columns=[name]):
            yield key_pack([_relative(str(k), prefix) for k in part.column(0).to_pylist()])


def _text_keys(data: bytes, prefix: str):
    chunk = []
    for line in io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"):
        if line.strip():
            chunk.append(_relative(line, prefix))
        if len(chunk) >= KEY_CHUNK:
            yield key_pack(chunk)
            chunk = []
    if chunk:
        yield key_pack(chunk)


def _csv_keys(data: bytes, column: Optional[str], names: Optional[list], prefix: str):
    import pyarrow.csv as pacsv
    from urllib.parse import unquote

    read_options = pacsv.ReadOptions(column_names=names) if names else pacsv.ReadOptions()
    convert = pacsv.ConvertOptions(column_types={c: pa.string() for c in (names or [])} or None)
    with pa.BufferReader(data) as f:
        reader = pacsv.open_csv(f, read_options=read_options, convert_options=convert)
        name = column if column in reader.schema.names else reader.schema.names[0]
        for part in reader:
            keys = part.column(name).to_pylist()
            for i in range(0, len(keys), KEY_CHUNK):
                yield key_pack([_relative(unquote(str(k)) if names else str(k), prefix) for k in keys[i : i + KEY_CHUNK]])


def keys_dataset(paths: list[str], fs, kind: str, column: Optional[str] = "key", names: Optional[list] = None, prefix: str = ""):
    """A Dataset with one `key` column from key files, one task per file, streamed: the way both
    listings and manifests enter the pipeline. (Not ray.data.read_*: their file-listing step asks
    for a whole CPU, which a 1-CPU node beside a half-CPU actor never has.)"""
    ds = ray.data.from_items([{"path": p} for p in paths], override_num_blocks=max(1, len(paths)))
    return ds.map_batches(
        read_key_files, batch_size=1, fn_kwargs=dict(fs=fs, kind=kind, column=column, names=names, prefix=prefix), **PLAN_CPUS
    )


def read_manifest(location: str, s3, src_root: str):
    """A Ray Dataset with one `key` column from a manifest: text (one key a line), CSV or Parquet
    with a `key` column, or an S3 Inventory manifest.json (its CSV or Parquet parts, one task each).
    Keys relative to --input (an inventory lists bucket keys: the --input prefix is taken off)."""
    fs, path = storage.resolve(location, s3)
    if not storage.exists(fs, path):
        raise storage.StorageError(f"--manifest {location}: does not exist")
    name = path.lower()
    if name.endswith("manifest.json"):
        return _inventory_dataset(location, fs, path, src_root)
    kind = "parquet" if name.endswith(".parquet") else "csv" if name.endswith((".csv", ".csv.gz")) else "text"
    return keys_dataset([path], fs, kind)


def _inventory_dataset(location: str, fs, path: str, src_root: str):
    """S3 Inventory: manifest.json = {"fileFormat", "fileSchema", "files": [{"key"}], ...}."""
    inventory = json.loads(storage.read_bytes(fs, path))
    bucket = path.split("/", 1)[0]
    files = [storage.join(bucket, f["key"]) for f in inventory.get("files", [])]
    if not files:
        raise storage.StorageError(f"--manifest {location}: an inventory manifest that lists no files")
    fmt = str(inventory.get("fileFormat", "CSV")).upper()
    prefix = src_root.split("/", 1)[1] if "/" in src_root else ""
    if fmt == "PARQUET":
        return keys_dataset(files, fs, "parquet", column="key", prefix=prefix)
    if fmt == "CSV":
        columns = [c.strip() for c in str(inventory.get("fileSchema", "Bucket, Key")).split(",")]
        return keys_dataset(files, fs, "csv", column="Key" if "Key" in columns else columns[1], names=columns, prefix=prefix)
    raise storage.StorageError(f"--manifest {location}: inventory format {fmt} is not supported (CSV or Parquet)")


def failures_as_manifest(where: Locations) -> Optional[list[str]]:
    """The paths of the last run's _failures.jsonl (for --retry-failed)."""
    failures = read_failures(where.dst_fs, where.output_path(FAILURES_FILE))
    return None if failures is None else list(failures)
