"""Export a carray model for use outside Ray and Python: ONNX or TorchScript. No Ray here.

The exported graph takes float32 (n, c, h, w) on [0, 1] for any n, h, w >= 1 (c = 1 for gray Y,
3 for RGB) and returns the restored image of the same shape, clamped to [0, 1]. Models conditioned
on JPEG quality take a second input, ``quality``: float32 (n,), each image's IJG quality 1..100 as
its quantization tables say (carray.images.jpeg_quality reads it). Whole images go
through in one call; for very large ones, tile with an overlap of `receptive_radius` pixels (stored
in the file's metadata) as carray.patches.apply_tiled does.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from typing import Optional

import torch
from torch import nn

from .errors import JobError
from .model import load_model_bytes

FORMATS = ("onnx", "torchscript")
ONNX_OPSET = 18


class ExportError(JobError):
    """The model could not be exported or did not reproduce PyTorch's output."""


class Clamped(nn.Module):
    """The model followed by the clamp to [0, 1] that carray applies when it makes pixels."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, quality: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.model(x, quality).clamp(0.0, 1.0)


def _metadata(model: nn.Module, training: dict) -> dict:
    return {
        "carray_arch": model.arch,
        "carray_args": json.dumps(model.args, sort_keys=True),
        "carray_receptive_radius": str(model.receptive_radius),
        "carray_input": "float32 (n, c, h, w) on [0, 1]; c=1 gray Y (MATLAB BT.601), c=3 RGB"
        + (("; quality: float32 (n, 3), the JPEG's luma quality, chroma quality (IJG 1..100, from its tables) and chroma "
            "subsampling (0 = 4:4:4, 1 = 4:2:2, 2 = 4:2:0)" if model.takes_coding
            else "; quality: float32 (n,), IJG JPEG quality 1..100 from the file's tables") if model.takes_quality else ""),
        "carray_training": json.dumps(training, sort_keys=True, default=str),
    }


def export_torchscript(model: nn.Module, training: dict, path: str) -> None:
    scripted = torch.jit.script(Clamped(model).eval())
    extra = {f"{k}.txt": v for k, v in _metadata(model, training).items()}
    torch.jit.save(scripted, path, _extra_files=extra)


def export_onnx(model: nn.Module, training: dict, path: str) -> None:
    import onnx

    # The exporter logs one line per missing torchvision op; none of them is ours.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    channels = model.args["channels"]
    example = torch.rand(2, channels, 40, 56)
    batch, height, width = (torch.export.Dim(name, min=1, max=1 << 16) for name in ("batch", "height", "width"))
    args, names, shapes = (example,), ["image"], ({0: batch, 2: height, 3: width},)
    if model.takes_quality:
        # (n, 3) codings for a network that sees the chroma coding (carray/model.py), else (n,) qualities.
        quality = torch.tensor([[10.0, 20.0, 2.0], [90.0, 90.0, 0.0]]) if model.takes_coding else torch.tensor([10.0, 90.0])
        args, names, shapes = (example, quality), names + ["quality"], shapes + ({0: batch},)
    program = torch.onnx.export(
        Clamped(model).eval(),
        args,
        dynamo=True,
        opset_version=ONNX_OPSET,
        input_names=names,
        output_names=["restored"],
        dynamic_shapes=shapes,
        verbose=False,
    )
    proto = program.model_proto
    onnx.helper.set_model_props(proto, _metadata(model, training))
    onnx.save(proto, path)


def reference_output(model: nn.Module, x: torch.Tensor, quality: Optional[torch.Tensor] = None) -> torch.Tensor:
    with torch.inference_mode():
        return Clamped(model).eval()(x, quality)


def run_exported(path: str, fmt: str, x: torch.Tensor, quality: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Run an exported file the way a user outside carray would (TorchScript or onnxruntime).
    `quality` (n,) for models conditioned on it."""
    if fmt == "torchscript":
        with torch.inference_mode():
            return torch.jit.load(path)(x, quality)
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    feeds = {"image": x.numpy()}
    if quality is not None:
        feeds["quality"] = quality.numpy().astype("float32")
    return torch.from_numpy(session.run(None, feeds)[0])


def check_export(model: nn.Module, path: str, fmt: str, seed: int = 0) -> float:
    """Largest absolute difference between the exported file and PyTorch on odd-sized inputs."""
    channels = model.args["channels"]
    generator = torch.Generator().manual_seed(seed)
    worst = 0.0
    for shape in ((1, channels, 37, 53), (2, channels, 64, 48)):
        x = torch.rand(shape, generator=generator)
        quality = torch.randint(5, 100, (shape[0],), generator=generator).float() if model.takes_quality else None
        if quality is not None and model.takes_coding:
            quality = torch.stack([quality, quality.flip(0), torch.arange(shape[0]).float() % 3], dim=1)
        worst = max(worst, (run_exported(path, fmt, x, quality) - reference_output(model, x, quality)).abs().max().item())
    return worst


def export_model(model_file: bytes, name: str, fmt: str, output: str, tolerance: float = 1e-4) -> dict:
    """Export, then check the file against PyTorch; written atomically, removed if the check fails."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; choose one of {FORMATS}")
    model, training = load_model_bytes(model_file, name)
    started = time.perf_counter()
    folder = os.path.dirname(os.path.abspath(output))
    os.makedirs(folder, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=".export-", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        try:
            (export_onnx if fmt == "onnx" else export_torchscript)(model, training, temporary)
        except ImportError as exc:
            raise ExportError(f"ONNX export needs the 'export' extra: pip install 'carray[export]' ({exc})") from None
        except Exception as exc:  # the exporters raise many kinds; say which model and format
            raise ExportError(f"{name}: {fmt} export failed ({type(exc).__name__}: {exc})") from None
        difference = check_export(model, temporary, fmt)
        if not difference <= tolerance:
            raise ExportError(f"{name}: the {fmt} export differs from PyTorch by {difference:.2e} (> {tolerance:.0e}); not written")
        os.chmod(temporary, 0o644)  # mkstemp's 0600 would hide the file from other users
        os.replace(temporary, output)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return {
        "model": name,
        "format": fmt,
        "output": output,
        "arch": model.arch,
        "channels": model.args["channels"],
        "max_difference": difference,
        "seconds": time.perf_counter() - started,
    }


def run_export(cfg) -> dict:
    from .modelfiles import single_model_file

    kind = "color" if cfg.color else "gray"
    output = cfg.output or f"carray-{kind}.{'onnx' if cfg.format == 'onnx' else 'pt'}"
    return export_model(single_model_file(cfg.model, cfg.color, cfg.s3()), cfg.model or f"shipped {kind} model", cfg.format, output)
