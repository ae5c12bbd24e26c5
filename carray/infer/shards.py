"""Shards: WebDataset tars and Parquet files of images, rewritten member by member. No Ray here.

A shard is read as a stream and written as a stream, one sample at a time: only the image being
restored is ever decoded, whatever the shard's size. Each image member (a WebDataset member whose
extension is one of the image keys; a Parquet image column's value, Hugging Face's {bytes, path}
struct or plain binary) goes through `restore(key, data)`; every other member, column and byte of
the sample is copied as it was, in the same order. An image that cannot be restored keeps its
original bytes, and the result says which and why.
"""
from __future__ import annotations

import io
import posixpath
import re
import tarfile
from dataclasses import dataclass, field
from typing import Callable, Optional

import pyarrow as pa
import pyarrow.parquet as pq

SHARD_KINDS = {".tar": "webdataset", ".parquet": "parquet"}
#: WebDataset member extensions restored by default (img2dataset writes key.jpg).
DEFAULT_IMAGE_KEYS = ("jpg", "jpeg")
#: Parquet rows per batch read and written (one row group each).
PARQUET_BATCH_ROWS = 64

# restore(sample key, image bytes) -> (bytes to write, outcome): outcome "restored", "passed: why"
# (the input's bytes kept by the policy) or "failed: why" (the input's bytes kept, a failure line).
Restore = Callable[[str, bytes], tuple[bytes, str]]


@dataclass
class ShardResult:
    """What rewriting one shard did. `failures`: (sample key, reason) of images that kept their bytes;
    `error`: why the shard itself stopped early (a truncated tar), its samples up to there written."""

    samples: int = 0
    images: int = 0
    restored: int = 0
    passed: dict = field(default_factory=dict)
    failures: list = field(default_factory=list)
    megapixels: float = 0.0
    error: str = ""

    def count(self, key: str, outcome: str) -> None:
        self.images += 1
        if outcome == "restored":
            self.restored += 1
        elif outcome.startswith("passed: "):
            reason = outcome[len("passed: "):]
            self.passed[reason] = self.passed.get(reason, 0) + 1
        else:
            self.failures.append((key, outcome.removeprefix("failed: ")))


def shard_kind(path: str) -> Optional[str]:
    """'webdataset' for .tar, 'parquet' for .parquet, None otherwise."""
    return SHARD_KINDS.get(posixpath.splitext(path.lower())[1])


_BRACES = re.compile(r"\{(\d+)\.\.(\d+)\}")


def expand_braces(pattern: str) -> list[str]:
    """WebDataset's shard pattern: 'shards/{00000..00002}.tar' -> the three names, zero-padded as
    written (several ranges multiply). A pattern without braces is itself."""
    match = _BRACES.search(pattern)
    if not match:
        return [pattern]
    first, last = match.groups()
    if int(last) < int(first):
        raise ValueError(f"{pattern}: the range {{{first}..{last}}} runs backwards")
    width = len(first) if first.startswith("0") else 0
    head, tail = pattern[: match.start()], pattern[match.end():]
    return [name for n in range(int(first), int(last) + 1) for name in expand_braces(f"{head}{n:0{width}d}{tail}")]


def sample_key(member: str) -> tuple[str, str]:
    """WebDataset's split of a member name: 'dir/0001.seg.jpg' -> ('dir/0001', 'seg.jpg') (the key
    is up to the first dot of the base name, the extension the rest)."""
    folder, base = posixpath.split(member)
    stem, dot, ext = base.partition(".")
    return posixpath.join(folder, stem) if folder else stem, ext if dot else ""


def rewrite_tar(source, target, restore: Restore, image_keys=DEFAULT_IMAGE_KEYS) -> ShardResult:
    """A WebDataset tar from the stream `source` into the stream `target`, in the same member order,
    each image member through `restore`. A tar cut short ends the output at the last whole member
    and says so in `error`."""
    result, keys, wanted = ShardResult(), set(), {k.lower() for k in image_keys}
    with tarfile.open(fileobj=source, mode="r|") as tin, tarfile.open(fileobj=target, mode="w|", format=tarfile.PAX_FORMAT) as tout:
        try:
            for member in tin:
                key, ext = sample_key(member.name)
                if member.isfile() and key not in keys:
                    keys.add(key)
                    result.samples += 1
                if not member.isfile():
                    tout.addfile(member)
                    continue
                data = tin.extractfile(member).read()
                if len(data) != member.size:
                    raise tarfile.ReadError(f"{member.name} is cut short ({len(data)} of {member.size} bytes)")
                if ext.lower() in wanted:
                    data, outcome = restore(member.name, data)
                    result.count(member.name, outcome)
                copy = tarfile.TarInfo(member.name)
                copy.mode, copy.mtime, copy.uid, copy.gid, copy.uname, copy.gname = member.mode, member.mtime, member.uid, member.gid, member.uname, member.gname
                copy.pax_headers = dict(member.pax_headers)
                copy.size = len(data)
                tout.addfile(copy, io.BytesIO(data))
        except (tarfile.ReadError, EOFError, OSError) as exc:
            result.error = f"truncated or unreadable tar after {result.samples} samples: {exc}"
    return result


def iter_images(source, kind: str, image_keys=DEFAULT_IMAGE_KEYS, column: Optional[str] = None):
    """(member or sample key, bytes) of each image of a shard, in order, reading nothing else into
    memory: `source` a stream (WebDataset) or a seekable file (Parquet). A tar cut short ends early."""
    if kind == "webdataset":
        wanted = {k.lower() for k in image_keys}
        with tarfile.open(fileobj=source, mode="r|") as tin:
            try:
                for member in tin:
                    if member.isfile() and sample_key(member.name)[1].lower() in wanted:
                        yield member.name, tin.extractfile(member).read()
            except (tarfile.ReadError, EOFError, OSError):
                return
        return
    reader = pq.ParquetFile(source)
    name = image_column(reader.schema_arrow, column)
    key_column = "key" if "key" in reader.schema_arrow.names else None
    row = 0
    for batch in reader.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=[name] + ([key_column] if key_column else [])):
        images = batch.column(name)
        values = images.field("bytes") if pa.types.is_struct(images.type) else images
        keys = batch.column(key_column).to_pylist() if key_column else [f"row {row + i}" for i in range(batch.num_rows)]
        for key, value in zip(keys, values.to_pylist()):
            if value is not None:
                yield str(key), value
        row += batch.num_rows


def image_column(schema: pa.Schema, named: Optional[str]) -> str:
    """The Parquet column that holds the images: `named`, else the one column of Hugging Face's
    image struct ({bytes, path}) or of binary type. Raises ValueError naming the candidates."""
    if named:
        if named not in schema.names:
            raise ValueError(f"no column {named!r} (columns: {', '.join(schema.names)})")
        return named
    candidates = [f.name for f in schema if _is_image_type(f.type)]
    if len(candidates) != 1:
        raise ValueError(f"{'no' if not candidates else 'several'} image columns ({', '.join(candidates) or 'binary, or a {bytes, path} struct'}): name one with --image-column")
    return candidates[0]


def _is_image_type(kind: pa.DataType) -> bool:
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        return True
    return pa.types.is_struct(kind) and "bytes" in [kind.field(i).name for i in range(kind.num_fields)]


def rewrite_parquet(source, target, restore: Restore, column: Optional[str] = None, key_column: Optional[str] = None) -> ShardResult:
    """A Parquet file from `source` (a seekable file) into the stream `target` with the same schema
    and rows, the image column's values through `restore` (a struct keeps its other fields, `path`
    among them; a null stays null). Samples are named by `key_column` (img2dataset's 'key') when
    there is one, else by row number."""
    result = ShardResult()
    reader = pq.ParquetFile(source)
    schema = reader.schema_arrow
    name = image_column(schema, column)
    key_column = key_column or ("key" if "key" in schema.names else None)
    with pq.ParquetWriter(target, schema) as writer:
        row = 0
        for batch in reader.iter_batches(batch_size=PARQUET_BATCH_ROWS):
            keys = batch.column(key_column).to_pylist() if key_column else [f"row {row + i}" for i in range(batch.num_rows)]
            images = batch.column(name)
            restored = _restore_column(images, keys, restore, result)
            columns = [restored if n == name else batch.column(n) for n in schema.names]
            writer.write_table(pa.Table.from_arrays(columns, schema=schema))
            result.samples += batch.num_rows
            row += batch.num_rows
    return result


def _restore_column(images: pa.Array, keys: list, restore: Restore, result: ShardResult) -> pa.Array:
    struct = pa.types.is_struct(images.type)
    values = images.field("bytes") if struct else images
    out = []
    for key, value in zip(keys, values.to_pylist()):
        if value is None:
            out.append(None)
            continue
        data, outcome = restore(str(key), value)
        result.count(str(key), outcome)
        out.append(data)
    new = pa.array(out, type=values.type)
    if not struct:
        return new
    fields = [new if images.type.field(i).name == "bytes" else images.field(i) for i in range(images.type.num_fields)]
    return pa.StructArray.from_arrays(fields, fields=list(images.type), mask=images.is_null())
