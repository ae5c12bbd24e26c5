"""int8 on CPUs (ONNX Runtime, calibrated on JPEG tiles) and the --precision rules. No Ray here."""
import numpy as np
import pytest
import torch
from PIL import Image

from carray import jpeg
from carray.images import decode_image
from carray.metrics import psnr
from carray.modelfiles import load_model, shipped_path
from carray.quantize import PrecisionError, calibration_feeds, int8_network, load_networks, resolve_precision
from carray.restore import restore_image
from support.images import DATA


def test_auto_is_int8_on_cpus_fp16_on_gpus_and_impossible_choices_are_refused():
    assert resolve_precision("auto", cuda=False) == "int8" and resolve_precision("auto", cuda=True) == "fp16"
    assert resolve_precision("fp16", cuda=True) == "fp16" and resolve_precision("fp32", cuda=False) == "fp32"
    for precision, cuda in (("fp16", False), ("bf16", False), ("int8", True), ("fp8", False)):
        with pytest.raises(PrecisionError):
            resolve_precision(precision, cuda)


def test_without_onnxruntime_auto_stays_fp32_and_int8_says_what_to_install(monkeypatch):
    import carray.quantize as quantize

    monkeypatch.setattr(quantize, "onnxruntime_installed", lambda: False)
    assert resolve_precision("auto", cuda=False) == "fp32"
    with pytest.raises(PrecisionError, match=r"pip install 'carray\[int8\]'"):
        resolve_precision("int8", cuda=False)


@pytest.mark.parametrize("channels", [1, 3])
def test_calibration_feeds_are_jpeg_tiles_at_several_qualities(channels):
    feeds = calibration_feeds(channels, takes_quality=True)
    assert len(feeds) == 16 * 5 and {tuple(f["image"].shape) for f in feeds} == {(1, channels, 128, 128)}
    assert sorted({float(f["quality"][0]) for f in feeds}) == [10, 20, 30, 40, 60]
    assert all(0 <= f["image"].min() and f["image"].max() <= 1 for f in feeds)


def test_int8_shipped_gray_model_is_quantized_and_within_a_tenth_of_a_db_of_fp32():
    model, training = load_model(str(shipped_path("gray")))
    onnx_bytes = int8_network(model, training)
    import onnx

    assert any(node.op_type == "QuantizeLinear" for node in onnx.load_from_string(onnx_bytes).graph.node)
    int8 = load_networks({"gray": (shipped_path("gray")).read_bytes()}, "int8", torch.device("cpu"), 1, {"gray": onnx_bytes})
    fp32 = {"gray": model}
    gains = []
    for path in sorted((DATA / "LIVE1_gray").glob("*.png"))[:3]:
        clean = np.asarray(Image.open(path).convert("L"))[:192, :256]
        degraded = decode_image(jpeg.compress(clean, 10))
        a = restore_image(fp32, degraded, quality=10).pixels
        b = restore_image(int8, degraded, quality=10).pixels
        assert not np.array_equal(a, b), "int8 arithmetic, not fp32 in disguise"
        gains.append(psnr(clean, b) - psnr(clean, a))
        assert psnr(clean, b) > psnr(clean, degraded.pixels) + 0.5
    assert np.mean(gains) > -0.1


def test_int8_networks_are_cached_by_model_and_recipe(tmp_path, monkeypatch):
    from carray.model import build_model, save_model
    from carray.quantize import int8_files

    monkeypatch.setenv("CARRAY_CACHE", str(tmp_path / "cache"))
    save_model(build_model("fast-arcnn"), str(tmp_path / "m.pt"))
    files = {"gray": (tmp_path / "m.pt").read_bytes()}
    first = int8_files(files)
    cached = list((tmp_path / "cache" / "int8").glob("*.onnx"))
    assert len(cached) == 1 and cached[0].read_bytes() == first["gray"]
    cached[0].write_bytes(b"marker")  # proves the second call reads the cache instead of quantizing
    assert int8_files(files) == {"gray": b"marker"}


@pytest.mark.parametrize("kind", ["gray", "color"])
def test_shipped_models_come_with_their_int8_networks(kind):
    """A first `--precision int8` run with the shipped models quantizes nothing. When a shipped model
    or INT8_RECIPE changes, regenerate them (docs/models.md)."""
    import onnx

    from carray.quantize import int8_files, int8_key

    data = shipped_path(kind).read_bytes()
    packaged = shipped_path(kind).parent / "int8" / f"{int8_key(data)}.onnx"
    assert packaged.is_file(), f"models/int8/ lacks the int8 network of models/{kind}.pt"
    assert any(node.op_type == "QuantizeLinear" for node in onnx.load_from_string(packaged.read_bytes()).graph.node)
    assert int8_files({kind: data}) == {kind: packaged.read_bytes()}
