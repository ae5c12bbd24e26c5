"""One frozen dataclass per job: the single source of truth for its options.

Each field's metadata carries its command-line help, so `--help`, the defaults and the code can
never disagree: :func:`build_parser` turns a config class into an argparse parser and
:func:`parse` turns argv back into the config.
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Optional

from .images import DEFAULT_MAX_PIXELS
from .storage import S3Options


def option(default=dataclasses.MISSING, help: str = "", **argparse_kwargs):
    """A config field with its command-line help (and extra argparse settings)."""
    return field(default=default, metadata={"help": help, "argparse": argparse_kwargs})


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def build_parser(cls, description: str, prog: Optional[str] = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    for f in dataclasses.fields(cls):
        kwargs = dict(f.metadata.get("argparse", {}))
        kwargs["help"] = f.metadata.get("help", "")
        if f.default is dataclasses.MISSING:
            kwargs["required"] = True
        else:
            kwargs["default"] = f.default
        if f.type in ("bool", bool):
            kwargs.setdefault("action", argparse.BooleanOptionalAction)
        elif "type" not in kwargs and f.type in ("int", "float", "Optional[int]", "Optional[float]"):
            kwargs["type"] = int if "int" in str(f.type) else float
        parser.add_argument(_flag(f.name), dest=f.name, **kwargs)
    return parser


def parse(cls, argv, description: str, prog: Optional[str] = None):
    args = build_parser(cls, description, prog).parse_args(argv)
    return cls(**vars(args))


# --- options every job that touches storage or Ray shares ---

_ENDPOINT_HELP = (
    "S3-compatible endpoint for s3:// locations (e.g. http://127.0.0.1:8333); defaults to "
    "AWS_ENDPOINT_URL. Credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the "
    "instance role, and reach every Ray worker with the filesystem object."
)
_ADDRESS_HELP = (
    "Ray cluster to use: host:port, 'local' for a private one; default RAY_ADDRESS, else the "
    "cluster `ray start` recorded, else a private local one."
)


def parse_qualities(values: list[str]) -> tuple[tuple[int, ...], tuple[tuple[int, int], ...]]:
    """['10', '20', '30-90'] -> ((10, 20), ((30, 90),)): fixed qualities and ranges."""
    fixed, ranges = [], []
    for value in values:
        for part in str(value).split(","):
            part = part.strip()
            if not part:
                continue
            lo, sep, hi = part.partition("-")
            bounds = (int(lo), int(hi)) if sep else (int(lo), int(lo))
            if not (1 <= bounds[0] <= bounds[1] <= 100):
                raise ValueError(f"JPEG quality {part!r} is not within 1..100 (or A-B with A <= B)")
            (ranges.append(bounds) if sep else fixed.append(bounds[0]))
    return tuple(fixed), tuple(ranges)


def parse_split(text: str) -> tuple[float, float, float]:
    """'70/20/10' -> (0.7, 0.2, 0.1)."""
    parts = [float(p) for p in text.replace(",", "/").split("/")]
    if len(parts) != 3 or any(p < 0 for p in parts) or sum(parts) <= 0:
        raise ValueError(f"--split wants three non-negative numbers like 70/20/10, got {text!r}")
    total = sum(parts)
    return tuple(p / total for p in parts)  # type: ignore[return-value]


@dataclass(frozen=True)
class PrepConfig:
    input: str = option(help="Folder or s3://bucket/prefix of clean images (or of pairs with --pairs).")
    output: str = option(help="Folder or s3://bucket/prefix for train/ and val/ Parquet, test.txt and _prep.json.")
    quality: tuple = option(
        ("10",),
        help="JPEG qualities to make: values (10 20 30 40) and/or ranges (10-90). Every image is "
        "compressed at each value, and at --range-samples qualities drawn from each range.",
        nargs="+",
    )
    range_samples: int = option(1, help="Qualities drawn per image from each --quality range (seeded by the image's path).")
    pairs: bool = option(
        False,
        help="Inputs are pairs: name.bmp|png|tif beside name.jpg; the JPEGs are used as they are.",
    )
    color: bool = option(False, help="Keep RGB patches (3 channels); default is the gray Y channel (MATLAB BT.601).")
    patch_size: int = option(32, help="Patch side in pixels (32 = an 8x8 JPEG block with its neighbours).")
    stride: int = option(16, help="Step between patches in pixels.")
    split: str = option("70/20/10", help="Train/val/test shares by image, decided by a hash of each image's relative path.")
    seed: int = option(0, help="Seed of the split and of drawn qualities; same seed, same split.")
    max_pixels: int = option(DEFAULT_MAX_PIXELS, help="Refuse images with more pixels than this (decompression bombs).")
    endpoint_url: Optional[str] = option(None, help=_ENDPOINT_HELP)
    address: Optional[str] = option(None, help=_ADDRESS_HELP)

    def s3(self) -> S3Options:
        return S3Options(endpoint_url=self.endpoint_url)


@dataclass(frozen=True)
class TrainConfig:
    data: str = option(help="The prep output (folder or s3://...) holding train/ and val/ Parquet.")
    output: str = option(help="Run folder (or s3://...): model.pt, metrics.csv, loss.png, and NAME/ with Ray Train's checkpoints.")
    name: str = option("train", help="Run name. Re-running with the same --output and --name resumes from the last checkpoint.")
    arch: str = option(
        "arcnn",
        help="Network: 'arcnn' (106 k multiply-adds/pixel), 'fast-arcnn' (16 k, faster, a little worse) or "
        "'unshuffled-cnn' (3x3 residual blocks on the 2x2-folded image: 93 k at the default size, deeper, needs --lr 3e-4).",
        choices=("arcnn", "fast-arcnn", "unshuffled-cnn"),
    )
    blocks: int = option(5, help="unshuffled-cnn only: residual blocks (two 3x3 convolutions each).")
    width: int = option(64, help="unshuffled-cnn only: channels per layer.")
    residual: bool = option(True, help="Predict the artifact and add it to the input (the original predicted the image).")
    padding_mode: str = option("replicate", help="Border padding of the convolutions; 'zeros' as the original (darkens borders).", choices=("replicate", "reflect", "zeros"))
    relu_output: bool = option(False, help="ARCNN only: a ReLU on the output layer, as the original had.")
    workers: int = option(1, help="Data-parallel training workers (DDP: NCCL on GPUs, gloo on CPUs).")
    gpu: Optional[bool] = option(None, help="Train on GPUs; default: when the cluster has any.", action=argparse.BooleanOptionalAction)
    threads: int = option(0, help="Torch threads per CPU worker; 0 = the cluster's CPUs divided among the workers.")
    steps: int = option(2000, help="Optimizer steps in all (a resumed run continues up to this).")
    batch_size: int = option(64, help="Patches per step per worker (the original used 1000 on a GPU).")
    lr: float = option(1e-3, help="Adam learning rate (the original's 1e-3).")
    lr_schedule: str = option("constant", help="'constant', 'cosine' (to 1%% of --lr at --steps) or 'step' (x0.1 at 60%% and 85%%).", choices=("constant", "cosine", "step"))
    augment: bool = option(True, help="Random flips and 90-degree rotations of each batch.")
    val_every: int = option(10, help="Validate every N steps (the original: every 10 batches).")
    val_patches: int = option(1024, help="Validation patches, read once and kept in memory by rank 0 (0: no validation).")
    checkpoint_every: int = option(100, help="Save a checkpoint (model, optimizer, step, history) every N steps.")
    keep_checkpoints: int = option(3, help="Checkpoints kept: the best ones by validation PSNR gain.")
    max_failures: int = option(2, help="Worker failures to recover from (restart from the last checkpoint) before giving up.")
    patch_size: Optional[int] = option(None, help="Expected patch size; the data is checked against it before any worker starts.")
    seed: int = option(0, help="Seed for weights initialisation.")
    endpoint_url: Optional[str] = option(None, help=_ENDPOINT_HELP)
    address: Optional[str] = option(None, help=_ADDRESS_HELP)

    def s3(self) -> S3Options:
        return S3Options(endpoint_url=self.endpoint_url)

    def model_args(self, channels: int) -> dict:
        if self.arch == "unshuffled-cnn":  # always residual
            return dict(channels=channels, blocks=self.blocks, width=self.width, padding_mode=self.padding_mode)
        args = dict(channels=channels, residual=self.residual, padding_mode=self.padding_mode)
        if self.arch == "arcnn":
            args["relu_output"] = self.relu_output
        return args


@dataclass(frozen=True)
class InferConfig:
    input: str = option(help="Folder or s3://bucket/prefix of JPEGs (any image format; nested folders are kept).")
    output: str = option(help="Folder or s3://bucket/prefix for the restored images, at the same relative paths.")
    model: Optional[str] = option(None, help="Model file (local or s3://); default: the gray and colour models shipped in the package.")
    format: str = option("png", help="Output format; the extension changes to match.", choices=("png", "jpeg", "webp"))
    jpeg_quality: int = option(95, help="Quality of --format jpeg/webp outputs.")
    tile: int = option(512, help="Tile side in pixels: images are restored tile by tile (with overlap, no seams), bounding memory.")
    overwrite: bool = option(False, help="Restore inputs whose output already exists (default: skip them).")
    max_pixels: int = option(DEFAULT_MAX_PIXELS, help="Refuse images with more pixels than this (decompression bombs); they go to _failures.jsonl.")
    actors: int = option(0, help="Restoring actors (one model each); 0 = one per GPU, or one per CPU.")
    gpu: Optional[bool] = option(None, help="Restore on GPUs; default: when the cluster has any.", action=argparse.BooleanOptionalAction)
    endpoint_url: Optional[str] = option(None, help=_ENDPOINT_HELP)
    address: Optional[str] = option(None, help=_ADDRESS_HELP)

    def s3(self) -> S3Options:
        return S3Options(endpoint_url=self.endpoint_url)


@dataclass(frozen=True)
class EvaluateConfig:
    images: str = option(help="Folder (or s3://...) of clean images, e.g. LIVE1 or Classic5.")
    output: str = option(help="Report folder: results.csv (per image), results.md (means), figures/.")
    quality: tuple = option(("10", "20", "30", "40"), help="JPEG qualities to evaluate at.", nargs="+")
    model: Optional[str] = option(None, help="Model file; default: the shipped model for the mode (gray or --color).")
    color: bool = option(False, help="Evaluate RGB (PSNR on RGB, SSIM mean over channels); default: gray Y channel (MATLAB).")
    figures: int = option(3, help="Side-by-side crops (original | JPEG | restored) for this many images, at the lowest quality.")
    tile: int = option(512, help="Tile side for restoration (no effect on results).")
    endpoint_url: Optional[str] = option(None, help=_ENDPOINT_HELP)
    address: Optional[str] = option(None, help=_ADDRESS_HELP)

    def s3(self) -> S3Options:
        return S3Options(endpoint_url=self.endpoint_url)


@dataclass(frozen=True)
class ExportConfig:
    format: str = option(help="'onnx' (onnxruntime, TensorRT, browsers...) or 'torchscript' (libtorch, C++).", choices=("onnx", "torchscript"))
    model: Optional[str] = option(None, help="Model file (local or s3://); default: the shipped model for the mode (gray or --color).")
    color: bool = option(False, help="Export the shipped colour model instead of the gray one (when --model is not given).")
    output: Optional[str] = option(None, help="Output file; default: carray-gray.onnx / carray-gray.pt (or -color) in the current folder.")
    endpoint_url: Optional[str] = option(None, help=_ENDPOINT_HELP)

    def s3(self) -> S3Options:
        return S3Options(endpoint_url=self.endpoint_url)
