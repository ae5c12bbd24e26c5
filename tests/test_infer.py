"""The infer job on a real local Ray and the real S3 server: odd and broken files, re-runs, buckets."""
import io
import json
import os
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import pytest
import ray
from PIL import Image, ImageOps

from carray import jpeg
from carray.cli import main as cli_main
from carray.config import DEFAULT_OUTPUT_FORMAT
from carray.images import read_header
from carray.infer import SKIP_HIDDEN, SKIP_NOT_IMAGE, output_name
from carray.model import build_model, save_model
from support.images import DATA, png_bytes, smooth_image
from support.jobs import run_job, start_job

pytestmark = pytest.mark.usefixtures("ray_session")


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "fast.pt"
    save_model(build_model("fast-arcnn"), str(path), {"note": "untrained, for tests"})
    return str(path)


def jpeg_file(array, **options):
    buf = io.BytesIO()
    (array if isinstance(array, Image.Image) else Image.fromarray(array)).save(buf, format="JPEG", **options)
    return buf.getvalue()


PASSED = ("really-a-png.jpg", "alpha.png")  # make_collection's inputs without JPEG tables
FMT = DEFAULT_OUTPUT_FORMAT  # restored outputs: photo.jpg -> photo.jpg.jpg


def make_collection(root):
    """Good files (relative path -> expected output (size, mode)) and bad ones (path -> reason part)."""
    gray, rgb = smooth_image(37, 23), smooth_image(40, 56, color=True)
    rotated = Image.fromarray(smooth_image(20, 30))
    exif = rotated.getexif()
    exif[0x0112] = 6
    rgba = np.dstack([smooth_image(16, 16, color=True), np.full((16, 16), 128, np.uint8)])
    good = {
        "plain.jpg": (jpeg.compress(gray, 10), (23, 37), "L"),
        "colour/photo.jpeg": (jpeg.compress(rgb, 20), (56, 40), "RGB"),
        "odd one #1 é.jpg": (jpeg.compress(smooth_image(3, 5), 30), (5, 3), "L"),
        "tiny.jpg": (jpeg.compress(np.zeros((1, 1), np.uint8), 50), (1, 1), "L"),
        "progressive.jpg": (jpeg_file(rgb, quality=30, progressive=True), (56, 40), "RGB"),
        "cmyk.jpg": (jpeg_file(Image.fromarray(rgb).convert("CMYK"), quality=60), (56, 40), "RGB"),
        "rotated.jpg": (jpeg_file(rotated, quality=40, exif=exif.tobytes()), (20, 30), "L"),
        "really-a-png.jpg": (png_bytes(gray), (23, 37), "L"),
        "alpha.png": (png_bytes(rgba), (16, 16), "RGBA"),
    }
    clean = jpeg.compress(smooth_image(64, 64), 80)
    bad = {
        "empty.jpg": (b"", "empty"),
        "truncated.jpg": (clean[: len(clean) // 2], "cannot decode"),
        "random.jpg": (np.random.default_rng(3).bytes(3000), "not an image"),
        "notes.jpg": (b"this is text, not a JPEG", "not an image"),
        "nested/bomb.jpg": (jpeg.compress(smooth_image(120, 120), 90), "exceeds the limit"),
    }
    for rel, item in {**good, **bad}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(item[0])
    return good, bad


def test_folder_with_bad_files_then_rerun_writes_nothing(tmp_path, model_file):
    src, dst = tmp_path / "in", tmp_path / "out"
    good, bad = make_collection(src)
    args = ["infer", "--input", str(src), "--output", str(dst), "--model", model_file, "--max-pixels", "10000"]
    assert cli_main(args) == 0
    for rel, (data, size, mode) in good.items():
        if rel in PASSED:  # no JPEG tables: passed through as its own bytes, under its own name
            assert (dst / rel).read_bytes() == data, rel
            assert not (dst / output_name(rel, FMT)).exists()
            continue
        with Image.open(dst / output_name(rel, FMT)) as out:
            # As a viewer shows it: a rotated photo keeps its pixels as stored and its orientation tag.
            assert (ImageOps.exif_transpose(out).size, out.mode) == (size, mode), rel
    with Image.open(dst / output_name("rotated.jpg", FMT)) as out:
        assert out.size == (30, 20) and out.getexif().get(0x0112) == 6
    failures = {f["path"]: f["reason"] for f in map(json.loads, (dst / "_failures.jsonl").read_text().splitlines())}
    assert set(failures) == set(bad)
    for rel, (_, reason) in bad.items():
        assert reason in failures[rel], (rel, failures[rel])
    assert not any((dst / output_name(rel, FMT)).exists() for rel in bad)
    summary = json.loads((dst / "_summary.json").read_text())
    # The two PNGs have no JPEG tables: passed through, not restored (and not harmed).
    assert (summary["restored"], summary["passed_through"], summary["failed"], summary["skipped"]) == (len(good) - 2, 2, len(bad), 0)
    assert summary["seen"] == len(good) + len(bad)
    assert not [p for p in dst.rglob("*") if p.name.endswith(".tmp")], "no temporary file is left"
    assert not (dst / "_carray").exists(), "the run's working files are cleaned up"
    trackers = [a for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith("carray-tracker-")]
    assert not trackers, "the job's tracker actor ends with the job, not with its driver"

    # Every output's time set far in the past: a rewrite (atomic: a new file) would bring a new
    # inode and the present time, however coarse the filesystem's clock.
    outputs = [p for p in dst.rglob("*") if p.is_file() and not p.name.startswith("_")]
    assert len(outputs) == len(good)
    for p in outputs:
        os.utime(p, ns=(10**18, 10**18))
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in outputs}
    assert cli_main(args) == 0
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in outputs} == before, "a re-run rewrites nothing"
    again = json.loads((dst / "_summary.json").read_text())
    assert (again["restored"], again["skipped"]) == (0, len(good))


def test_metadata_alpha_and_formats(tmp_path, model_file):
    src, dst = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    from PIL import ImageCms

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    img = Image.fromarray(smooth_image(24, 32, color=True))
    exif = img.getexif()
    exif[0x010F] = "carray-test-camera"  # Make
    img.save(src / "meta.jpg", quality=20, icc_profile=icc, exif=exif.tobytes())
    (src / "meta.png").write_bytes(png_bytes(np.dstack([smooth_image(8, 8, color=True), np.arange(64, dtype=np.uint8).reshape(8, 8)])))
    assert cli_main(["infer", "--input", str(src), "--output", str(dst), "--model", model_file, "--format", "webp"]) == 0
    with Image.open(dst / "meta.jpg.webp") as out:
        assert out.info.get("icc_profile") == icc
        assert out.getexif().get(0x010F) == "carray-test-camera"
    assert (dst / "meta.png").read_bytes() == (src / "meta.png").read_bytes()  # passed through (no tables): its own bytes
    assert not (dst / "meta.png.webp").exists()


def test_missing_empty_or_all_bad_input_exits_nonzero(tmp_path, model_file, capsys):
    assert cli_main(["infer", "--input", str(tmp_path / "nope"), "--output", str(tmp_path / "o"), "--model", model_file]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli_main(["infer", "--input", str(tmp_path / "empty"), "--output", str(tmp_path / "o"), "--model", model_file]) == 2
    (tmp_path / "texts" / "sub").mkdir(parents=True)  # listed by the tasks: no image anywhere is found at the end
    (tmp_path / "texts" / "sub" / "notes.txt").write_text("not an image")
    capsys.readouterr()
    assert cli_main(["infer", "--input", str(tmp_path / "texts"), "--output", str(tmp_path / "o3"), "--model", model_file]) == 2
    assert "no images found" in capsys.readouterr().err
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.jpg").write_bytes(b"junk")
    assert cli_main(["infer", "--input", str(tmp_path / "bad"), "--output", str(tmp_path / "o2"), "--model", model_file]) == 1
    assert cli_main(["infer", "--input", str(tmp_path / "bad"), "--output", str(tmp_path / "bad" / "out"), "--model", model_file]) == 2


def test_foreign_model_file_is_refused(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jpg").write_bytes(jpeg.compress(smooth_image(16, 16), 10))
    (tmp_path / "m.pt").write_bytes(b"not a model")
    assert cli_main(["infer", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "o"), "--model", str(tmp_path / "m.pt")]) == 2
    assert "m.pt: not a PyTorch/carray model" in capsys.readouterr().err


def test_output_names_never_collide():
    inputs = ["a.jpg", "a.png", "a", "a.JPG", "b.jpg", "d/c.jpeg", "d/c.jpeg.png"]
    names = [output_name(p, "png") for p in inputs]
    assert len(set(names)) == len(inputs)
    assert names[:2] == ["a.jpg.png", "a.png.png"]


@pytest.mark.s3
def test_bucket_to_bucket(s3_server, bucket, tmp_path, model_file, monkeypatch):
    options, name = bucket
    fs = options.filesystem()
    src = tmp_path / "in"
    good, bad = make_collection(src)
    for path in src.rglob("*"):
        if path.is_file():
            with fs.open_output_stream(f"{name}/in/{path.relative_to(src).as_posix()}") as f:
                f.write(path.read_bytes())
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    # --split-above: the 40x56 images are cut into 16-pixel tiles, stored in the bucket and stitched
    args = ["infer", "--input", f"s3://{name}/in", "--output", f"s3://{name}/out", "--model", model_file, "--max-pixels", "10000",
            "--split-above", "0.002", "--tile", "16"]
    assert cli_main(args) == 0
    assert not fs.get_file_info(pafs.FileSelector(f"{name}/out/_carray", recursive=True, allow_not_found=True))
    for rel, (data, size, mode) in good.items():
        if rel in PASSED:
            assert fs.open_input_stream(f"{name}/out/{rel}").read() == data, rel
            continue
        with Image.open(io.BytesIO(fs.open_input_stream(f"{name}/out/{output_name(rel, FMT)}").read())) as out:
            assert (ImageOps.exif_transpose(out).size, out.mode) == (size, mode)
    failures = fs.open_input_stream(f"{name}/out/_failures.jsonl").read().decode().splitlines()
    assert {json.loads(line)["path"] for line in failures} == set(bad)
    summary = json.loads(fs.open_input_stream(f"{name}/out/_summary.json").read())
    assert s3_server.env()["AWS_SECRET_ACCESS_KEY"] not in json.dumps(summary)
    assert cli_main(args) == 0
    assert json.loads(fs.open_input_stream(f"{name}/out/_summary.json").read())["restored"] == 0


def test_unreachable_cluster_fails_fast(tmp_path, model_file):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jpg").write_bytes(jpeg.compress(smooth_image(16, 16), 10))
    env = dict(os.environ, RAY_ADDRESS="127.0.0.1:9")  # nothing listens there
    # Ray's own ray.init() would retry for minutes and then fail without this message (and past
    # this generous limit); carray's check says it at once.
    code, log = run_job("infer.py", ["--input", str(tmp_path / "in"), "--output", str(tmp_path / "o"), "--model", model_file], tmp_path / "log", env=env, timeout=240)
    assert code == 2
    assert "No Ray cluster answers at 127.0.0.1:9" in log


def test_shipped_models_restore_without_model_option(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "g.jpg").write_bytes(jpeg.compress(smooth_image(40, 48), 10))
    (tmp_path / "in" / "c.jpg").write_bytes(jpeg.compress(smooth_image(40, 48, color=True), 10))
    assert cli_main(["infer", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")]) == 0
    assert Image.open(tmp_path / "out" / "g.jpg.jpg").mode == "L"
    assert Image.open(tmp_path / "out" / "c.jpg.jpg").mode == "RGB"
    # The default output: JPEG at q98 with full-resolution chroma (docs/benchmarks.md, "Output formats").
    header = read_header((tmp_path / "out" / "c.jpg.jpg").read_bytes())
    assert (header.format, header.quality, header.subsampling) == ("JPEG", 98, "4:4:4")


# --- restoration quality through the job (the shipped models) ---



def _crop(path, mode, size=96):
    return np.asarray(Image.open(path).convert(mode))[:size, :size].copy()


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_shipped_models_bring_every_image_closer_to_its_original(tmp_path, precision):
    """Gray JPEGs through the gray model, colour JPEGs through the colour model: each output is
    closer to its original than its JPEG (a restorer that hands back its input fails this), at
    fp32 and at int8 (ONNX Runtime, quantized on the driver, run by every actor)."""
    from carray import metrics

    src = tmp_path / "in"
    src.mkdir()
    originals = {}
    for name in ("barbara.bmp", "boats.bmp"):
        originals[f"{name}.jpg"] = _crop(DATA / "Classic5" / name, "L")
    for name in ("monarch.png", "parrots.png"):
        originals[f"{name}.jpg"] = _crop(DATA / "LIVE1_color" / name, "RGB")
    for rel, original in originals.items():
        (src / rel).write_bytes(jpeg.compress(original, 10))
    assert cli_main(["infer", "--input", str(src), "--output", str(tmp_path / "out"), "--precision", precision]) == 0
    summary = json.loads((tmp_path / "out" / "_summary.json").read_text())
    assert (summary["precision"], summary["runtime"]) == (precision, "onnxruntime")  # fp32 on CPUs too, by default
    for rel, original in originals.items():
        degraded = np.asarray(Image.open(src / rel))
        restored = np.asarray(Image.open(tmp_path / "out" / output_name(rel, FMT)))
        assert restored.shape == original.shape
        gain = metrics.psnr(original, restored) - metrics.psnr(original, degraded)
        assert gain > 0.3, (rel, gain)


def test_quality_comes_from_the_tables_high_quality_is_not_harmed_and_lossless_passes(tmp_path):
    from carray import metrics
    from carray.modelfiles import load_model, shipped_path
    from carray.restore import restore_pixels

    model, _ = load_model(str(shipped_path("gray")))
    original = _crop(DATA / "Classic5" / "lena.bmp", "L", 80)
    src = tmp_path / "in"
    src.mkdir()
    # Named q10, but its tables say q90: it is restored as q90.
    (src / "q10-photo.jpg").write_bytes(jpeg.compress(original, 90))
    (src / "camera-q97.jpg").write_bytes(jpeg.compress(original, 97))
    (src / "lossless.png").write_bytes(png_bytes(original))
    # PyTorch, to compare with restore_pixels bit for bit (ONNX Runtime, the default on CPUs, is within a grey level).
    assert cli_main(["infer", "--input", str(src), "--output", str(tmp_path / "out"), "--runtime", "torch", "--format", "png"]) == 0
    out = lambda rel: np.asarray(Image.open(tmp_path / "out" / output_name(rel, "png")))  # noqa: E731

    q90 = np.asarray(Image.open(src / "q10-photo.jpg"))
    assert np.array_equal(out("q10-photo.jpg"), restore_pixels(model, q90, quality=90))
    assert not np.array_equal(out("q10-photo.jpg"), restore_pixels(model, q90, quality=10))
    assert metrics.psnr(original, out("q10-photo.jpg")) >= metrics.psnr(original, q90) - 0.01
    assert (tmp_path / "out" / "lossless.png").read_bytes() == (src / "lossless.png").read_bytes(), "passed through: its own bytes"
    assert (tmp_path / "out" / "camera-q97.jpg").read_bytes() == (src / "camera-q97.jpg").read_bytes()
    summary = json.loads((tmp_path / "out" / "_summary.json").read_text())
    assert summary["restored"] == 1 and summary["passed_through"] == 2

    # The override restores everything as if its tables said Q, PNG included.
    assert cli_main(["infer", "--input", str(src), "--output", str(tmp_path / "forced"), "--quality-override", "10", "--runtime", "torch", "--format", "png"]) == 0
    forced = np.asarray(Image.open(tmp_path / "forced" / "lossless.png.png"))
    assert np.array_equal(forced, restore_pixels(model, original, quality=10))
    assert not np.array_equal(forced, original)


# --- collections: every input accounted for, manifests, retries ---


def test_every_input_is_restored_or_counted_with_its_reason(tmp_path, model_file):
    src = tmp_path / "in"
    names = ["_DSC0001.jpg", "_raw/b.jpg", ".thumbs/a.jpg", "y.jfif", "x.JPEG", "z.jpe", "ok.jpg", "IMG 7.JPG"]
    for i, rel in enumerate(names):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(jpeg.compress(smooth_image(24, 32, seed=i), 20))
    (src / "notes.txt").write_text("not an image")
    assert cli_main(["infer", "--input", str(src), "--output", str(tmp_path / "out"), "--model", model_file]) == 0
    summary = json.loads((tmp_path / "out" / "_summary.json").read_text())
    visible = [n for n in names if not n.startswith(".")]
    for rel in visible:
        assert (tmp_path / "out" / output_name(rel, FMT)).is_file(), rel
    assert summary["restored"] == len(visible)
    assert summary["skipped_by_reason"] == {SKIP_HIDDEN: 1, SKIP_NOT_IMAGE: 1}
    assert summary["seen"] == len(names) + 1
    assert len(summary["model_sha256"]["gray"]) == 64 and summary["carray_version"]
    assert summary["gpus"] == 0 and summary["cpus"] == 2
    assert summary["megapixels_per_second_per_cpu"] == pytest.approx(summary["megapixels"] / summary["seconds"] / 2, rel=0.01)
    # Hidden folders on request.
    assert cli_main(["infer", "--input", str(src), "--output", str(tmp_path / "all"), "--model", model_file, "--include-hidden"]) == 0
    assert (tmp_path / "all" / ".thumbs" / "a.jpg.jpg").is_file()


@pytest.mark.parametrize("kind", ["txt", "csv", "parquet"])
def test_manifest_restores_exactly_its_keys(tmp_path, model_file, kind):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(5):
        (src / f"k{i}.jpg").write_bytes(jpeg.compress(smooth_image(24, 32, seed=i), 20))
    keys = ["k1.jpg", "k3.jpg"]
    manifest = tmp_path / f"keys.{kind}"
    if kind == "txt":
        manifest.write_text("\n".join(keys) + "\n")
    elif kind == "csv":
        manifest.write_text("key,size\n" + "".join(f"{k},1\n" for k in keys))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"key": keys}), manifest)
    assert cli_main(["infer", "--input", str(src), "--output", str(tmp_path / "out"), "--model", model_file, "--manifest", str(manifest)]) == 0
    assert sorted(p.name for p in (tmp_path / "out").glob("*.jpg")) == ["k1.jpg.jpg", "k3.jpg.jpg"]


def test_retry_failed_runs_only_the_last_failures(tmp_path, model_file):
    src, dst = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    (src / "good.jpg").write_bytes(jpeg.compress(smooth_image(24, 32), 20))
    (src / "late.jpg").write_bytes(b"still uploading")
    assert cli_main(["infer", "--input", str(src), "--output", str(dst), "--model", model_file]) == 0
    assert [json.loads(line)["path"] for line in (dst / "_failures.jsonl").read_text().splitlines()] == ["late.jpg"]
    (src / "late.jpg").write_bytes(jpeg.compress(smooth_image(24, 32, seed=4), 20))
    (src / "new.jpg").write_bytes(jpeg.compress(smooth_image(24, 32, seed=5), 20))
    assert cli_main(["infer", "--input", str(src), "--output", str(dst), "--model", model_file, "--retry-failed"]) == 0
    summary = json.loads((dst / "_summary.json").read_text())
    assert (summary["restored"], summary["failed"], summary["seen"]) == (1, 0, 1)
    assert (dst / "late.jpg.jpg").is_file() and not (dst / "new.jpg.jpg").exists()


@pytest.mark.s3
def test_s3_inventory_manifest(s3_server, bucket, tmp_path, model_file, monkeypatch):
    """An S3 Inventory report (manifest.json + gzipped CSV parts, URL-encoded keys) as --manifest."""
    import gzip
    from urllib.parse import quote

    options, name = bucket
    fs = options.filesystem()
    keys = ["photos/a b.jpg", "photos/sub/c.jpg", "photos/d.jpg"]
    for i, key in enumerate(keys):
        with fs.open_output_stream(f"{name}/{key}") as f:
            f.write(jpeg.compress(smooth_image(24, 32, seed=i), 20))
    listed = keys[:2]  # the inventory lists two of the three
    part = "inventory/src/cfg/data/part-0.csv.gz"
    with fs.open_output_stream(f"{name}/{part}") as f:
        f.write(gzip.compress("".join(f'"{name}","{quote(k)}","100"\n' for k in listed).encode()))
    manifest = {"sourceBucket": name, "fileFormat": "CSV", "fileSchema": "Bucket, Key, Size", "files": [{"key": part}]}
    with fs.open_output_stream(f"{name}/inventory/src/cfg/2026-11-25T00-00Z/manifest.json") as f:
        f.write(json.dumps(manifest).encode())
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    args = ["infer", "--input", f"s3://{name}/photos", "--output", f"s3://{name}/out", "--model", model_file,
            "--manifest", f"s3://{name}/inventory/src/cfg/2026-11-25T00-00Z/manifest.json"]
    assert cli_main(args) == 0
    written = sorted(i.path for i in fs.get_file_info(__import__("pyarrow.fs").fs.FileSelector(f"{name}/out", recursive=True)) if i.path.endswith(".jpg"))
    assert written == [f"{name}/out/a b.jpg.jpg", f"{name}/out/sub/c.jpg.jpg"]


def test_large_images_are_cut_into_tiles_and_stitched_exactly(tmp_path, model_file):
    """--split-above: each large image is restored as tiles spread over the actors and stitched back;
    the result equals restoring the image whole (margins cover the receptive field), alpha, ICC and
    EXIF included, and nothing of the tiles is left behind. --tile-batch 3: windows of one shape
    (and the small image) go through the network three at a time."""
    from carray.images import decode_image
    from carray.modelfiles import load_model
    from carray.restore import restore_image

    (tmp_path / "in").mkdir()
    gray = jpeg.compress(smooth_image(300, 228, seed=4), 20)
    rgba = np.dstack([smooth_image(200, 136, color=True, seed=5), np.arange(200 * 136, dtype=np.uint32).reshape(200, 136).astype(np.uint8)])
    small = jpeg.compress(smooth_image(40, 40, seed=6), 20)
    files = {"big.jpg": gray, "big-alpha.png": png_bytes(rgba), "small.jpg": small}
    for name, data in files.items():
        (tmp_path / "in" / name).write_bytes(data)
    out = tmp_path / "out"
    args = ["infer", "--input", str(tmp_path / "in"), "--output", str(out), "--model", model_file,
            "--split-above", "0.02", "--tile", "64", "--quality-override", "20", "--tile-batch", "3", "--runtime", "torch", "--format", "png"]
    assert cli_main(args) == 0
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["restored"] == 3 and summary["failed"] == 0
    assert abs(summary["megapixels"] - (300 * 228 + 200 * 136 + 40 * 40) / 1e6) < 1e-3
    assert not (out / "_carray").exists()
    model = {"gray": load_model(model_file)[0]}
    for name, data in files.items():
        expected = restore_image(model, decode_image(data), quality=20)
        got = Image.open(out / (name + ".png"))
        pixels = np.asarray(got.convert("RGBA" if expected.alpha is not None else got.mode))
        if expected.alpha is not None:
            assert np.array_equal(pixels[..., 3], rgba[..., 3])
            pixels = pixels[..., :3]
        diff = np.abs(pixels.astype(int) - expected.pixels.astype(int))
        assert diff.max() <= 1 and (diff == 0).mean() > 0.999, name  # float rounding at most


# --- passed through means untouched ---


def test_passed_through_inputs_are_their_own_bytes_and_a_mixed_pack_writes_each_once(tmp_path, model_file):
    """A q97 JPEG and a lossless PNG, each with EXIF and an ICC profile, come out byte-identical
    under their own names; in the same pack restored JPEGs are written once each under the restored
    naming rule; a re-run counts every one of them as done."""
    from PIL import ImageCms

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    src, dst = tmp_path / "in", tmp_path / "out"
    (src / "sub").mkdir(parents=True)
    img = Image.fromarray(smooth_image(48, 64, color=True))
    exif = img.getexif()
    exif[0x010F] = "carray-test-camera"  # Make
    exif[0x0112] = 6  # rotated: a passed-through file keeps its orientation tag as it was
    passed = {"camera-q97.jpg": dict(format="JPEG", quality=97), "sub/lossless.png": dict(format="PNG"),
              "looks-restored.jpg.jpg": dict(format="PNG")}  # its own name is a restored output's name
    for rel, options in passed.items():
        img.save(src / rel, icc_profile=icc, exif=exif.tobytes(), **options)
    restored = [f"r{i}.jpg" for i in range(5)] + ["sub/r5.jpg", "looks-restored.jpg"]
    for i, rel in enumerate(restored):
        (src / rel).write_bytes(jpeg.compress(smooth_image(48, 64, seed=i), 20))
    assert cli_main(["infer", "--input", str(src), "--output", str(dst), "--model", model_file]) == 0

    expected = {"camera-q97.jpg", "sub/lossless.png", "looks-restored.jpg.jpg.jpg"} | {output_name(r, FMT) for r in restored}
    written = {p.relative_to(dst).as_posix() for p in dst.rglob("*") if p.is_file() and not p.name.startswith("_")}
    assert written == expected, "each input written once, under its own name or the restored one"
    for rel in ("camera-q97.jpg", "sub/lossless.png"):
        assert (dst / rel).read_bytes() == (src / rel).read_bytes(), rel
    assert (dst / "looks-restored.jpg.jpg.jpg").read_bytes() == (src / "looks-restored.jpg.jpg").read_bytes()
    with Image.open(dst / "camera-q97.jpg") as out:
        assert out.info.get("icc_profile") == icc and out.getexif().get(0x0112) == 6
    summary = json.loads((dst / "_summary.json").read_text())
    assert (summary["restored"], summary["passed_through"], summary["failed"]) == (len(restored), len(passed), 0)

    assert cli_main(["infer", "--input", str(src), "--output", str(dst), "--model", model_file]) == 0
    again = json.loads((dst / "_summary.json").read_text())
    assert (again["restored"], again["passed_through"], again["skipped"]) == (0, 0, len(restored) + len(passed))


def test_passed_names_never_collide_with_restored_ones():
    """Whichever inputs are restored and whichever passed through, no two share an output."""
    from itertools import product

    from carray.infer import passed_name

    inputs = ["a.jpg", "a.jpg.png", "a.jpg.png.png", "a.png", "b.JPG.png", "c.tif", "c.tif.png", "d/e.webp"]
    for fmt in ("png", "jpeg", "webp"):
        for treatment in product((True, False), repeat=len(inputs)):  # True: restored
            names = [output_name(p, fmt) if restored else passed_name(p, output_name(p, fmt)) for p, restored in zip(inputs, treatment)]
            assert len(set(names)) == len(inputs), (fmt, treatment, names)


def test_split_above_by_default_keeps_camera_photos_whole_on_gpus_and_cuts_them_on_cpus():
    """--split-above's default by where the networks run: on GPU actors a 61 MP camera photo (9504x6336,
    the largest DSLRs) is restored whole, as cutting costs the CPUs that feed the GPU 1.6 times the work
    per MP (docs/benchmarks.md, session 19), and a 100 MP scan is cut; on CPU actors, where the network
    dominates, a 24 MP photo is cut (its tiles spread over the actors and bound their memory) and a
    12 MP one is not. Given, the option wins on both."""
    from carray.config import InferConfig
    from carray.infer.decode import needs_tiles
    from carray.infer.packs import empty_row

    def header(height, width):
        return {**empty_row("p.jpg", "p.jpg.jpg"), "height": height, "width": width}

    cfg = InferConfig(input="in", output="out")
    on_gpus, on_cpus = cfg.split_above_mp(gpus=True), cfg.split_above_mp(gpus=False)
    assert not needs_tiles(header(6336, 9504), on_gpus), "a 61 MP photo whole on GPU actors"
    assert needs_tiles(header(10000, 10000), on_gpus), "a 100 MP scan cut on GPU actors"
    assert needs_tiles(header(4000, 6000), on_cpus), "a 24 MP photo cut on CPU actors"
    assert not needs_tiles(header(3000, 4000), on_cpus), "a 12 MP photo whole on CPU actors"
    never = InferConfig(input="in", output="out", split_above=0)
    assert never.split_above_mp(gpus=True) == never.split_above_mp(gpus=False) == 0


def test_images_travel_to_the_actors_as_their_files_bytes(tmp_path):
    """The read stage hands on what it read and what the header said; only the actor decodes (no
    pixels in the object store), and packs hold several photos (one Ray call for a few)."""
    from carray.infer import Locations
    from carray.infer.decode import read_packs
    from carray.infer.packs import PLAN_TYPES, to_packs, unpack
    from carray.quality import Policy

    photo = jpeg.compress(smooth_image(64, 48, color=True), 30)
    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        (tmp_path / "in" / name).write_bytes(photo)
    (tmp_path / "in" / "q97.jpg").write_bytes(jpeg.compress(smooth_image(64, 48), 97))
    where = Locations.resolve(str(tmp_path / "in"), str(tmp_path / "out"), None)
    keys = to_packs([[{"path": n, "output": n + ".jpg", "skipped": ""} for n in ("a.jpg", "b.jpg", "c.jpg", "q97.jpg")]], PLAN_TYPES)
    packs = [pack for table in read_packs(keys, where=where, max_pixels=None, policy=Policy(), split_above=16, tile=512, margin=8)
             for pack in unpack(table)]
    assert len(packs) == 1, "small photos share one pack"
    rows = {row["path"]: row for row in packs[0]}
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        assert rows[name]["data"] == photo and not rows[name]["pixels"], "the file's bytes, not its pixels"
        assert (rows[name]["height"], rows[name]["width"], rows[name]["quality"]) == (64, 48, 30)
    assert rows["q97.jpg"]["passed"] and not rows["q97.jpg"]["data"], "passed through: written by the read task, bytes dropped"
    assert (tmp_path / "out" / "q97.jpg").read_bytes() == (tmp_path / "in" / "q97.jpg").read_bytes()


def test_console_shows_carrays_lines_and_the_summary_where_the_cpu_went(tmp_path, model_file):
    (tmp_path / "in").mkdir()
    for n in range(3):
        (tmp_path / "in" / f"p{n}.jpg").write_bytes(jpeg.compress(smooth_image(96, 64, color=True), 20))
    job = start_job("infer.py", ["--input", str(tmp_path / "in"), "--output", str(tmp_path / "o"), "--model", model_file], tmp_path / "log")
    code, log = job.wait(timeout=300), (tmp_path / "log").read_text(errors="replace")
    assert code == 0, log[-3000:]
    notice = "has constructor arguments in the object store and max_restarts > 0"  # Ray's C++ core worker (carray/console.py)
    for noise in ("UserWarning", "streaming_executor", "logging_progress", "Execution plan", "warnings.warn", notice):
        assert noise not in log, f"Ray's own line {noise!r} on the console:\n{log[-3000:]}"
    assert "infer: 3 restored" in log
    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    driver_log = "".join(p.read_text(errors="replace") for p in logs.glob(f"python-core-driver-*_{job.pid}.log"))
    assert notice in driver_log, "the notice left the console for Ray's own log of this driver"
    summary = json.loads((tmp_path / "o" / "_summary.json").read_text())
    assert set(summary["actor_cpu_seconds"]) == {"decode", "restore", "encode", "write", "startup"}, summary["actor_cpu_seconds"]
    assert all(summary["actor_cpu_seconds"][step] > 0 for step in ("decode", "encode", "write")), summary["actor_cpu_seconds"]
    # Each actor's start-up (its imports, the model loaded) is counted apart from its steps: seconds, not milliseconds.
    assert summary["actor_cpu_seconds"]["startup"] > 0.5, summary["actor_cpu_seconds"]


def test_a_gpu_actors_calls_run_at_once_in_threads_and_each_image_is_written_once(tmp_path, model_file):
    """What a GPU actor does with Pool.calls > 1 (Ray Data's threads), here on the CPU: four packs
    through one Restorer at once give exactly the files one call at a time gives."""
    from concurrent.futures import ThreadPoolExecutor

    from carray.infer import Locations, Restorer
    from carray.infer.decode import read_packs
    from carray.infer.packs import PLAN_TYPES, to_packs, unpack
    from carray.infer.tracker import start_tracker
    from carray.quality import Policy
    from carray.runtime import plan_pool, Offer

    assert plan_pool(offer=Offer(cpus=16, gpus=1, gpu_node_cpus=16), codecs=True).calls == 12
    assert plan_pool(gpu=False, offer=Offer(cpus=2, gpus=0), codecs=True).calls == 1
    (tmp_path / "in").mkdir()
    names = [f"p{n}.jpg" for n in range(8)]
    for n, name in enumerate(names):
        (tmp_path / "in" / name).write_bytes(jpeg.compress(smooth_image(80 + 8 * n, 64, color=n % 2 == 0), 20 + 5 * n))
    tracker = start_tracker()
    try:
        outputs = {}
        for run, workers in (("serial", 1), ("threads", 4)):
            (tmp_path / run).mkdir()
            where = Locations.resolve(str(tmp_path / "in"), str(tmp_path / run), None)
            restorer = Restorer({"gray": open(model_file, "rb").read()}, tile=48, threads=1, tracker=tracker, max_attempts=2,
                                where=where, max_pixels=None, fmt="jpeg", quality=98)
            packs = [table for n in range(0, 8, 2) for table in read_packs(
                to_packs([[{"path": k, "output": k + ".jpg", "skipped": ""} for k in names[n : n + 2]]], PLAN_TYPES),
                where=where, max_pixels=None, policy=Policy(), split_above=16, tile=48, margin=8)]
            with ThreadPoolExecutor(workers) as pool:
                rows = [row for table in pool.map(restorer, packs) for pack in unpack(table) for row in pack]
            assert sorted(r["path"] for r in rows) == names and all(r["written"] and not r["error"] for r in rows), rows
            outputs[run] = {name: (tmp_path / run / (name + ".jpg")).read_bytes() for name in names}
        assert outputs["threads"] == outputs["serial"]
    finally:
        ray.kill(tracker)


def test_a_pack_of_tiles_completes_each_image_once_and_fails_a_broken_one_once(tmp_path):
    """The write stage counts a pack's stored tiles in one call to the tracker: an image whose tiles
    all come in one pack is stitched and written once, exactly the pixels its tiles hold, its
    megapixels counted once; an image whose tiles failed is one failure line, however many failed."""
    from carray.infer import Locations
    from carray.infer.decode import decode_to_row
    from carray.infer.packs import IMAGE_TYPES, to_packs, unpack
    from carray.infer.tiles import split_into_tiles
    from carray.infer.tracker import start_tracker
    from carray.infer.write import write_pack

    (tmp_path / "in").mkdir()
    where = Locations.resolve(str(tmp_path / "in"), str(tmp_path / "out"), None)
    data = jpeg.compress(smooth_image(40, 56, color=True), 30)
    tiles, original = [], None
    for name in ("a.jpg", "b.jpg"):
        row = decode_to_row(name, name + ".png", data, None)
        original = np.frombuffer(row["pixels"], np.uint8).reshape(40, 56, 3)
        for tile in split_into_tiles(row, tile=16, margin=8, where=where):
            y0, y1, x0, x1 = tile["crop"]  # "restored" by an identity: the window's core
            window = np.frombuffer(tile["pixels"], np.uint8).reshape(tile["height"], tile["width"], 3)
            tile.update(pixels=np.ascontiguousarray(window[y0:y1, x0:x1]).tobytes(), height=y1 - y0, width=x1 - x0)
            if name == "b.jpg":
                tile.update(error="restoration failed: a test", pixels=b"")
            tiles.append(tile)
    assert len(tiles) == 2 * 12, "12 tiles each, all in one pack"
    tracker = start_tracker()
    try:
        table = write_pack(to_packs([tiles], IMAGE_TYPES), tracker=tracker, fmt="png", quality=98, where=where)
    finally:
        ray.kill(tracker)
    results = [r for pack in unpack(table) for r in pack]
    finished = sorted((r["path"], r["error"]) for r in results if r["part"] == "")
    assert finished == [("a.jpg", ""), ("b.jpg", "restoration failed: a test")], finished
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / "a.jpg.png")), original)
    assert sum(r["megapixels"] for r in results if r["path"] == "a.jpg") == pytest.approx(40 * 56 / 1e6)
    assert not (tmp_path / "out" / "b.jpg.png").exists()
