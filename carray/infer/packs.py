"""The rows of the Dataset: *packs* of images. No Ray here.

A row is a pack: a few images (or tiles of one large image) that one task or actor call handles
together, every column a list with one entry per image. Ray Data's per-block cost (a task or an
actor call, an object) is then paid once per pack: 128 thumbnails cost about what one photo costs.
Packs hold at most PACK_KEYS keys and, once decoded, about PACK_PIXELS pixels; an image above
--split-above megapixels becomes tiles (carray.infer.tiles) spread over packs, so every actor
restores part of it. Measured on 3000 JPEGs of 128x128, 2 CPUs, alternating runs on one Ray:
64-key / 1 MP packs 80.1-81.7 images/s, 256 / 4 MP 81.2-85.7, then 128 / 2 MP 86.4-88.8 against
256 / 4 MP 80.1-88.3: the smaller of the two, as fast, leaves less idle at the end. The pixel bound
sits well above a full pack of thumbnails (128 of 128x128 = 2.1 MP): at 2 MP each such pack was cut
into 122 + 6 images, an actor call for 6 (128 / 4 MP vs 128 / 2 MP: 82.2-86.4 vs 80.3-83.6).
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import pyarrow as pa

from ..images import DecodedImage
from ..metadata import Envelope
from ..quality import SUBSAMPLING_CODES, coding

PACK_KEYS = 128
PACK_PIXELS = 4_000_000
# Images travel to the actors as their files' bytes, in packs of up to this many pixels (by their
# headers), and an actor decodes PACK_PIXELS of them at a time: a 9.4 MP photo per pack cost a
# task, an actor call and a block each, about 3 ms of Ray's CPU per MP (bench/infer.py --cases ceiling).
ENCODED_PACK_PIXELS = 64_000_000
# Tiles of a large image come in packs of 4 MP: six 60 MP photos cut at 16 MP cost 67-70 ms of CPU
# per MP in 4 MP packs against 106-112 in 1 MP packs (a task, an actor call and a block per pack; the
# identity network), and a 64 MP gray JPEG (bench/infer.py --cases large) ran at 1.229 against 1.136
# MP/s with 1.35 against 1.29 GiB above idle Ray at the peak (docs/benchmarks.md, session 19).
TILE_PACK_PIXELS = 4_000_000
NO_QUALITY = -1  # the row's file has no JPEG quantization tables
WHOLE = -1  # the `tile` of an image that is not cut into tiles

IMAGE_TYPES = {
    "path": pa.string(), "output": pa.string(), "pixels": pa.binary(), "height": pa.int32(), "width": pa.int32(),
    "channels": pa.int32(), "alpha": pa.binary(), "icc": pa.binary(), "exif": pa.binary(), "quality": pa.int32(),
    # The rest of the input's metadata (carray.images.DecodedImage): XMP, a JPEG's segments and
    # trailer (carray.metadata.Envelope.to_bytes), and what could not be kept ("\n" between notes).
    "xmp": pa.binary(), "envelope": pa.binary(), "notes": pa.string(),
    # How the JPEG coded its chroma, for networks that see it: its chroma table's quality and its
    # subsampling code (carray.quality.SUBSAMPLING_CODES); -1 where unknown (gray, not a JPEG).
    "chroma_quality": pa.int32(), "subsampling": pa.int32(),
    "format": pa.string(),  # the input's, as Pillow names it ("JPEG", "PNG", ...)
    "tile": pa.int32(), "tiles": pa.int32(), "crop": pa.list_(pa.int32()),
    "error": pa.string(), "skipped": pa.string(), "passed": pa.string(), "node": pa.string(),
    # The input file's bytes: of an image to restore, until the actor decodes it (pending_decode);
    # of a passed-through input, until the read task that decided so has written them.
    "data": pa.binary(),
    # Restored, encoded and written by the actor (whole images): the row goes on without pixels.
    "written": pa.bool_(),
}
# What the write stage hands to the sink: no pixels. `part` is "tile" for a tile whose image is not
# complete yet (counted in megapixels only) and "" for an image.
RESULT_TYPES = {
    "path": pa.string(), "output": pa.string(), "error": pa.string(), "skipped": pa.string(), "passed": pa.string(),
    "node": pa.string(), "part": pa.string(), "megapixels": pa.float64(), "notes": pa.string(),
}
PLAN_TYPES = {"path": pa.string(), "output": pa.string(), "skipped": pa.string()}


def to_packs(packs: list[list[dict]], types: dict) -> pa.Table:
    schema = pa.schema([(name, pa.list_(t)) for name, t in types.items()])
    return pa.Table.from_pylist([{k: [image[k] for image in pack] for k in types} for pack in packs], schema=schema)


def unpack(table: pa.Table) -> list[list[dict]]:
    """A batch of packs -> per pack, its images as dicts."""
    packs = []
    for row in table.to_pylist():
        names = list(row)
        packs.append([{k: row[k][i] for k in names} for i in range(len(row[names[0]]))])
    return packs


def empty_row(path: str, output: str, error: str = "", skipped: str = "") -> dict:
    """A row with no pixels: one that failed (`error`), is skipped, or is not decoded yet."""
    return {
        "path": path, "output": output, "pixels": b"", "height": 0, "width": 0, "channels": 0, "alpha": b"", "icc": b"",
        "exif": b"", "xmp": b"", "envelope": b"", "notes": "", "quality": NO_QUALITY, "chroma_quality": NO_QUALITY, "subsampling": -1, "format": "", "tile": WHOLE, "tiles": 0, "crop": [], "error": error, "skipped": skipped,
        "passed": "", "node": "", "data": b"", "written": False,
    }


def pending_decode(row: dict) -> bool:
    """The row holds an image's file bytes, to be decoded and restored."""
    return bool(row["data"]) and not (len(row["pixels"]) or row["error"] or row["skipped"] or row["passed"])


def in_groups(rows: list[dict], pixels: int = PACK_PIXELS):
    """Consecutive rows in groups of about `pixels` (by weight; one larger image alone)."""
    group, held = [], 0
    for row in rows:
        if group and held + weight(row) > pixels:
            yield group
            group, held = [], 0
        group.append(row)
        held += weight(row)
    if group:
        yield group


def weight(row: dict) -> int:
    """What a row adds to its pack: its pixels, decoded or to be (a passed-through file was written
    by its read task and carries none, nor does a skipped or failed row)."""
    return int(row["height"]) * int(row["width"]) if len(row["pixels"]) or pending_decode(row) else 0


def to_row(path: str, output: str, image: Optional[DecodedImage], quality: Optional[int] = None, chroma_quality: Optional[int] = None,
           subsampling: Optional[str] = None) -> dict:
    """image: its pixels and metadata (None: not decoded yet); quality: the IJG quality to restore at
    (the file's tables' unless overridden), None when it has none; chroma_quality, subsampling: the
    file's chroma coding ('4:2:0', ...), None if unknown."""
    row = empty_row(path, output)
    if image is not None:
        row.update(image_fields(image, as_bytes=True))
    row.update(
        quality=NO_QUALITY if quality is None else int(quality),
        chroma_quality=NO_QUALITY if chroma_quality is None else int(chroma_quality),
        subsampling=SUBSAMPLING_CODES.get(subsampling or "", -1),
    )
    return row


def image_fields(image: DecodedImage, as_bytes: bool) -> dict:
    """The row fields of a decoded image. as_bytes=False: its pixels stay a numpy array (no copy),
    for a row that never leaves its process (an image the actor decodes, restores and writes)."""
    h, w = image.pixels.shape[:2]
    return dict(pixels=image.pixels.tobytes() if as_bytes else image.pixels, height=h, width=w, channels=3 if image.is_color else 1,
                alpha=b"" if image.alpha is None else image.alpha.tobytes(), icc=image.icc or b"", exif=image.exif or b"",
                xmp=image.xmp or b"", envelope=image.envelope.to_bytes() if image.envelope else b"", notes=join_notes(image.notes))


def row_coding(row: dict):
    """What the row's network is conditioned on: None without a quality, else the coding
    (carray.quality.coding: luma quality, chroma quality, subsampling code)."""
    if int(row["quality"]) == NO_QUALITY:
        return None
    return coding(int(row["quality"]), int(row["chroma_quality"]), int(row["subsampling"]))


def from_row(row: dict) -> DecodedImage:
    """The row's image, pixels as the file stores them (the job never applies the orientation
    before restoring: carray.images.decode_image), with its metadata. A view of the row's pixels
    (bytes or a numpy array), not a copy."""
    h, w, c = int(row["height"]), int(row["width"]), int(row["channels"])
    shape = (h, w) if c == 1 else (h, w, c)
    pixels = np.frombuffer(row["pixels"], np.uint8).reshape(shape)
    alpha = np.frombuffer(row["alpha"], np.uint8).reshape(h, w) if len(row["alpha"]) else None
    return DecodedImage(pixels=pixels, alpha=alpha, icc=bytes(row["icc"]) or None, exif=bytes(row["exif"]) or None,
                        xmp=bytes(row["xmp"]) or None, envelope=Envelope.from_bytes(row["envelope"]), upright=False,
                        notes=split_notes(row["notes"]))


def join_notes(notes) -> str:
    return "\n".join(notes)


def split_notes(text: str) -> tuple:
    return tuple(text.split("\n")) if text else ()
