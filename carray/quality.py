"""How a JPEG was compressed, read from its quantization tables. No Ray here.

Every JPEG carries the tables its encoder divided the DCT coefficients by. Those tables, not the
file's name or a guess from its pixels, say how strong the artifacts are. We summarise them as the
IJG (libjpeg) quality whose luminance table is nearest in log scale, so tables from libjpeg/Pillow
map back to exactly the quality they were made at and other encoders' tables (cameras, Photoshop)
to the libjpeg quality that quantizes as coarsely. The networks are conditioned on that number.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

#: The JPEG standard's (Annex K) luminance table in natural (row-major) order, the base of IJG quality.
STANDARD_LUMA = np.array(
    [16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
     14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
     49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99],
    dtype=np.float64,
)

#: The standard's chrominance table (Annex K), natural order: the base of IJG quality for Cb and Cr.
STANDARD_CHROMA = np.array(
    [17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99, 24, 26, 56, 99, 99, 99, 99, 99,
     47, 66, 99, 99, 99, 99, 99, 99] + [99] * 32,
    dtype=np.float64,
)

QUALITIES = np.arange(1, 101)

#: Chroma subsampling as Pillow numbers it (``save(subsampling=...)``) and as the networks see it.
SUBSAMPLING_CODES = {"4:4:4": 0, "4:2:2": 1, "4:2:0": 2}
DEFAULT_SUBSAMPLING = SUBSAMPLING_CODES["4:2:0"]  # libjpeg's and Pillow's default for colour


def coding(quality: int, chroma_quality: Optional[int] = None, subsampling=None) -> tuple[int, int, int]:
    """How a JPEG was coded, as the networks that see it take it (carray/model.py): (luma quality,
    chroma quality, subsampling code). Unknown parts (a gray JPEG, a file without tables, a
    subsampling Pillow does not name) are libjpeg's defaults: chroma at the luma quality, 4:2:0.
    `subsampling`: a code, or a name such as '4:2:2' (carray.images.ImageHeader.subsampling)."""
    if isinstance(subsampling, str) or subsampling is None:
        subsampling = SUBSAMPLING_CODES.get(subsampling or "", -1)
    chroma = int(chroma_quality) if chroma_quality is not None and int(chroma_quality) >= 1 else int(quality)
    return int(quality), chroma, int(subsampling) if int(subsampling) >= 0 else DEFAULT_SUBSAMPLING


def ijg_table(quality: int, base: np.ndarray = STANDARD_LUMA) -> np.ndarray:
    """The table libjpeg's jpeg_set_quality(quality, force_baseline=TRUE) makes from `base`."""
    q = int(np.clip(quality, 1, 100))
    scale = 5000 // q if q < 50 else 200 - 2 * q  # libjpeg's jpeg_quality_scaling: integer division
    return np.clip(np.floor((base * scale + 50) / 100), 1, 255)


_LOG_TABLES = {base: np.log(np.stack([ijg_table(q, table) for q in QUALITIES])) for base, table in (("luma", STANDARD_LUMA), ("chroma", STANDARD_CHROMA))}


def quality_from_tables(tables: dict, plane: str = "luma") -> Optional[int]:
    """Pillow's ``Image.quantization`` ({table id: 64 values, natural order}) -> IJG quality 1..100.

    plane 'luma' reads the luminance table (id 0), 'chroma' the chrominance one (id 1), each against
    its own standard base table. Returns None when there is no usable table.
    """
    table = tables.get(0 if plane == "luma" else 1) if tables else None
    if table is None or len(table) != 64:
        return None
    distance = np.abs(_LOG_TABLES[plane] - np.log(np.clip(np.asarray(table, dtype=np.float64), 1, None))).sum(axis=1)
    return int(QUALITIES[int(np.argmin(distance))])


#: Default for :attr:`Policy.pass_through_from`: JPEGs of this IJG quality or above are left as
#: they are. Chosen on held-out training images (docs/models.md): above it no model here gains.
PASS_THROUGH_FROM = 95


@dataclass(frozen=True)
class Policy:
    """Which inputs to restore, and at what quality. The default never makes an image worse:

    - a JPEG is restored at the quality its own quantization tables say (carray/quality.py);
    - a JPEG at ``pass_through_from`` or above is passed through untouched (nothing to gain);
    - an image without tables (PNG, WebP, BMP, TIFF) is passed through: it may be lossless;
    - ``override`` (--quality-override Q) restores every image as if its tables said Q: for
      JPEGs re-saved at a high quality after heavy compression (their tables lie), edited ones,
      or screenshots of JPEGs saved as PNG. Higher Q, gentler restoration.
    """

    override: Optional[int] = None
    pass_through_from: int = PASS_THROUGH_FROM

    def decide(self, quality: Optional[int]) -> tuple[Optional[int], str]:
        """The file's IJG quality (None: no tables) -> (quality to restore at, "") or
        (None, why the image is passed through: one of the PASSED_* reasons)."""
        if self.override is not None:
            return int(self.override), ""
        if quality is None:
            return None, PASSED_NOT_JPEG
        if quality >= self.pass_through_from:
            return None, PASSED_HIGH_QUALITY.format(self.pass_through_from)
        return quality, ""

    def chroma_quality(self, restore_at: Optional[int], file_chroma: Optional[int]) -> Optional[int]:
        """The chroma quality a network that sees the coding is given: the file's chroma table's, or
        under ``override`` the quality restored at (tables that lie about the luma lie about the chroma)."""
        return file_chroma if self.override is None else restore_at


PASSED_NOT_JPEG = "not a JPEG: no quantization tables, may be lossless (--quality-override Q restores it)"
PASSED_HIGH_QUALITY = "JPEG quality {} or above: no artifacts worth removing (--quality-override Q restores it)"
