"""Shards in, the same shards out: WebDataset tars made as img2dataset makes them (plain tarfile: key.jpg
beside key.txt and key.json), Parquet in Hugging Face's image struct and as plain binary, through the
infer job on a real local Ray and the real S3 server."""
import io
import json
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from carray import jpeg
from carray.cli import main as cli_main
from carray.infer.shards import expand_braces, rewrite_tar, sample_key
from carray.model import build_model, save_model
from support.images import png_bytes, smooth_image


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "fast.pt"
    save_model(build_model("fast-arcnn"), str(path), {"note": "untrained, for tests"})
    return str(path)


def photo(seed: int, quality: int = 20) -> bytes:
    return jpeg.compress(smooth_image(40, 48, color=bool(seed % 2), seed=seed), quality)


def tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    """A WebDataset shard as img2dataset writes it: plain tarfile, members in sample order."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def webdataset_shard(first: int, count: int) -> list[tuple[str, bytes]]:
    members = []
    for n in range(first, first + count):
        key = f"{n:09d}"
        members += [(f"{key}.jpg", photo(n)), (f"{key}.txt", f"caption {n}".encode()),
                    (f"{key}.json", json.dumps({"key": key, "url": f"https://example.org/{n}.jpg"}).encode())]
    return members


def members_of(data: bytes) -> list[tuple[str, bytes]]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers() if m.isfile()]


def odd_shard() -> list[tuple[str, bytes]]:
    """A corrupt image, a PNG under another key (not restored), a sample with no image at all, and a
    high-quality JPEG the policy passes through."""
    return [("a.jpg", b"\xff\xd8 not really a jpeg"), ("a.txt", b"corrupt"),
            ("b.jpg", photo(3)), ("b.png", png_bytes(smooth_image(16, 16))),
            ("c.txt", b"a sample without an image"), ("c.cls", b"7"),
            ("d.jpg", photo(5, quality=97))]


@pytest.mark.usefixtures("ray_session")
def test_webdataset_shards_come_out_as_the_same_shards(tmp_path, model_file):
    src, dst = tmp_path / "shards", tmp_path / "out"
    src.mkdir()
    shards = {"00000.tar": webdataset_shard(0, 4), "00001.tar": webdataset_shard(4, 3), "00002.tar": odd_shard()}
    for name, members in shards.items():
        (src / name).write_bytes(tar_bytes(members))
    whole = tar_bytes(webdataset_shard(7, 3))
    (src / "00003.tar").write_bytes(whole[: len(whole.rstrip(b"\0")) - 20])  # cut inside its last member
    args = ["infer", "--input", str(src / "{00000..00003}.tar"), "--output", str(dst), "--model", model_file]
    assert cli_main(args) == 0

    for name, members in shards.items():
        out = members_of((dst / name).read_bytes())
        assert [m for m, _ in out] == [m for m, _ in members], "the same members in the same order"
        for (member, before), (_, after) in zip(members, out):
            restored = member.endswith(".jpg") and member not in ("a.jpg", "d.jpg")
            assert (before != after) == restored, member
            if restored:
                with Image.open(io.BytesIO(after)) as image:
                    assert image.format == "JPEG" and image.size == (48, 40)
    truncated = members_of((dst / "00003.tar").read_bytes())
    assert [m for m, _ in truncated] == [m for m, _ in webdataset_shard(7, 3)][:-1], "every whole member is kept, in order"
    failures = [json.loads(line) for line in (dst / "_failures.jsonl").read_text().splitlines()]
    assert {(f["path"], f["key"]) for f in failures} == {("00002.tar", "a.jpg"), ("00003.tar", "")}
    assert "truncated" in next(f["reason"] for f in failures if f["path"] == "00003.tar")
    summary = json.loads((dst / "_summary.json").read_text())
    assert summary["shards"] == {"shards": 4, "shards_written": 4, "shards_skipped": 0, "shards_failed": 1}
    assert (summary["samples"], summary["restored"], summary["passed_through"], summary["failed"]) == (4 + 3 + 4 + 3, 4 + 3 + 1 + 3, 1, 1)

    assert cli_main(args) == 0
    again = json.loads((dst / "_summary.json").read_text())
    assert again["shards"]["shards_skipped"] == 4 and again["restored"] == 0, "a re-run skips the shards that are done"
    assert cli_main(args + ["--retry-failed"]) == 0
    retried = json.loads((dst / "_summary.json").read_text())
    assert retried["shards"]["shards"] == 2, "--retry-failed redoes only the shards with failures"


def hf_table(rows: int, struct: bool) -> pa.Table:
    images = [{"bytes": photo(n), "path": f"img{n}.jpg"} if struct else photo(n) for n in range(rows)]
    images[1] = None  # a missing image stays missing
    kind = pa.struct([("bytes", pa.binary()), ("path", pa.string())]) if struct else pa.binary()
    return pa.table({"image": pa.array(images, type=kind), "label": pa.array(list(range(rows)), pa.int64()),
                     "caption": pa.array([f"caption {n}" for n in range(rows)])})


@pytest.mark.usefixtures("ray_session")
def test_parquet_shards_in_a_bucket_keep_every_other_column(s3_server, bucket, tmp_path, model_file, monkeypatch):
    options, name = bucket
    fs = s3_server.filesystem()
    for shard, struct in (("train-00000-of-00002.parquet", True), ("train-00001-of-00002.parquet", False)):
        with fs.open_output_stream(f"{name}/data/{shard}") as stream:
            pq.write_table(hf_table(70, struct), stream)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", options.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", options.secret_key)
    args = ["infer", "--input", f"s3://{name}/data", "--output", f"s3://{name}/out", "--model", model_file, "--endpoint-url", options.endpoint_url]
    assert cli_main(args) == 0
    for shard in ("train-00000-of-00002.parquet", "train-00001-of-00002.parquet"):
        with fs.open_input_file(f"{name}/data/{shard}") as f:
            before = pq.read_table(f)
        with fs.open_input_file(f"{name}/out/{shard}") as f:
            after = pq.read_table(f)
        assert after.schema == before.schema and after.num_rows == 70
        assert after.column("label").equals(before.column("label")) and after.column("caption").equals(before.column("caption"))
        old, new = before.column("image").to_pylist(), after.column("image").to_pylist()
        assert new[1] is None
        for a, b in zip(old[2:], new[2:]):
            if isinstance(a, dict):
                assert a["path"] == b["path"] and a["bytes"] != b["bytes"]
            else:
                assert a != b
    summary = json.loads(fs.open_input_stream(f"{name}/out/_summary.json").read())
    assert (summary["samples"], summary["restored"], summary["failed"]) == (140, 138, 0)


@pytest.mark.usefixtures("ray_session")
def test_preview_of_shards_reads_a_sample_inside_them_and_restores_a_few(tmp_path, model_file):
    (tmp_path / "shards").mkdir()
    for n in range(3):
        (tmp_path / "shards" / f"{n:05d}.tar").write_bytes(tar_bytes(webdataset_shard(10 * n, 5)))
    pq.write_table(hf_table(6, True), tmp_path / "hf.parquet")
    before = {p.name: p.read_bytes() for p in (tmp_path / "shards").iterdir()}
    out = tmp_path / "preview"
    assert cli_main(["infer", "--input", str(tmp_path / "shards"), "--output", str(out), "--model", model_file, "--preview", "3"]) == 0
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["images"] == 15 and summary["scanned"] == 15 and summary["shown"] == 3, summary
    assert summary["shards"] == {"in_all": 3, "read": 3, "images_read": 15}
    for item in summary["items"]:
        shard, member = item["path"].split("/", 1)
        assert shard.endswith(".tar") and member.endswith(".jpg") and item["outcome"] == "restore", item
        assert (out / item["restored"]).exists() and item["pictures"]["after"]
    assert (out / "index.html").exists() and not (out / "_carray").exists(), "the sample's files are gone once shown"
    assert {p.name: p.read_bytes() for p in (tmp_path / "shards").iterdir()} == before
    # One Parquet file: its rows named by row number, given an image extension to be listed.
    assert cli_main(["infer", "--input", str(tmp_path / "hf.parquet"), "--output", str(tmp_path / "p"), "--model", model_file, "--preview", "2"]) == 0
    summary = json.loads((tmp_path / "p" / "_summary.json").read_text())
    assert summary["images"] == 5 and [i["path"].split("/")[0] for i in summary["items"]] == ["hf.parquet"] * 2, summary


def test_an_unreachable_or_missing_input_is_one_line_before_ray(tmp_path, model_file, capsys):
    assert cli_main(["infer", "--input", "s3://nowhere/x", "--output", str(tmp_path / "o"), "--model", model_file,
                     "--endpoint-url", "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot reach the input s3://nowhere/x" in err[0]
    assert cli_main(["infer", "--input", str(tmp_path / "missing"), "--output", str(tmp_path / "o2"), "--model", model_file]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_shard_names_and_a_tar_read_as_a_stream():
    assert expand_braces("s/{008..011}.tar") == ["s/008.tar", "s/009.tar", "s/010.tar", "s/011.tar"]
    assert expand_braces("{0..1}/{a}.tar") == ["0/{a}.tar", "1/{a}.tar"]
    assert sample_key("dir/0001.seg.jpg") == ("dir/0001", "seg.jpg")
    members = webdataset_shard(0, 2)
    out = io.BytesIO()
    result = rewrite_tar(io.BytesIO(tar_bytes(members)), out, lambda key, data: (data[::-1], "restored"))
    assert (result.samples, result.images, result.restored) == (2, 2, 2)
    assert [d for _, d in members_of(out.getvalue())] == [d[::-1] if n.endswith(".jpg") else d for n, d in members]
