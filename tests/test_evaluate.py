"""The evaluate job reproduces the published JPEG rows and writes its report."""
import csv

import pytest

from carray.cli import main as cli_main
from carray.model import build_model, save_model
from support.images import DATA

pytestmark = pytest.mark.usefixtures("ray_session")


def test_evaluate_classic5_reproduces_the_jpeg_row(tmp_path):
    model = tmp_path / "m.pt"
    save_model(build_model("fast-arcnn"), str(model))
    out = tmp_path / "report"
    # Two settings: the figures come from the first (q10), whichever row of an image is last.
    code = cli_main(["evaluate", "--images", str(DATA / "Classic5"), "--quality", "10", "40", "--model", str(model), "--output", str(out), "--figures", "2"])
    assert code == 0
    rows = [r for r in csv.DictReader(open(out / "results.csv")) if r["quality"] == "10"]
    assert len(rows) == 5
    mean = sum(float(r["jpeg_psnr"]) for r in rows) / 5
    assert abs(mean - 27.82) <= 0.02  # ANCHORS.md, Classic5 gray q10
    assert "| q10 | 5 | 0 | 27.82 / 0.7595 / 25.21 |" in (out / "results.md").read_text()
    assert sorted(p.name for p in (out / "figures").glob("*.png")) == ["baboon_q10.png", "barbara_q10.png"]


def test_bad_double_is_an_option_error_not_a_traceback(tmp_path, capsys):
    args = ["evaluate", "--images", str(DATA / "Classic5"), "--output", str(tmp_path / "r"), "--double", "30"]
    assert cli_main(args) == 2
    assert "error: --double wants Q1,Q2 pairs" in capsys.readouterr().err
    assert cli_main(args[:-2] + ["--quality", "ten"]) == 2
    assert "error: JPEG quality 'ten' is not a number" in capsys.readouterr().err


def test_evaluate_double_jpeg_and_per_image_errors(tmp_path):
    """--double 30,10: compressed at 30, shifted by (4, 4), at 10 again; scored on the shifted original.
    A file that is not an image is one error row, not the end of the report."""
    import shutil

    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(DATA / "Classic5" / "lena.bmp", images)
    (images / "broken.png").write_bytes(b"not an image")
    model = tmp_path / "m.pt"
    save_model(build_model("fast-arcnn"), str(model))
    out = tmp_path / "report"
    args = ["evaluate", "--images", str(images), "--quality", "10", "--double", "30,10", "--model", str(model), "--output", str(out), "--figures", "0"]
    assert cli_main(args) == 0
    rows = {(r["image"], r["setting"]): r for r in csv.DictReader(open(out / "results.csv"))}
    single, double = rows[("lena.bmp", "q10")], rows[("lena.bmp", "q30>q10")]
    assert float(double["jpeg_psnr"]) < float(single["jpeg_psnr"]), "compressed twice on shifted grids is worse"
    assert rows[("broken.png", "q10")]["error"]
    assert "| q30>q10 | 1 |" in (out / "results.md").read_text()


def _mean_gain(out) -> float:
    rows = list(csv.DictReader(open(out / "results.csv")))
    return sum(float(r["carray_psnr"]) - float(r["jpeg_psnr"]) for r in rows) / len(rows)


def test_shipped_gray_model_keeps_its_readme_promise_on_classic5(tmp_path):
    """README: the shipped gray model beats ARCNN's published Classic5 q10 (29.03 dB; JPEG 27.82),
    and high-quality JPEGs come out no worse than they went in (q90 restored gently, q95 passed)."""
    out = tmp_path / "gray"
    assert cli_main(["evaluate", "--images", str(DATA / "Classic5"), "--quality", "10", "90", "95", "--output", str(out), "--figures", "0"]) == 0
    rows = list(csv.DictReader(open(out / "results.csv")))
    q10 = [r for r in rows if r["quality"] == "10"]
    assert sum(float(r["carray_psnr"]) for r in q10) / len(q10) >= 29.03
    assert all(float(r["carray_psnr"]) > float(r["jpeg_psnr"]) for r in q10)
    for quality in ("90", "95"):
        group = [r for r in rows if r["quality"] == quality]
        assert sum(float(r["carray_psnr"]) - float(r["jpeg_psnr"]) for r in group) >= 0, quality


def test_shipped_colour_model_gains_a_decibel_in_rgb_at_q10(tmp_path):
    """The colour model on the bundled LIVE1 colour images, RGB PSNR: at least the +1.3 dB at q10
    the README reports for all of LIVE1."""
    out = tmp_path / "colour"
    assert cli_main(["evaluate", "--images", str(DATA / "LIVE1_color"), "--color", "--quality", "10", "--output", str(out), "--figures", "0"]) == 0
    assert _mean_gain(out) >= 1.3
