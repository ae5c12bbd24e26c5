"""Precisions and runtimes of the restoring network: fp16/bf16 autocast on GPUs, and on CPUs the
network exported to ONNX and run by ONNX Runtime, as it is (fp32, the default where ONNX Runtime is
installed) or quantized statically (int8), calibrated on real JPEG tiles. No Ray here.

Static QDQ quantization (weights int8 per output channel, activations uint8 per tensor, ranges from
the 99.999th percentile) calibrated on 16 natural 128x128 crops (from CBSD68, shipped in
``models/calibration.npz``), each compressed at qualities 10-60, so every activation range is seen
on the inputs the network is for. The output layer (the last convolution and what follows it) stays
fp32: its rounding goes straight into the restored pixels (measured on LIVE1 q40: -0.076 dB with it
quantized and MinMax ranges, -0.036 dB without it and percentile ranges).
Measured on this project's 2-core CPU (README): about 2x the MP/s of ONNX Runtime fp32 and a small
cost in dB on LIVE1 (held out from the calibration). :class:`carray.onnxnet.OnnxNetwork` runs the file so that
:mod:`carray.restore` runs it like the PyTorch network (same tiles, same margins, same stitching).
"""
from __future__ import annotations

import io
import os
import tempfile
from importlib import resources
from typing import TYPE_CHECKING, Optional

import numpy as np

from .errors import JobError

if TYPE_CHECKING:  # restoring processes that run ONNX networks never import torch (carray.onnxnet)
    import torch
    from torch import nn

PRECISIONS = ("auto", "fp32", "fp16", "bf16", "int8")
RUNTIMES = ("auto", "torch", "onnxruntime")
RUNTIME_NAMES = {"torch": "PyTorch", "onnxruntime": "ONNX Runtime"}
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


def resolve_runtime(runtime: str, precision: str, cuda: bool) -> str:
    """Which library runs the network: 'onnxruntime' or 'torch'. int8 is ONNX Runtime's, fp16/bf16
    and GPUs PyTorch's; fp32 on CPUs is ONNX Runtime's when it is installed ('auto'): the same
    network and weights, 7-11 % faster with one thread per actor on this project's CPU (README),
    within one grey level of PyTorch's output (float rounding)."""
    if runtime not in RUNTIMES:
        raise PrecisionError(f"--runtime {runtime!r}: choose one of {', '.join(RUNTIMES)}")
    if precision == "int8":
        if runtime == "torch":
            raise PrecisionError("--precision int8 runs on ONNX Runtime; --runtime torch runs fp32, fp16 or bf16")
        return "onnxruntime"
    if cuda or precision != "fp32":
        if runtime == "onnxruntime":
            raise PrecisionError(f"--runtime onnxruntime runs fp32 and int8 on CPUs (here: {precision} on {'a GPU' if cuda else 'CPUs'}); use --runtime torch or auto")
        return "torch"
    if runtime == "onnxruntime" and not onnxruntime_installed():
        raise PrecisionError("--runtime onnxruntime needs ONNX Runtime: pip install 'carray[int8]'")
    if runtime == "auto":
        return "onnxruntime" if onnxruntime_installed() else "torch"
    return runtime


def calibration_feeds(channels: int, takes_quality: bool, takes_coding: bool = False) -> list[dict]:
    """The shipped calibration crops, JPEG-compressed at CALIBRATION_QUALITIES (libjpeg's default
    coding), as ONNX feeds; `takes_coding`: quality fed as (1, 3) codings."""
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
                feed["quality"] = np.array([[quality, quality, 2]] if takes_coding else [quality], np.float32)
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

    feeds = iter(calibration_feeds(model.args["channels"], model.takes_quality, model.takes_coding))

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


# Bump a recipe when int8_network or fp32_network changes: cached files of an older one are then not reused.
ONNX_RECIPES = {"int8": "ort-qdq-percentile99.999-fp32-output-v1", "fp32": "ort-fp32-clamped-v1"}


def cache_folder() -> str:
    """Where exported and quantized networks are kept between runs ($CARRAY_CACHE, else ~/.cache/carray)."""
    return os.environ.get("CARRAY_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "carray")


def onnx_key(model_file: bytes, precision: str) -> str:
    """The name of a model's ONNX network at `precision` (int8 or fp32): its file's sha256 with the recipe's."""
    import hashlib

    return hashlib.sha256(model_file + ONNX_RECIPES[precision].encode()).hexdigest()


def fp32_network(model: nn.Module, training: dict) -> bytes:
    """The model exported to ONNX as it is (fp32), for ONNX Runtime on CPUs."""
    from .export import export_onnx

    with tempfile.TemporaryDirectory(prefix="carray-fp32-") as folder:
        path = os.path.join(folder, "fp32.onnx")
        export_onnx(model, training, path)
        with open(path, "rb") as f:
            return f.read()


def onnx_files(files: dict[str, bytes], precision: str) -> dict[str, bytes]:
    """{kind: model file} -> {kind: ONNX network at `precision`, int8 or fp32}: made once (on the
    driver), sent to every actor. Exporting (and quantizing) takes seconds per model, so the result
    is kept under :func:`onnx_key`: in the package for the shipped models (``models/int8/``,
    ``models/fp32/``), else in a cache on this machine (a cache that cannot be written is skipped)."""
    from .model import load_model_bytes

    networks = {}
    for kind, data in files.items():
        key = onnx_key(data, precision)
        path = os.path.join(cache_folder(), precision, f"{key}.onnx")
        shipped = resources.files("carray").joinpath(f"models/{precision}/{key}.onnx")
        if shipped.is_file():  # the shipped models come with their ONNX networks
            networks[kind] = shipped.read_bytes()
            continue
        try:
            with open(path, "rb") as f:
                networks[kind] = f.read()
            continue
        except OSError:
            pass
        networks[kind] = (int8_network if precision == "int8" else fp32_network)(*load_model_bytes(data, kind))
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            fd, temporary = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                f.write(networks[kind])
            os.replace(temporary, path)
        except OSError:  # read-only home: quantize again next time
            pass
    return networks


def load_networks(files: dict[str, bytes], precision: str, device: Optional["torch.device"], threads: int = 1,
                  onnx: Optional[dict[str, bytes]] = None) -> dict:
    """The networks an actor restores with, at a resolved precision (see :func:`resolve_precision`):
    PyTorch modules on `device`, or with `onnx` (int8 or fp32 files from :func:`onnx_files`)
    ONNX Runtime sessions, for which neither the model files nor torch are loaded."""
    if onnx is not None:
        from .onnxnet import OnnxNetwork

        return {kind: OnnxNetwork(onnx[kind], threads) for kind in files}
    import torch

    from .model import Autocast, load_model_bytes
    from .restore import prepare_model

    networks = {}
    for kind, data in files.items():
        model = prepare_model(load_model_bytes(data, kind)[0], device)
        if precision in ("fp16", "bf16"):
            model = Autocast(model, torch.float16 if precision == "fp16" else torch.bfloat16)
        networks[kind] = model
    return networks


def plan_networks(files: dict[str, bytes], precision: str, runtime: str, cuda: bool, say=print) -> tuple[str, str, Optional[dict[str, bytes]]]:
    """On the driver: (resolved precision, runtime, the ONNX networks the actors run, if any). With
    --runtime auto, a model that cannot be exported to ONNX here (ONNX's exporter not installed, an
    operator it lacks) runs on PyTorch, and the log says why."""
    precision = resolve_precision(precision, cuda)
    chosen = resolve_runtime(runtime, precision, cuda)
    if chosen != "onnxruntime":
        return precision, chosen, None
    try:
        return precision, chosen, onnx_files(files, precision)
    except Exception as exc:  # noqa: BLE001 - auto falls back to PyTorch; asked for, it is an error
        if runtime != "auto" or precision != "fp32":
            raise
        say(f"carray: the model could not be exported to ONNX ({type(exc).__name__}: {exc}); running it on PyTorch")
        return precision, "torch", None


def setup_restoring_process(files: dict[str, bytes], precision: str, threads: int,
                            onnx: Optional[dict[str, bytes]] = None) -> tuple[Optional["torch.device"], dict]:
    """What a restoring actor (infer's Restorer, evaluate's Evaluator) sets up once: its device
    (CUDA when present; None for ONNX Runtime, which runs on the CPU without torch), torch's CPU
    threads, and its networks at `precision`."""
    if onnx is not None:
        return None, load_networks(files, precision, None, threads, onnx)
    import torch

    from .restore import pick_device

    device = pick_device()
    if device.type == "cpu":
        torch.set_num_threads(threads)
    else:  # tile windows come in a few fixed shapes: cuDNN's autotuned kernels pay back after the first batch of each
        torch.backends.cudnn.benchmark = True
    return device, load_networks(files, precision, device, threads)
