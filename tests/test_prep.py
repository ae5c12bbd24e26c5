"""The prep job end to end on a real local Ray: folders, pairs, bad files, buckets."""
import json

import pyarrow.dataset as pads
import pytest

from carray import jpeg
from carray.cli import main as cli_main
from carray.config import PrepConfig
from carray.pairs import COLUMNS, patches_from_arrow
from carray.prep import run_prep
from support.images import png_bytes, smooth_image

pytestmark = pytest.mark.usefixtures("ray_session")


def read_split(root, split):
    return pads.dataset(str(root / split), format="parquet").to_table()


def failures(root):
    return [json.loads(line) for line in (root / "_failures.jsonl").read_text().splitlines()]


def test_prep_folder_counts_split_and_rerun(image_folder, tmp_path):
    out = tmp_path / "out"
    cfg = PrepConfig(input=str(image_folder), output=str(out), quality=("10", "30"), split="50/50/0")
    summary = run_prep(cfg)
    # 96x80 at 32/16: 5 x 4 = 20 patches per image and quality.
    assert sum(summary["images"].values()) == 6
    assert summary["patches"]["train"] + summary["patches"]["val"] == 6 * 20 * 2
    train = read_split(out, "train")
    assert train.column_names == list(COLUMNS)
    assert patches_from_arrow(train.column("compressed")).shape[1:] == (1, 32, 32)
    assert set(train.column("quality").to_pylist()) == {10, 30}
    images_by_split = {s: set(read_split(out, s).column("image").to_pylist()) for s in ("train", "val")}
    assert not images_by_split["train"] & images_by_split["val"]  # no image straddles splits
    assert failures(out) == []
    again = run_prep(cfg)
    assert again["patches"] == summary["patches"]
    assert {s: set(read_split(out, s).column("image").to_pylist()) for s in ("train", "val")} == images_by_split


def test_bad_files_are_listed_and_the_rest_kept(image_folder, tmp_path):
    good = jpeg.compress(smooth_image(64, 64), 90)
    (image_folder / "empty.png").write_bytes(b"")
    (image_folder / "text.jpg").write_text("not an image")
    (image_folder / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (image_folder / "tiny.png").write_bytes(png_bytes(smooth_image(10, 10)))
    out = tmp_path / "out"
    code = cli_main(["prep", "--input", str(image_folder), "--output", str(out), "--split", "100/0/0"])
    assert code == 0
    reasons = {f["path"]: f["reason"] for f in failures(out)}
    assert set(reasons) == {"empty.png", "text.jpg", "truncated.jpg", "tiny.png"}
    assert "empty" in reasons["empty.png"] and "smaller than one" in reasons["tiny.png"]
    assert set(read_split(out, "train").column("image").to_pylist()) == {
        "img0.png", "img1.png", "img2.png", "img3.png", "sub/nested.png", "sub/colour.png"
    }


def test_pairs_mode(tmp_path):
    root = tmp_path / "pairs"
    root.mkdir()
    for i in range(3):
        clean = smooth_image(64, 64, seed=i)
        (root / f"p{i}.bmp").write_bytes(png_bytes(clean, format="BMP"))
        (root / f"p{i}.jpg").write_bytes(jpeg.compress(clean, 20))
    (root / "lonely.jpg").write_bytes(jpeg.compress(smooth_image(64, 64), 20))
    (root / "mismatch.png").write_bytes(png_bytes(smooth_image(64, 64)))
    (root / "mismatch.jpg").write_bytes(jpeg.compress(smooth_image(64, 72), 20))
    out = tmp_path / "out"
    summary = run_prep(PrepConfig(input=str(root), output=str(out), pairs=True, split="100/0/0"))
    assert summary["images"]["train"] == 3 and summary["patches"]["train"] == 3 * 9
    reasons = {f["path"]: f["reason"] for f in failures(out)}
    assert "without its original" in reasons["lonely.jpg"]
    assert "sizes differ" in reasons["mismatch.png"]
    assert set(read_split(out, "train").column("quality").to_pylist()) == {20}  # read from the JPEG's own tables


def test_missing_input_and_nothing_usable_exit_nonzero(tmp_path, capsys):
    assert cli_main(["prep", "--input", str(tmp_path / "nope"), "--output", str(tmp_path / "o")]) != 0
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.png").write_bytes(b"junk")
    assert cli_main(["prep", "--input", str(bad), "--output", str(tmp_path / "o2"), "--split", "100/0/0"]) != 0


@pytest.mark.s3
def test_prep_bucket_to_bucket(s3_server, bucket, image_folder, monkeypatch):
    options, name = bucket
    fs = options.filesystem()
    for path in sorted(image_folder.rglob("*.png")):
        with fs.open_output_stream(f"{name}/in/{path.relative_to(image_folder).as_posix()}") as f:
            f.write(path.read_bytes())
    # The job sees only the standard variables; the filesystem it builds carries them to workers.
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    code = cli_main(["prep", "--input", f"s3://{name}/in", "--output", f"s3://{name}/out", "--split", "100/0/0"])
    assert code == 0
    table = pads.dataset(f"{name}/out/train", filesystem=fs, format="parquet").to_table()
    assert table.num_rows == 6 * 20
    manifest = json.loads(fs.open_input_stream(f"{name}/out/_prep.json").read())
    assert manifest["patches"]["train"] == 120
    assert s3_server.env()["AWS_SECRET_ACCESS_KEY"] not in json.dumps(manifest)


@pytest.mark.s3
def test_s3_server_refuses_anonymous_requests(s3_server, bucket):
    _, name = bucket
    assert s3_server.anonymous_status(f"/{name}/") == 403


def test_qualities_up_to_100_and_double_compression_are_recorded_per_patch(image_folder, tmp_path):
    out = tmp_path / "out"
    summary = run_prep(PrepConfig(input=str(image_folder), output=str(out), quality=("95", "100"), double=("20-40",), split="50/50/0"))
    import pyarrow as pa

    table = pa.concat_tables([read_split(out, "train"), read_split(out, "val")])
    qualities = set(zip(table.column("quality").to_pylist(), table.column("first_quality").to_pylist()))
    singles = {q for q, first in qualities if first == -1}
    doubles = {(q, first) for q, first in qualities if first != -1}
    assert singles == {95, 100}
    assert doubles and all(q in (95, 100) and 20 <= first <= 40 for q, first in doubles)
    # Double-compressed versions are cut from the image shifted by 1-7 pixels: fewer patches.
    assert summary["patches"]["train"] + summary["patches"]["val"] > 6 * 20 * 2


def test_pairs_mode_reads_each_jpeg_quality_from_its_tables(tmp_path):
    root = tmp_path / "pairs"
    root.mkdir()
    clean = smooth_image(64, 64)
    (root / "a.png").write_bytes(png_bytes(clean))
    (root / "a.jpg").write_bytes(jpeg.compress(clean, 37))
    run_prep(PrepConfig(input=str(root), output=str(tmp_path / "out"), pairs=True, split="100/0/0"))
    assert set(read_split(tmp_path / "out", "train").column("quality").to_pylist()) == {37}
