"""What the bench scripts share: where the bundled images are."""
from pathlib import Path

BUNDLED = Path(__file__).resolve().parents[1] / "tests" / "data"
LIVE1_GRAY = BUNDLED / "LIVE1_gray"


def mosaic(images: list, height: int, width: int, start: int = 0):
    """A (height, width[, 3]) uint8 canvas tiled row by row with `images` (numpy arrays, cropped at
    the edges), beginning with images[start]: large test images with real photographic texture."""
    import numpy as np

    canvas = np.zeros((height, width) + images[0].shape[2:], np.uint8)
    y, i = 0, start
    while y < height:
        x, row = 0, 0
        while x < width:
            img = images[i % len(images)]
            i += 1
            h, w = min(img.shape[0], height - y), min(img.shape[1], width - x)
            canvas[y : y + h, x : x + w] = img[:h, :w]
            x, row = x + w, max(row, h)
        y += row
    return canvas
