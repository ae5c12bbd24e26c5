"""A JPEG's metadata carried into its restored file byte for byte. No Ray here.

Restoring changes pixels, nothing else, so a restored JPEG keeps every segment of its input that the
pixels do not invalidate, as its own bytes and in its order: EXIF (maker notes keep their offsets,
since nothing in it is rewritten), XMP and extended XMP, IPTC and Photoshop's APP13, ICC, JFIF,
comments, and every other APPn (FlashPix, FLIR, GoPro, MPF...); and whatever follows the image's end
(the other images of a multi-picture file, a motion photo's video, a camera's trailer). The pixels are
restored in the orientation they are stored in, so EXIF's Orientation stays true as it is.

What changes, on purpose:
- Adobe's APP14 is not carried: it tells a decoder how the *old* encoder transformed colours (RGB,
  YCbCr or YCCK); the new image data is YCbCr, which decoders assume without it.
- An ICC profile of a CMYK input is not carried: the restored pixels are RGB (images.decode_image).
- An MPF index (multi-picture files: stereo frames, gain maps, depth maps) gets the new sizes and
  offsets of its images: the first image's size is the restored one's, the others sit after it,
  byte for byte as they were. An index that did not describe the input either (it points outside
  the images after the first) is kept as it was, and noted.

Pillow reads the segments (``JpegImageFile.applist``: every APPn and COM before the image data, in
order, already parsed by the decoder we use anyway) and MPF's count of images. No maintained Python
library writes arbitrary segments around a new encode, so this module does that itself: it writes
segments (marker, length, payload), finds where a JPEG's entropy-coded data ends (for the trailer),
and rewrites MPF's size and offset fields in place. Nothing else of any tag is parsed, so a broken tag
can never fail a photo.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Optional

import numpy as np

SOI, EOI, SOS = b"\xff\xd8", 0xD9, 0xDA  # start and end of image, start of scan
COM = 0xFE
APP0 = 0xE0
_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # TEM and RSTn: markers without a length
MPF_TAG = b"MPF\x00"
_MP_ENTRY = 0xB002  # the MP Index IFD's tag whose value holds one 16-byte entry per image


class MetadataError(ValueError):
    """A segment that cannot be carried as it is; the message says which and why."""


@dataclass(frozen=True)
class Envelope:
    """What surrounds a JPEG's image data, to wrap around the restored image's data.

    segments: the input's APPn and COM segments to carry, as they are in the file (0xFF, marker,
    big-endian length, payload), in their order. trailer: the bytes after the image's EOI marker.
    trailer_at: where the trailer started in the input; mpf_at: where its MPF index's TIFF header
    was (Pillow's ``info["mpoffset"]``), -1 without one. MPF offsets are rebased from these two.
    """

    segments: bytes = b""
    trailer: bytes = b""
    trailer_at: int = 0
    mpf_at: int = -1

    def to_bytes(self) -> bytes:
        """One self-describing blob (for a row's binary column or a tiles folder)."""
        return struct.pack(">QQq", len(self.segments), self.trailer_at, self.mpf_at) + self.segments + self.trailer

    @classmethod
    def from_bytes(cls, blob: bytes) -> Optional["Envelope"]:
        if not blob:
            return None
        length, trailer_at, mpf_at = struct.unpack_from(">QQq", blob)
        return cls(bytes(blob[24 : 24 + length]), bytes(blob[24 + length :]), trailer_at, mpf_at)


def segment(marker: int, payload: bytes) -> bytes:
    """One marker segment as a file holds it (payloads over 65,533 bytes do not fit one)."""
    if len(payload) > 65533:
        raise MetadataError(f"a {marker_name(marker)} segment of {len(payload)} bytes does not fit one JPEG segment")
    return bytes((0xFF, marker)) + struct.pack(">H", len(payload) + 2) + payload


def marker_name(marker: int) -> str:
    return "COM" if marker == COM else f"APP{marker - APP0}" if APP0 <= marker <= APP0 + 15 else f"0x{marker:02X}"


def _marker_of(name: str) -> int:
    return COM if name == "COM" else APP0 + int(name[3:])


def read_envelope(data: bytes, applist: list[tuple[str, bytes]], cmyk: bool = False) -> tuple[Envelope, list[str]]:
    """A JPEG's bytes and Pillow's ``applist`` of it -> (what to carry, notes on what was not).
    `cmyk`: its pixels were CMYK and are restored as RGB (its ICC profile no longer applies)."""
    notes, kept = [], []
    for name, payload in applist:
        marker = _marker_of(name)
        if marker == APP0 + 14 and payload.startswith(b"Adobe"):
            continue  # the old encoder's colour transform: the new data says its own (module doc)
        if cmyk and marker == APP0 + 2 and payload.startswith(b"ICC_PROFILE\x00"):
            if not notes:
                notes.append("ICC profile not kept: it describes CMYK, the restored pixels are RGB")
            continue
        kept.append(segment(marker, payload))
    end, mpf_at = _walk(data)
    return Envelope(b"".join(kept), data[end:], end, mpf_at), notes


def end_of_image(data: bytes) -> int:
    """The offset just past a JPEG's EOI marker (where a trailer starts); len(data) if it has none."""
    return _walk(data)[0]


def _walk(data: bytes) -> tuple[int, int]:
    """(end of the image: just past its EOI, or len(data); where its first MPF index's TIFF header
    is, or -1). Walks the segments and, after each SOS, the entropy-coded data (where 0xFF is
    followed by 0x00 or a restart marker), as decoders do; progressive files have several scans."""
    pos, n, mpf_at = 2, len(data), -1
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return n, mpf_at  # not at a marker: a file we cannot walk keeps no trailer apart
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == EOI:
            return pos + 2, mpf_at
        if marker in _STANDALONE:
            pos += 2
            continue
        if marker == APP0 + 2 and mpf_at < 0 and data[pos + 4 : pos + 8] == MPF_TAG:
            mpf_at = pos + 8
        pos += 2 + struct.unpack_from(">H", data, pos + 2)[0]
        if marker == SOS:
            pos = _end_of_scan(data, pos)
    return n, mpf_at


# In entropy-coded data 0xFF is followed by 0x00 (a stuffed byte), a restart marker or more 0xFF
# (fill); anything else ends the scan. Found with numpy over the whole scan at once: a Python loop
# over every 0xFF of a 9 MP photo's scan cost 12 ms, a regular expression 5.5 ms, this 0.5 ms.
_IN_SCAN = np.zeros(256, bool)
_IN_SCAN[[0x00, *range(0xD0, 0xD8), 0xFF]] = True


def _end_of_scan(data: bytes, pos: int, chunk: int = 1 << 16) -> int:
    """From the start of a scan's entropy-coded data to the marker after it (its last 0xFF). Looked
    for in windows that double from `chunk` bytes, so that each of a progressive JPEG's scans costs
    its own length, not the rest of the file's."""
    whole = np.frombuffer(data, np.uint8)
    while pos < len(data) - 1:
        end = min(len(data), pos + chunk + 1)  # one byte past the window: a 0xFF at its edge sees what follows
        window = whole[pos:end]
        ffs = np.flatnonzero(window[:-1] == 0xFF)
        ends = ffs[~_IN_SCAN[window[ffs + 1]]]
        if len(ends):
            return pos + int(ends[0])
        pos, chunk = end - 1, chunk * 2
    return len(data)


def wrap(encoded: bytes, envelope: Envelope) -> tuple[bytes, list[str]]:
    """A freshly encoded JPEG (Pillow's: SOI, its own JFIF APP0, the image) -> (the same image data
    inside the input's segments and followed by its trailer, MPF's offsets made right; notes on
    what could not be kept: an MPF index that does not describe the file is left out)."""
    if encoded[:2] != SOI:
        raise MetadataError("the encoder's output does not start with SOI")
    image_data = encoded[_after_app_segments(encoded):]
    try:
        return _assemble(image_data, envelope), []
    except MetadataError as exc:  # it did not describe the input either: kept as it was
        return _assemble(image_data, envelope, rebase=False), [f"MPF index kept as it was, not rebased: {exc}"]


def _assemble(image_data: bytes, envelope: Envelope, rebase: bool = True) -> bytes:
    out = bytearray(SOI + envelope.segments)
    out += image_data
    primary_end = len(out)
    out += envelope.trailer
    if rebase:
        _rebase_mpf(out, len(SOI), primary_end, envelope)
    return bytes(out)


def split_segments(segments: bytes) -> list[bytes]:
    """Raw segments (as :attr:`Envelope.segments` holds them) one by one."""
    return [bytes(segments[at:end]) for at, _, _, end in _segments_in(segments, 0, len(segments))]


def _after_app_segments(jpeg: bytes) -> int:
    """Offset of the first segment after SOI that is not APPn or COM (the image data's first)."""
    pos = 2
    while jpeg[pos] == 0xFF and (APP0 <= jpeg[pos + 1] <= APP0 + 15 or jpeg[pos + 1] == COM):
        pos += 2 + struct.unpack_from(">H", jpeg, pos + 2)[0]
    return pos


def _segments_in(jpeg, start: int, end: int):
    """(offset, marker, payload start, segment end) of the segments between `start` and `end`."""
    pos = start
    while pos + 4 <= end:
        length = struct.unpack_from(">H", jpeg, pos + 2)[0]
        yield pos, jpeg[pos + 1], pos + 4, pos + 2 + length
        pos += 2 + length


def _rebase_mpf(out: bytearray, segments_at: int, primary_end: int, envelope: Envelope) -> None:
    """Rewrite the MP entries of the MPF segment in `out` (in place): the first image's size becomes
    the restored one's; each other image moves with the trailer that holds it. An index that points
    anywhere else raises MetadataError (the caller leaves it out and says so)."""
    for _, marker, start, end in _segments_in(out, segments_at, segments_at + len(envelope.segments)):
        if marker != APP0 + 2 or out[start : start + 4] != MPF_TAG:
            continue
        if envelope.mpf_at < 0:
            raise MetadataError("its MPF index was not where the decoder looked")
        header = start + 4  # MPF offsets count from its TIFF header
        endian, entries = _mp_entries(out, header, min(end, len(out)))
        for at in entries:
            size, offset = struct.unpack_from(endian + "LL", out, at + 4)
            if offset == 0:  # the first image: the one restored
                struct.pack_into(endian + "L", out, at + 4, primary_end)
                continue
            in_trailer = envelope.mpf_at + offset - envelope.trailer_at
            if in_trailer < 0 or in_trailer + size > len(envelope.trailer):
                raise MetadataError("its MPF index points outside the images that follow the first")
            struct.pack_into(endian + "L", out, at + 8, primary_end + in_trailer - header)
        return


def _mp_entries(buf: bytearray, header: int, end: int) -> tuple[str, list[int]]:
    """(struct byte order, offsets of the 16-byte MP entries) of the MPF index at `header`."""
    order = bytes(buf[header : header + 2])
    if order not in (b"II", b"MM"):
        raise MetadataError("its MPF index has no byte order")
    endian = "<" if order == b"II" else ">"
    try:
        (ifd,) = struct.unpack_from(endian + "L", buf, header + 4)
        (count,) = struct.unpack_from(endian + "H", buf, header + ifd)
        for i in range(count):
            tag, _type, n, value = struct.unpack_from(endian + "HHLL", buf, header + ifd + 2 + 12 * i)
            if tag == _MP_ENTRY:
                if header + value + n > end or n % 16:
                    raise MetadataError("its MPF entries run past their segment")
                return endian, [header + value + 16 * k for k in range(n // 16)]
    except struct.error:
        raise MetadataError("its MPF index is cut short") from None
    return endian, []
