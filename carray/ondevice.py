"""Restoring on the network's device: uint8 pixels in, uint8 pixels out (PyTorch networks).

What used to be the host's work per image runs where the network runs: the conversion to float,
the colour handling (:func:`carray.restore.network_planes`' four cases), the tiling of a large image
(uint8 windows cut from the image already on the device, made float a batch at a time, their
cores clamped, rounded back to uint8 and stitched there: no float copy of the whole image exists). Host and device exchange uint8 only (a quarter of
float32's bytes), through pinned memory with non-blocking copies on CUDA, and one synchronize per
call. On the CPU device the same code runs (the tests' path). The results equal
:func:`carray.restore.restore_pixels` within one grey level (float32 here where the host's colour
conversion is float64).
"""
from __future__ import annotations

import functools
import warnings
from typing import Callable, Optional

import numpy as np
import torch

from .images import _RGB_TO_YCBCR, _YCBCR_OFFSET
from .model import conditioning
from .patches import plan_tiles


def pinned_host_buffer(size: int) -> np.ndarray:
    """`size` bytes of page-locked host memory (torch's caching host allocator), as a numpy array that
    keeps it alive: photos decoded into it upload as they are, where pageable memory is first copied
    into pinned memory by _upload (a memcpy of every photo on the CPUs of a GPU node). Where pinned
    memory is refused, pageable memory: the upload copies it, as it always did."""
    try:
        return torch.empty(size, dtype=torch.uint8, pin_memory=True).numpy()
    except RuntimeError:
        return np.empty(size, np.uint8)


def _upload(pixels: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 pixels -> a tensor on `device`. To CUDA through pinned memory, non-blocking: pixels
    already in pinned memory (pinned_host_buffer) are read in place, others copied there first."""
    with warnings.catch_warnings():  # read-only pixels (a view of a row's bytes): nothing here writes to them
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        x = torch.from_numpy(np.ascontiguousarray(pixels))
    cuda = device.type == "cuda"
    return (x.pin_memory() if cuda else x).to(device, non_blocking=cuda)  # pin_memory() of a pinned tensor is the tensor


def _empty_like(x: torch.Tensor, allocate: Optional[Callable[[tuple], np.ndarray]] = None) -> torch.Tensor:
    """A uint8 tensor of x's shape, uninitialised. On the CPU from `allocate` where given (a restoring
    actor's kept buffers, carray.infer.memory.PixelBuffers: the restoring step 2.5-2.8 -> 1.7 ms per
    MP of a camera photo in the ceiling, docs/benchmarks.md, session 20), else through numpy, which
    asks the kernel for transparent huge pages for large buffers (madvise) where torch's allocator
    does not: the output of a photo above 10.7 MP (32 MB, where glibc maps fresh memory for each one)
    was faulted in 4 KB at a time, 732 faults per MP (session 19)."""
    if x.device.type != "cpu":
        return torch.empty_like(x)
    return torch.from_numpy(allocate(tuple(x.shape)) if allocate else np.empty_like(x.numpy()))


def _download(y: torch.Tensor) -> np.ndarray:
    if y.device.type != "cuda":
        return y.contiguous().numpy()
    out = torch.empty(y.shape, dtype=y.dtype, pin_memory=True)
    out.copy_(y, non_blocking=True)
    torch.cuda.current_stream(y.device).synchronize()
    return out.numpy()


# 1.5 * 2**23: float32 numbers this large are spaced exactly 1 apart, so adding it to a value on 0..255
# rounds that value to the nearest integer (ties to even, as round() does) and leaves the integer in the
# low byte of the sum's bit pattern. Clamp, then scale-and-add in one pass, then that byte is the uint8:
# three passes over the floats where scale, round, clamp and convert took four, and the int32 -> uint8
# copy is cheaper than float -> uint8 (0.7 ms less per MP of a photo on a CPU core).
_ROUNDER = 1.5 * 2**23


@functools.lru_cache(maxsize=None)
def _rounder(device: torch.device) -> torch.Tensor:
    return torch.tensor(_ROUNDER, dtype=torch.float32, device=device)  # made once per device, not per window


def _to_uint8(x: torch.Tensor, scale: float = 1.0, into: Optional[torch.Tensor] = None) -> torch.Tensor:
    """x * scale, float32 (x overwritten) -> uint8, rounded and clamped to 0..255 (as
    carray.images.to_uint8, the product rounded once); written `into` a uint8 tensor of its shape
    when given (no uint8 tensor made, then copied)."""
    x = x.clamp_(0, 255 / scale)
    torch.add(_rounder(x.device), x, alpha=scale, out=x)
    bits = x.view(torch.int32)
    return bits.to(torch.uint8) if into is None else into.copy_(bits)


def to_planes(model, x: torch.Tensor) -> torch.Tensor:
    """uint8 (n, h, w) gray or (n, h, w, 3) RGB on the device -> the float32 (n, c, h, w) planes on
    [0, 1] the network sees: the four cases of :func:`carray.restore.network_planes` (a gray model
    on RGB sees MATLAB-YCbCr Y; a colour model on gray sees the gray value in all three channels)."""
    channels = model.args["channels"]
    if x.ndim == 3:
        planes = _to_unit_floats(x)[:, None]
        return planes if channels == 1 else planes.expand(-1, 3, -1, -1)
    if channels == 3:  # (n, h, w, 3) floats seen as (n, 3, h, w): channels_last, what _forward feeds the network
        return _to_unit_floats(x).permute(0, 3, 1, 2)
    return (_to_ycbcr(x)[..., 0] / 255)[:, None]


def _to_unit_floats(x: torch.Tensor) -> torch.Tensor:
    """uint8 -> float32 / 255, in x's own layout. Two plain passes (convert, divide in place): the
    same floats as `x / 255`, which converts and divides element by element: on a CPU 0.36 against
    0.45 ms per MP of RGB, and 0.92 where the division ran on the (n, 3, h, w) view of an RGB
    window (docs/benchmarks.md, session 17)."""
    return x.to(torch.float32).div_(255)


def to_pixels(model, y: torch.Tensor, x: torch.Tensor, into: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The network's output planes (n, c, h, w; overwritten: the float passes run in place) and the
    uint8 input `x` of the same region -> restored uint8 of x's shape, written `into` such a
    tensor when given. A gray model on RGB replaces Y and keeps x's own Cb and Cr."""
    channels = model.args["channels"]
    if x.ndim == 3:
        return _to_uint8(y[:, 0] if channels == 1 else y.mean(dim=1), 255, into)
    if channels == 3:
        return _to_uint8(y.permute(0, 2, 3, 1), 255, into)
    ycc = _to_ycbcr(x)
    ycc[..., 0] = y[:, 0] * 255
    to_ycc, offset = _ycbcr_matrix(x.device)
    return _to_uint8((ycc - offset) @ torch.linalg.inv(to_ycc).T, into=into)


def _ycbcr_matrix(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.tensor(_RGB_TO_YCBCR, dtype=torch.float32, device=device),
            torch.tensor(_YCBCR_OFFSET, dtype=torch.float32, device=device))


def _to_ycbcr(x: torch.Tensor) -> torch.Tensor:
    to_ycc, offset = _ycbcr_matrix(x.device)
    return x.float() @ to_ycc.T + offset


def _forward(model, planes: torch.Tensor, qualities: Optional[list]) -> torch.Tensor:
    q = None if qualities is None else conditioning(qualities, planes.device)
    return model(planes.contiguous(memory_format=torch.channels_last), q).float()


def restore_batch_on_device(model, pixels: list[np.ndarray], device: torch.device, qualities: list,
                            allocate: Optional[Callable[[tuple], np.ndarray]] = None) -> list[np.ndarray]:
    """Images of one shape (uint8), each restored in one piece, in one forward pass -> uint8 each.
    The batch is stacked into an array from `allocate(shape)` where given (on a GPU actor pinned
    memory it keeps: one copy of the pixels where a new array and its pinned copy took two)."""
    with torch.inference_mode():
        x = _upload(np.stack(pixels, out=allocate((len(pixels), *pixels[0].shape)) if allocate else None), device)
        return list(_download(to_pixels(model, _forward(model, to_planes(model, x), qualities), x)))


def restore_tiled_on_device(model, pixels: np.ndarray, device: torch.device, quality, tile: int, margin: int,
                            batch: int = 1, allocate: Optional[Callable[[tuple], np.ndarray]] = None) -> np.ndarray:
    """One image (uint8) of any size -> restored uint8: uploaded once, its windows (those of
    :func:`carray.patches.plan_tiles`, as the host's tiling cuts them) cut from the uint8 image on the
    device and run `batch` at a time per window shape, each core turned back into uint8 and stitched
    there, downloaded once. Float exists for a batch of windows only: no float copy of the whole
    image is ever made (on a CPU, the passes over 100-MB float buffers cost more than an identity
    network's whole job; on a GPU, a 100-MP image needs no GB of float). On the CPU the restored
    pixels go into an array from `allocate(shape)` where given."""
    with torch.inference_mode():
        x = _upload(pixels[None], device)
        out = _empty_like(x, allocate)
        groups: dict[tuple, list] = {}
        for t in plan_tiles(x.shape[1], x.shape[2], tile, margin, align=8):
            wy0, wy1, wx0, wx1 = t.window
            groups.setdefault((wy1 - wy0, wx1 - wx0), []).append(t)
        for tiles in groups.values():
            for start in range(0, len(tiles), max(1, batch)):
                chunk = tiles[start : start + max(1, batch)]
                views = [x[:, t.window[0] : t.window[1], t.window[2] : t.window[3]] for t in chunk]
                # One window (a CPU's batch) is converted to float from the image itself: no uint8 copy first.
                windows = views[0] if len(views) == 1 else torch.cat(views)
                restored = _forward(model, to_planes(model, windows), [quality] * len(chunk))
                for i, t in enumerate(chunk):
                    (wy0, _, wx0, _), (cy0, cy1, cx0, cx1) = t.window, t.core
                    core = (slice(i, i + 1), slice(cy0 - wy0, cy1 - wy0), slice(cx0 - wx0, cx1 - wx0))
                    to_pixels(model, restored[core[0], :, core[1], core[2]], windows[core], into=out[:, cy0:cy1, cx0:cx1])
        return _download(out)[0]
