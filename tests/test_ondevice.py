"""Restoring on the network's device (carray/ondevice.py) against the host's float path it replaces."""
import numpy as np
import pytest
import torch

from carray.model import build_model
from carray.ondevice import restore_batch_on_device, restore_tiled_on_device
from carray.restore import network_planes, prepare_model, restore_in_batches, restore_pixels, restore_planes, tile_margin

CPU = torch.device("cpu")


def host_path(model, pixels, tile, quality=None):
    """What the actors did before: float32 planes on the host, numpy tiling, numpy rounding."""
    planes, back = network_planes(model, pixels)
    return back(restore_planes(model, planes, tile, CPU, quality))


@pytest.fixture(scope="module")
def networks():
    torch.manual_seed(0)
    return {
        "gray": prepare_model(build_model("fast-arcnn"), CPU),
        "color": prepare_model(build_model("unshuffled-cnn", channels=3, blocks=1, width=16, quality_input=True), CPU),
    }


@pytest.mark.parametrize("kind", ["gray", "color"])
@pytest.mark.parametrize("shape", [(75, 101), (75, 101, 3)])
def test_on_device_equals_the_host_path_within_one_grey_level(networks, kind, shape):
    model = networks[kind]
    quality = 30 if kind == "color" else None
    pixels = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    expected = host_path(model, pixels, tile=24, quality=quality)
    tiled = restore_tiled_on_device(model, pixels, CPU, quality, tile=24, margin=tile_margin(model), batch=4)
    assert tiled.shape == pixels.shape and tiled.dtype == np.uint8
    assert np.abs(tiled.astype(int) - expected).max() <= 1
    assert (tiled == expected).mean() > 0.999
    assert np.array_equal(restore_pixels(model, pixels, tile=24, quality=quality), tiled)  # what the jobs call
    whole = host_path(model, pixels, tile=512, quality=quality)
    batched = restore_batch_on_device(model, [pixels, pixels[::-1].copy()], CPU, [quality, quality])
    assert np.abs(batched[0].astype(int) - whole).max() <= 1
    assert np.abs(batched[1].astype(int) - host_path(model, pixels[::-1].copy(), 512, quality)).max() <= 1
    # a tile's margin covers the receptive field: tiled on the device equals whole on the device
    assert np.abs(tiled.astype(int) - batched[0]).max() <= 1


@pytest.mark.parametrize("shape", [(75, 101), (75, 101, 3)])
def test_restored_pixels_go_into_the_actors_kept_buffers(networks, shape):
    """On the CPU a restoring actor's output comes from its PixelBuffers: the same pixels, in a
    buffer that is handed out again once the restored image is let go, and never while it is held."""
    from carray.infer.memory import PixelBuffers

    buffers = PixelBuffers()
    pixels = np.random.default_rng(3).integers(0, 256, shape, dtype=np.uint8)
    restored = restore_pixels(networks["color"], pixels, tile=24, quality=30, allocate=buffers.array)
    assert np.array_equal(restored, restore_pixels(networks["color"], pixels, tile=24, quality=30))
    assert buffers.held_bytes() == pixels.size
    address, kept = restored.ctypes.data, restored.copy()
    assert buffers.array(shape).ctypes.data != address and np.array_equal(restored, kept), "a held output was handed out"
    del restored
    assert buffers.array(shape).ctypes.data == address


def test_batches_stack_into_kept_buffers_made_from_torch_memory_as_a_gpu_actors_pinned_ones(networks):
    """A GPU actor's kept buffers are numpy arrays over torch tensors' memory (pinned_host_buffer:
    pinned there; plain torch memory here, the same objects): a view of one still marks it in use,
    and a batch stacked into one restores to the pixels a batch stacked anew gives, the buffer
    free again once the call returns."""
    from carray.infer.memory import PixelBuffers

    buffers = PixelBuffers(new_buffer=lambda size: torch.empty(size, dtype=torch.uint8).numpy())
    held = buffers.array((4, 5, 3))
    view = held[1:, ::2]
    address = held.ctypes.data
    del held
    assert buffers.array((4, 5, 3)).ctypes.data != address, "a buffer a view refers to was handed out"
    del view
    assert buffers.array((4, 5, 3)).ctypes.data == address
    rng = np.random.default_rng(4)
    items = [(networks["color"], rng.integers(0, 256, (40, 48, 3), dtype=np.uint8), 20) for _ in range(3)]
    stacked = restore_in_batches(items, CPU, batch=3, allocate=buffers.array)
    assert all(np.array_equal(a, b) for a, b in zip(stacked, restore_in_batches(items, CPU, batch=3)))
    before = buffers.held_bytes()
    assert buffers.array((3, 40, 48, 3)).ctypes.data in {b.ctypes.data for b in buffers._buffers}
    assert buffers.held_bytes() == before, "the batch's buffer was not free again after the call"
    from carray.ondevice import pinned_host_buffer  # where pinned memory is refused (no CUDA here): pageable, of the size

    fallback = pinned_host_buffer(64)
    assert fallback.dtype == np.uint8 and fallback.size == 64 and fallback.flags.writeable


@pytest.mark.parametrize("kind", ["gray", "color"])
@pytest.mark.parametrize("shape", [(75, 101), (75, 101, 3)])
def test_the_x8_ensemble_restores_a_window_at_a_time_as_the_whole_image_does(networks, kind, shape):
    """--tta: each tile window's eight transforms restore its core as the whole image's do (windows on
    the 8-pixel grid, margins past the receptive field), without float planes of the whole image."""
    import tracemalloc

    model = networks[kind]
    quality = 30 if kind == "color" else None
    pixels = np.random.default_rng(5).integers(0, 256, shape, dtype=np.uint8)

    def whole(image):
        planes, back = network_planes(model, image)
        return back(restore_planes(model, planes, 512, CPU, quality, tta=True))

    windows = restore_pixels(model, pixels, tile=24, quality=quality, tta=True)
    expected = whole(pixels)
    assert windows.shape == pixels.shape and np.abs(windows.astype(int) - expected).max() <= 1
    assert (windows == expected).mean() > 0.999
    if kind == "gray":  # (the colour test network, freshly initialised, is close to the identity: its 8 transforms agree)
        assert not np.array_equal(windows, restore_pixels(model, pixels, tile=24, quality=quality)), "no ensemble ran"
    large = np.random.default_rng(6).integers(0, 256, (240, 320) + shape[2:], dtype=np.uint8)
    peaks = []
    for restore in (whole, lambda image: restore_pixels(model, image, tile=32, quality=quality, tta=True)):
        tracemalloc.start()
        restore(large)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[1] < large.size + 2_000_000 < peaks[0], peaks


def test_batches_group_by_model_and_shape(networks):
    rng = np.random.default_rng(2)
    items = [(networks["gray"], rng.integers(0, 256, (40, 48), dtype=np.uint8), None),
             (networks["color"], rng.integers(0, 256, (40, 48, 3), dtype=np.uint8), 20),
             (networks["gray"], rng.integers(0, 256, (32, 48), dtype=np.uint8), None),
             (networks["gray"], rng.integers(0, 256, (40, 48), dtype=np.uint8), None)]
    out = restore_in_batches(items, CPU, batch=8)
    for (model, pixels, quality), restored in zip(items, out):
        assert np.abs(restored.astype(int) - host_path(model, pixels, 512, quality)).max() <= 1


def test_floats_become_uint8_rounded_to_nearest_and_clamped():
    """_to_uint8's one-pass rounding (adding 1.5 * 2**23): every grey level's own float comes back
    exactly, halves go to even as round() sends them, the out-of-range clamp, and arbitrary floats land
    on the nearest level (the product rounded once, so within one level of rounding it twice)."""
    from carray.ondevice import _to_uint8

    levels = torch.arange(256, dtype=torch.float32)
    assert torch.equal(_to_uint8(levels / 255, 255), levels.to(torch.uint8))
    assert _to_uint8(torch.tensor([0.5, 1.5, 2.5, 254.5, -3.0, 300.0, 255.49])).tolist() == [0, 2, 2, 254, 0, 255, 255]
    x = torch.rand(100_000, generator=torch.Generator().manual_seed(0)) * 1.4 - 0.2
    expected = np.clip(np.rint(x.double().numpy() * 255), 0, 255)
    into = torch.empty(x.shape, dtype=torch.uint8)
    got = _to_uint8(x.clone(), 255, into)
    assert got is into and np.abs(into.numpy().astype(float) - expected).max() <= 1
    assert (into.numpy() != expected).mean() < 1e-3


def test_unit_floats_are_the_levels_divided_by_255_in_the_inputs_layout():
    """_to_unit_floats (convert, then divide in place) gives exactly the floats of `x / 255` for every
    level, gray and RGB, and keeps an RGB image's (h, w, 3) layout, so the planes the network sees are
    channels_last views (no copy before the forward)."""
    from carray.ondevice import _to_unit_floats, to_planes

    levels = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(_to_unit_floats(levels), levels / 255)
    rgb = torch.randint(0, 256, (2, 40, 24, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    window = rgb[:, 3:35, 5:21]  # a window cut from a larger image: not contiguous
    colour = build_model("fast-arcnn", channels=3)
    planes = to_planes(colour, window)
    assert torch.equal(planes, window.permute(0, 3, 1, 2) / 255)
    assert planes.is_contiguous(memory_format=torch.channels_last)
    gray = build_model("fast-arcnn", channels=1)
    assert torch.equal(to_planes(gray, rgb[..., 0]), rgb[..., 0][:, None] / 255)
