import numpy as np
import pyarrow as pa
import pytest

from carray import pairs
from carray.config import parse_qualities, parse_split
from carray.images import ImageError
from support.images import png_bytes, smooth_image


def test_split_is_stable_and_near_its_shares():
    names = [f"dir/img{i}.png" for i in range(3000)]
    shares = parse_split("70/20/10")
    first = [pairs.assign_split(n, shares) for n in names]
    assert first == [pairs.assign_split(n, shares) for n in names]  # same on a re-run
    counts = {s: first.count(s) / len(names) for s in pairs.SPLITS}
    assert abs(counts["train"] - 0.7) < 0.03 and abs(counts["val"] - 0.2) < 0.03
    # Adding images never moves the old ones: a split of the first 100 names in a collection of
    # 100 is their split in the collection of 3000 (an image's split depends on its path alone).
    from carray.prep import plan_items

    small = {item["image"]: pairs.assign_split(item["image"], shares) for item in plan_items(names[:100], pairs=False)[0]}
    grown = {item["image"]: pairs.assign_split(item["image"], shares) for item in plan_items(names + ["new/a.png", "new/b.png"], pairs=False)[0]}
    assert all(grown[name] == split for name, split in small.items())
    # Another seed gives another split.
    assert [pairs.assign_split(n, shares, seed=1) for n in names] != first


def test_qualities_fixed_and_drawn():
    fixed, ranges = parse_qualities(["10", "20", "30-90"])
    assert fixed == (10, 20) and ranges == ((30, 90),)
    q = pairs.qualities_for("a.png", fixed, ranges, samples=3)
    assert q == pairs.qualities_for("a.png", fixed, ranges, samples=3)
    assert {10, 20} <= set(q) and all(30 <= v <= 90 for v in set(q) - {10, 20})
    with pytest.raises(ValueError):
        parse_qualities(["0"])
    with pytest.raises(ValueError):
        parse_split("70/30")


def test_pairs_from_clean_and_arrow_roundtrip():
    data = png_bytes(smooth_image(64, 80, color=True))
    rows = pairs.pairs_from_clean(data, "x.png", [10, 40], color=False, size=32, stride=16)
    per_quality = 3 * 4  # (64-32)/16+1 by (80-32)/16+1
    assert len(rows["y"]) == 2 * per_quality
    assert rows["compressed"].shape == (2 * per_quality, 1, 32, 32)
    assert not np.array_equal(rows["compressed"], rows["original"])
    table = pairs.to_arrow(rows)
    assert table.schema.field("compressed").type == pa.binary(1024)
    back = pairs.patches_from_arrow(table.column("compressed").slice(3))
    np.testing.assert_array_equal(back, rows["compressed"][3:])
    colour = pairs.pairs_from_clean(data, "x.png", [10], color=True, size=32, stride=16)
    assert pairs.patches_from_arrow(pairs.to_arrow(colour).column("original")).shape[1:] == (3, 32, 32)


def test_small_image_and_size_mismatch_fail_clearly():
    with pytest.raises(ImageError, match="smaller than one 32x32 patch"):
        pairs.pairs_from_clean(png_bytes(smooth_image(20, 40)), "s.png", [10], False, 32, 16)
    with pytest.raises(ImageError, match="sizes differ"):
        pairs.pairs_from_files(png_bytes(smooth_image(64, 64)), png_bytes(smooth_image(64, 72)), "p.png", False, 32, 16)


def test_patch_shape_from_width():
    assert pairs.patch_shape(1024) == (1, 32, 32)
    assert pairs.patch_shape(3 * 1024) == (3, 32, 32)
    with pytest.raises(ValueError):
        pairs.patch_shape(1000)


def test_downscale_shrinks_clean_images_before_they_are_compressed():
    """--downscale 2: a photograph that was a JPEG once loses its old 8x8 grid in the targets."""
    data = png_bytes(smooth_image(96, 64, color=True))
    rows = pairs.pairs_from_clean(data, "x.png", [10], color=True, size=16, stride=16, shrink=2)
    assert rows["y"].max() + 16 <= 48 and rows["x"].max() + 16 <= 32  # patches of a 32x48 image
    assert pairs.downscale(smooth_image(9, 9), 1).shape == (9, 9)
    assert pairs.downscale(smooth_image(90, 60, color=True), 3).shape == (30, 20, 3)
