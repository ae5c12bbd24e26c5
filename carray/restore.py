"""Whole-image restoration with a model, tile by tile, without seams. No Ray here.

Tiles overlap by at least the network's receptive field, and each tile keeps only its core, so
the stitched image equals running the network on the whole image (up to float rounding), while
the network's activations stay bounded by one tile whatever the image size (the image itself is held whole).
"""
from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Callable, Optional

import numpy as np

from .images import DecodedImage, rgb_to_ycbcr, to_uint8, ycbcr_to_rgb
from .patches import apply_tiled

if TYPE_CHECKING:  # torch is imported where a PyTorch network runs: ONNX networks (carray.onnxnet) need none
    import torch
    from torch import nn

DEFAULT_TILE = 512


def pick_device() -> "torch.device":
    """Each process picks its device once: CUDA when present, else CPU."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def tile_margin(model: nn.Module) -> int:
    """Context read around each tile: the receptive radius rounded up to the 8-pixel grid."""
    return -(-model.receptive_radius // 8) * 8


def run_model(model: nn.Module, planes: np.ndarray, device: torch.device, quality: Optional[float] = None) -> np.ndarray:
    """float32 (h, w, c) on [0, 1] -> the network's output, same shape, not clamped.
    `quality`: the IJG quality the network is conditioned on (networks that take one need it), or the
    JPEG's coding (:func:`carray.quality.coding`) for networks that also see the chroma's."""
    return run_batch(model, [planes], device, [quality])[0]


def run_batch(model: nn.Module, windows: list[np.ndarray], device: Optional[torch.device], qualities: list[Optional[float]]) -> list[np.ndarray]:
    """Windows of one shape, float32 (h, w, c) on [0, 1], through the network in one forward pass.

    An ONNX network (:class:`carray.onnxnet.OnnxNetwork`) runs on numpy arrays, without torch. On
    CUDA the batch goes through pinned host memory with non-blocking copies both ways, so the copy
    of one batch can overlap the kernels queued before it; one synchronize at the end."""
    x = np.stack([w.transpose(2, 0, 1) for w in windows])
    if not is_torch_network(model):
        q = None if qualities[0] is None else np.array(qualities, np.float32)
        return list(model.run_numpy(x, q).transpose(0, 2, 3, 1))
    import torch

    from .model import conditioning

    cuda = device.type == "cuda"
    with torch.inference_mode():
        x = torch.from_numpy(x)
        if cuda:
            x = x.pin_memory()
        x = x.to(device, non_blocking=cuda).contiguous(memory_format=torch.channels_last)
        q = conditioning(qualities, device)
        y = model(x, q).float()
        out = torch.empty(y.shape, dtype=torch.float32, pin_memory=cuda)
        out.copy_(y, non_blocking=cuda)
        if cuda:
            torch.cuda.current_stream(device).synchronize()
        return list(out.permute(0, 2, 3, 1).numpy())


def prepare_model(model: nn.Module, device: torch.device) -> nn.Module:
    """Move a loaded model to its device for inference, in the memory layout convolutions like."""
    import torch

    return model.to(device, memory_format=torch.channels_last).eval()


def is_torch_network(model) -> bool:
    """A PyTorch module, as opposed to an ONNX network (:class:`carray.onnxnet.OnnxNetwork`, numpy in and out)."""
    return not hasattr(model, "run_numpy")


def network_device(model) -> Optional["torch.device"]:
    """Where a PyTorch network's weights are; None for an ONNX network (numpy on the CPU)."""
    return next(model.parameters()).device if is_torch_network(model) else None


def restore_planes(
    model: nn.Module, planes: np.ndarray, tile: int = DEFAULT_TILE, device: Optional[torch.device] = None,
    quality: Optional[float] = None, tta: bool = False,
) -> np.ndarray:
    """float32 (h, w, c) on [0, 1] -> restored float32 (h, w, c), tiled with enough margin.
    `tta`: the x8 self-ensemble (see :func:`self_ensemble`), 8 times the work."""
    device = device or network_device(model)

    def once(x: np.ndarray) -> np.ndarray:
        return apply_tiled(x, lambda window: run_model(model, window, device, quality), tile, tile_margin(model), align=8)

    return self_ensemble(once, planes) if tta else once(planes)


def self_ensemble(fn, planes: np.ndarray, grid: int = 8) -> np.ndarray:
    """The mean of `fn` over the 8 flips and 90-degree rotations of the image, each result turned
    back exactly (waifu2x's -x, EDSR's self-ensemble).

    JPEG's 8x8 grid starts at the top-left corner; a flip of an image whose side is not a multiple
    of 8 would move the grid under the network. The image is first padded (edge values) to a
    multiple of `grid` on the bottom and right, so every transform keeps the blocks on the grid,
    and the padding is cut off at the end."""
    h, w = planes.shape[:2]
    pad = ((0, -h % grid), (0, -w % grid)) + ((0, 0),) * (planes.ndim - 2)
    padded = np.pad(planes, pad, mode="edge")
    total = np.zeros(padded.shape, np.float64)
    for k in range(4):
        for flip in (False, True):
            x = np.rot90(padded[:, ::-1] if flip else padded, k, axes=(0, 1))
            y = np.rot90(fn(np.ascontiguousarray(x)), -k, axes=(0, 1))
            total += y[:, ::-1] if flip else y
    return (total / 8).astype(planes.dtype)[:h, :w]


def network_planes(model: nn.Module, pixels: np.ndarray) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """uint8 (h, w) gray or (h, w, 3) RGB -> (the float32 planes the network sees, a function that
    turns the restored planes back into uint8 pixels of the input's shape and mode).

    A gray model on an RGB image restores its Y channel and keeps Cb/Cr; a colour model on a gray
    image sees the gray value in all three channels and gives back their mean."""
    channels = model.args["channels"]
    if pixels.ndim == 2 and channels == 1:
        return pixels[..., None].astype(np.float32) / 255, lambda out: to_uint8(out[..., 0] * 255)
    if pixels.ndim == 3 and channels == 3:
        return pixels.astype(np.float32) / 255, lambda out: to_uint8(out * 255)
    if pixels.ndim == 3:  # gray model, colour image: restore Y in the MATLAB YCbCr space
        ycc = rgb_to_ycbcr(pixels)

        def back_to_rgb(out: np.ndarray) -> np.ndarray:
            ycc[..., 0] = out[..., 0] * 255
            return to_uint8(ycbcr_to_rgb(ycc))

        return (ycc[..., :1] / 255).astype(np.float32), back_to_rgb
    rgb = np.repeat(pixels[..., None], 3, axis=2).astype(np.float32) / 255
    return rgb, lambda out: to_uint8(out.mean(axis=2) * 255)


def restore_pixels(
    model: nn.Module, pixels: np.ndarray, tile: int = DEFAULT_TILE, device: Optional[torch.device] = None,
    quality: Optional[float] = None, tta: bool = False, batch: int = 1, allocate: Optional[Callable[[tuple], np.ndarray]] = None,
) -> np.ndarray:
    """uint8 (h, w) gray or (h, w, 3) RGB -> restored uint8 of the same shape and mode (see
    :func:`network_planes`). `quality`: the input's IJG JPEG quality, for networks conditioned on
    it; `tta`: x8 ensemble; `batch`: tile windows per forward pass (PyTorch networks); `allocate(shape)`:
    where a PyTorch network on the CPU puts the restored pixels (an uninitialised uint8 array).

    A PyTorch network restores on its device (carray/ondevice.py); an ONNX network, and the x8
    ensemble of either, on the host a window at a time (:func:`restore_windows_on_host`)."""
    if tta:
        return restore_windows_on_host(model, pixels, tile, quality, tta=True, device=device)
    if is_torch_network(model):  # uint8 in and out, everything between on the network's device
        from .ondevice import restore_tiled_on_device

        return restore_tiled_on_device(model, pixels, device or network_device(model), quality, tile, tile_margin(model), batch, allocate)
    return restore_windows_on_host(model, pixels, tile, quality)


def restore_windows_on_host(model, pixels: np.ndarray, tile: int = DEFAULT_TILE, quality: Optional[float] = None,
                            tta: bool = False, device: Optional[torch.device] = None) -> np.ndarray:
    """uint8 in, uint8 out, through the network on the host a window at a time: each window made
    float planes, restored and turned back into uint8, its core stitched. Float exists for one window
    only, where planes of the whole image held 12 bytes per pixel in and as many out (a 12 MP photo
    restored whole: 866 MB above the process's start; docs/benchmarks.md, session 20). The same
    pixels as planes of the whole image: each conversion is pixel by pixel.

    `tta`: each window's x8 self-ensemble (:func:`self_ensemble`). Windows start on the 8-pixel grid
    and their margin covers the network's receptive field, so each of the eight transforms of a
    window restores its core as the transform of the whole image does; the whole image's float64
    sum and its padded copies (about 70 bytes per pixel; docs/benchmarks.md, session 21) are never made."""
    def restore_window(window: np.ndarray) -> np.ndarray:
        planes, back = network_planes(model, window)
        if tta:
            return back(restore_planes(model, planes, max(planes.shape[:2]), device, quality, tta=True))
        return back(run_model(model, planes, None, quality))

    return apply_tiled(pixels, restore_window, tile, tile_margin(model), align=8)


def restore_in_batches(
    items: list[tuple[nn.Module, np.ndarray, Optional[float]]], device: torch.device, batch: int,
    allocate: Optional[Callable[[tuple], np.ndarray]] = None,
) -> list[np.ndarray]:
    """(model, uint8 pixels, quality) items, each restored in one piece (a tile window, or an image
    no larger than a tile) -> their restored uint8 pixels, in order.

    Items with the same model and planes shape go through the network `batch` at a time in one
    forward pass (a GPU is fed far better by a few large calls than by many small ones); each result
    equals :func:`restore_pixels` of the item with a tile as large as the item. `allocate(shape)`:
    where a PyTorch network's batch is stacked (carray.ondevice.restore_batch_on_device)."""
    results: list[Optional[np.ndarray]] = [None] * len(items)
    groups: dict[tuple, list[int]] = {}
    for i, (model, pixels, _) in enumerate(items):
        groups.setdefault((id(model), pixels.shape), []).append(i)
    for members in groups.values():
        model = items[members[0]][0]
        for start in range(0, len(members), max(1, batch)):
            chunk = members[start : start + max(1, batch)]
            outs = _restore_chunk(model, [items[i][1] for i in chunk], device, [items[i][2] for i in chunk], allocate)
            for i, out in zip(chunk, outs):
                results[i] = out
    return results


def _restore_chunk(model, pixels: list[np.ndarray], device, qualities: list,
                   allocate: Optional[Callable[[tuple], np.ndarray]] = None) -> list[np.ndarray]:
    """uint8 images of one shape through the network in one forward pass: on a PyTorch network's
    device (carray/ondevice.py), or through float32 planes on the host for an ONNX network."""
    if is_torch_network(model):
        from .ondevice import restore_batch_on_device

        return restore_batch_on_device(model, pixels, device or network_device(model), qualities, allocate)
    planes, backs = zip(*(network_planes(model, p) for p in pixels))
    return [back(out) for back, out in zip(backs, run_batch(model, list(planes), device, qualities))]


def pick_model(models: dict[str, nn.Module], image: DecodedImage) -> nn.Module:
    """models['gray'] for gray images, models['color'] for RGB, else whichever one is given."""
    return models.get("color" if image.is_color else "gray") or next(iter(models.values()))


def restore_image(
    models: dict[str, nn.Module], image: DecodedImage, tile: int = DEFAULT_TILE, device=None,
    quality: Optional[float] = None, tta: bool = False, batch: int = 1, allocate: Optional[Callable[[tuple], np.ndarray]] = None,
) -> DecodedImage:
    """Restore with the model that matches the image (:func:`pick_model`) at `quality`
    (`tta`: the x8 self-ensemble; `batch`: tile windows per forward pass; `allocate`: see
    :func:`restore_pixels`). Alpha and metadata pass through unchanged."""
    pixels = restore_pixels(pick_model(models, image), image.pixels, tile, device, quality, tta, batch, allocate)
    return replace(image, pixels=pixels)
