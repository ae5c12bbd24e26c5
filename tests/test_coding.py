"""Colour as JPEG codes it: the chroma table's quality and the chroma subsampling, made by prep,
recorded in the patches, read back from the file at inference, and seen by the networks built to
see them. No Ray."""
import io

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from carray import jpeg
from carray.images import read_header
from carray.infer.decode import decode_to_row
from carray.infer.packs import row_coding
from carray.infer.restoring import RowRestorer
from carray.model import build_model, conditioning, init_from, model_bytes
from carray.pairs import CHROMA_QUALITY, QUALITY, SUBSAMPLING, chroma_plan, pairs_from_clean, to_arrow
from carray.quality import STANDARD_CHROMA, STANDARD_LUMA, Policy, coding, ijg_table
from carray.train import quality_tensor
from support.images import png_bytes, smooth_image


def test_the_standard_tables_are_exactly_the_ones_libjpeg_writes():
    """ijg_table must equal libjpeg's own (integer 5000 / q below 50): a JPEG made from our tables is
    byte for byte the one Pillow's quality makes."""
    rgb = smooth_image(64, 64, color=True)
    for q in (1, 5, 10, 30, 33, 49, 50, 75, 95, 100):
        tables = [ijg_table(q, STANDARD_LUMA).astype(int).tolist(), ijg_table(q, STANDARD_CHROMA).astype(int).tolist()]
        ours, theirs = io.BytesIO(), io.BytesIO()
        Image.fromarray(rgb).save(ours, "JPEG", qtables=tables)
        Image.fromarray(rgb).save(theirs, "JPEG", quality=q)
        assert ours.getvalue() == theirs.getvalue(), q


@pytest.mark.parametrize("quality, chroma, subsampling, name", [(30, 50, 1, "4:2:2"), (10, 40, 0, "4:4:4"), (80, 20, 2, "4:2:0"), (30, 30, 0, "4:4:4")])
def test_a_jpeg_coded_with_its_own_chroma_reads_back_as_coded(quality, chroma, subsampling, name):
    header = read_header(jpeg.compress(smooth_image(48, 64, color=True), quality, chroma, subsampling))
    assert (header.quality, header.chroma_quality, header.subsampling) == (quality, chroma, name)


def test_libjpegs_default_coding_is_unchanged_and_gray_ignores_chroma():
    rgb, gray = smooth_image(48, 64, color=True), smooth_image(48, 64)
    assert jpeg.compress(rgb, 30) == jpeg.compress(rgb, 30, 30, 2)
    assert jpeg.compress(gray, 30) == jpeg.compress(gray, 30, 70, 0)
    with pytest.raises(ValueError, match="chroma quality"):
        jpeg.compress(rgb, 30, 0)


def test_coding_fills_what_is_unknown_with_libjpegs_default():
    assert coding(30) == (30, 30, 2)
    assert coding(30, 50, "4:4:4") == (30, 50, 0)
    assert coding(30, None, "gray") == (30, 30, 2)
    assert coding(30, -1, -1) == (30, 30, 2)


def test_prep_varies_the_chroma_it_codes_and_records_it():
    image = png_bytes(smooth_image(96, 96, color=True))
    qualities = list(range(10, 100, 5))
    plans = {q: chroma_plan("a.png", q, 0.5) for q in qualities}
    assert plans == {q: chroma_plan("a.png", q, 0.5) for q in qualities}  # the same on every run
    varied = [q for q, (chroma, _) in plans.items() if chroma is not None]
    assert 0 < len(varied) < len(qualities)
    assert all(abs(plans[q][0] - q) <= 30 and plans[q][1] in (0, 1, 2) for q in varied)
    table = to_arrow(pairs_from_clean(image, "a.png", qualities, True, 32, 32, vary_chroma=0.5))
    recorded = {q: (c, s) for q, c, s in zip(*(table[k].to_pylist() for k in (QUALITY, CHROMA_QUALITY, SUBSAMPLING)))}
    for q in qualities:
        chroma, subsampling = plans[q]
        assert recorded[q] == ((q, 2) if chroma is None else (chroma, subsampling))
    # The varied patches are what that coding makes: the same pixels as compressing the image so.
    q = varied[0]
    rows = pairs_from_clean(image, "a.png", [q], True, 96, 96, vary_chroma=0.5)
    expected = jpeg.roundtrip(smooth_image(96, 96, color=True), q, *plans[q])
    assert np.array_equal(rows["compressed"][0], expected.transpose(2, 0, 1))
    gray = to_arrow(pairs_from_clean(png_bytes(smooth_image(64, 64)), "g.png", [30], False, 32, 32))
    assert set(gray[CHROMA_QUALITY].to_pylist()) == {-1} and set(gray[SUBSAMPLING].to_pylist()) == {-1}


def test_training_batches_carry_codings_when_the_data_has_them():
    old = pa.table({QUALITY: pa.array([30, 50], pa.int16())})
    assert quality_tensor(old).shape == (2,)
    new = pa.table({QUALITY: pa.array([30, 50], pa.int16()), CHROMA_QUALITY: pa.array([60, 50], pa.int16()),
                    SUBSAMPLING: pa.array([0, 2], pa.int8())})
    assert quality_tensor(new).tolist() == [[30, 60, 0], [50, 50, 2]]


def _coding_model(seed: int = 0):
    """A small colour network that sees the coding, its FiLM's last layer made non-zero so the coding matters."""
    torch.manual_seed(seed)
    model = build_model("unshuffled-cnn", channels=3, blocks=2, width=16, coding_input=True).eval()
    with torch.no_grad():
        for p in model.film.parameters():
            p.normal_(0, 0.3)
        model.out.weight.normal_(0, 0.05)
    return model


def test_a_network_that_sees_the_coding_starts_as_the_quality_network_it_extends():
    torch.manual_seed(1)
    source = build_model("unshuffled-cnn", channels=3, blocks=2, width=16, quality_input=True).eval()
    with torch.no_grad():
        for p in source.parameters():
            p.normal_(0, 0.1)
    grown = build_model("unshuffled-cnn", channels=3, blocks=2, width=16, coding_input=True).eval()
    assert all(name.startswith("film.chroma.") for name in init_from(grown, source))  # only the chroma MLP is new
    x = torch.rand(3, 3, 24, 24)
    with torch.no_grad():
        expected = source(x, torch.tensor([10.0, 30.0, 80.0]))
        assert torch.equal(grown(x, torch.tensor([10.0, 30.0, 80.0])), expected)
        assert torch.equal(grown(x, torch.tensor([[10.0, 60, 0], [30, 10, 1], [80, 80, 2]])), expected)
    model = _coding_model()
    with torch.no_grad():
        default = model(x, torch.tensor([30.0, 30.0, 30.0]))
        assert torch.equal(model(x, torch.tensor([[30.0, 30, 2]] * 3)), default)  # (n,) = libjpeg's default coding
        assert not torch.allclose(model(x, torch.tensor([[30.0, 30, 0]] * 3)), default)  # 4:4:4 is seen
        assert not torch.allclose(model(x, torch.tensor([[30.0, 70, 2]] * 3)), default)  # so is the chroma table


def test_whatever_the_chroma_mlp_learns_a_default_coded_jpeg_is_restored_as_by_the_quality_network():
    model = _coding_model(seed=3)  # both MLPs random: the chroma one has "learnt" something
    quality_only = build_model("unshuffled-cnn", channels=3, blocks=2, width=16, quality_input=True).eval()
    assert init_from(quality_only, model) == []  # the same network less the chroma MLP
    x = torch.rand(4, 3, 24, 24)
    mixed = torch.tensor([[10.0, 10, 2], [30, 30, 0], [50, 50, 2], [80, 60, 2]])  # rows 0 and 2 coded as libjpeg does
    with torch.no_grad():
        out, plain = model(x, mixed), quality_only(x, mixed[:, 0])
    assert torch.equal(out[0], plain[0]) and torch.equal(out[2], plain[2])  # exactly, in a batch with other codings
    assert not torch.allclose(out[1], plain[1]) and not torch.allclose(out[3], plain[3])
    # Near the default coding the chroma MLP's change is near zero: no jump at the default.
    with torch.no_grad():
        near = model.film(torch.tensor([[30.0, 30.01, 2]])) - model.film(torch.tensor([30.0]))
        far = model.film(torch.tensor([[30.0, 60, 2]])) - model.film(torch.tensor([30.0]))
    assert near.abs().max() < 1e-3 * far.abs().max()
    assert conditioning([None]) is None
    assert conditioning([30, 40]).shape == (2,) and conditioning([(30, 40, 0)]).shape == (1, 3)


def test_the_infer_rows_carry_the_files_coding_to_the_network():
    rgb = smooth_image(64, 64, color=True)
    row = decode_to_row("a.jpg", "a.jpg.jpg", jpeg.compress(rgb, 30, 50, 0), None, Policy())
    assert (row["quality"], row["chroma_quality"], row["subsampling"]) == (30, 50, 0) and row_coding(row) == (30, 50, 0)
    forced = decode_to_row("a.jpg", "a.jpg.jpg", jpeg.compress(rgb, 30, 50, 0), None, Policy(override=20))
    assert row_coding(forced) == (20, 20, 0)  # tables that lie about the luma lie about the chroma too
    assert row_coding(decode_to_row("g.png", "g.png.jpg", png_bytes(rgb), None, None)) is None

    # Two rows with the same pixels and luma quality, coded 4:4:4 and 4:2:0: a network that sees the
    # coding restores them differently, whole and as tile windows; one that does not, the same.
    def restore(model, subsampling: int, tile: int) -> np.ndarray:
        restorer = RowRestorer({"color": model_bytes(model)}, tile=tile, threads=1)
        pixels = jpeg.roundtrip(rgb, 30)
        r = {**row, "pixels": pixels.tobytes(), "height": 64, "width": 64, "channels": 3, "chroma_quality": 30, "subsampling": subsampling}
        restorer.restore([r])
        assert not r["error"], r["error"]
        return np.frombuffer(r["pixels"], np.uint8)

    sees = _coding_model()
    for tile in (64, 24):
        assert not np.array_equal(restore(sees, 0, tile), restore(sees, 2, tile))
    blind = build_model("unshuffled-cnn", channels=3, blocks=2, width=16, quality_input=True).eval()
    assert np.array_equal(restore(blind, 0, 64), restore(blind, 2, 64))


def test_a_coding_network_exports_to_onnx_and_runs_with_codings_or_qualities(tmp_path):
    from carray.export import export_onnx
    from carray.onnxnet import OnnxNetwork

    model = _coding_model()
    path = tmp_path / "coding.onnx"
    export_onnx(model, {}, str(path))
    network = OnnxNetwork(path.read_bytes())
    assert network.takes_quality and network.takes_coding
    x = torch.rand(2, 3, 37, 45)
    codings = torch.tensor([[30.0, 60, 0], [10, 10, 2]])
    with torch.inference_mode():
        expected = model(x, codings).clamp(0, 1).numpy()
        default = model(x, torch.tensor([30.0, 10])).clamp(0, 1).numpy()
    assert np.abs(network.run_numpy(x.numpy(), codings.numpy()) - expected).max() <= 1e-4
    assert np.abs(network.run_numpy(x.numpy(), np.array([30.0, 10])) - default).max() <= 1e-4  # libjpeg's default coding
