import numpy as np
import pytest

from carray.patches import apply_tiled, extract_patches, patch_origins, plan_tiles, stitch_patches


def test_patch_count_follows_stride():
    assert patch_origins(180, 32, 16) == list(range(0, 149, 16))
    assert len(patch_origins(180, 32, 32)) == (180 - 32) // 32 + 1
    assert patch_origins(31, 32, 16) == []


@pytest.mark.parametrize("shape", [(70, 50), (70, 50, 3)])
def test_extract_then_stitch_is_identity_where_covered(shape):
    img = np.random.default_rng(0).integers(0, 256, shape).astype(np.uint8)
    patches, origins = extract_patches(img, 16, 8)
    assert patches.shape[1:] == (16, 16) + shape[2:]
    for patch, (y, x) in zip(patches, origins):
        np.testing.assert_array_equal(patch, img[y : y + 16, x : x + 16])
    back = stitch_patches(patches, origins, img.shape)
    covered = (slice(0, origins[:, 0].max() + 16), slice(0, origins[:, 1].max() + 16))
    np.testing.assert_allclose(back[covered], img[covered])


def test_tiles_cover_every_pixel_once():
    owner = np.zeros((101, 203), int)
    for t in plan_tiles(101, 203, tile=40, margin=9):
        y0, y1, x0, x1 = t.core
        owner[y0:y1, x0:x1] += 1
        wy0, wy1, wx0, wx1 = t.window
        assert wy0 <= y0 and wy1 >= y1 and wx0 <= x0 and wx1 >= x1
        assert y0 % 8 == 0 and x0 % 8 == 0
    assert (owner == 1).all()



def _box(img, radius=3):
    padded = np.pad(img.astype(float), radius, mode="edge")
    out = np.zeros(img.shape, float)
    k = 2 * radius + 1
    for dy in range(k):
        for dx in range(k):
            out += padded[dy : dy + img.shape[0], dx : dx + img.shape[1]]
    return out / k**2


def test_apply_tiled_matches_whole_image_with_enough_margin():
    img = np.random.default_rng(2).random((77, 130))
    whole = _box(img)
    tiled = apply_tiled(img, _box, tile=32, margin=3)
    np.testing.assert_allclose(tiled, whole, atol=1e-12)
    # Too little margin shows seams: the check above can fail.
    assert np.abs(apply_tiled(img, lambda a: _box(a, 9), tile=32, margin=0) - _box(img, 9)).max() > 1e-3
