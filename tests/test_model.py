import io

import numpy as np
import pytest
import torch

from carray.model import ARCNN, ModelFileError, build_model, load_model_bytes, model_bytes, multiply_adds_per_pixel
from carray.restore import restore_in_batches, restore_pixels, restore_planes, run_model


def test_arcnn_is_the_original_design_with_the_fixes_as_arguments():
    original = ARCNN(residual=False, relu_output=True, padding_mode="zeros")
    convs = [m for m in original.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size[0]) for c in convs] == [(1, 64, 9), (64, 32, 7), (32, 16, 1), (16, 1, 5)]
    assert multiply_adds_per_pixel(original) == 9 * 9 * 64 + 7 * 7 * 64 * 32 + 32 * 16 + 5 * 5 * 16
    assert original(torch.rand(1, 1, 8, 8) - 2).min() >= 0  # the original's output ReLU
    colour = build_model("arcnn", channels=3)
    assert colour(torch.rand(2, 3, 9, 11)).shape == (2, 3, 9, 11)


def test_residual_replicate_default_keeps_a_flat_image_flat_at_borders():
    model = ARCNN()  # residual, replicate padding
    torch.nn.init.zeros_(model.out.weight)
    torch.nn.init.zeros_(model.out.bias)
    x = torch.full((1, 1, 16, 16), 0.5)
    assert torch.equal(model(x), x)  # identity at start: nothing darkens the border


def test_fast_variant_is_cheaper_and_handles_odd_sizes():
    fast = build_model("fast-arcnn")
    assert multiply_adds_per_pixel(fast) < multiply_adds_per_pixel(ARCNN()) / 5
    for h, w in [(1, 1), (7, 5), (33, 18)]:
        assert fast(torch.rand(1, 1, h, w)).shape == (1, 1, h, w)


def test_unshuffled_cnn_stays_within_arcnn_cost_and_starts_as_identity():
    model = build_model("unshuffled-cnn")
    assert multiply_adds_per_pixel(model) <= multiply_adds_per_pixel(ARCNN())
    for h, w in [(1, 1), (7, 5), (33, 18)]:
        x = torch.rand(1, 1, h, w)
        assert torch.equal(model(x), x)  # zero last layer: the identity until trained
    assert build_model("unshuffled-cnn", channels=3)(torch.rand(2, 3, 9, 11)).shape == (2, 3, 9, 11)


@pytest.mark.parametrize("arch", ["arcnn", "fast-arcnn", "unshuffled-cnn"])
def test_tiled_restoration_equals_whole_image(arch):
    torch.manual_seed(0)
    model = build_model(arch).eval()
    for p in model.parameters():
        p.data.normal_(0, 0.05)
    img = np.random.default_rng(0).random((150, 410, 1)).astype(np.float32)  # several tiles wide
    whole = run_model(model, img, torch.device("cpu"))
    tiled = restore_planes(model, img, tile=64)
    assert np.abs(whole - tiled).max() <= 1e-4


def test_restore_keeps_mode_and_size():
    gray, colour = build_model("arcnn").eval(), build_model("arcnn", channels=3).eval()
    rgb = np.random.default_rng(1).integers(0, 256, (13, 17, 3), dtype=np.uint8)
    assert restore_pixels(colour, rgb).shape == (13, 17, 3)
    assert restore_pixels(gray, rgb).shape == (13, 17, 3)  # Y restored, CbCr kept
    assert restore_pixels(colour, rgb[..., 0]).shape == (13, 17)
    assert restore_pixels(gray, np.zeros((1, 1), np.uint8)).shape == (1, 1)


def test_batched_restoration_equals_one_at_a_time():
    """restore_in_batches: items of several shapes, modes, models and qualities, batched by (model,
    shape) up to the batch size, come back in order, each as restore_pixels would make it."""
    torch.manual_seed(0)
    gray, colour = build_model("unshuffled-cnn").eval(), build_model("unshuffled-cnn", channels=3).eval()
    for model in (gray, colour):
        for p in model.parameters():
            p.data.normal_(0, 0.05)
    rng = np.random.default_rng(2)
    items = [
        (gray, rng.integers(0, 256, (40, 56), dtype=np.uint8), None),
        (colour, rng.integers(0, 256, (40, 56, 3), dtype=np.uint8), None),
        (gray, rng.integers(0, 256, (40, 56), dtype=np.uint8), None),
        (gray, rng.integers(0, 256, (40, 56, 3), dtype=np.uint8), None),  # gray model, colour image: Y
        (gray, rng.integers(0, 256, (33, 18), dtype=np.uint8), None),
        (gray, rng.integers(0, 256, (40, 56), dtype=np.uint8), None),
    ]
    for batch in (1, 2, 8):
        got = restore_in_batches(items, torch.device("cpu"), batch)
        for (model, pixels, q), out in zip(items, got):
            expected = restore_pixels(model, pixels, tile=64)
            assert out.shape == pixels.shape and np.abs(out.astype(int) - expected.astype(int)).max() <= 1
    conditioned = build_model("unshuffled-cnn", quality_input=True).eval()
    for p in conditioned.parameters():
        p.data.normal_(0, 0.05)
    image = rng.integers(0, 256, (24, 24), dtype=np.uint8)
    low, high = restore_in_batches([(conditioned, image, 10), (conditioned, image, 90)], torch.device("cpu"), 2)
    assert np.array_equal(low, restore_pixels(conditioned, image, quality=10))  # each its own quality
    assert np.array_equal(high, restore_pixels(conditioned, image, quality=90)) and not np.array_equal(low, high)


def test_model_file_roundtrip_and_refusals(tmp_path):
    model = build_model("fast-arcnn", channels=3)
    data = model_bytes(model, {"steps": 5})
    loaded, training = load_model_bytes(data, "m.pt")
    assert training == {"steps": 5} and loaded.args == model.args
    x = torch.rand(1, 3, 10, 10)
    assert torch.equal(loaded(x), model.eval()(x))

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    buf = io.BytesIO()
    torch.save({"format": "carray-model", "evil": Evil()}, buf)
    with pytest.raises(ModelFileError, match="evil.pt: refused"):
        load_model_bytes(buf.getvalue(), "evil.pt")
    buf = io.BytesIO()
    torch.save({"weights": torch.zeros(3)}, buf)
    with pytest.raises(ModelFileError, match="not a carray model"):
        load_model_bytes(buf.getvalue(), "foreign.pt")
    with pytest.raises(ModelFileError, match="not a PyTorch"):
        load_model_bytes(b"hello", "text.pt")
    with pytest.raises(ModelFileError, match="not a PyTorch"):
        load_model_bytes(data[: len(data) // 2], "truncated.pt")


def test_gpu_bench_runs_on_the_cpu_path_without_ray():
    """bench/gpu.py must run where only PyTorch is installed (the lent GPU machines have no Ray)."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    code = (
        "import runpy, sys; sys.argv = ['gpu.py', '--batches', '1', '--tile', '64', '--seconds', '0.2', '--photo-mp', '0.1'];"
        "runpy.run_path('bench/gpu.py', run_name='__main__'); print('ray imported:', 'ray' in sys.modules)"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "fp32" in run.stdout and run.stdout.strip().endswith("ray imported: False")


def test_a_grown_network_starts_as_the_network_it_grew_from():
    """init_from into an unshuffled-cnn with more residual blocks (--init-from with a larger --blocks):
    the new blocks start as the identity and the quality FiLM keeps each old layer's modulation, so
    the grown network's output equals the source's at every quality."""
    import torch

    from carray.model import build_model, init_from

    torch.manual_seed(0)
    source = build_model("unshuffled-cnn", channels=3, blocks=2, width=8, quality_input=True)
    for p in source.parameters():
        p.data.normal_(0, 0.05)
    grown = build_model("unshuffled-cnn", channels=3, blocks=4, width=8, quality_input=True)
    fresh = init_from(grown, source)
    assert all(name.startswith(("blocks.2.", "blocks.3.")) for name in fresh)
    x, q = torch.rand(3, 3, 20, 28), torch.tensor([10.0, 50.0, 90.0])
    with torch.no_grad():
        assert torch.allclose(grown.eval()(x, q), source.eval()(x, q), atol=1e-6)
    # A network that reads the chroma coding grows the same way: its chroma MLP's rows move too.
    source = build_model("unshuffled-cnn", channels=3, blocks=2, width=8, coding_input=True)
    for p in source.parameters():
        p.data.normal_(0, 0.05)
    grown = build_model("unshuffled-cnn", channels=3, blocks=4, width=8, coding_input=True)
    assert all(name.startswith(("blocks.2.", "blocks.3.")) for name in init_from(grown, source))
    codings = torch.tensor([[10.0, 30, 0], [50, 50, 2], [90, 70, 1]])
    with torch.no_grad():
        assert torch.allclose(grown.eval()(x, codings), source.eval()(x, codings), atol=1e-6)
