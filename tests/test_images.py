import io

import numpy as np
import pytest
from PIL import Image

from carray import images, jpeg
from carray.images import ImageError, decode_image, encode_image
from support.images import DATA, png_bytes, smooth_image


def save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF", "WEBP"])
def test_lossless_formats_decode_exactly(fmt):
    rgb = smooth_image(20, 30, color=True)
    kw = {"lossless": True} if fmt == "WEBP" else {}
    out = decode_image(save(Image.fromarray(rgb), fmt, **kw))
    assert out.pixels.shape == (20, 30, 3) and out.pixels.dtype == np.uint8
    np.testing.assert_array_equal(out.pixels, rgb)


def test_gray_and_jpeg():
    gray = smooth_image(16, 24)
    assert decode_image(png_bytes(gray)).pixels.shape == (16, 24)
    decoded = decode_image(jpeg.compress(gray, 50)).pixels
    assert decoded.shape == (16, 24) and np.abs(decoded.astype(int) - gray).mean() < 10


def test_alpha_is_kept_aside_and_restored():
    rgba = np.dstack([smooth_image(10, 12, color=True), np.arange(120, dtype=np.uint8).reshape(10, 12)])
    out = decode_image(png_bytes(rgba))
    assert out.pixels.shape == (10, 12, 3)
    np.testing.assert_array_equal(out.alpha, rgba[..., 3])
    back = np.asarray(Image.open(io.BytesIO(encode_image(out, "png"))))
    np.testing.assert_array_equal(back, rgba)
    out_la = decode_image(save(Image.fromarray(rgba[..., :2].copy(), mode="LA"), "PNG"))
    assert out_la.pixels.shape == (10, 12) and out_la.alpha is not None


def test_palette_cmyk_and_16_bit():
    rgb = smooth_image(8, 8, color=True)
    assert decode_image(save(Image.fromarray(rgb).convert("P"), "PNG")).pixels.shape == (8, 8, 3)
    cmyk = decode_image(save(Image.fromarray(rgb).convert("CMYK"), "JPEG", quality=95))
    assert cmyk.pixels.shape == (8, 8, 3) and cmyk.icc is None
    wide = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)
    out = decode_image(save(Image.fromarray(wide), "PNG")).pixels
    assert out.dtype == np.uint8 and out.shape == (8, 8)
    assert out[7, 7] == round(63000 / 257) and out[0, 0] == 0


def test_exif_orientation_is_applied_and_reset():
    arr = smooth_image(10, 20)
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 CW to display
    exif[0x010F] = "carray-camera"  # Make: the rest of the EXIF must survive
    out = decode_image(save(img, "JPEG", quality=95, exif=exif.tobytes()))
    assert out.pixels.shape == (20, 10)
    reread = Image.open(io.BytesIO(encode_image(out, "jpeg"))).getexif()
    assert reread.get(0x010F) == "carray-camera", "EXIF is carried, not dropped"
    assert reread.get(0x0112) in (None, 1), "the orientation is reset: the pixels are already upright"


def test_icc_profile_is_carried():
    from PIL import ImageCms

    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    out = decode_image(save(Image.fromarray(smooth_image(8, 8, color=True)), "PNG", icc_profile=profile))
    assert out.icc == profile
    assert Image.open(io.BytesIO(encode_image(out, "webp"))).info.get("icc_profile") == profile


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty"),
        (b"hello, I am text named .jpg", "not an image"),
        (np.random.default_rng(0).bytes(5000), "not an image"),
    ],
)
def test_bad_bytes_raise_with_reason(data, reason):
    with pytest.raises(ImageError, match=reason):
        decode_image(data)


def test_truncated_jpeg_raises():
    data = jpeg.compress(smooth_image(64, 64), 80)
    with pytest.raises(ImageError, match="cannot decode"):
        decode_image(data[: len(data) // 2])


def test_pixel_limit():
    data = png_bytes(smooth_image(100, 100))
    with pytest.raises(ImageError, match="exceeds the limit of 9999"):
        decode_image(data, max_pixels=9999)
    assert decode_image(data, max_pixels=10000).pixels.shape == (100, 100)


def test_pixel_limit_can_be_raised_beyond_pillows_own():
    # Pillow alone refuses about 179 MP; our limit decides. A 1-bit PNG keeps this cheap.
    big = Image.new("1", (14000, 14000))
    data = save(big, "PNG")
    assert decode_image(data).pixels.shape == (14000, 14000)  # 196 MP, under our default 256 MP
    with pytest.raises(ImageError, match="exceeds"):
        decode_image(data, max_pixels=150_000_000)


def test_ycbcr_matlab_convention_and_back():
    rgb = smooth_image(12, 12, color=True)
    ycc = images.rgb_to_ycbcr(rgb)
    assert ycc[..., 0].min() >= 16 - 1e-9 and ycc[..., 0].max() <= 235 + 1e-9
    np.testing.assert_allclose(images.ycbcr_to_rgb(ycc), rgb, atol=1e-9)
    white, black = np.full((1, 1, 3), 255, np.uint8), np.zeros((1, 1, 3), np.uint8)
    assert images.rgb_to_y(white)[0, 0] == 235 and images.rgb_to_y(black)[0, 0] == 16
    np.testing.assert_array_equal(images.rgb_to_y(rgb), np.round(ycc[..., 0]).astype(np.uint8))


def test_jpeg_roundtrip_keeps_shape_and_rejects_bad_quality():
    for arr in (smooth_image(17, 23), smooth_image(17, 23, color=True)):
        assert jpeg.roundtrip(arr, 10).shape == arr.shape
    with pytest.raises(ValueError):
        jpeg.compress(smooth_image(8, 8), 0)


def test_read_header_reads_quality_and_subsampling_without_decoding():
    from carray.images import ImageError, read_header

    rgb = smooth_image(40, 56, color=True)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=37, subsampling="4:4:4")
    header = read_header(buf.getvalue())
    assert (header.format, header.width, header.height, header.quality, header.subsampling) == ("JPEG", 56, 40, 37, "4:4:4")
    assert header.chroma_quality == 37
    buf = io.BytesIO()  # luma at q80, chroma at q30: the two tables read separately
    from carray.quality import STANDARD_CHROMA, STANDARD_LUMA, ijg_table

    tables = [ijg_table(80, STANDARD_LUMA).astype(int).tolist(), ijg_table(30, STANDARD_CHROMA).astype(int).tolist()]
    Image.fromarray(rgb).save(buf, format="JPEG", qtables=tables)
    mixed = read_header(buf.getvalue())
    assert (mixed.quality, mixed.chroma_quality) == (80, 30)
    assert read_header(jpeg.compress(rgb, 80)).subsampling == "4:2:0"
    assert read_header(png_bytes(rgb)).quality is None
    with pytest.raises(ImageError, match="exceeds the limit"):
        read_header(jpeg.compress(rgb, 80), max_pixels=2000)
    with pytest.raises(ImageError, match="not an image"):
        read_header(b"plain text")


def _jpeg_layouts() -> dict[str, bytes]:
    """A photo as JPEGs of every layout the job meets: sizes off the 8x8 and 16x16 grids, each chroma
    subsampling, progressive, restart markers, gray, CMYK, and damaged ones."""
    photo = Image.open(DATA / "LIVE1_color" / "parrots.png").convert("RGB")
    files = {}
    for size in ((256, 192), (101, 37), (7, 9)):
        im = photo.resize(size)
        for sub in (0, 1, 2):
            for progressive in (False, True):
                files[f"{size} 4:{sub} progressive={progressive}"] = jpeg_file(im, quality=50, subsampling=sub, progressive=progressive)
        files[f"{size} gray"] = jpeg_file(im.convert("L"), quality=30)
        files[f"{size} cmyk"] = jpeg_file(im.convert("CMYK"), quality=80)
    whole = files["(256, 192) 4:2 progressive=False"]
    files["restart markers"] = jpeg_file(photo, quality=70, restart_marker_blocks=3)
    files["truncated"] = whole[: len(whole) // 2]
    files["no EOI"] = whole[:-2]
    files["a flipped byte"] = whole[: len(whole) // 2] + bytes([whole[len(whole) // 2] ^ 0xFF]) + whole[len(whole) // 2 + 1 :]
    return files


def jpeg_file(image: Image.Image, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", **options)
    return out.getvalue()


def test_jpegs_decode_through_libjpeg_turbo_as_pillow_decodes_them(monkeypatch):
    """decode_image hands RGB and gray JPEGs to libjpeg-turbo straight into numpy (simplejpeg): the
    same pixels, and the same error, as Pillow's own decode of each layout; CMYK and files it warns
    about go to Pillow."""
    files = _jpeg_layouts()
    outcomes = {}
    for name, data in files.items():
        for path in ("turbo", "pillow"):
            if path == "pillow":
                monkeypatch.setattr(images, "_decode_jpeg", lambda img, data, allocate=None: None)
            try:
                outcomes[name, path] = decode_image(data, upright=False).pixels
            except ImageError as exc:
                outcomes[name, path] = str(exc)
            monkeypatch.undo()
        turbo, pillow = outcomes[name, "turbo"], outcomes[name, "pillow"]
        assert type(turbo) is type(pillow) and (np.array_equal(turbo, pillow) if isinstance(turbo, np.ndarray) else turbo == pillow), name
    assert all(isinstance(outcomes[name, "turbo"], str) for name in ("truncated", "no EOI")), "Pillow's error for a cut-off file"
    taken = {name for name, data in files.items() if images._decode_jpeg(Image.open(io.BytesIO(data)), data) is not None}
    assert taken == set(files) - {"(256, 192) cmyk", "(101, 37) cmyk", "(7, 9) cmyk", "truncated", "no EOI"}, taken


def test_jpegs_decode_into_kept_buffers_that_are_reused_only_once_no_array_refers_to_them():
    """A restoring actor decodes into buffers it keeps (PixelBuffers): the same pixels as a decode
    into new memory, for every layout (those libjpeg-turbo refuses go to Pillow, as before); a
    buffer whose pixels, or any view of them, are still held is never written again; once they are
    not, the next image of its size or smaller goes into it."""
    from carray.infer.memory import PixelBuffers

    buffers = PixelBuffers()
    files = {name: data for name, data in _jpeg_layouts().items() if name not in ("truncated", "no EOI")}
    held = {name: decode_image(data, upright=False, allocate=buffers.array).pixels for name, data in files.items()}
    kept = {name: pixels.copy() for name, pixels in held.items()}
    addresses = {pixels.ctypes.data for pixels in held.values()}
    for name, data in files.items():
        assert np.array_equal(held[name], decode_image(data, upright=False).pixels), name
    views = {name: pixels[:, ::2] for name, pixels in held.items()}  # what a slice of them still holds
    del held
    again = [decode_image(data, upright=False, allocate=buffers.array).pixels for data in files.values()]
    assert all(np.array_equal(views[name], kept[name][:, ::2]) for name in files), "a buffer a view refers to was written again"
    held_bytes = buffers.held_bytes()
    del views, again
    first = files["(256, 192) 4:0 progressive=False"]
    pixels = decode_image(first, upright=False, allocate=buffers.array).pixels
    assert np.array_equal(pixels, kept["(256, 192) 4:0 progressive=False"])
    assert pixels.ctypes.data in addresses and buffers.held_bytes() == held_bytes, "a free buffer of its size was not reused"
    small = PixelBuffers(keep_bytes=100)
    assert small.array((20, 20)).shape == (20, 20) and small.held_bytes() == 0, "kept beyond its bound"


def test_jpeg_outputs_are_the_bytes_pillows_encoder_writes(monkeypatch):
    """The encoder's image data (after its own header segments, which the input's replace) is what
    Pillow's writes at the same quality and 4:4:4: outputs are the files they were; and where
    simplejpeg cannot be imported, Pillow writes them."""
    from carray.metadata import _after_app_segments

    for pixels in (np.asarray(Image.open(DATA / "LIVE1_color" / "monarch.png").convert("RGB")), smooth_image(37, 101)):
        ours = images._encode_jpeg(pixels, 98)
        pillows = jpeg_file(Image.fromarray(pixels), quality=98, subsampling=0)
        assert ours[_after_app_segments(ours):] == pillows[_after_app_segments(pillows):]
        monkeypatch.setattr(images, "simplejpeg", None)
        assert images._encode_jpeg(pixels, 98) == pillows
        assert images._decode_jpeg(Image.open(io.BytesIO(pillows)), pillows) is None
        monkeypatch.undo()
