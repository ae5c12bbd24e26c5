"""Reading how a JPEG was compressed, and the policy that never makes an image worse. No Ray."""
import numpy as np
import pytest
import torch

from carray import jpeg
from carray.config import TrainConfig
from carray.errors import OptionError
from carray.model import build_model, init_from
from carray.images import jpeg_quality
from carray.quality import PASSED_NOT_JPEG, Policy
from carray.restore import self_ensemble
from support.images import png_bytes, smooth_image


def test_the_tables_give_back_the_quality_they_were_made_at():
    gray, rgb = smooth_image(32, 40), smooth_image(32, 40, color=True)
    for q in range(1, 101):
        assert jpeg_quality(jpeg.compress(gray, q)) == q
        assert jpeg_quality(jpeg.compress(rgb, q)) == q
    assert jpeg_quality(png_bytes(gray)) is None
    assert jpeg_quality(b"not an image") is None


def test_policy_restores_at_the_file_quality_passes_the_rest_and_obeys_the_override():
    policy = Policy(pass_through_from=96)
    assert policy.decide(30) == (30, "")
    assert policy.decide(96)[0] is None and "96" in policy.decide(96)[1]
    assert policy.decide(None) == (None, PASSED_NOT_JPEG)
    forced = Policy(override=20)
    assert forced.decide(None) == (20, "") and forced.decide(99) == (20, "")


def test_a_quality_conditioned_network_starts_as_the_network_it_extends():
    torch.manual_seed(0)
    plain = build_model("unshuffled-cnn", channels=1)
    for p in plain.parameters():
        p.data.normal_(0, 0.02)
    conditioned = build_model("unshuffled-cnn", channels=1, quality_input=True)
    fresh = init_from(conditioned, plain)
    assert fresh and all(name.startswith("film.") for name in fresh)
    x = torch.rand(2, 1, 24, 30)
    with torch.no_grad():
        for q in (5.0, 50.0, 100.0):
            assert torch.equal(conditioned(x, torch.full((2,), q)), plain(x))
        with pytest.raises(ValueError, match="quality"):
            conditioned(x)
    # Once trained, the quality changes the output.
    for p in conditioned.film.parameters():
        p.data.normal_(0, 0.1)
    with torch.no_grad():
        assert not torch.equal(conditioned(x, torch.tensor([10.0, 10.0])), conditioned(x, torch.tensor([90.0, 90.0])))


def test_options_an_architecture_does_not_take_are_refused():
    cfg = TrainConfig(data="d", output="o", arch="unshuffled-cnn", residual=False)
    with pytest.raises(OptionError, match="--residual has no effect on --arch unshuffled-cnn"):
        cfg.model_args(1)
    assert TrainConfig(data="d", output="o", arch="arcnn").model_args(1)["relu_output"] is False


def test_self_ensemble_inverts_each_transform_exactly():
    x = np.random.default_rng(0).random((13, 21, 3)).astype(np.float32)
    np.testing.assert_array_equal(self_ensemble(lambda a: a, x), x)
    # A function that sees the orientation (adds a ramp along rows) averages to a symmetric result.
    ramp = lambda a: a + np.arange(a.shape[0], dtype=np.float32)[:, None, None]  # noqa: E731
    out = self_ensemble(ramp, x)
    assert out.shape == x.shape and not np.allclose(out, ramp(x))
