"""Training pairs from images: split, qualities, (compressed, original) patches. No Ray here.

Column vocabulary, used by prep, train and the tests alike (see :data:`COLUMNS`):
``compressed`` and ``original`` are uint8 patches shaped (channels, p, p) — channels first, ready
for the network — stored in Parquet as fixed-size binary values of channels*p*p bytes (one value
per patch writes and reads several times faster than a list of bytes); the width alone tells the
shape, since c*p*p is a perfect square for gray and three times one for colour. ``quality`` is the IJG quality of the (last) compression, read from the JPEG's own tables
(carray/quality.py; -1 when a --pairs JPEG has none); ``first_quality`` the quality of an earlier
compression for double-compressed patches, else -1; ``chroma_quality`` and ``subsampling`` how the
JPEG coded colour: its chrominance table's IJG quality and its chroma subsampling
(:data:`carray.quality.SUBSAMPLING_CODES`: 0 = 4:4:4, 1 = 4:2:2, 2 = 4:2:0), both -1 for gray patches
(Parquet written before they existed lacks both: read as libjpeg's default, the luma quality and
4:2:0); ``image`` is the path relative to the input root; ``y`` and ``x`` the patch's top-left corner
in the original.
"""
from __future__ import annotations

import hashlib
import random
from typing import Optional, Sequence

import numpy as np
import pyarrow as pa

from . import jpeg
from .images import ImageError, decode_image, read_header, to_gray
from .patches import extract_patches
from .quality import SUBSAMPLING_CODES, coding

COMPRESSED, ORIGINAL, QUALITY, FIRST_QUALITY, IMAGE, Y, X = "compressed", "original", "quality", "first_quality", "image", "y", "x"
CHROMA_QUALITY, SUBSAMPLING = "chroma_quality", "subsampling"
COLUMNS = (COMPRESSED, ORIGINAL, QUALITY, FIRST_QUALITY, CHROMA_QUALITY, SUBSAMPLING, IMAGE, Y, X)
UNKNOWN_QUALITY = -1
SPLITS = ("train", "val", "test")


def _unit_hash(text: str) -> float:
    """A stable number in [0, 1) from text (sha1, not Python's salted hash())."""
    return int.from_bytes(hashlib.sha1(text.encode("utf-8")).digest()[:8], "big") / 2**64


def assign_split(relative_path: str, shares: Sequence[float], seed: int = 0) -> str:
    """'train', 'val' or 'test' for an image, decided by its relative path alone, so an image keeps
    its split when others are added and when the job runs again."""
    u = _unit_hash(f"{seed}:{relative_path}")
    edge = 0.0
    for name, share in zip(SPLITS, shares):
        edge += share
        if u < edge:
            return name
    return SPLITS[-1]


def qualities_for(
    relative_path: str,
    fixed: Sequence[int],
    ranges: Sequence[tuple[int, int]],
    samples: int = 1,
    seed: int = 0,
) -> list[int]:
    """The JPEG qualities one image is compressed at: every fixed value, plus `samples` values drawn
    from each range by a generator seeded with the image's path (the same on every re-run)."""
    rng = random.Random(f"{seed}:{relative_path}")
    drawn = [rng.randint(lo, hi) for lo, hi in ranges for _ in range(samples)]
    return sorted(set(fixed) | set(drawn))


def chroma_plan(relative_path: str, quality: int, share: float, seed: int = 0) -> tuple[Optional[int], Optional[int]]:
    """How one colour compression of an image codes its chroma: (chroma quality, subsampling code),
    or (None, None) for libjpeg's default (the chroma table at the luma quality, 4:2:0). With
    probability `share` (drawn by a generator seeded with the path and the quality) the coding is
    varied as cameras and editors vary it: 4:4:4, 4:2:2 or 4:2:0, and a chroma table 30 qualities
    below to 30 above the luma's."""
    rng = random.Random(f"{seed}:chroma:{quality}:{relative_path}")
    if rng.random() >= share:
        return None, None
    return int(np.clip(quality + rng.randint(-30, 30), 1, 100)), rng.randint(0, 2)


def double_plan(
    relative_path: str,
    first: Sequence[tuple[int, int]],
    second: Sequence[int],
    seed: int = 0,
) -> tuple[int, int, tuple[int, int]]:
    """One double compression for an image: (first quality, second quality, (dy, dx) shift), drawn
    by a generator seeded with its path. The shift is 1..7 pixels on each axis, so the second
    compression's 8x8 grid never lines up with the first's (FBCNN's non-aligned double JPEG)."""
    rng = random.Random(f"{seed}:double:{relative_path}")
    lo, hi = first[rng.randrange(len(first))]
    return rng.randint(lo, hi), second[rng.randrange(len(second))], (rng.randint(1, 7), rng.randint(1, 7))


def double_compress(pixels: np.ndarray, first: int, second: int, shift: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """:func:`carray.jpeg.compress_twice`, decoded: (the cropped original, the double-compressed
    image), same shape."""
    cropped, data = jpeg.compress_twice(pixels, first, second, shift)
    return cropped, jpeg.decompress(data)


def downscale(pixels: np.ndarray, factor: float) -> np.ndarray:
    """Shrink a clean image by `factor` (Pillow's antialiased Lanczos). Why: photographs that were
    JPEGs before they became PNGs (CBSD68, CBSD432, Urban100) carry that JPEG's 8x8 grid and noise;
    a model trained to reproduce them cannot beat high qualities. Averaging 2x2 or more pixels
    hides the grid and cuts its noise. factor <= 1 returns the pixels unchanged."""
    if factor <= 1:
        return pixels
    from PIL import Image

    h, w = pixels.shape[:2]
    size = (max(1, round(w / factor)), max(1, round(h / factor)))
    return np.asarray(Image.fromarray(pixels).resize(size, Image.LANCZOS, reducing_gap=None))


def prepare_pixels(pixels: np.ndarray, color: bool) -> np.ndarray:
    """Gray mode: the MATLAB Y channel (h, w). Colour mode: RGB (h, w, 3), gray images repeated."""
    if color:
        return pixels if pixels.ndim == 3 else np.repeat(pixels[..., None], 3, axis=2)
    return to_gray(pixels)


def _channels_first(patches: np.ndarray) -> np.ndarray:
    return patches[:, None] if patches.ndim == 3 else patches.transpose(0, 3, 1, 2)


def patch_pairs(
    original: np.ndarray,
    compressed: dict[int, np.ndarray],
    image: str,
    size: int,
    stride: int,
    first_quality: int = UNKNOWN_QUALITY,
    codings: Optional[dict[int, tuple[Optional[int], Optional[int]]]] = None,
) -> dict[str, np.ndarray]:
    """Patches cut at the same places from the original and from each compressed version.

    original: uint8 (h, w) or (h, w, c); compressed: quality -> array of the same shape.
    first_quality: the earlier compression's quality when these versions were compressed twice.
    codings: quality -> (chroma quality, subsampling code) of colour versions coded otherwise than
    libjpeg's default (:func:`chroma_plan`); the others are recorded as the default.
    Returns the columns of :data:`COLUMNS`, one row per (quality, patch).
    Raises ImageError when the image is smaller than one patch.
    """
    if original.shape[0] < size or original.shape[1] < size:
        raise ImageError(f"{original.shape[1]}x{original.shape[0]} is smaller than one {size}x{size} patch")
    clean, origins = extract_patches(original, size, stride)
    clean = _channels_first(clean)
    columns: dict[str, list] = {c: [] for c in COLUMNS}
    for quality, degraded in compressed.items():
        if degraded.shape != original.shape:
            raise ImageError(f"sizes differ: original {original.shape[:2]} vs compressed {degraded.shape[:2]}")
        columns[COMPRESSED].append(_channels_first(extract_patches(degraded, size, stride)[0]))
        columns[ORIGINAL].append(clean)
        columns[QUALITY].append(np.full(len(origins), quality, np.int16))
        columns[FIRST_QUALITY].append(np.full(len(origins), first_quality, np.int16))
        chroma, subsampling = _coding_of(original, quality, (codings or {}).get(quality, (None, None)))
        columns[CHROMA_QUALITY].append(np.full(len(origins), chroma, np.int16))
        columns[SUBSAMPLING].append(np.full(len(origins), subsampling, np.int8))
        columns[Y].append(origins[:, 0])
        columns[X].append(origins[:, 1])
        columns[IMAGE].append(np.full(len(origins), image, dtype=object))
    return {c: np.concatenate(v) for c, v in columns.items()}


def _coding_of(original: np.ndarray, quality: int, chroma_coding: tuple[Optional[int], Optional[int]]) -> tuple[int, int]:
    """The (chroma quality, subsampling code) columns of one compressed version (unknown parts:
    libjpeg's default, :func:`carray.quality.coding`): -1, -1 for gray."""
    if original.ndim == 2 or original.shape[2] == 1:
        return UNKNOWN_QUALITY, -1
    _, chroma, subsampling = coding(quality, *chroma_coding)
    return chroma, subsampling


def pairs_from_clean(
    data: bytes,
    image: str,
    qualities: Sequence[int],
    color: bool,
    size: int,
    stride: int,
    max_pixels: Optional[int] = None,
    double: Optional[tuple[int, int, tuple[int, int]]] = None,
    shrink: float = 1.0,
    vary_chroma: float = 0.0,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """A clean image's bytes -> patch pairs at each JPEG quality (compressed here, in memory), plus
    one double-compressed version when `double` = (first, second, shift) is given (see
    :func:`double_plan`); its patch origins are in the cropped image's coordinates + the shift.
    `shrink` > 1: the clean image is first made smaller by that factor (:func:`downscale`).
    `vary_chroma`: the share of colour compressions whose chroma is coded otherwise than libjpeg's
    default (:func:`chroma_plan`)."""
    original = prepare_pixels(downscale(decode_image(data, max_pixels).pixels, shrink), color)
    codings = {q: chroma_plan(image, q, vary_chroma, seed) for q in qualities} if color and vary_chroma > 0 else {}
    compressed = {q: jpeg.roundtrip(original, q, *codings.get(q, (None, None))) for q in qualities}
    rows = patch_pairs(original, compressed, image, size, stride, codings=codings)
    if double is None:
        return rows
    first, second, (dy, dx) = double
    cropped, twice = double_compress(original, first, second, (dy, dx))
    if min(cropped.shape[:2]) < size:
        return rows
    extra = patch_pairs(cropped, {second: twice}, image, size, stride, first_quality=first)
    extra[Y], extra[X] = extra[Y] + dy, extra[X] + dx
    return {c: np.concatenate([rows[c], extra[c]]) for c in COLUMNS}


def pairs_from_files(
    original_data: bytes,
    jpeg_data: bytes,
    image: str,
    color: bool,
    size: int,
    stride: int,
    max_pixels: Optional[int] = None,
) -> dict[str, np.ndarray]:
    """An explicit (lossless, JPEG) pair's bytes -> patch pairs, the JPEG used as it is; its
    quality is read from its own quantization tables."""
    original = prepare_pixels(decode_image(original_data, max_pixels).pixels, color)
    try:
        degraded = prepare_pixels(decode_image(jpeg_data, max_pixels).pixels, color)
    except ImageError as exc:
        raise ImageError(f"its JPEG: {exc}") from None
    header = read_header(jpeg_data, max_pixels)
    quality = UNKNOWN_QUALITY if header.quality is None else header.quality
    chroma_coding = (header.chroma_quality, SUBSAMPLING_CODES.get(header.subsampling or ""))
    return patch_pairs(original, {quality: degraded}, image, size, stride, codings={quality: chroma_coding})


def to_arrow(rows: dict[str, np.ndarray]) -> pa.Table:
    """Columns from :func:`patch_pairs` -> an Arrow table with patches as fixed-size binary."""

    def patches(a: np.ndarray) -> pa.Array:
        width = int(np.prod(a.shape[1:]))
        data = pa.py_buffer(np.ascontiguousarray(a, dtype=np.uint8))  # zero-copy
        return pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), len(a), [None, data])

    return pa.table(
        {
            COMPRESSED: patches(rows[COMPRESSED]),
            ORIGINAL: patches(rows[ORIGINAL]),
            QUALITY: pa.array(rows[QUALITY], pa.int16()),
            FIRST_QUALITY: pa.array(rows[FIRST_QUALITY], pa.int16()),
            CHROMA_QUALITY: pa.array(rows[CHROMA_QUALITY], pa.int16()),
            SUBSAMPLING: pa.array(rows[SUBSAMPLING], pa.int8()),
            IMAGE: pa.array(rows[IMAGE].tolist(), pa.string()),
            Y: pa.array(rows[Y], pa.int32()),
            X: pa.array(rows[X], pa.int32()),
        }
    )


def patch_shape(width: int) -> tuple[int, int, int]:
    """Bytes per patch -> (channels, p, p). Raises ValueError for a width no patch has."""
    for channels in (1, 3):
        side = int(round((width / channels) ** 0.5))
        if side * side * channels == width and side > 0:
            return channels, side, side
    raise ValueError(f"{width} bytes is not a square gray or colour patch")


def patches_from_arrow(column) -> np.ndarray:
    """A fixed-size binary column (Array or ChunkedArray) -> uint8 (n, channels, p, p), no copy
    when the column is one chunk."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    width = array.type.byte_width
    data = np.frombuffer(array.buffers()[1], np.uint8)
    data = data[array.offset * width : (array.offset + len(array)) * width]
    return data.reshape((len(array),) + patch_shape(width))
