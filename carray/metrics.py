"""Image quality metrics, per image: numpy in, float out. No Ray here.

Conventions of the published JPEG-artifact tables (shared SOURCES.md): inputs on 0..255,
gray = MATLAB Y channel, colour = RGB, no border crop unless `crop` is given. Identical images
give PSNR = inf. Average these per image over a set; never pool pixels across images.
"""
from __future__ import annotations

import math

import numpy as np

PEAK = 255.0


def _prepare(reference: np.ndarray, test: np.ndarray, crop: int) -> tuple[np.ndarray, np.ndarray]:
    if reference.shape != test.shape:
        raise ValueError(f"shapes differ: {reference.shape} vs {test.shape}")
    ref, out = reference.astype(np.float64), test.astype(np.float64)
    if crop:
        ref, out = ref[crop:-crop, crop:-crop], out[crop:-crop, crop:-crop]
    return ref, out


def _psnr_from_mse(mse: float) -> float:
    return math.inf if mse == 0 else 10.0 * math.log10(PEAK**2 / mse)


def psnr(reference: np.ndarray, test: np.ndarray, crop: int = 0) -> float:
    """PSNR in dB over all pixels (and channels) of one image."""
    ref, out = _prepare(reference, test, crop)
    return _psnr_from_mse(float(np.mean((ref - out) ** 2)))


def _gaussian_kernel(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    x = np.arange(size) - (size - 1) / 2
    k = np.exp(-(x**2) / (2 * sigma**2))
    return k / k.sum()


def _filter_valid(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Separable 'valid' correlation with a 1-D kernel on both axes (the Gaussian is symmetric)."""
    n = len(kernel)
    h, w = image.shape
    rows = sum(kernel[i] * image[i : h - n + 1 + i, :] for i in range(n))
    return sum(kernel[i] * rows[:, i : w - n + 1 + i] for i in range(n))


def _ssim_channel(ref: np.ndarray, out: np.ndarray, kernel: np.ndarray) -> float:
    c1, c2 = (0.01 * PEAK) ** 2, (0.03 * PEAK) ** 2
    mu1, mu2 = _filter_valid(ref, kernel), _filter_valid(out, kernel)
    s11 = _filter_valid(ref * ref, kernel) - mu1**2
    s22 = _filter_valid(out * out, kernel) - mu2**2
    s12 = _filter_valid(ref * out, kernel) - mu1 * mu2
    ssim_map = ((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1**2 + mu2**2 + c1) * (s11 + s22 + c2))
    return float(ssim_map.mean())


def ssim(reference: np.ndarray, test: np.ndarray, crop: int = 0) -> float:
    """SSIM (Wang et al. 2004): 11x11 Gaussian window, sigma 1.5, 'valid' region, mean over
    channels. Images smaller than the window fall back to a window of their own size."""
    ref, out = _prepare(reference, test, crop)
    size = min(11, ref.shape[0], ref.shape[1])
    kernel = _gaussian_kernel(size, 1.5)
    if ref.ndim == 2:
        return _ssim_channel(ref, out, kernel)
    return float(np.mean([_ssim_channel(ref[..., c], out[..., c], kernel) for c in range(ref.shape[2])]))


def _blocking_effect_factor(image: np.ndarray, block: int = 8) -> float:
    """BEF of Yim & Bovik (2011) for one channel: how much stronger the differences across block
    edges are than those inside blocks, weighted by eta = log2(B) / log2(min(h, w))."""
    h, w = image.shape
    dh = (image[:, :-1] - image[:, 1:]) ** 2  # pairs (x, x+1)
    dv = (image[:-1, :] - image[1:, :]) ** 2  # pairs (y, y+1)
    col_edge = (np.arange(w - 1) % block) == block - 1  # pair straddles a vertical block edge
    row_edge = (np.arange(h - 1) % block) == block - 1
    n_b = dh[:, col_edge].size + dv[row_edge, :].size
    n_bc = dh[:, ~col_edge].size + dv[~row_edge, :].size
    if n_b == 0 or n_bc == 0:
        return 0.0
    d_b = (dh[:, col_edge].sum() + dv[row_edge, :].sum()) / n_b
    d_bc = (dh[:, ~col_edge].sum() + dv[~row_edge, :].sum()) / n_bc
    eta = math.log2(block) / math.log2(min(h, w)) if min(h, w) > 1 else 0.0
    return float(eta * (d_b - d_bc)) if d_b > d_bc else 0.0


def psnr_b(reference: np.ndarray, test: np.ndarray, crop: int = 0, block: int = 8) -> float:
    """PSNR-B (Yim & Bovik, IEEE TIP 2011): PSNR with the blocking effect of `test` added to the
    MSE. Colour images: the mean over channels of the per-channel PSNR-B."""
    ref, out = _prepare(reference, test, crop)
    if ref.ndim == 2:
        ref, out = ref[..., None], out[..., None]
    values = []
    for c in range(ref.shape[2]):
        mse = float(np.mean((ref[..., c] - out[..., c]) ** 2))
        values.append(_psnr_from_mse(mse + _blocking_effect_factor(out[..., c], block)))
    return float(np.mean(values))
