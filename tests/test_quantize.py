"""int8 on CPUs (ONNX Runtime, calibrated on JPEG tiles) and the --precision rules. No Ray here."""
import numpy as np
import pytest
import torch
from PIL import Image

from carray import jpeg
from carray.images import decode_image
from carray.metrics import psnr
from carray.modelfiles import load_model, shipped_path
from carray.quantize import PrecisionError, calibration_feeds, int8_network, load_networks, resolve_precision, resolve_runtime
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
    from carray.quantize import onnx_files

    monkeypatch.setenv("CARRAY_CACHE", str(tmp_path / "cache"))
    save_model(build_model("fast-arcnn"), str(tmp_path / "m.pt"))
    files = {"gray": (tmp_path / "m.pt").read_bytes()}
    first = onnx_files(files, "int8")
    cached = list((tmp_path / "cache" / "int8").glob("*.onnx"))
    assert len(cached) == 1 and cached[0].read_bytes() == first["gray"]
    cached[0].write_bytes(b"marker")  # proves the second call reads the cache instead of quantizing
    assert onnx_files(files, "int8") == {"gray": b"marker"}


@pytest.mark.parametrize("precision", ["int8", "fp32"])
@pytest.mark.parametrize("kind", ["gray", "color"])
def test_shipped_models_come_with_their_onnx_networks(kind, precision):
    """A first int8 run, or fp32 on ONNX Runtime, with the shipped models exports and quantizes
    nothing. When a shipped model or a recipe changes, regenerate them (docs/models.md)."""
    import onnx

    from carray.quantize import onnx_files, onnx_key

    data = shipped_path(kind).read_bytes()
    packaged = shipped_path(kind).parent / precision / f"{onnx_key(data, precision)}.onnx"
    assert packaged.is_file(), f"models/{precision}/ lacks the {precision} network of models/{kind}.pt"
    quantized = any(node.op_type == "QuantizeLinear" for node in onnx.load_from_string(packaged.read_bytes()).graph.node)
    assert quantized == (precision == "int8")
    assert onnx_files({kind: data}, precision) == {kind: packaged.read_bytes()}


def test_fp32_on_cpus_runs_on_onnx_runtime_when_installed_and_where_it_can():
    assert resolve_runtime("auto", "fp32", cuda=False) == "onnxruntime"
    assert resolve_runtime("torch", "fp32", cuda=False) == "torch"
    assert resolve_runtime("auto", "fp32", cuda=True) == "torch" and resolve_runtime("auto", "fp16", cuda=True) == "torch"
    assert resolve_runtime("auto", "int8", cuda=False) == "onnxruntime"
    for runtime, precision, cuda in (("torch", "int8", False), ("onnxruntime", "fp16", True), ("onnxruntime", "fp32", True), ("tensorrt", "fp32", False)):
        with pytest.raises(PrecisionError):
            resolve_runtime(runtime, precision, cuda)


def test_without_onnxruntime_fp32_runs_on_pytorch_unless_onnxruntime_is_asked_for(monkeypatch):
    import carray.quantize as quantize

    monkeypatch.setattr(quantize, "onnxruntime_installed", lambda: False)
    assert resolve_runtime("auto", "fp32", cuda=False) == "torch"
    with pytest.raises(PrecisionError, match=r"pip install 'carray\[int8\]'"):
        resolve_runtime("onnxruntime", "fp32", cuda=False)


def test_fp32_on_onnx_runtime_restores_within_one_grey_level_of_pytorch():
    from carray.quantize import onnx_files

    files = {"gray": shipped_path("gray").read_bytes()}
    cpu = torch.device("cpu")
    torch_net = load_networks(files, "fp32", cpu)["gray"]
    ort_net = load_networks(files, "fp32", cpu, 1, onnx_files(files, "fp32"))["gray"]
    image = decode_image(jpeg.compress(np.asarray(Image.open(DATA / "Classic5" / "barbara.bmp").convert("L"))[:200, :260].copy(), 10))
    with torch.inference_mode():
        a = restore_image({"gray": torch_net}, image, quality=10).pixels.astype(int)
        b = restore_image({"gray": ort_net}, image, quality=10).pixels.astype(int)
    assert np.abs(a - b).max() <= 1 and (a == b).mean() > 0.99
    assert not np.array_equal(b, image.pixels)  # it restored


def test_a_model_onnx_cannot_take_runs_on_pytorch_with_auto_and_fails_when_asked(monkeypatch):
    import carray.quantize as quantize

    def no_exporter(*_):
        raise ImportError("No module named 'onnxscript'")

    from carray.model import build_model, model_bytes

    monkeypatch.setattr(quantize, "fp32_network", no_exporter)
    monkeypatch.setenv("CARRAY_CACHE", "/nonexistent-cache")
    files = {"gray": model_bytes(build_model("fast-arcnn"), {})}  # not shipped: it would be exported
    said = []
    assert quantize.plan_networks(files, "fp32", "auto", cuda=False, say=said.append)[1:] == ("torch", None)
    assert "onnxscript" in said[0]
    with pytest.raises(ImportError):
        quantize.plan_networks(files, "fp32", "onnxruntime", cuda=False, say=said.append)


def test_a_process_restoring_with_onnx_networks_never_imports_torch():
    """What a CPU actor does with the default runtime: set up its networks from the ONNX files and
    restore a pack, batched and tile by tile; torch (about 1 CPU-s and 220 MB per process) stays out."""
    import subprocess
    import sys

    from carray.quantize import onnx_files

    files = {kind: shipped_path(kind).read_bytes() for kind in ("gray", "color")}
    onnx = onnx_files(files, "fp32")
    script = """
import pickle, sys
import numpy as np
from carray import jpeg
from carray.images import decode_image
from carray.quantize import setup_restoring_process
from carray.restore import restore_image, restore_in_batches
files, onnx = pickle.loads(sys.stdin.buffer.read())
device, networks = setup_restoring_process(files, "fp32", 1, onnx)
gray = decode_image(jpeg.compress(np.arange(96 * 80, dtype=np.uint8).reshape(96, 80), 20))
colour = decode_image(jpeg.compress(np.arange(64 * 72 * 3, dtype=np.uint8).reshape(64, 72, 3), 20))
whole = restore_image(networks, gray, tile=32, quality=20)
batched = restore_in_batches([(networks["gray"], gray.pixels, 20), (networks["color"], colour.pixels, 20)], device, 2)
assert whole.pixels.shape == (96, 80) and batched[1].shape == (64, 72, 3)
print("torch" in sys.modules)
"""
    import pickle

    done = subprocess.run([sys.executable, "-c", script], input=pickle.dumps((files, onnx)), capture_output=True, check=True)
    assert done.stdout.decode().strip() == "False", done.stderr.decode()[-2000:]


def test_onnx_networks_restore_a_window_at_a_time_the_pixels_planes_of_the_whole_image_give():
    """ONNX networks (the CPUs' default) restore uint8 windows one at a time: for each colour case
    (a colour model on RGB and on gray, a gray model on gray and on RGB's Y) the pixels that float
    planes of the whole image gave, while the float the process holds is a window's, not 24 bytes
    per pixel of the whole image."""
    import tracemalloc

    from carray.quantize import onnx_files
    from carray.restore import network_planes, restore_pixels, restore_planes

    files = {kind: shipped_path(kind).read_bytes() for kind in ("gray", "color")}
    networks = load_networks(files, "int8", None, 1, onnx_files(files, "int8"))
    parrots = np.asarray(Image.open(DATA / "LIVE1_color" / "parrots.png").convert("RGB"))[:301, :389]
    rgb = decode_image(jpeg.compress(np.tile(parrots, (2, 2, 1)), 20)).pixels  # 602 x 778
    for kind in ("gray", "color"):
        for pixels in (rgb, np.ascontiguousarray(rgb[..., 1])):
            planes, back = network_planes(networks[kind], pixels)
            whole = back(restore_planes(networks[kind], planes, 64, None, 20))
            tracemalloc.start()
            windows = restore_pixels(networks[kind], pixels, 64, None, 20)
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            assert windows.shape == pixels.shape and windows.dtype == np.uint8
            assert np.array_equal(windows, whole), (kind, pixels.ndim, np.abs(windows.astype(int) - whole).max())
            assert not np.array_equal(windows, pixels), "it restored"
            # The output, and a window's float (a few MB): planes of the whole image took 4 bytes per value in and out.
            assert peak < pixels.nbytes + (4 << 20), (kind, pixels.ndim, peak)
