"""Export: the ONNX and TorchScript files give PyTorch's output, run the way a user outside carray
runs them (onnxruntime, torch.jit.load), on a real image of odd size."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

from carray import jpeg
from carray.images import decode_image
from carray.model import build_model, model_bytes
from carray.modelfiles import load_model

DATA = Path(__file__).parent / "data"
REPO = Path(__file__).parent.parent


def _export(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "carray", "export", *args], capture_output=True, text=True, cwd=REPO, timeout=300)


def _compressed_crop(color: bool) -> torch.Tensor:
    """A real JPEG-compressed crop of odd size, as the network input (1, c, h, w) on [0, 1]."""
    image = decode_image((DATA / "Classic5" / "barbara.bmp").read_bytes()).pixels[:101, :131]
    pixels = np.repeat(image[..., None], 3, axis=2) if color and image.ndim == 2 else image
    degraded = decode_image(jpeg.compress(pixels, 10)).pixels
    planes = degraded[..., None] if degraded.ndim == 2 else degraded
    return torch.from_numpy(planes.transpose(2, 0, 1).astype(np.float32) / 255)[None]


def _pytorch(model, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model.eval()(x).clamp(0, 1)


def test_shipped_gray_model_exports_to_onnx_and_matches_pytorch(tmp_path):
    out = tmp_path / "gray.onnx"
    result = _export("--format", "onnx", "--output", str(out))
    assert result.returncode == 0, result.stderr
    assert "max difference" in result.stdout
    model, _ = load_model(str(REPO / "carray" / "models" / "gray.pt"))
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto)
    assert {p.key for p in proto.metadata_props} >= {"carray_arch", "carray_receptive_radius"}
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = _compressed_crop(color=False)
    quality = torch.tensor([10.0])  # the shipped models are conditioned on the JPEG quality
    exported = session.run(None, {"image": x.numpy(), "quality": quality.numpy()})[0]
    with torch.inference_mode():
        expected = model.eval()(x, quality).clamp(0, 1).numpy()
    assert exported.shape == expected.shape == (1, 1, 101, 131)
    assert np.abs(exported - expected).max() <= 1e-4
    assert np.abs(exported - x.numpy()).max() > 1e-2  # it restores: not the identity


@pytest.mark.parametrize("arch", ["arcnn", "unshuffled-cnn"])
def test_colour_model_exports_to_torchscript_and_matches_pytorch(tmp_path, arch):
    torch.manual_seed(0)
    model = build_model(arch, channels=3)
    for p in model.parameters():
        p.data.normal_(0, 0.02)
    source = tmp_path / "colour.pt"
    source.write_bytes(model_bytes(model))
    out = tmp_path / "colour.ts"
    result = _export("--format", "torchscript", "--model", str(source), "--output", str(out))
    assert result.returncode == 0, result.stderr
    scripted = torch.jit.load(str(out))
    x = _compressed_crop(color=True)
    with torch.inference_mode():
        exported = scripted(x)
    assert exported.shape == (1, 3, 101, 131)
    assert (exported - _pytorch(model, x)).abs().max().item() <= 1e-4


def test_export_of_a_file_that_is_not_a_model_fails_clearly(tmp_path):
    bogus = tmp_path / "notes.pt"
    bogus.write_text("not a model")
    out = tmp_path / "x.onnx"
    result = _export("--format", "onnx", "--model", str(bogus), "--output", str(out))
    assert result.returncode == 2
    assert "notes.pt" in result.stderr and "not a PyTorch/carray model" in result.stderr
    assert not out.exists() and not list(tmp_path.glob(".export-*"))


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_quality_conditioned_model_exports_with_a_quality_input(tmp_path, fmt):
    torch.manual_seed(1)
    model = build_model("unshuffled-cnn", channels=1, quality_input=True)
    for p in model.parameters():
        p.data.normal_(0, 0.02)
    source = tmp_path / "q.pt"
    source.write_bytes(model_bytes(model))
    out = tmp_path / f"q.{fmt}"
    result = _export("--format", fmt, "--model", str(source), "--output", str(out))
    assert result.returncode == 0, result.stderr
    x = _compressed_crop(color=False).repeat(2, 1, 1, 1)
    quality = torch.tensor([10.0, 90.0])
    if fmt == "onnx":
        session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        assert [i.name for i in session.get_inputs()] == ["image", "quality"]
        exported = torch.from_numpy(session.run(None, {"image": x.numpy(), "quality": quality.numpy()})[0])
    else:
        with torch.inference_mode():
            exported = torch.jit.load(str(out))(x, quality)
    with torch.inference_mode():
        expected = model.eval()(x, quality).clamp(0, 1)
    assert (exported - expected).abs().max().item() <= 1e-4
    assert (exported[0] - exported[1]).abs().max().item() > 0, "the quality input is used"
