"""The infer job on a real local Ray and the real S3 server: odd and broken files, re-runs, buckets."""
import io
import json
import os
import time

import numpy as np
import pytest
from PIL import Image

from carray import jpeg
from carray.cli import main as cli_main
from carray.infer import output_names
from carray.model import build_model, save_model
from conftest import png_bytes, smooth_image
from support.jobs import run_job

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
    names = output_names(sorted(good) + sorted(bad), "png")
    for rel, (_, size, mode) in good.items():
        with Image.open(dst / names[rel]) as out:
            assert (out.size, out.mode) == (size, mode), rel
    failures = {f["path"]: f["reason"] for f in map(json.loads, (dst / "_failures.jsonl").read_text().splitlines())}
    assert set(failures) == set(bad)
    for rel, (_, reason) in bad.items():
        assert reason in failures[rel], (rel, failures[rel])
    assert not any((dst / names[rel]).exists() for rel in bad)
    summary = json.loads((dst / "_summary.json").read_text())
    assert (summary["restored"], summary["failed"], summary["skipped"]) == (len(good), len(bad), 0)
    assert not [p for p in dst.rglob("*") if p.name.endswith(".tmp")], "no temporary file is left"

    before = {p: p.stat().st_mtime_ns for p in dst.rglob("*.png")}
    time.sleep(0.01)
    assert cli_main(args) == 0
    assert {p: p.stat().st_mtime_ns for p in dst.rglob("*.png")} == before, "a re-run rewrites nothing"
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
    with Image.open(dst / "meta.png.webp") as out:
        assert out.mode == "RGBA"


def test_missing_empty_or_all_bad_input_exits_nonzero(tmp_path, model_file, capsys):
    assert cli_main(["infer", "--input", str(tmp_path / "nope"), "--output", str(tmp_path / "o"), "--model", model_file]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli_main(["infer", "--input", str(tmp_path / "empty"), "--output", str(tmp_path / "o"), "--model", model_file]) == 2
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
    names = output_names(["a.jpg", "a.png", "b.jpg", "d/c.jpeg"], "png")
    assert names == {"a.jpg": "a.jpg.png", "a.png": "a.png.png", "b.jpg": "b.png", "d/c.jpeg": "d/c.png"}


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
    args = ["infer", "--input", f"s3://{name}/in", "--output", f"s3://{name}/out", "--model", model_file, "--max-pixels", "10000"]
    assert cli_main(args) == 0
    names = output_names(sorted(good) + sorted(bad), "png")
    for rel, (_, size, mode) in good.items():
        with Image.open(io.BytesIO(fs.open_input_stream(f"{name}/out/{names[rel]}").read())) as out:
            assert (out.size, out.mode) == (size, mode)
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
    started = time.time()
    code, log = run_job("infer.py", ["--input", str(tmp_path / "in"), "--output", str(tmp_path / "o"), "--model", model_file], tmp_path / "log", env=env, timeout=60)
    assert code != 0 and time.time() - started < 30
    assert "No Ray cluster answers at 127.0.0.1:9" in log


def test_shipped_models_restore_without_model_option(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "g.jpg").write_bytes(jpeg.compress(smooth_image(40, 48), 10))
    (tmp_path / "in" / "c.jpg").write_bytes(jpeg.compress(smooth_image(40, 48, color=True), 10))
    assert cli_main(["infer", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")]) == 0
    assert Image.open(tmp_path / "out" / "g.png").mode == "L"
    assert Image.open(tmp_path / "out" / "c.png").mode == "RGB"
