"""infer --preview: the sample, the header scan, the pictures, and the page in a real browser."""
import hashlib
import io
import json
import random

import numpy as np
import pyarrow.fs as pafs
import pytest
from PIL import Image

from carray import jpeg
from carray.cli import main as cli_main
from carray.infer.compare import Region, crop_png, mean_change, most_changed
from carray.infer.cost import GPU_HOUR_USD, H100_JOB_MP_S, estimate
from carray.infer.layout import Locations
from carray.infer.page import _format
from carray.infer.sample import BottomK
from carray.infer.scan import FAIL, HEAD_BYTES, PASS, RESTORE, make_up, scan_key
from carray.quality import Policy
from support.browser import elements, rendered_dom
from support.images import png_bytes, smooth_image


def sample(keys, k, seed):
    bottom = BottomK(k, seed)
    for key in keys:
        bottom.add(key)
    return bottom


def test_sample_is_seeded_spread_over_the_collection_and_free_of_order():
    keys = [f"folder{f:02d}/photo{i:03d}.jpg" for f in range(20) for i in range(50)]
    first = sample(keys, 100, seed=3)
    shuffled = keys[:]
    random.Random(1).shuffle(shuffled)
    assert first.count == 1000
    assert first.keys() == sample(shuffled, 100, seed=3).keys()  # listing tasks may hand keys in any order
    assert sample(keys, 10, seed=3).keys() == first.keys()[:10]  # the pictures' sample is the scan's first
    assert sample(keys, 100, seed=4).keys() != first.keys()
    assert len({k.split("/")[0] for k in first.keys()}) >= 15  # not the first folder: all over the listing


def test_most_changed_finds_the_window_restoring_changed():
    before = smooth_image(200, 300, color=True)
    after = before.copy()
    after[120:160, 208:248] = 255 - after[120:160, 208:248]
    region = most_changed(before, after, 64)
    assert (region.height, region.width) == (64, 64)
    assert region.top <= 120 and region.top + 64 >= 160 and region.left <= 208 and region.left + 64 >= 248
    with Image.open(io.BytesIO(crop_png(after, region))) as crop:
        assert crop.size == (64, 64)
    assert most_changed(before[:30, :20], after[:30, :20], 64) == Region(0, 0, 30, 20)  # smaller than the window
    tall = np.repeat(before, 7, axis=0)  # 1400 rows: more than one stripe
    changed = tall.copy()
    changed[1300:1340, 8:48] = 0
    assert most_changed(tall, changed, 64).top in range(1276, 1301)
    assert mean_change(tall, changed) == pytest.approx(np.abs(changed.astype(int) - tall).mean())
    with pytest.raises(ValueError, match="restored image"):
        most_changed(before, after[:100], 64)


def test_scan_reads_headers_not_pixels(tmp_path):
    photo = smooth_image(400, 600, color=True)
    noise = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (800, 1200, 3), dtype=np.uint8)).save(noise, format="JPEG", quality=30)
    good = noise.getvalue()
    assert len(good) > 2 * HEAD_BYTES
    broken_pixels = good[:HEAD_BYTES] + bytes(len(good) - HEAD_BYTES)  # its pixels are zeros past the head
    buf = io.BytesIO()
    Image.fromarray(photo).save(buf, format="JPEG", quality=20, icc_profile=b"\0" * (3 * HEAD_BYTES))  # tables past the head
    files = {"broken.jpg": broken_pixels, "long-header.jpg": buf.getvalue(), "q97.jpg": jpeg.compress(photo, 97),
             "lossless.png": png_bytes(photo), "empty.jpg": b""}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    where = Locations(pafs.LocalFileSystem(), str(tmp_path), pafs.LocalFileSystem(), str(tmp_path / "out"))
    rows = {name: scan_key(where, name, None, Policy()) for name in files}
    # A header alone cannot see broken pixels: the scan says what the tables say (the preview's
    # restored samples find the rest), which is how it runs at the speed of reading headers.
    assert (rows["broken.jpg"]["decision"], rows["broken.jpg"]["quality"]) == (RESTORE, 30)
    assert (rows["long-header.jpg"]["decision"], rows["long-header.jpg"]["quality"]) == (RESTORE, 20)
    assert rows["long-header.jpg"]["bytes"] == len(buf.getvalue())
    assert rows["q97.jpg"]["decision"] == PASS and "quality 95 or above" in rows["q97.jpg"]["reason"]
    assert rows["lossless.png"]["decision"] == PASS and rows["lossless.png"]["format"] == "PNG"
    assert rows["empty.jpg"]["decision"] == FAIL and "empty" in rows["empty.jpg"]["reason"]
    makeup = make_up(list(rows.values()))
    assert makeup["decisions"] == {RESTORE: 2, PASS: 2, FAIL: 1}
    assert makeup["quality_histogram"] == {"11-20": 1, "21-30": 1, "91-100": 1}
    assert makeup["formats"] == {"JPEG": 3, "PNG": 1}
    assert makeup["megapixel_histogram"] == {"< 1": 4}


def test_the_rate_after_start_up():
    from carray.infer.report import steady_rate

    assert steady_rate((102.0, 1.0), 100.0, 104.0, 5.0) == {"seconds_to_first_output": 2.0, "steady_megapixels_per_second": 2.0}
    assert steady_rate((102.0, 5.0), 100.0, 104.0, 5.0)["steady_megapixels_per_second"] is None  # all in the first pack
    assert steady_rate(None, 100.0, 104.0, 0.0) == {"seconds_to_first_output": None, "steady_megapixels_per_second": None}


def test_cost_estimate_arithmetic():
    est = estimate(megapixels=H100_JOB_MP_S * 3600, rate_here=2.0, gpus_here=0, cpus_here=4, listing_seconds=36)
    assert est["h100_job_as_measured"]["hours"] == 1.0
    assert est["h100_job_as_measured"]["dollars"] == list(GPU_HOUR_USD)
    here = est["this_cluster"]
    assert (here["device"], here["devices"]) == ("vCPU", 4)
    assert here["hours"] == pytest.approx(H100_JOB_MP_S / 2 + 0.01)
    assert here["dollars"] == [round(H100_JOB_MP_S / 2 * 4 * p, 4) for p in (0.04, 0.05)]
    assert estimate(megapixels=1, rate_here=0, gpus_here=1, cpus_here=8, listing_seconds=0)["this_cluster"]["hours"] is None


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    from carray.model import build_model, save_model

    path = tmp_path_factory.mktemp("model") / "fast.pt"
    save_model(build_model("fast-arcnn"), str(path), {"note": "untrained, for tests"})
    return str(path)


def collection(root):
    """Restorable JPEGs in four folders, two to pass through, one that fails, two to skip."""
    expected = {}
    for f, folder in enumerate("abcd"):
        for i, q in enumerate((10, 20, 30)):
            name = f"{folder}/p{i}.jpg"
            (root / folder).mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(jpeg.compress(smooth_image(48, 64, color=bool(i % 2), seed=3 * f + i), q))
            expected[name] = RESTORE
    (root / "a" / "high.jpg").write_bytes(jpeg.compress(smooth_image(48, 64), 97))
    (root / "b" / "lossless.png").write_bytes(png_bytes(smooth_image(48, 64, color=True)))
    whole = jpeg.compress(smooth_image(48, 64), 20)
    (root / "c" / "cut.jpg").write_bytes(whole[: len(whole) - 200])  # header whole, pixels cut
    expected.update({"a/high.jpg": PASS, "b/lossless.png": PASS, "c/cut.jpg": FAIL})
    (root / "notes.txt").write_text("not an image")
    (root / "d" / ".hidden.jpg").write_bytes(jpeg.compress(smooth_image(16, 16), 10))
    return expected


def lookup(summary: dict, key: str):
    value = summary
    for part in key.split("."):
        value = value[int(part)] if isinstance(value, list) else value[part]
    return value


@pytest.mark.usefixtures("ray_session")
def test_preview_of_a_folder_opens_in_a_browser_with_its_numbers(tmp_path, model_file):
    src, out = tmp_path / "in", tmp_path / "preview"
    expected = collection(src)
    args = ["infer", "--input", str(src), "--output", str(out), "--model", model_file, "--preview", "15", "--seed", "1"]
    assert cli_main(args) == 0
    summary = json.loads((out / "_summary.json").read_text())
    assert (summary["images"], summary["skipped"], summary["scanned"], summary["shown"]) == (15, 2, 15, 15)
    assert {item["path"]: item["outcome"] for item in summary["items"]} == expected
    cut = next(item for item in summary["items"] if item["path"] == "c/cut.jpg")
    assert "truncated" in cut["reason"].lower()  # found by the restored sample, not by the header
    assert summary["estimated"] | {"share": None, "bytes_read": None} == {
        "restored": 12, "passed_through": 2, "failed": 1, "share": None, "bytes_read": None}
    assert summary["model_sha256"] == {"gray": hashlib.sha256(open(model_file, "rb").read()).hexdigest()}
    assert summary["precision"] and summary["sample_run"]["restored"] == 12
    assert (out / "sample.txt").read_text().split() == [item["path"] for item in summary["items"]]

    dom = rendered_dom(out / "index.html")
    tags = elements(dom)
    body = next(attrs for tag, attrs in tags if tag == "body")
    images = [attrs for tag, attrs in tags if tag == "img"]
    assert (body.get("data-pictures"), body.get("data-missing")) == (str(len(images)), "0"), body
    assert len(images) == 12 * 3 + 2  # restored: before, after, where; passed through: the input
    assert all(img["data-shown"] == "yes" for img in images)
    assert not any("//" in attrs.get("src", "") + attrs.get("href", "") for _, attrs in tags)  # nothing outside its folder
    numbers = [attrs for _, attrs in tags if "data-value" in attrs]
    assert len(numbers) > 40
    for attrs in numbers:
        assert json.loads(attrs["data-value"]) == lookup(summary, attrs["data-key"]), attrs["data-key"]
    assert f'data-key="estimated.restored" data-value="12">{_format(12)}<' in dom

    first = next(item for item in summary["items"] if item["outcome"] == RESTORE)
    (out / first["pictures"]["after"]).unlink()  # a folder copied without all its pictures: the page says so
    dom = rendered_dom(out / "index.html")
    assert 'data-missing="1"' in dom and "pictures did not load" in dom

    assert cli_main(args) == 0  # the same seed, the same sample
    assert json.loads((out / "_summary.json").read_text())["items"] == summary["items"]


@pytest.mark.usefixtures("ray_session")
def test_preview_of_a_bucket(s3_server, bucket, model_file, monkeypatch):
    options, name = bucket
    fs = options.filesystem()
    for f in range(5):
        for i in range(8):
            with fs.open_output_stream(f"{name}/photos/f{f}/{i}.jpg") as stream:
                stream.write(jpeg.compress(smooth_image(32, 40, seed=8 * f + i), 20))
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    args = ["infer", "--input", f"s3://{name}/photos", "--output", f"s3://{name}/preview", "--model", model_file,
            "--preview", "4", "--preview-scan", "20"]
    assert cli_main(args) == 0
    summary = json.loads(fs.open_input_stream(f"{name}/preview/_summary.json").read())
    assert (summary["images"], summary["scanned"], summary["shown"]) == (40, 20, 4)
    assert summary["estimated"]["restored"] == 40 and summary["make_up"]["quality_histogram"] == {"11-20": 20}
    assert len({item["path"].split("/")[0] for item in summary["items"]}) >= 2  # spread, not the first folder
    page = fs.open_input_stream(f"{name}/preview/index.html").read().decode()
    for item in summary["items"]:
        for picture in item["pictures"].values():
            assert f"'{picture}'" in page
            assert fs.get_file_info(f"{name}/preview/{picture}").type == pafs.FileType.File
