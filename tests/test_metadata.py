"""Metadata through a restore: every segment of a JPEG kept byte for byte, checked with exiftool.

The inputs are the 41 camera and editor JPEGs of ExifTool's own test suite (tests/data/exiftool:
maker notes of a dozen makes, IPTC, XMP and extended XMP, ICC, FLIR, GoPro, FlashPix, trailers, an
MPO with every APPn), and files made here the way cameras and phones make them: a stereo MPO, an
Ultra HDR-style JPEG (gain map in MPF, hdrgm XMP), a rotated photo that exiftool tagged with XMP, IPTC,
a comment and an ICC profile, and EXIF blocks that Pillow cannot parse.
"""
import io
import json
import shutil
import subprocess

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image, ImageCms, ImageOps

from carray import metadata
from carray.cli import main as cli_main
from carray.images import decode_image, encode_image, read_header
from carray.infer import METADATA_FILE, SKIP_OUTSIDE, output_name
from carray.model import build_model, save_model
from support.images import DATA, smooth_image

EXIFTOOL = shutil.which("exiftool")

# What restoring changes, on purpose (docs/infer.md, "Metadata"): the file itself, the new image
# data's coding (full-resolution chroma, baseline, three components for a CMYK input), Adobe's APP14 (the old encoder's colour
# transform), and where MPF's images now start and how long the first one is.
CHANGED_TAGS = {"SourceFile", "File:YCbCrSubSampling", "File:EncodingProcess", "File:ColorComponents"}
CHANGED_GROUPS = ("System:", "Adobe:")
CHANGED_MPF = ("MPImageStart", "MPImageLength")
# exiftool's notes of what it adjusted while reading: AFCP trailers hold offsets from the file's start.
CHANGED_WARNINGS = ("[minor] Adjusted AFCP offsets",)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "fast.pt"
    save_model(build_model("fast-arcnn"), str(path), {"note": "untrained, for tests"})
    return str(path)


def jpeg_bytes(array, **options) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", **options)
    return buf.getvalue()


def stereo_mpo() -> bytes:
    """Two frames in one file, as Fujifilm's and Nintendo's stereo cameras write them (Pillow's MPO writer)."""
    left, right = smooth_image(96, 128, color=True, seed=1), smooth_image(96, 128, color=True, seed=2)
    buf = io.BytesIO()
    Image.fromarray(left).save(buf, "MPO", save_all=True, append_images=[Image.fromarray(right)], quality=30)
    return buf.getvalue()


def ultra_hdr_like() -> bytes:
    """A JPEG whose MPF points at a gain map after it, with hdrgm XMP: Ultra HDR's layout."""
    mpo = stereo_mpo()
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">' \
          b'<rdf:Description xmlns:hdrgm="http://ns.adobe.com/hdr-gain-map/1.0/" hdrgm:Version="1.0"/></rdf:RDF></x:xmpmeta>'
    return mpo[:2] + metadata.segment(0xE1, b"http://ns.adobe.com/xap/1.0/\x00" + xmp) + mpo[2:]


def tagged_with_exiftool(tmp_path) -> bytes:
    """A rotated colour photo that exiftool tagged as an agency would: XMP, IPTC, a comment, ICC."""
    source, tagged, icc = tmp_path / "plain.jpg", tmp_path / "tagged.jpg", tmp_path / "srgb.icc"
    img = Image.fromarray(smooth_image(64, 80, color=True))
    exif = img.getexif()
    exif[0x0112], exif[0x010F] = 6, "carray-camera"
    img.save(source, quality=30, exif=exif.tobytes())
    icc.write_bytes(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    subprocess.run([EXIFTOOL, "-q", "-o", str(tagged), "-XMP-dc:Creator=Ada Photographer", "-XMP-dc:Rights=(c) 2026 Ada",
                    "-XMP-dc:Subject=harbour", "-IPTC:By-line=Ada Photographer", "-IPTC:CopyrightNotice=(c) 2026 Ada",
                    "-IPTC:Caption-Abstract=Boats at dawn", "-Comment=restored copies keep this", f"-ICC_Profile<={icc}", str(source)], check=True)
    return tagged.read_bytes()


def cmyk_jpeg() -> bytes:
    """A print shop's CMYK JPEG (Pillow writes Adobe's APP14 for it)."""
    buf = io.BytesIO()
    Image.fromarray(smooth_image(32, 40, color=True)).convert("CMYK").save(buf, format="JPEG", quality=40)
    return buf.getvalue()


def broken_exif(payload: bytes) -> bytes:
    """A readable photo whose EXIF block Pillow's parser rejects."""
    plain = jpeg_bytes(smooth_image(48, 64, color=True), quality=30)
    return plain[:2] + metadata.segment(0xE1, b"Exif\x00\x00" + payload) + plain[2:]


BROKEN_EXIF = {
    "not-tiff.jpg": b"XX*\x00\x00\x00\x00\x08",  # SyntaxError: not a TIFF header
    "cut-short.jpg": b"II*\x00\x08\x00\x00\x00\x05\x00\x12\x01\x03\x00\x01\x00",  # entries cut off
    "bad-offset.jpg": b"MM\x00*\xff\xff\xff\xf0",  # IFD offset past the end
}


def odd_collection(root, tmp_path) -> list[str]:
    """The inputs of the exiftool comparison; returns their relative paths."""
    root.mkdir(parents=True)
    for path in sorted((DATA / "exiftool").glob("*.jpg")):
        shutil.copy(path, root / path.name)
    made = {"stereo.mpo": stereo_mpo(), "ultra-hdr.jpg": ultra_hdr_like(), "tagged.jpg": tagged_with_exiftool(tmp_path),
            "cmyk.jpg": cmyk_jpeg(),
            **{name: broken_exif(payload) for name, payload in BROKEN_EXIF.items()}}
    for name, data in made.items():
        (root / name).write_bytes(data)
    return sorted(p.name for p in root.iterdir())


def exiftool_view(paths) -> dict:
    """exiftool -a -G1 of each file (every tag, duplicates too, by group), one call for all."""
    assert EXIFTOOL, "exiftool is the reference: `make test` installs it (Debian's libimage-exiftool-perl)"
    out = subprocess.run([EXIFTOOL, "-a", "-G1", "-j", "-n", *map(str, paths)], capture_output=True, check=False).stdout
    return {entry["SourceFile"]: entry for entry in json.loads(out)}


def changed(before: dict, after: dict) -> dict:
    """The tags whose values differ, less the ones restoring changes on purpose."""
    diff = {}
    for tag in set(before) | set(after):
        a, b = before.get(tag), after.get(tag)
        if a == b or tag in CHANGED_TAGS or tag.startswith(CHANGED_GROUPS):
            continue
        if tag.startswith("MPImage") and tag.endswith(CHANGED_MPF):
            continue
        if tag == "ExifTool:Warning" and str(b).startswith(CHANGED_WARNINGS):
            continue
        diff[tag] = (a, b)
    return diff


@pytest.mark.usefixtures("ray_session")
def test_exiftool_sees_the_same_metadata_after_a_restore(tmp_path, model_file):
    src, dst = tmp_path / "in", tmp_path / "out"
    names = odd_collection(src, tmp_path)
    # --quality-override: every file restored, whatever its tables (the cameras' files are q95+).
    assert cli_main(["infer", "--input", str(src), "--output", str(dst), "--model", model_file, "--quality-override", "50"]) == 0
    summary = json.loads((dst / "_summary.json").read_text())
    assert (summary["restored"], summary["failed"], summary["passed_through"]) == (len(names), 0, 0), "no photo lost to a tag"
    before = exiftool_view(src / n for n in names)
    after = exiftool_view(dst / output_name(n, "jpeg") for n in names)
    for name in names:
        diff = changed(before[str(src / name)], after[str(dst / output_name(name, "jpeg"))])
        assert not diff, (name, diff)

    # The pixels did change, the segments did not: the tagged photo's XMP, IPTC, comment, ICC and EXIF.
    tagged = after[str(dst / "tagged.jpg.jpg")]
    assert (tagged["XMP-dc:Creator"], tagged["IPTC:By-line"], tagged["File:Comment"], tagged["IFD0:Orientation"]) == (
        "Ada Photographer", "Ada Photographer", "restored copies keep this", 6)
    assert (src / "tagged.jpg").read_bytes() != (dst / "tagged.jpg.jpg").read_bytes()
    # Multi-picture files: exiftool finds the second image (stereo frame, gain map) where MPF now
    # says, byte for byte.
    for name in ("stereo.mpo", "ultra-hdr.jpg"):
        second = [subprocess.run([EXIFTOOL, "-b", "-MPImage2", str(path)], capture_output=True, check=True).stdout
                  for path in (src / name, dst / output_name(name, "jpeg"))]
        assert second[0][:2] == b"\xff\xd8" and second[0] == second[1], name
    # What was not kept is said, per file: only the CMYK photo's ICC profile (none here had one) and
    # ExifTool.jpg's MPF index, which points past the file's end.
    notes = {entry["path"]: entry["not_kept"] for entry in map(json.loads, (dst / METADATA_FILE).read_text().splitlines())}
    assert set(notes) == {"ExifTool.jpg"} and "MPF index kept as it was" in notes["ExifTool.jpg"][0]
    assert summary["metadata_not_kept"] == 1


@pytest.mark.usefixtures("ray_session")
@pytest.mark.parametrize("fmt", ["png", "webp"])
def test_png_and_webp_keep_exif_xmp_icc_upright_and_say_what_they_cannot_hold(tmp_path, model_file, fmt):
    src, dst = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    (src / "tagged.jpg").write_bytes(tagged_with_exiftool(tmp_path))
    (src / "not-tiff.jpg").write_bytes(broken_exif(BROKEN_EXIF["not-tiff.jpg"]))
    assert cli_main(["infer", "--input", str(src), "--output", str(dst), "--model", model_file, "--format", fmt]) == 0
    view = exiftool_view([dst / f"tagged.jpg.{fmt}"])[str(dst / f"tagged.jpg.{fmt}")]
    assert view["XMP-dc:Creator"] == "Ada Photographer" and view["IFD0:Make"] == "carray-camera"
    assert view.get("IFD0:Orientation") in (None, 1), "the pixels are upright: no orientation left to apply"
    with Image.open(dst / f"tagged.jpg.{fmt}") as out:
        assert out.size == (64, 80) and out.info.get("icc_profile")
    notes = {entry["path"]: " ".join(entry["not_kept"]) for entry in map(json.loads, (dst / METADATA_FILE).read_text().splitlines())}
    assert "APP13" in notes["tagged.jpg"] and "COM" in notes["tagged.jpg"]
    assert "EXIF unreadable (SyntaxError" in notes["not-tiff.jpg"]
    summary = json.loads((dst / "_summary.json").read_text())
    assert (summary["restored"], summary["failed"], summary["metadata_not_kept"]) == (2, 0, 2)


@pytest.mark.parametrize("payload", BROKEN_EXIF.values(), ids=BROKEN_EXIF.keys())
def test_a_broken_exif_never_fails_a_photo(payload):
    data = broken_exif(payload)
    for upright in (True, False):
        assert decode_image(data, upright=upright).pixels.shape == (48, 64, 3)
    image = decode_image(data, upright=False)
    assert encode_image(image, "jpeg").count(b"Exif\x00\x00" + payload) == 1, "carried as it was into a JPEG"
    notes = []
    encode_image(image, "png", notes=notes)
    assert all("EXIF" in note for note in notes)


def test_restored_in_the_stored_orientation_with_exif_untouched():
    img = Image.fromarray(smooth_image(24, 40))
    exif = img.getexif()
    exif[0x0112], exif[0x010F] = 8, "carray-camera"
    data = jpeg_bytes(np.asarray(img), quality=30, exif=exif.tobytes())
    image = decode_image(data, upright=False)
    assert image.pixels.shape == (24, 40), "as stored: restored on the 8x8 grid it was coded on"
    out = encode_image(image, "jpeg")
    original_exif = Image.open(io.BytesIO(data)).info["exif"]
    assert Image.open(io.BytesIO(out)).info["exif"] == original_exif, "EXIF byte for byte, Orientation included"
    assert ImageOps.exif_transpose(Image.open(io.BytesIO(out))).size == (24, 40)
    assert decode_image(data).pixels.shape == (40, 24), "evaluate and the preview still see it upright"


def test_mpo_is_read_and_rebased():
    data = stereo_mpo()
    assert read_header(data).quality == 30, "an MPO is a JPEG: its tables say its quality"
    image = decode_image(data, upright=False)
    out = encode_image(image, "jpeg", 98)
    assert len(out) != len(data)
    with Image.open(io.BytesIO(out)) as restored, Image.open(io.BytesIO(data)) as original:
        assert restored.format == "MPO" and restored.n_frames == 2
        restored.seek(1), original.seek(1)
        assert np.array_equal(np.asarray(restored), np.asarray(original))


def test_the_end_of_a_jpeg_is_found_past_every_scan():
    rgb = smooth_image(40, 56, color=True)
    for options in ({"quality": 40}, {"quality": 40, "progressive": True}, {"quality": 40, "restart_marker_blocks": 1}):
        jpeg = jpeg_bytes(rgb, **options)
        assert metadata.end_of_image(jpeg + b"TRAILER\xff\xd9") == len(jpeg), options
    envelope = metadata.Envelope(b"\xff\xfe\x00\x04hi", b"tail", 123, 45)
    assert metadata.Envelope.from_bytes(envelope.to_bytes()) == envelope


@pytest.mark.usefixtures("ray_session")
def test_keys_that_leave_the_input_are_never_read_or_written(tmp_path, model_file):
    src, dst, outside = tmp_path / "in", tmp_path / "out", tmp_path / "secret.jpg"
    src.mkdir()
    outside.write_bytes(jpeg_bytes(smooth_image(16, 16), quality=20))
    (src / "ok.jpg").write_bytes(jpeg_bytes(smooth_image(16, 16), quality=20))
    manifest = tmp_path / "keys.txt"
    manifest.write_text(f"ok.jpg\n../secret.jpg\n{outside}\n")
    assert cli_main(["infer", "--input", str(src), "--output", str(dst), "--model", model_file, "--manifest", str(manifest)]) == 0
    summary = json.loads((dst / "_summary.json").read_text())
    assert summary["restored"] == 1 and summary["skipped_by_reason"] == {SKIP_OUTSIDE: 2}
    assert not (tmp_path / "secret.jpg.jpg").exists()


@given(st.lists(st.sampled_from([0x00, 0xFF, 0xD0, 0xD7, 0xD9, 0xC4, 0x05]), max_size=24), st.integers(0, 24), st.sampled_from([1, 2, 3, 1 << 16]))
def test_the_end_of_a_scan_is_the_first_ff_that_starts_a_marker(values, pos, chunk):
    """In entropy-coded data 0xFF 0x00 is a stuffed byte, 0xFF 0xD0-0xD7 a restart, 0xFF 0xFF fill;
    the scan ends at the 0xFF before any other byte (its last 0xFF), or at the end of the data."""
    from carray.metadata import _end_of_scan

    data = bytes(values)
    pos = min(pos, len(data))
    expected = next((i for i in range(pos, len(data) - 1) if data[i] == 0xFF and data[i + 1] not in (0x00, *range(0xD0, 0xD8), 0xFF)), len(data))
    assert _end_of_scan(data, pos, chunk) == expected  # windows of every size, edges included
