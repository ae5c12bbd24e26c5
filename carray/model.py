"""The networks and their files. No Ray here.

Tensor contract: (n, c, h, w) float32 on [0, 1], c = 1 (gray Y) or 3 (RGB); any h, w >= 1.
Outputs have the input's shape and are not clamped (clamp when converting to pixels).
Every network takes ``forward(x, quality=None)``; ``quality`` is (n,) float, the IJG JPEG quality
1..100 of each input (carray/quality.py reads it from the file's tables), or (n, 3) *codings*: luma
quality, chroma quality and chroma subsampling code (carray.quality.SUBSAMPLING_CODES: 0 = 4:4:4,
1 = 4:2:2, 2 = 4:2:0). Networks built with ``quality_input=True`` (``takes_quality``) need it; those
built with ``coding_input=True`` as well see all three (given (n,) qualities, they assume libjpeg's
default coding: chroma at the luma quality, 4:2:0), and restore a default-coded JPEG exactly as the
quality network they were grown from (:class:`QualityFiLM`); the others ignore it.

Model files hold a ``state_dict`` plus JSON of the constructor arguments and of how the model was
trained, and load with ``torch.load(weights_only=True)``: no pickled code ever runs.
"""
from __future__ import annotations

import io
import json
import math
import pickle
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .architectures import ARCH_OPTIONS
from .errors import JobError

FORMAT = "carray-model"
FORMAT_VERSION = 1


class ModelFileError(JobError):
    """A file that is not a usable carray model; the message names it and says why."""


class _Conv(nn.Conv2d):
    """A 'same' convolution whose border padding is replicate/reflect (not zeros, which darkens
    borders) or zeros when asked, as the original project had it."""

    def __init__(self, cin: int, cout: int, kernel: int, padding_mode: str, stride: int = 1):
        super().__init__(cin, cout, kernel, stride=stride, padding=kernel // 2, padding_mode=padding_mode)


def _pad_to_even(x: torch.Tensor) -> torch.Tensor:
    """Replicate one row/column on odd sizes so a stride-2 grid covers the image (crop after).
    Always padding (by 0 on even sides) keeps the graph free of shape branches, so exported
    models take any size."""
    h, w = x.shape[-2:]
    return F.pad(x, (0, w % 2, 0, h % 2), mode="replicate")


class ARCNN(nn.Module):
    """ARCNN (Dong et al. 2015) as the original project defined it: 9x9 conv -> 64, 7x7 -> 32,
    1x1 -> 16, 5x5 -> channels, ReLU between layers (~106 k multiply-adds per pixel).

    The fixes its future-work list asked for, on by default:
      residual:     predict the artifact and add it to the input (faster, better training);
      relu_output:  False — a ReLU on the output clips negative corrections (the original had one);
      padding_mode: 'replicate' — zero padding darkens borders and leaves seams between patches.
    """

    arch = "arcnn"
    #: Training options (TrainConfig fields) this network's constructor takes, besides channels.
    options = ARCH_OPTIONS[arch]

    def __init__(self, channels: int = 1, residual: bool = True, relu_output: bool = False, padding_mode: str = "replicate"):
        super().__init__()
        self.args = dict(channels=channels, residual=residual, relu_output=relu_output, padding_mode=padding_mode)
        self.residual, self.relu_output = residual, relu_output
        self.features = nn.Sequential(
            _Conv(channels, 64, 9, padding_mode), nn.ReLU(inplace=True),
            _Conv(64, 32, 7, padding_mode), nn.ReLU(inplace=True),
            _Conv(32, 16, 1, padding_mode), nn.ReLU(inplace=True),
        )
        self.out = _Conv(16, channels, 5, padding_mode)

    #: Pixels of context each output pixel depends on, per side (4 + 3 + 0 + 2).
    receptive_radius = 9
    #: Inputs are processed on this grid (1: no striding).
    stride = 1

    takes_quality = False
    takes_coding = False

    def forward(self, x: torch.Tensor, quality: Optional[torch.Tensor] = None) -> torch.Tensor:
        y = self.out(self.features(x))
        if self.relu_output:
            y = F.relu(y)
        return x + y if self.residual else y


class FastARCNN(nn.Module):
    """Fast-ARCNN-style variant (Dong et al. 2015, 'Compression artifacts reduction by a deep
    convolutional network', sec. 4): a strided 9x9 first layer, a 1x1 shrink, 7x7 at half
    resolution, a 1x1 expand and a 9x9 transposed convolution back to full resolution.
    About 6.6x fewer multiply-adds than ARCNN; trade a little quality for throughput.
    """

    arch = "fast-arcnn"
    options = ARCH_OPTIONS[arch]
    receptive_radius = 24  # conservative: 4 + 2*3 + 2*(9//2) rounded up, plus the stride grid
    stride = 2

    def __init__(self, channels: int = 1, residual: bool = True, padding_mode: str = "replicate"):
        super().__init__()
        self.args = dict(channels=channels, residual=residual, padding_mode=padding_mode)
        self.residual = residual
        self.body = nn.Sequential(
            _Conv(channels, 64, 9, padding_mode, stride=2), nn.ReLU(inplace=True),
            _Conv(64, 32, 1, padding_mode), nn.ReLU(inplace=True),
            _Conv(32, 32, 7, padding_mode), nn.ReLU(inplace=True),
            _Conv(32, 64, 1, padding_mode), nn.ReLU(inplace=True),
        )
        self.up = nn.ConvTranspose2d(64, channels, 9, stride=2, padding=4, output_padding=1)

    takes_quality = False
    takes_coding = False

    def forward(self, x: torch.Tensor, quality: Optional[torch.Tensor] = None) -> torch.Tensor:
        h, w = x.shape[-2:]
        padded = _pad_to_even(x)
        y = self.up(self.body(padded))[..., :h, :w]
        return x + y if self.residual else y


class _ResidualBlock(nn.Module):
    """conv-ReLU-conv with a skip (EDSR: no normalisation). The second conv starts at zero, so a
    new block is the identity and a deep stack trains from the first step."""

    def __init__(self, width: int, padding_mode: str):
        super().__init__()
        self.a, self.b = _Conv(width, width, 3, padding_mode), _Conv(width, width, 3, padding_mode)
        nn.init.kaiming_normal_(self.a.weight, nonlinearity="relu")
        nn.init.zeros_(self.a.bias)
        nn.init.zeros_(self.b.weight)
        nn.init.zeros_(self.b.bias)

    def forward(self, x: torch.Tensor, film: Optional[torch.Tensor] = None) -> torch.Tensor:
        if not torch.is_grad_enabled():  # inference: in place, three fewer full-size tensors per block
            r = self.b(self.a(x).relu_())
            return (r if film is None else _modulate(r, film, in_place=True)).add_(x)
        r = self.b(F.relu(self.a(x)))
        return x + (r if film is None else _modulate(r, film))


def _relu(x: torch.Tensor, in_place: bool) -> torch.Tensor:
    return x.relu_() if in_place else F.relu(x)


def _modulate(features: torch.Tensor, film: torch.Tensor, in_place: bool = False) -> torch.Tensor:
    """FiLM: film (n, 2, c, 1, 1) = (scale offset, shift); zeros leave the features unchanged.
    `in_place`: overwrite `features` (inference, where nothing else reads them)."""
    if in_place:
        return features.mul_(1 + film[:, 0]).add_(film[:, 1])
    return features * (1 + film[:, 0]) + film[:, 1]


def _film_mlp(inputs: int, hidden: int, outputs: int) -> nn.Sequential:
    """The conditioning MLP; its last layer starts at zero, so the modulation it adds starts at none."""
    net = nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, outputs))
    nn.init.zeros_(net[-1].weight)
    nn.init.zeros_(net[-1].bias)
    return net


class QualityFiLM(nn.Module):
    """JPEG quality -> a per-channel scale and shift for each modulated layer (FiLM, Perez et al.
    2018; FBCNN conditions its decoder on quality the same way). The last layer starts at zero, so a
    network that gains this module starts out as the network it was: fine-tuning a model trained
    without quality begins exactly where that model was.

    With `coding`, a second MLP (`chroma`) adds what the chroma's coding changes: its output for the
    file's coding minus its output for libjpeg's default coding at the same quality (chroma table at
    the luma quality, 4:2:0), and exactly zero for a default-coded file. So a coding network restores
    every default-coded JPEG exactly as the quality network it was grown from, whatever the chroma
    MLP learns: a shared first layer (session 11) traded default-coded quality for the others."""

    #: Inputs: q and log q; the chroma MLP also chroma q's log and the chroma's horizontal and
    #: vertical halving (4:4:4 = 0 0, 4:2:2 = 1 0, 4:2:0 = 1 1).
    QUALITY_FEATURES, CHROMA_FEATURES = 2, 5

    def __init__(self, layers: int, width: int, hidden: int = 64, coding: bool = False):
        super().__init__()
        self.layers, self.width = layers, width
        self.net = _film_mlp(self.QUALITY_FEATURES, hidden, layers * 2 * width)
        self.chroma = _film_mlp(self.CHROMA_FEATURES, hidden, layers * 2 * width) if coding else None

    def forward(self, quality: torch.Tensor) -> torch.Tensor:
        """quality (n,) in 1..100, or codings (n, 3) (module docstring) -> (n, layers, 2, width, 1, 1)."""
        coding = as_codings(quality)
        q = coding[:, :2].float().clamp(1, 100) / 100
        # q and log q: the artifacts change fastest at low qualities, where 1/q scales the tables.
        luma = torch.cat([q[:, :1], torch.log(q[:, :1])], dim=1)
        film = self.net(luma)
        if self.chroma is not None:
            sub = coding[:, 2:3]
            coded = torch.cat([luma, torch.log(q[:, 1:]), (sub >= 1).float(), (sub >= 2).float()], dim=1)
            default = torch.cat([luma, luma[:, 1:], torch.ones_like(sub), torch.ones_like(sub)], dim=1)
            departs = ((q[:, 1:] != q[:, :1]) | (sub != 2)).float()  # the mask makes a default coding's zero exact
            film = film + (self.chroma(coded) - self.chroma(default)) * departs
        return film.reshape(-1, self.layers, 2, self.width, 1, 1)


def conditioning(values: list, device: Optional[torch.device] = None) -> Optional[torch.Tensor]:
    """Per-image qualities (numbers) or codings ((luma quality, chroma quality, subsampling code)
    tuples, :func:`carray.quality.coding`) -> the networks' `quality` input, (n,) or (n, 3) float32
    on `device`; None when there is none (networks that are not conditioned)."""
    if not values or values[0] is None:
        return None
    return torch.tensor([v if isinstance(v, (tuple, list)) else float(v) for v in values], dtype=torch.float32, device=device)


def as_codings(quality: torch.Tensor) -> torch.Tensor:
    """(n,) qualities or (n, 3) codings -> (n, 3) codings; a missing chroma quality (below 1, as in
    gray patches) is the luma's, a missing subsampling (below 0) 4:2:0."""
    if quality.ndim == 1:
        q = quality.float()
        return torch.stack([q, q, torch.full_like(q, 2.0)], dim=1)  # 2: carray.quality.DEFAULT_SUBSAMPLING (TorchScript takes no globals)
    coding = quality.float()
    chroma = torch.where(coding[:, 1] >= 1, coding[:, 1], coding[:, 0])
    sub = torch.where(coding[:, 2] >= 0, coding[:, 2], torch.full_like(coding[:, 2], 2.0))
    return torch.stack([coding[:, 0], chroma, sub], dim=1)


class UnshuffledCNN(nn.Module):
    """A 3x3 residual-block network (EDSR-style, no normalisation) run on the image folded 2x2 into
    channels (pixel-unshuffle, as FFDNet does), predicting the artifact residual.

    Folding quarters the pixels each layer sees, so for less than ARCNN's cost (93 k multiply-adds
    per output pixel vs 106 k) the network gets 12 layers of width 64 and a 51-pixel receptive
    field instead of 4 layers and 19 pixels. The 2x2 grid divides JPEG's 8x8 blocks, so block edges
    stay at fixed positions of the folded grid. The output layer starts at zero: training starts
    from the identity. Plain (block-less) stacks of this depth died under Adam here; see
    docs/training.md.
    """

    arch = "unshuffled-cnn"
    options = ARCH_OPTIONS[arch]
    stride = 2

    def __init__(self, channels: int = 1, blocks: int = 5, width: int = 64, padding_mode: str = "replicate", quality_input: bool = False,
                 coding_input: bool = False):
        super().__init__()
        self.args = dict(channels=channels, blocks=blocks, width=width, padding_mode=padding_mode)
        quality_input = quality_input or coding_input
        if quality_input:  # only when on, so files written before conditioning existed still load
            self.args["quality_input"] = True
        if coding_input:
            self.args["coding_input"] = True
        self.takes_quality, self.takes_coding = quality_input, coding_input
        # One FiLM per residual block plus one on the features the output layer reads.
        self.film = QualityFiLM(blocks + 1, width, coding=coding_input) if quality_input else None
        folded = channels * 4
        self.inp = _Conv(folded, width, 3, padding_mode)
        self.blocks = nn.Sequential(*[_ResidualBlock(width, padding_mode) for _ in range(blocks)])
        self.out = _Conv(width, folded, 3, padding_mode)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        # 2 + 2 * blocks 3x3 layers, each one folded pixel (two image pixels) of context per side,
        # plus the folding cell itself.
        self.receptive_radius = 2 * (2 + 2 * blocks) + 1

    def forward(self, x: torch.Tensor, quality: Optional[torch.Tensor] = None) -> torch.Tensor:
        h, w = x.shape[-2:]
        inference = not torch.is_grad_enabled()  # then in place: activations of a large tile are tens of MB each
        features = _relu(self.inp(F.pixel_unshuffle(_pad_to_even(x), 2)), inference)
        if self.film is None:
            features = _relu(self.blocks(features), inference)
        else:
            if quality is None:
                raise ValueError("this network is conditioned on JPEG quality: pass quality=(n,) values 1..100")
            film = self.film(quality.to(x.device))
            for i, block in enumerate(self.blocks):
                features = block(features, film[:, i])
            features = _modulate(_relu(features, inference), film[:, -1], in_place=inference)
        return x + F.pixel_shuffle(self.out(features), 2)[..., :h, :w]


#: The registry: adding a network is one class (with arch, options, receptive_radius, stride,
#: takes_quality) and one entry here; the train job's --arch choices and arguments follow from it.
ARCHITECTURES = {cls.arch: cls for cls in (ARCNN, FastARCNN, UnshuffledCNN)}


def build_model(arch: str = "arcnn", **args) -> nn.Module:
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[arch](**args)


def multiply_adds_per_pixel(model: nn.Module, size: int = 64) -> float:
    """Multiply-adds per output pixel, counted on a forward pass (convolutions only)."""
    total = 0

    def count(module, inputs, output):
        nonlocal total
        if isinstance(module, nn.ConvTranspose2d):
            total += inputs[0].numel() * module.out_channels * math.prod(module.kernel_size) // module.groups
        elif isinstance(module, nn.Conv2d):
            total += output.numel() * module.in_channels * math.prod(module.kernel_size) // module.groups

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    channels = model.args["channels"]
    with torch.no_grad():
        model(torch.zeros(1, channels, size, size), torch.full((1,), 50.0))
    for hook in hooks:
        hook.remove()
    return total / (size * size)


def init_from(model: nn.Module, source: nn.Module) -> list[str]:
    """Copy every weight of `source` whose name and shape match into `model` (fine-tuning, or a
    model that gains an input such as the quality FiLM). Returns the names of `model`'s weights
    that kept their fresh initialisation; raises ValueError when nothing matches."""
    mine, theirs = model.state_dict(), _grown_state(model, source)
    matched = {k: v for k, v in theirs.items() if k in mine and mine[k].shape == v.shape}
    if not matched:
        raise ValueError(f"no weight of the {source.arch} model fits the {model.arch} network ({model.args})")
    mine.update(matched)
    model.load_state_dict(mine)
    return sorted(set(mine) - set(matched))


def _grown_state(model: nn.Module, source: nn.Module) -> dict:
    """`source`'s weights, laid out for `model` when `model` is the same unshuffled-cnn with more
    residual blocks: the extra blocks come after the source's and start as the identity (their
    second convolution is zero), and the FiLM MLPs' output rows are moved so each old layer
    keeps its own scale and shift (the new blocks' rows are zero). Step 0 of the grown network is
    then exactly the source network. Anything else: the source's weights as they are."""
    theirs = source.state_dict()
    if not (isinstance(model, UnshuffledCNN) and isinstance(source, UnshuffledCNN)):
        return theirs
    old, new = len(source.blocks), len(model.blocks)
    if new <= old or model.args["width"] != source.args["width"] or model.film is None or source.film is None:
        return theirs
    width = source.args["width"]
    grown = dict(theirs)
    last = len(model.film.net) - 1
    for key in (f"film.{mlp}.{last}.{part}" for mlp in ("net", "chroma") for part in ("weight", "bias")):
        if key in theirs:
            rows = theirs[key].reshape(old + 1, 2 * width, *theirs[key].shape[1:])
            target = torch.zeros((new + 1, *rows.shape[1:]), dtype=rows.dtype)
            target[:old], target[new] = rows[:old], rows[old]  # the last row modulates the output features
            grown[key] = target.reshape(-1, *rows.shape[2:])
    return grown


# --- files ---


def model_bytes(model: nn.Module, training: Optional[dict] = None) -> bytes:
    """Serialize: format tag, architecture, JSON of the arguments and of the training, weights."""
    payload = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "arch": model.arch,
        "args_json": json.dumps(model.args, sort_keys=True),
        "training_json": json.dumps(training or {}, sort_keys=True, default=str),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    return buf.getvalue()


def load_model_bytes(data: bytes, name: str = "model") -> tuple[nn.Module, dict]:
    """Deserialize with weights_only=True. Returns (model in eval mode, training info).

    Raises ModelFileError naming `name` for anything that is not a carray model.
    """
    if not data.startswith(b"PK\x03\x04"):  # torch.save writes a zip archive
        raise ModelFileError(f"{name}: not a PyTorch/carray model file (not a zip archive)")
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ModelFileError(f"{name}: refused — it holds objects other than weights ({str(exc).splitlines()[0]})") from None
    except Exception as exc:  # not a zip, truncated, ...
        raise ModelFileError(f"{name}: not a PyTorch/carray model file ({type(exc).__name__}: {exc})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelFileError(f"{name}: not a carray model file (no '{FORMAT}' format tag)")
    if payload.get("version", 0) > FORMAT_VERSION:
        raise ModelFileError(f"{name}: written by a newer carray (format {payload['version']})")
    try:
        model = build_model(payload["arch"], **json.loads(payload["args_json"]))
        model.load_state_dict(payload["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise ModelFileError(f"{name}: damaged carray model file ({exc})") from None
    return model.eval(), json.loads(payload.get("training_json", "{}"))


def save_model(model: nn.Module, location: str, training: Optional[dict] = None, s3=None) -> None:
    """Write a model file to a local path or s3:// URI (atomically). Reading: carray/modelfiles.py."""
    from . import storage

    fs, path = storage.resolve(location, s3)
    storage.write_bytes_atomic(fs, path, model_bytes(model, training))


class Autocast(nn.Module):
    """A network run under CUDA autocast (fp16 or bf16 convolutions), same interface: what
    --precision fp16/bf16 restores with on GPUs."""

    def __init__(self, model: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.model, self.dtype = model, dtype
        self.args, self.receptive_radius, self.takes_quality = model.args, model.receptive_radius, model.takes_quality
        self.takes_coding = model.takes_coding

    def forward(self, x: torch.Tensor, quality: Optional[torch.Tensor] = None) -> torch.Tensor:
        with torch.autocast("cuda", dtype=self.dtype):
            return self.model(x, quality).float()
