"""Whole-image restoration with a model, tile by tile, without seams. No Ray here.

Tiles overlap by at least the network's receptive field, and each tile keeps only its core, so
the stitched image equals running the network on the whole image (up to float rounding), while
memory stays bounded by one tile whatever the image size.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import nn

from .images import DecodedImage, rgb_to_ycbcr, to_uint8, ycbcr_to_rgb
from .patches import apply_tiled

DEFAULT_TILE = 512


def pick_device() -> torch.device:
    """Each process picks its device once: CUDA when present, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def tile_margin(model: nn.Module) -> int:
    """Context read around each tile: the receptive radius rounded up to the 8-pixel grid."""
    return -(-model.receptive_radius // 8) * 8


@torch.inference_mode()
def run_model(model: nn.Module, planes: np.ndarray, device: torch.device) -> np.ndarray:
    """float32 (h, w, c) on [0, 1] -> the network's output, same shape, not clamped."""
    x = torch.from_numpy(np.ascontiguousarray(planes.transpose(2, 0, 1)))[None].to(device)
    return model(x.contiguous(memory_format=torch.channels_last))[0].permute(1, 2, 0).float().cpu().numpy()


def prepare_model(model: nn.Module, device: torch.device) -> nn.Module:
    """Move a loaded model to its device for inference, in the memory layout convolutions like."""
    return model.to(device, memory_format=torch.channels_last).eval()


def restore_planes(model: nn.Module, planes: np.ndarray, tile: int = DEFAULT_TILE, device: Optional[torch.device] = None) -> np.ndarray:
    """float32 (h, w, c) on [0, 1] -> restored float32 (h, w, c), tiled with enough margin."""
    device = device or next(model.parameters()).device
    return apply_tiled(planes, lambda window: run_model(model, window, device), tile, tile_margin(model), align=8)


def restore_pixels(model: nn.Module, pixels: np.ndarray, tile: int = DEFAULT_TILE, device: Optional[torch.device] = None) -> np.ndarray:
    """uint8 (h, w) gray or (h, w, 3) RGB -> restored uint8 of the same shape and mode.

    A gray model on an RGB image restores its Y channel and keeps Cb/Cr; a colour model on a gray
    image sees the gray value in all three channels and gives back their mean.
    """
    channels = model.args["channels"]
    if pixels.ndim == 2 and channels == 1:
        out = restore_planes(model, pixels[..., None].astype(np.float32) / 255, tile, device)
        return to_uint8(out[..., 0] * 255)
    if pixels.ndim == 3 and channels == 3:
        return to_uint8(restore_planes(model, pixels.astype(np.float32) / 255, tile, device) * 255)
    if pixels.ndim == 3:  # gray model, colour image: restore Y in the MATLAB YCbCr space
        ycc = rgb_to_ycbcr(pixels)
        y = restore_planes(model, (ycc[..., :1] / 255).astype(np.float32), tile, device)
        ycc[..., 0] = y[..., 0] * 255
        return to_uint8(ycbcr_to_rgb(ycc))
    rgb = np.repeat(pixels[..., None], 3, axis=2).astype(np.float32) / 255
    return to_uint8(restore_planes(model, rgb, tile, device).mean(axis=2) * 255)


def restore_image(models: dict[str, nn.Module], image: DecodedImage, tile: int = DEFAULT_TILE, device=None) -> DecodedImage:
    """Restore with the model that matches the image: models['gray'] for gray, models['color'] for
    RGB, falling back to whichever one is given. Alpha, ICC and EXIF pass through unchanged."""
    kind = "color" if image.is_color else "gray"
    model = models.get(kind) or next(iter(models.values()))
    return DecodedImage(pixels=restore_pixels(model, image.pixels, tile, device), alpha=image.alpha, icc=image.icc, exif=image.exif)
