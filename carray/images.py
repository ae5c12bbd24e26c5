"""Decoding, encoding and colour conversion. No Ray here.

Array contract: images are numpy ``uint8`` arrays, shape ``(h, w)`` for gray or ``(h, w, 3)``
for RGB, unless a function says otherwise. Alpha is never restored: it is kept aside in
:class:`DecodedImage` and put back when the output format can hold it.
"""
from __future__ import annotations

import io
import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Callable, Optional

import numpy as np
from PIL import Image, ImageOps

try:
    import simplejpeg
except ImportError:  # a platform without its wheel: Pillow decodes and encodes every JPEG (the same pixels, slower)
    simplejpeg = None

from .metadata import Envelope, read_envelope, wrap
from .quality import quality_from_tables

# Pillow keeps this many freed 16 MB blocks of image memory for the next image (its default, 0, gives
# every block back): a 9 MP photo decoded and encoded in fresh pages cost this VM 40 ms more than in
# reused ones (72 against 31 ms to decode; bench/infer.py --cases ceiling). At most 128 MB a process.
if "PILLOW_BLOCKS_MAX" not in os.environ:
    Image.core.set_blocks_max(8)

#: Default decompression-bomb limit: 256 megapixels.
DEFAULT_MAX_PIXELS = 256_000_000

#: File extensions treated as images when listing folders and buckets.
IMAGE_EXTENSIONS = (".png", ".bmp", ".tif", ".tiff", ".jpg", ".jpeg", ".jpe", ".jfif", ".mpo", ".webp")

#: Pillow's names of the files restored as JPEGs: MPO is a JPEG whose MPF index lists more images
#: after it (stereo frames, depth or gain maps); its first image is the one restored.
JPEG_FORMATS = ("JPEG", "MPO")

# Output format name -> (Pillow format, file extension).
OUTPUT_FORMATS = {"png": ("PNG", ".png"), "jpeg": ("JPEG", ".jpg"), "webp": ("WEBP", ".webp")}


class ImageError(ValueError):
    """An input that cannot be used; the message says why (the caller adds the path)."""


@dataclass
class DecodedImage:
    """A decoded image ready for restoration, with the metadata its output carries.

    pixels: uint8, (h, w) gray or (h, w, 3) RGB; upright (EXIF orientation applied) when `upright`,
    else as the file stores them, the orientation still to apply (by a viewer that reads the EXIF
    of a JPEG output, or by :func:`encode_image` for PNG and WebP).
    alpha: uint8 (h, w) or None — the transparency the input had, kept aside untouched.
    icc: the ICC profile bytes to carry to the output (dropped when colours were converted).
    exif: EXIF bytes ("Exif\\0\\0" + TIFF); as the file holds them unless `upright` (then without
    the orientation), None without or when unreadable. xmp: the XMP packet, or None.
    envelope: a JPEG input's segments and trailer, carried byte for byte into a JPEG output
    (carray/metadata.py); None for other inputs.
    notes: what of the input's metadata could not be kept, one reason each.
    """

    pixels: np.ndarray
    alpha: Optional[np.ndarray] = None
    icc: Optional[bytes] = None
    exif: Optional[bytes] = None
    xmp: Optional[bytes] = None
    envelope: Optional[Envelope] = None
    upright: bool = True
    notes: tuple = ()

    @property
    def is_color(self) -> bool:
        return self.pixels.ndim == 3


@contextmanager
def _pixel_limit(max_pixels: Optional[int]):
    """Let Pillow open images up to our own limit; we enforce the limit ourselves.

    Pillow raises at 2x its global MAX_IMAGE_PIXELS (about 179 MP), which would override a user's
    larger --max-pixels, and warns at 1x, which we turn into our own clear error instead.
    """
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None if max_pixels is None else max(max_pixels, 1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def _to_8bit(img: Image.Image) -> Image.Image:
    """16-bit and 32-bit integer gray -> 8-bit by scaling the full range (65535 -> 255)."""
    arr = np.asarray(img)
    if img.mode.startswith("I;16") or arr.max(initial=0) > 255:
        scaled = np.clip(np.round(arr.astype(np.float64) / 257.0), 0, 255)
    else:
        scaled = np.clip(arr, 0, 255)
    return Image.fromarray(scaled.astype(np.uint8), "L")


def _split_alpha(img: Image.Image) -> tuple[Image.Image, Optional[np.ndarray]]:
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA" if img.mode != "LA" else "LA")
        alpha = np.asarray(rgba.getchannel("A")).copy()
        base = rgba.convert("L" if img.mode == "LA" else "RGB")
        return base, alpha
    return img, None


def _normalize_mode(img: Image.Image) -> tuple[Image.Image, bool]:
    """Bring any Pillow mode to 'L' or 'RGB'. Returns (image, colours_were_converted)."""
    if img.mode in ("L", "RGB"):
        return img, False
    if img.mode == "1":
        return img.convert("L"), False
    if img.mode.startswith("I") or img.mode == "F":
        if img.mode == "F":
            raise ImageError("floating-point images are not supported")
        return _to_8bit(img), False
    if img.mode == "P":
        return img.convert("RGB"), False
    if img.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        # A CMYK profile no longer describes the RGB pixels, so the ICC is dropped.
        return img.convert("RGB"), True
    if img.mode.startswith("RGB"):  # RGBX, RGBa
        return img.convert("RGB"), False
    raise ImageError(f"unsupported image mode {img.mode!r}")


def _upright(img: Image.Image) -> tuple[Image.Image, list[str]]:
    """Apply the EXIF orientation to the pixels and remove it from the EXIF and XMP (Pillow's
    exif_transpose). An EXIF Pillow cannot read leaves the pixels as stored and is not kept: a tag
    never costs a photo."""
    try:
        with warnings.catch_warnings(record=True) as caught:  # Pillow's "Corrupt EXIF data" goes to the notes, not the console
            warnings.simplefilter("always")
            upright = ImageOps.exif_transpose(img)
    except Exception as exc:  # TypeError, SyntaxError, struct.error... from a broken EXIF
        img.info.pop("exif", None)
        return img, [f"EXIF unreadable ({type(exc).__name__}: {exc}): orientation not applied, EXIF not kept"]
    corrupt = [str(w.message) for w in caught if "EXIF" in str(w.message)]
    return upright, [f"EXIF partly unreadable ({corrupt[0].strip()}): what could be read is kept"] if corrupt else []


@dataclass(frozen=True)
class ImageHeader:
    """What an image file's header says, read without decoding its pixels.

    format: Pillow's format name ('JPEG', 'PNG', ...); width, height: as stored (before any EXIF
    rotation); quality: the IJG quality of a JPEG's luminance table (carray/quality.py), None without
    tables; subsampling: a JPEG's chroma subsampling ('4:2:0', '4:2:2', '4:4:4', 'gray'), else None;
    chroma_quality: the IJG quality of its chrominance table (None for gray JPEGs).
    """

    format: str
    width: int
    height: int
    quality: Optional[int] = None
    subsampling: Optional[str] = None
    chroma_quality: Optional[int] = None

    @property
    def megapixels(self) -> float:
        return self.width * self.height / 1e6


_SUBSAMPLING = {0: "4:4:4", 1: "4:2:2", 2: "4:2:0"}


def _open(data: bytes) -> Image.Image:
    """Image.open with our errors (the caller holds _pixel_limit)."""
    if not data:
        raise ImageError("empty file (0 bytes)")
    try:
        return Image.open(io.BytesIO(data))
    except Image.UnidentifiedImageError:
        raise ImageError("not an image Pillow can identify") from None
    except Image.DecompressionBombError as exc:
        raise ImageError(f"decompression bomb: {exc}") from None
    except Exception as exc:  # broken headers raise SyntaxError, OSError, struct.error...
        raise ImageError(f"cannot decode: {type(exc).__name__}: {exc}") from None


def _check_size(width: int, height: int, max_pixels: Optional[int]) -> None:
    if max_pixels is not None and width * height > max_pixels:
        raise ImageError(
            f"{width}x{height} = {width * height} pixels exceeds the limit of {max_pixels} "
            "(raise --max-pixels to allow it)"
        )
    if width < 1 or height < 1:
        raise ImageError(f"invalid size {width}x{height}")


def read_header(data: bytes, max_pixels: Optional[int] = None) -> ImageHeader:
    """Format, size, JPEG quality and chroma subsampling from the header alone (no pixel decoding:
    thousands of files per second). Raises ImageError as :func:`decode_image` does for input that
    is empty, not an image, or larger than `max_pixels` (None: no limit)."""
    with _pixel_limit(max_pixels):
        img = _open(data)
        with img:
            _check_size(*img.size, max_pixels)
            quality = subsampling = chroma = None
            if img.format in JPEG_FORMATS:
                tables = getattr(img, "quantization", None) or {}
                quality, chroma = quality_from_tables(tables), quality_from_tables(tables, "chroma")
                subsampling = "gray" if img.mode == "L" else _jpeg_subsampling(img)
            return ImageHeader(img.format or "?", img.size[0], img.size[1], quality, subsampling, chroma)


def jpeg_quality(data: bytes) -> Optional[int]:
    """The IJG quality of JPEG bytes (from the header alone, no decoding), or None for anything
    that is not a JPEG with tables (:func:`read_header`)."""
    try:
        return read_header(data).quality
    except ImageError:  # not an image at all: the decoder reports that, not us
        return None


def _jpeg_subsampling(img: Image.Image) -> Optional[str]:
    from PIL import JpegImagePlugin

    try:
        return _SUBSAMPLING.get(JpegImagePlugin.get_sampling(img))
    except Exception:  # an unusual layout (CMYK, odd factors): not one of the three
        return None


def decode_image(data: bytes, max_pixels: Optional[int] = DEFAULT_MAX_PIXELS, upright: bool = True,
                 allocate: Optional[Callable[[tuple], np.ndarray]] = None) -> DecodedImage:
    """Decode PNG, BMP, TIFF, JPEG (MPO: its first image) or WebP bytes into a :class:`DecodedImage`.

    `upright`: apply the EXIF orientation to the pixels (what a viewer shows). The infer job keeps
    them as stored: a JPEG is restored on the 8x8 grid it was coded on, and its EXIF stays as it is.
    Only pixels that cannot be decoded raise (ImageError, with the reason: empty, truncated,
    non-image or oversized input); metadata that cannot be read is noted and left out.

    `allocate(shape)`: where a JPEG decoded as stored puts its pixels, an uninitialised uint8 array
    of that shape (a restoring actor's reused buffers, carray.infer.memory.PixelBuffers).
    """
    with _pixel_limit(max_pixels):
        img = _open(data)
        _check_size(*img.size, max_pixels)
        decoded = None if upright else _decode_jpeg(img, data, allocate)
        try:
            if decoded is None:
                img.load()
        except ImageError:
            raise
        except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError... on bad data
            raise ImageError(f"cannot decode: {exc}") from None
    source, notes = img, []
    if upright:
        img, notes = _upright(img)
    icc, exif, xmp = img.info.get("icc_profile"), img.info.get("exif"), img.info.get("xmp")
    img, alpha = _split_alpha(img)
    base, converted = _normalize_mode(img)
    envelope = None
    if not upright and source.format in JPEG_FORMATS:
        envelope, kept_out = read_envelope(data, source.applist, cmyk=converted)
        notes += kept_out
    elif converted and icc:
        notes.append("ICC profile not kept: it describes CMYK, the restored pixels are RGB")
    return DecodedImage(
        pixels=_pixels_of(base) if decoded is None else decoded, alpha=alpha, icc=None if converted else icc, exif=exif or None,
        xmp=xmp or None, envelope=envelope, upright=upright, notes=tuple(notes),
    )


def _decode_jpeg(img: Image.Image, data: bytes, allocate: Optional[Callable[[tuple], np.ndarray]] = None) -> Optional[np.ndarray]:
    """An RGB or gray JPEG's pixels, decoded by libjpeg-turbo straight into a numpy array
    (simplejpeg): what Pillow decodes (the same library, IDCT and chroma upsampling; the header,
    metadata and checks stay Pillow's), without Pillow's copy into its own 4-byte pixels and out
    again (1.9 against 3.9 ms per MP, bench/infer.py --cases ceiling). None where Pillow decides:
    other formats, CMYK, and any file libjpeg-turbo warns about (a truncated or damaged scan is
    Pillow's to decode or refuse, as before)."""
    if simplejpeg is None or img.format not in JPEG_FORMATS or img.mode not in ("L", "RGB"):
        return None
    into = None if allocate is None else allocate((img.height, img.width, 1 if img.mode == "L" else 3))
    try:
        pixels = simplejpeg.decode_jpeg(data, colorspace="GRAY" if img.mode == "L" else "RGB", strict=True, buffer=into)
    except Exception:  # noqa: BLE001 - whatever it refuses, Pillow decodes or refuses with its own reason
        return None
    if pixels.shape[:2] != (img.height, img.width):
        return None
    pixels = pixels[..., 0] if img.mode == "L" else pixels
    pixels.flags.writeable = False  # as Pillow's (_pixels_of): whoever must write, copies
    return pixels


def _pixels_of(img: Image.Image) -> np.ndarray:
    """An L or RGB image's pixels as a read-only array over one copy of them (Pillow's tobytes).
    np.asarray(img).copy() made a second, writable copy: a fresh 28 MB buffer per 9 MP photo, whose
    page faults cost this VM 30 ms, as much as the decode (bench/infer.py --cases ceiling). Nothing
    writes into decoded pixels; whoever must, copies."""
    shape = (img.height, img.width) if img.mode == "L" else (img.height, img.width, len(img.getbands()))
    return np.frombuffer(img.tobytes(), np.uint8).reshape(shape)


def encode_image(image: DecodedImage, fmt: str = "png", quality: int = 95, notes: Optional[list] = None) -> bytes:
    """Encode to 'png' (lossless, zlib level 1), 'jpeg' (at `quality`, 4:4:4 chroma) or 'webp' (at
    `quality`), with the input's metadata (docs/infer.md, "Metadata"): a JPEG input's segments and
    trailer byte for byte into a JPEG (carray/metadata.py); EXIF, XMP and ICC otherwise, the
    orientation applied to the pixels where the format's viewers would not. Alpha goes back in where
    the format holds it (not JPEG). What could not be kept is appended to `notes`."""
    if fmt not in OUTPUT_FORMATS:
        raise ValueError(f"unknown output format {fmt!r}; choose one of {sorted(OUTPUT_FORMATS)}")
    notes = [] if notes is None else notes
    if fmt == "jpeg" and image.envelope is not None:
        data, kept_out = wrap(_encode_jpeg(image.pixels, quality), image.envelope)
        notes += kept_out
        return data
    img = _pil_image(image)
    if fmt != "jpeg" and not image.upright:  # PNG and WebP viewers do not all read EXIF's orientation
        img.info.update({key: value for key, value in (("exif", image.exif), ("xmp", image.xmp)) if value})
        img, unreadable = _upright(img)
        notes += unreadable
        image = replace(image, exif=img.info.get("exif"), xmp=img.info.get("xmp"))
    if fmt != "jpeg" and image.envelope is not None:
        notes += _not_held(image.envelope, fmt)
    return _encode_pixels(img, fmt, quality, _metadata_options(image, fmt))


def _encode_jpeg(pixels: np.ndarray, quality: int) -> bytes:
    """uint8 RGB or gray pixels -> a JPEG at `quality`, 4:4:4, by libjpeg-turbo straight from the
    array (simplejpeg): what Pillow's encoder writes, with the same tables, without Pillow's copy
    into its own 4-byte pixels (0.5 ms per MP). Its own header segments are replaced by the input's
    (carray.metadata.wrap)."""
    if simplejpeg is None:
        return _encode_pixels(Image.fromarray(pixels), "jpeg", quality, {})
    gray = pixels.ndim == 2
    return simplejpeg.encode_jpeg(np.ascontiguousarray(pixels[..., None] if gray else pixels), quality=quality,
                                  colorspace="GRAY" if gray else "RGB", colorsubsampling="444")


def _pil_image(image: DecodedImage) -> Image.Image:
    img = Image.fromarray(image.pixels, "RGB" if image.is_color else "L")
    if image.alpha is not None:
        img.putalpha(Image.fromarray(image.alpha, "L"))
    return img


def _metadata_options(image: DecodedImage, fmt: str) -> dict:
    options = {}
    if image.icc:
        options["icc_profile"] = image.icc
    if image.exif:
        options["exif"] = image.exif
    if image.xmp:
        if fmt == "png":  # Pillow writes PNG's XMP as the iTXt chunk Adobe's tools read
            from PIL.PngImagePlugin import PngInfo

            info = PngInfo()
            info.add_itxt("XML:com.adobe.xmp", image.xmp.decode("utf-8", "replace"))
            options["pnginfo"] = info
        else:
            options["xmp"] = image.xmp
    return options


def _encode_pixels(img: Image.Image, fmt: str, quality: int, options: dict) -> bytes:
    pil_format, _ = OUTPUT_FORMATS[fmt]
    if fmt == "jpeg" and img.mode in ("RGBA", "LA"):
        img = img.convert("RGB" if img.mode == "RGBA" else "L")
    if fmt in ("jpeg", "webp"):
        options["quality"] = quality
    if fmt == "jpeg":  # full-resolution chroma: the restored colours are what the output is for
        options["subsampling"] = 0
    if fmt == "png":  # zlib level 1: 3-4x Pillow's default speed for about 1-10 % more bytes (bench/encode.py)
        options["compress_level"] = 1
    buf = io.BytesIO()
    img.save(buf, format=pil_format, **options)
    return buf.getvalue()


#: What PNG and WebP outputs hold of a JPEG's segments (Pillow writes these three).
_HELD_ELSEWHERE = (b"JFIF\x00", b"Exif\x00\x00", b"http://ns.adobe.com/xap/1.0/\x00", b"ICC_PROFILE\x00")


def _not_held(envelope: Envelope, fmt: str) -> list[str]:
    """The note for a JPEG's segments and trailer that a PNG or WebP output has no place for."""
    from .metadata import marker_name, split_segments

    lost = sorted({marker_name(raw[1]) for raw in split_segments(envelope.segments) if not raw[4:].startswith(_HELD_ELSEWHERE)})
    if envelope.trailer:
        lost.append(f"{len(envelope.trailer)} bytes after the image (MPF images, trailers)")
    if not lost:
        return []
    return [f"not kept in {fmt.upper()}, which holds EXIF, XMP and ICC only: {', '.join(lost)} (--format jpeg keeps them)"]


# --- colour: YCbCr in the MATLAB (BT.601, studio range) convention used by published results ---

_RGB_TO_YCBCR = np.array(
    [[65.481, 128.553, 24.966], [-37.797, -74.203, 112.0], [112.0, -93.786, -18.214]]
) / 255.0
_YCBCR_OFFSET = np.array([16.0, 128.0, 128.0])


def rgb_to_ycbcr(rgb: np.ndarray) -> np.ndarray:
    """RGB (h, w, 3) on 0..255 -> float64 YCbCr (h, w, 3), MATLAB's rgb2ycbcr (Y in 16..235)."""
    return rgb.astype(np.float64) @ _RGB_TO_YCBCR.T + _YCBCR_OFFSET


def ycbcr_to_rgb(ycbcr: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rgb_to_ycbcr`: float64 RGB (h, w, 3) on 0..255, not rounded or clipped."""
    return (ycbcr.astype(np.float64) - _YCBCR_OFFSET) @ np.linalg.inv(_RGB_TO_YCBCR).T


def rgb_to_y(rgb: np.ndarray) -> np.ndarray:
    """The Y channel as uint8 (h, w), rounded, as the published gray test sets were made."""
    y = rgb.astype(np.float64) @ _RGB_TO_YCBCR[0] + 16.0
    return np.clip(np.round(y), 0, 255).astype(np.uint8)


def to_gray(pixels: np.ndarray) -> np.ndarray:
    """Gray images pass through; RGB becomes its MATLAB Y channel."""
    return pixels if pixels.ndim == 2 else rgb_to_y(pixels)


def to_uint8(x: np.ndarray) -> np.ndarray:
    """Float on 0..255 -> uint8, rounded and clipped."""
    return np.clip(np.round(x), 0, 255).astype(np.uint8)
