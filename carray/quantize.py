"""int8 inference on CPUs: the network exported to ONNX and quantized statically by ONNX Runtime,
calibrated on real JPEG tiles. No Ray here.

Static QDQ quantization (weights int8 per output channel, activations uint8 per tensor, ranges from
the 99.999th percentile) calibrated on 16 natural 128x128 crops (from CBSD68, shipped in
``models/calibration.npz``), each compressed at qualities 10-60, so every activation range is seen
on the inputs the network is for. The output layer (the last convolution and what follows it) stays
fp32: its rounding goes straight into the restored pixels (measured on LIVE1 q40: -0.076 dB with it
quantized and MinMax ranges, -0.036 dB without it and percentile ranges).
Measured on this project's 2-core CPU (README): about 2x the MP/s of ONNX Runtime fp32 and a small
cost in dB on LIVE1 (held out from the calibration). :class:`OnnxNetwork` wraps the session so that
:mod:`carray.restore` runs it like the PyTorch network (same tiles, same margins, same stitching).
"""
from __future__ import annotations

import io
import os
import tempfile
from importlib import resources
from typing import Optional

import numpy as np
import torch
from torch import nn

from .errors import JobError

PRECISIONS = ("auto", "fp32", "fp16", "bf16", "int8")
CALIBRATION_QUALITIES = (10, 20, 30, 40, 60)


class PrecisionError(JobError):
    """A --precision this machine or installation cannot run."""


def onnxruntime_installed() -> bool:
    """Checked on the driver: the actors import it, and an actor that cannot start fails the job
    with a traceback instead of this one line."""
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None


def resolve_precision(precision: str, cuda: bool) -> str:
    """'auto' -> what this device runs fastest within 0.05 dB of fp32, as measured (README): int8
    on CPUs; fp16 on GPUs (H100: 1.26x fp32 on the actors' path at a tile batch of 8, the same
    PSNR on LIVE1 to 0.001 dB; bf16 was as fast and up to 0.006 dB lower)."""
    if precision not in PRECISIONS:
        raise PrecisionError(f"--precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision == "auto":  # int8 needs ONNX Runtime; without it auto stays on fp32
        if cuda:
            return "fp16"
        return "int8" if onnxruntime_installed() else "fp32"
    if precision == "int8" and not cuda and not onnxruntime_installed():
        raise PrecisionError("--precision int8 needs ONNX Runtime (and ONNX to quantize a model of your own): pip install 'carray[int8]'")
    if precision in ("fp16", "bf16") and not cuda:
        raise PrecisionError(f"--precision {precision} runs on GPUs only (bf16 on this kind of CPU was 9x slower than fp32); use int8 or fp32")
    if precision == "int8" and cuda:
        raise PrecisionError("--precision int8 runs on CPUs (ONNX Runtime); on GPUs use fp16, bf16 or fp32")
    return precision


def calibration_feeds(channels: int, takes_quality: bool) -> list[dict]:
    """The shipped calibration crops, JPEG-compressed at CALIBRATION_QUALITIES, as ONNX feeds."""
    from PIL import Image

    from . import jpeg
    from .images import decode_image

    with resources.files("carray").joinpath("models/calibration.npz").open("rb") as f:
        crops = np.load(io.BytesIO(f.read()))["rgb"]
    feeds = []
    for crop in crops:
        source = crop if channels == 3 else np.asarray(Image.fromarray(crop).convert("L"))
        for quality in CALIBRATION_QUALITIES:
            pixels = decode_image(jpeg.compress(source, quality)).pixels.astype(np.float32) / 255
            image = pixels[None, None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)[None]
            if channels == 3 and image.shape[1] == 1:
                image = np.repeat(image, 3, axis=1)
            feed = {"image": np.ascontiguousarray(image)}
            if takes_quality:
                feed["quality"] = np.array([quality], np.float32)
            feeds.append(feed)
    return feeds


def int8_network(model: nn.Module, training: dict) -> bytes:
    """The model as a statically quantized int8 ONNX file (bytes), calibrated on JPEG tiles."""
    try:
        from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process

        from .export import export_onnx
    except ImportError as exc:
        raise PrecisionError(f"--precision int8 needs ONNX and ONNX Runtime: pip install 'carray[int8]' ({exc})") from exc

    feeds = iter(calibration_feeds(model.args["channels"], model.takes_quality))

    class Reader(CalibrationDataReader):
        def get_next(self):
            return next(feeds, None)

    with tempfile.TemporaryDirectory(prefix="carray-int8-") as folder:
        fp32, prepared, int8 = (os.path.join(folder, name) for name in ("fp32.onnx", "prepared.onnx", "int8.onnx"))
        export_onnx(model, training, fp32)
        # Shape inference cannot follow the dynamic height/width; the graph optimizations still run.
        quant_pre_process(fp32, prepared, skip_symbolic_shape=True)
        quantize_static(
            prepared, int8, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.Percentile,
            extra_options={"CalibPercentile": 99.999}, nodes_to_exclude=output_layer(prepared),
        )
        with open(int8, "rb") as f:
            return f.read()


def output_layer(path: str) -> list[str]:
    """Names of the graph's last convolution and every node after it (the graph is in topological
    order): the part kept in fp32."""
    import onnx

    nodes = onnx.load(path).graph.node
    last_conv = max(i for i, node in enumerate(nodes) if node.op_type == "Conv")
    return [node.name for node in nodes[last_conv:]]


class OnnxNetwork(nn.Module):
    """An ONNX Runtime session that :mod:`carray.restore` can run like the PyTorch network: the
    same `args`, receptive radius and `forward(x, quality)` (NCHW float32 in and out, on the CPU)."""

    def __init__(self, onnx_bytes: bytes, like: nn.Module, threads: int = 1):
        super().__init__()
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
        self.args, self.receptive_radius, self.takes_quality = like.args, like.receptive_radius, like.takes_quality
        self._device = nn.Parameter(torch.zeros(0), requires_grad=False)  # restore.py asks the parameters for the device

    def forward(self, x: torch.Tensor, quality: Optional[torch.Tensor] = None) -> torch.Tensor:
        feeds = {"image": np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)}
        if self.takes_quality:
            q = quality if quality is not None else torch.full((x.shape[0],), 50.0)
            feeds["quality"] = q.detach().cpu().numpy().astype(np.float32)
        return torch.from_numpy(self.session.run(None, feeds)[0])


class Autocast(nn.Module):
    """The PyTorch network run under CUDA autocast (fp16 or bf16 convolutions), same interface."""

    def __init__(self, model: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.model, self.dtype = model, dtype
        self.args, self.receptive_radius, self.takes_quality = model.args, model.receptive_radius, model.takes_quality

    def forward(self, x: torch.Tensor, quality: Optional[torch.Tensor] = None) -> torch.Tensor:
        with torch.autocast("cuda", dtype=self.dtype):
            return self.model(x, quality).float()


# Bump when int8_network changes: cached files of an older recipe are then not reused.
INT8_RECIPE = "ort-qdq-percentile99.999-fp32-output-v1"


def cache_folder() -> str:
    """Where quantized networks are kept between runs ($CARRAY_CACHE, else ~/.cache/carray)."""
    return os.environ.get("CARRAY_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "carray")


def int8_key(model_file: bytes) -> str:
    """The name of a model's int8 network: its file's sha256 with the recipe's."""
    import hashlib

    return hashlib.sha256(model_file + INT8_RECIPE.encode()).hexdigest()


def int8_files(files: dict[str, bytes]) -> dict[str, bytes]:
    """{kind: model file} -> {kind: int8 ONNX}: made once (on the driver), sent to every actor.
    Quantizing (export + calibration) takes seconds per model, so the result is kept under
    :func:`int8_key`: in the package for the shipped models (``models/int8/``), else in a cache on
    this machine (a cache that cannot be written is skipped)."""
    from .model import load_model_bytes

    networks = {}
    for kind, data in files.items():
        key = int8_key(data)
        path = os.path.join(cache_folder(), "int8", f"{key}.onnx")
        shipped = resources.files("carray").joinpath(f"models/int8/{key}.onnx")
        if shipped.is_file():  # the shipped models come with their int8 networks
            networks[kind] = shipped.read_bytes()
            continue
        try:
            with open(path, "rb") as f:
                networks[kind] = f.read()
            continue
        except OSError:
            pass
        networks[kind] = int8_network(*load_model_bytes(data, kind))
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            fd, temporary = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                f.write(networks[kind])
            os.replace(temporary, path)
        except OSError:  # read-only home: quantize again next time
            pass
    return networks


def load_networks(files: dict[str, bytes], precision: str, device: torch.device, threads: int = 1,
                  int8: Optional[dict[str, bytes]] = None) -> dict[str, nn.Module]:
    """The networks an actor restores with, at a resolved precision (see :func:`resolve_precision`)."""
    from .model import load_model_bytes
    from .restore import prepare_model

    networks = {}
    for kind, data in files.items():
        model = load_model_bytes(data, kind)[0]
        if precision == "int8":
            networks[kind] = OnnxNetwork(int8[kind], model, threads)
        elif precision in ("fp16", "bf16"):
            networks[kind] = Autocast(prepare_model(model, device), torch.float16 if precision == "fp16" else torch.bfloat16)
        else:
            networks[kind] = prepare_model(model, device)
    return networks


def setup_restoring_process(files: dict[str, bytes], precision: str, threads: int,
                            int8: Optional[dict[str, bytes]] = None) -> tuple[torch.device, dict[str, nn.Module]]:
    """What a restoring actor (infer's Restorer, evaluate's Evaluator) sets up once: its device
    (CUDA when present), torch's CPU threads, and its networks at `precision`."""
    from .restore import pick_device

    device = pick_device()
    if device.type == "cpu":
        torch.set_num_threads(threads)
    return device, load_networks(files, precision, device, threads, int8)
