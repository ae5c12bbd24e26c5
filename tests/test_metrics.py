"""The metrics reproduce the published JPEG rows (shared ANCHORS.md) on the real test sets."""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from carray import jpeg, metrics

DATA = Path(__file__).parent / "data"

# (set, glob, quality) -> published JPEG (PSNR, SSIM, PSNR-B), gray, Y channel.
PUBLISHED = {
    ("LIVE1_gray", "*.png", 10): (27.77, 0.773, 25.33),
    ("LIVE1_gray", "*.png", 40): (32.35, 0.904, 29.96),
    ("Classic5", "*.bmp", 10): (27.82, 0.760, 25.21),
    ("Classic5", "*.bmp", 30): (31.48, 0.867, 28.94),
}


@pytest.mark.parametrize("key", list(PUBLISHED), ids=lambda k: f"{k[0]}-q{k[2]}")
def test_published_jpeg_rows(key):
    folder, pattern, quality = key
    rows = []
    for path in sorted((DATA / folder).glob(pattern)):
        original = np.asarray(Image.open(path).convert("L"))
        degraded = jpeg.roundtrip(original, quality)
        rows.append((metrics.psnr(original, degraded), metrics.ssim(original, degraded), metrics.psnr_b(original, degraded)))
    assert len(rows) == (29 if folder == "LIVE1_gray" else 5)
    psnr, ssim, psnr_b = np.mean(rows, axis=0)
    want = PUBLISHED[key]
    assert abs(psnr - want[0]) <= 0.02
    assert abs(ssim - want[1]) <= 0.0015
    assert abs(psnr_b - want[2]) <= 0.02


def test_identical_images():
    img = np.random.default_rng(0).integers(0, 256, (40, 40), dtype=np.uint8)
    assert metrics.psnr(img, img) == float("inf")
    assert metrics.ssim(img, img) == pytest.approx(1.0)
    flat = np.full((40, 40), 7, np.uint8)  # no blocking either: PSNR-B is inf too
    assert metrics.psnr_b(flat, flat) == float("inf")


def test_psnr_known_value_and_color():
    a = np.zeros((8, 8, 3), np.uint8)
    b = a.copy()
    b[..., 0] = 10  # MSE over all channels = 100 / 3
    assert metrics.psnr(a, b) == pytest.approx(10 * np.log10(255**2 / (100 / 3)))
    assert 0 < metrics.ssim(a, b) < 1


def test_psnr_b_penalises_blocking():
    rng = np.random.default_rng(1)
    ref = rng.integers(100, 110, (64, 64)).astype(np.uint8)
    blocky = ref.copy()
    blocky[:, 8::8] = np.clip(blocky[:, 8::8].astype(int) + 20, 0, 255)  # steps at block edges
    smooth_noise = ref.copy()
    smooth_noise[:, 12::8] = np.clip(smooth_noise[:, 12::8].astype(int) + 20, 0, 255)  # same MSE, mid-block
    assert metrics.psnr(ref, blocky) == pytest.approx(metrics.psnr(ref, smooth_noise))
    assert metrics.psnr_b(ref, blocky) < metrics.psnr_b(ref, smooth_noise)


def test_shape_mismatch():
    with pytest.raises(ValueError, match="shapes differ"):
        metrics.psnr(np.zeros((4, 4)), np.zeros((4, 5)))
