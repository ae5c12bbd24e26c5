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

from .errors import OptionError
from .images import DEFAULT_MAX_PIXELS, OUTPUT_FORMATS
from .architectures import ARCH_OPTIONS
from .quality import PASS_THROUGH_FROM
from .storage import S3Options

#: The infer job's --format: JPEG at q98 with 4:4:4 chroma (docs/benchmarks.md, "Output formats").
DEFAULT_OUTPUT_FORMAT = "jpeg"
# --split-above by where the networks run. Cutting an image into tiles costs the CPUs about 1.6 times
# what restoring it whole costs per MP (decode in the read task, tiles through the object store and the
# work folder, one stitch). On GPU actors the CPUs are what feeds the GPU: every camera photo (up to
# the largest DSLRs' 61 MP) is restored whole; at 16 MP, 8 % of a camera collection's photos took the
# ceiling case from 0.57x to 0.29x its codecs' pace (docs/benchmarks.md, session 19). On CPU actors the
# network costs far more than that, and tiles spread a large photo over the actors (two 24 MP photos
# whole, both in one pack: one actor restored them while the other waited, 0.55 MP/s against 1.08 cut)
# and bound each one's memory by a 16 MP image's.
SPLIT_ABOVE_MP_GPU = 64.0
SPLIT_ABOVE_MP_CPU = 16.0


def option(default=dataclasses.MISSING, help: str = "", **argparse_kwargs):
    """A config field with its command-line help (and extra argparse settings)."""
    return field(default=default, metadata={"help": help, "argparse": argparse_kwargs})


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _own_fields_first(cls) -> list:
    """The job's own options first, then those it shares with other jobs (declared in the base
    classes below, which dataclasses list first)."""
    shared = {f.name for base in cls.__mro__[1:] if dataclasses.is_dataclass(base) for f in dataclasses.fields(base)}
    fields = dataclasses.fields(cls)
    return [f for f in fields if f.name not in shared] + [f for f in fields if f.name in shared]


def build_parser(cls, description: str, prog: Optional[str] = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    for f in _own_fields_first(cls):
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


# --- options several jobs share: declared once, inherited (keyword-only, so order is free) ---

_ENDPOINT_HELP = (
    "S3-compatible endpoint for s3:// locations (e.g. http://127.0.0.1:8333); defaults to "
    "AWS_ENDPOINT_URL. Credentials come from pyarrow's standard AWS chain: AWS_ACCESS_KEY_ID / "
    "AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, AWS_PROFILE and ~/.aws, web identity (IRSA) or the "
    "instance role; they reach every Ray worker with the filesystem object."
)
_ADDRESS_HELP = (
    "Ray cluster to use: host:port, 'local' for a private one; default RAY_ADDRESS, else the "
    "cluster `ray start` recorded, else a private local one."
)
_GPU_HELP = (
    "GPUs (--gpu) or CPUs (--no-gpu); default: GPUs when the cluster has them or its autoscaler can "
    "start a node type that has them, else CPUs. The job log says which it chose and why."
)


@dataclass(frozen=True, kw_only=True)
class StorageOptions:
    endpoint_url: Optional[str] = option(None, help=_ENDPOINT_HELP)
    create_bucket: bool = option(
        False,
        help="Create the output bucket if it does not exist. Without it a missing bucket is an error "
        "before any work (a typo never becomes a new bucket).",
    )

    def s3(self) -> S3Options:
        return S3Options(endpoint_url=self.endpoint_url, create_bucket=self.create_bucket)


@dataclass(frozen=True, kw_only=True)
class ClusterOptions(StorageOptions):
    address: Optional[str] = option(None, help=_ADDRESS_HELP)


@dataclass(frozen=True, kw_only=True)
class RestoreOptions:
    """How images are restored: shared by infer (which writes them) and evaluate (which scores them)."""

    model: Optional[str] = option(None, help="Model file (local or s3://); default: the gray and colour models shipped in the package.")
    quality_override: Optional[int] = option(
        None,
        help="Restore every input as if its JPEG tables said this quality (1-100), non-JPEGs included. "
        "By default each JPEG is restored at the quality its own quantization tables say, and images "
        "without tables (PNG, WebP, BMP, TIFF) are passed through unchanged. Use it for JPEGs whose "
        "tables lie (re-saved at a high quality after heavy compression, edited) or for PNG "
        "screenshots of JPEGs; a higher value restores more gently.",
    )
    pass_through_from: int = option(
        PASS_THROUGH_FROM,
        help="JPEGs whose tables say this quality or more are passed through unchanged (at such "
        "qualities restoration gains nothing measurable); 101 restores them all.",
    )
    tile: int = option(512, help="Tile side in pixels: images are restored tile by tile (with overlap, no seams); no effect on the result.")
    tta: bool = option(
        False,
        help="Self-ensemble: restore the 8 flips/90-degree rotations of each image and average them "
        "(exact inverse transforms): a little better, 8 times the work.",
    )
    max_pixels: int = option(DEFAULT_MAX_PIXELS, help="Refuse images with more pixels than this (decompression bombs); they are reported as failures.")
    precision: str = option(
        "fp32",
        help="Arithmetic of the network: fp32; int8 on CPUs (ONNX Runtime, calibrated on JPEG tiles: about 2x "
        "faster, a few hundredths of a dB lower, see the README; needs carray[int8]); fp16 or bf16 on GPUs "
        "(autocast); auto = the fastest measured within 0.05 dB of fp32 on the device (int8 on CPUs, fp16 on GPUs).",
        choices=("auto", "fp32", "fp16", "bf16", "int8"),
    )
    runtime: str = option(
        "auto",
        help="Library that runs the network: auto = ONNX Runtime for fp32 and int8 on CPUs when it is installed "
        "(fp32: the same network, 7-11%% faster, within one grey level of PyTorch), PyTorch otherwise and on GPUs; "
        "torch or onnxruntime to choose.",
        choices=("auto", "torch", "onnxruntime"),
    )
    gpu: Optional[bool] = option(None, help=_GPU_HELP, action=argparse.BooleanOptionalAction)

    def policy(self):
        from .quality import Policy

        if self.quality_override is not None and not 1 <= self.quality_override <= 100:
            raise OptionError(f"--quality-override must be within 1..100, got {self.quality_override}")
        return Policy(override=self.quality_override, pass_through_from=self.pass_through_from)


def parse_qualities(values: list[str]) -> tuple[tuple[int, ...], tuple[tuple[int, int], ...]]:
    """['10', '20', '30-90'] -> ((10, 20), ((30, 90),)): fixed qualities and ranges."""
    fixed, ranges = [], []
    for value in values:
        for part in str(value).split(","):
            part = part.strip()
            if not part:
                continue
            lo, sep, hi = part.partition("-")
            try:
                bounds = (int(lo), int(hi)) if sep else (int(lo), int(lo))
            except ValueError:
                raise OptionError(f"JPEG quality {part!r} is not a number 1..100 or a range A-B") from None
            if not (1 <= bounds[0] <= bounds[1] <= 100):
                raise OptionError(f"JPEG quality {part!r} is not within 1..100 (or A-B with A <= B)")
            (ranges.append(bounds) if sep else fixed.append(bounds[0]))
    return tuple(fixed), tuple(ranges)


def parse_double(values) -> list[tuple[int, int]]:
    """['30,10', '50,20'] -> [(30, 10), (50, 20)]: (first quality, second quality)."""
    pairs = []
    for value in values:
        first, sep, second = str(value).partition(",")
        try:
            pair = (int(first), int(second))
        except ValueError:
            raise OptionError(f"--double wants Q1,Q2 pairs such as 30,10; got {value!r}") from None
        if not sep or not all(1 <= q <= 100 for q in pair):
            raise OptionError(f"--double wants Q1,Q2 pairs of qualities within 1..100; got {value!r}")
        pairs.append(pair)
    return pairs


def parse_split(text: str) -> tuple[float, float, float]:
    """'70/20/10' -> (0.7, 0.2, 0.1)."""
    parts = [float(p) for p in text.replace(",", "/").split("/")]
    if len(parts) != 3 or any(p < 0 for p in parts) or sum(parts) <= 0:
        raise OptionError(f"--split wants three non-negative numbers like 70/20/10, got {text!r}")
    total = sum(parts)
    return tuple(p / total for p in parts)  # type: ignore[return-value]


@dataclass(frozen=True, kw_only=True)
class PrepConfig(ClusterOptions):
    input: str = option(help="Folder or s3://bucket/prefix of clean images (or of pairs with --pairs).")
    output: str = option(help="Folder or s3://bucket/prefix for train/ and val/ Parquet, test.txt and _prep.json.")
    quality: tuple = option(
        ("10",),
        help="JPEG qualities to make: values (10 20 30 40) and/or ranges (10-90). Every image is "
        "compressed at each value, and at --range-samples qualities drawn from each range.",
        nargs="+",
    )
    range_samples: int = option(1, help="Qualities drawn per image from each --quality range (seeded by the image's path).")
    double: tuple = option(
        (),
        help="Also make one double-compressed JPEG per image: first at a quality drawn from these "
        "values/ranges (e.g. 10-95), then shifted 1-7 pixels (grids not aligned) and compressed again "
        "at one of the image's --quality values. Patches record both qualities.",
        nargs="*",
    )
    pairs: bool = option(
        False,
        help="Inputs are pairs: name.bmp|png|tif beside name.jpg; the JPEGs are used as they are.",
    )
    color: bool = option(False, help="Keep RGB patches (3 channels); default is the gray Y channel (MATLAB BT.601).")
    vary_chroma: float = option(
        0.0,
        help="--color: the share (0..1) of compressions whose chroma is coded as cameras and editors often "
        "code it instead of libjpeg's default (4:2:0, chroma table at the luma quality): 4:4:4, 4:2:2 or 4:2:0 "
        "and a chroma table 30 below to 30 above the luma quality, drawn per image and quality. The patches "
        "record it, for networks that see the coding (train --coding-input).",
    )
    downscale: float = option(
        1.0,
        help="Shrink each clean image by this factor (Lanczos) before compressing it. For photographs that "
        "were JPEGs before they became PNGs (CBSD68, CBSD432, Urban100): 2 hides their 8x8 grid, so the "
        "targets are clean at high qualities too. 1 = as they are. Not used with --pairs.",
    )
    patch_size: int = option(32, help="Patch side in pixels (32 = an 8x8 JPEG block with its neighbours).")
    stride: int = option(16, help="Step between patches in pixels.")
    split: str = option("70/20/10", help="Train/val/test shares by image, decided by a hash of each image's relative path.")
    seed: int = option(0, help="Seed of the split and of drawn qualities; same seed, same split.")
    max_pixels: int = option(DEFAULT_MAX_PIXELS, help="Refuse images with more pixels than this (decompression bombs).")


@dataclass(frozen=True, kw_only=True)
class TrainConfig(ClusterOptions):
    data: str = option(help="The prep output (folder or s3://...) holding train/ and val/ Parquet.")
    output: str = option(help="Run folder (or s3://...): model.pt, metrics.csv, loss.png, and NAME/ with Ray Train's checkpoints.")
    name: str = option("train", help="Run name. Re-running with the same --output and --name resumes from the last checkpoint.")
    arch: str = option(
        "arcnn",
        help="Network: 'arcnn' (106 k multiply-adds/pixel), 'fast-arcnn' (16 k, faster, a little worse) or "
        "'unshuffled-cnn' (3x3 residual blocks on the 2x2-folded image: 93 k at the default size, deeper, needs --lr 3e-4).",
        choices=tuple(ARCH_OPTIONS),
    )
    quality_input: bool = option(
        False,
        help="unshuffled-cnn only: condition the network on each patch's JPEG quality (read from the "
        "JPEG's tables at inference), so one model adapts its strength from q10 to q100.",
    )
    coding_input: bool = option(
        False,
        help="unshuffled-cnn, colour: also condition the network on how each JPEG coded its chroma (the "
        "chrominance table's quality and the chroma subsampling, read from the file at inference; prep "
        "--vary-chroma makes training data that varies them). Implies --quality-input. A second FiLM MLP "
        "(film.chroma) adds what a coding other than libjpeg's default changes, and nothing for the "
        "default one; with --init-from a quality-conditioned model it starts at zero, so training starts "
        "from that model (with --train-only film.chroma the default-coded results never move).",
    )
    init_from: Optional[str] = option(
        None,
        help="Start from this model file's weights (local or s3://) instead of random ones: fine-tune "
        "a shipped model on your images, or continue a long training. The network's architecture and "
        "size are the file's (--arch/--width are ignored); --quality-input adds the quality "
        "conditioning, starting from the identity, if the file has none; --blocks larger than the file's grows an "
        "unshuffled-cnn to that many residual blocks, the new ones starting as the identity. A checkpoint of the same "
        "--output/--name still takes precedence (resume).",
    )
    blocks: Optional[int] = option(
        None,
        help="unshuffled-cnn only: residual blocks (two 3x3 convolutions each); default 5, or with --init-from "
        "the file's. More than the file's grows its network (the new blocks start as the identity).",
    )
    width: int = option(64, help="unshuffled-cnn only: channels per layer.")
    residual: bool = option(True, help="Predict the artifact and add it to the input (the original predicted the image).")
    padding_mode: str = option("replicate", help="Border padding of the convolutions; 'zeros' as the original (darkens borders).", choices=("replicate", "reflect", "zeros"))
    relu_output: bool = option(False, help="ARCNN only: a ReLU on the output layer, as the original had.")
    workers: int = option(1, help="Data-parallel training workers (DDP: NCCL on GPUs, gloo on CPUs).")
    gpu: Optional[bool] = option(None, help=_GPU_HELP, action=argparse.BooleanOptionalAction)
    threads: int = option(0, help="Torch threads per CPU worker; 0 = the cluster's CPUs divided among the workers.")
    steps: int = option(2000, help="Optimizer steps in all (a resumed run continues up to this).")
    time_limit: float = option(
        0.0,
        help="Stop after this many seconds of training (checked every 10 steps, every worker stopping at the same "
        "step), with a final checkpoint and the usual model.pt: for a machine lent or paid by the minute. "
        "0 = no limit; --steps still ends the run and sets the --lr-schedule.",
    )
    batch_size: int = option(64, help="Patches per step per worker (the original used 1000 on a GPU).")
    lr: float = option(1e-3, help="Adam learning rate (the original's 1e-3).")
    lr_schedule: str = option("constant", help="'constant', 'cosine' (to 1%% of --lr at --steps) or 'step' (x0.1 at 60%% and 85%%).", choices=("constant", "cosine", "step"))
    warmup_steps: int = option(
        0,
        help="Raise the learning rate linearly over the first N steps. Adam's first steps move every weight by "
        "about --lr whatever its gradient, which knocks a converged model (--init-from) off its optimum: "
        "without one, a grown colour model's held-out gain fell from +1.22 to +1.04 dB between its steps 500 and 1000 (docs/training.md).",
    )
    ema: float = option(
        0.0,
        help="Keep an exponential moving average of the weights with this decay (e.g. 0.999: about the last "
        "1000 steps) and validate, checkpoint and export it instead of the last step's weights (BasicSR's "
        "ema_decay): a fine-tuned model's held-out gain swung by 0.5 dB between checkpoints without it "
        "(docs/training.md). 0 = off. A resumed run keeps its average.",
    )
    film_lr_scale: float = option(
        1.0,
        help="The quality/coding conditioning (FiLM) learns at this multiple of --lr. For --coding-input on a "
        "converged model: its new inputs start at zero and at the small rate the convolutions need "
        "(2e-5) they had barely moved after 1,000 steps while the convolutions drifted (docs/training.md).",
    )
    train_only: tuple = option(
        (),
        help="Learn only the weights whose names start with one of these prefixes; the others stay as "
        "--init-from made them (not even their gradients are computed). film.chroma: a --coding-input "
        "network learns what the chroma coding changes while every default-coded JPEG is restored "
        "exactly as by the quality model it was grown from. Default: every weight learns.",
        nargs="+",
    )
    augment: bool = option(True, help="Random flips and 90-degree rotations of each batch.")
    val_every: int = option(10, help="Validate every N steps (the original: every 10 batches).")
    val_patches: int = option(1024, help="Validation patches, read once and kept in memory by rank 0 (0: no validation).")
    checkpoint_every: int = option(100, help="Save a checkpoint (model, optimizer, step, history) every N steps.")
    keep_checkpoints: int = option(3, help="Checkpoints kept: the best ones by validation PSNR gain.")
    max_failures: int = option(2, help="Worker failures to recover from (restart from the last checkpoint) before giving up.")
    patch_size: Optional[int] = option(None, help="Expected patch size; the data is checked against it before any worker starts.")
    seed: int = option(0, help="Seed for weights initialisation.")

    def check(self) -> None:
        """Options that no type check catches, refused before anything starts."""
        if not 0 <= self.ema < 1:
            raise OptionError(f"--ema must be 0 (off) or a decay in (0, 1) such as 0.999, got {self.ema}")
        if self.time_limit < 0:
            raise OptionError(f"--time-limit must be seconds >= 0 (0: no limit), got {self.time_limit}")
        if not self.film_lr_scale > 0:
            raise OptionError(f"--film-lr-scale must be a positive multiple of --lr, got {self.film_lr_scale}")

    def model_args(self, channels: int) -> dict:
        """The constructor arguments of --arch, from the options its class lists; an option set
        away from its default that the class does not take is an error, not silently ignored."""
        options = ARCH_OPTIONS[self.arch]
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for name in _ARCH_OPTIONS - set(options):
            if getattr(self, name) != defaults[name]:
                raise OptionError(f"--{name.replace('_', '-')} has no effect on --arch {self.arch} (it takes: {', '.join(options)})")
        # Unset (None) options take the network's own default.
        return dict(channels=channels, **{name: getattr(self, name) for name in options if getattr(self, name) is not None})


_ARCH_OPTIONS = {name for options in ARCH_OPTIONS.values() for name in options}


@dataclass(frozen=True, kw_only=True)
class InferConfig(RestoreOptions, ClusterOptions):
    input: str = option(
        help="Folder or s3://bucket/prefix of JPEGs (any image format; nested folders are kept); or of shards: WebDataset "
        ".tar files or Parquet files with an image column, a folder or prefix of them, one shard, or a brace pattern "
        "such as s3://bucket/shards/{00000..09999}.tar. Each shard is rewritten whole under its own name."
    )
    input_kind: str = option(
        "auto",
        help="files (one object per image), webdataset or parquet (shards). auto: shards when the input is a brace "
        "pattern or a .tar/.parquet file, or when its first files are shards and none is an image.",
        choices=("auto", "files", "webdataset", "parquet"),
    )
    image_keys: tuple = option(
        ("jpg", "jpeg"),
        help="WebDataset shards: the member extensions restored (img2dataset writes key.jpg); every other member "
        "(captions, JSON, other images) is copied byte for byte.",
        nargs="+",
    )
    image_column: Optional[str] = option(
        None,
        help="Parquet shards: the column of images (Hugging Face's {bytes, path} struct or plain binary); default: "
        "the one such column. Every other column is copied as it was.",
    )
    output: str = option(
        help="Folder or s3://bucket/prefix for the outputs. A restored input is written at its relative path plus "
        "the format's extension (photo.jpg -> photo.jpg.jpg with the default --format jpeg); an input passed "
        "through unchanged is its own bytes at its own relative path (photo.jpg -> photo.jpg), unless that "
        "name looks like a restored output (a.jpg.jpg), which then takes the restored rule (a.jpg.jpg.jpg). "
        "No two inputs ever share an output, and a re-run recognises both kinds as done."
    )
    manifest: Optional[str] = option(
        None,
        help="The keys to restore, relative to --input, instead of listing it: a text file (one key a line), "
        "CSV or Parquet with a 'key' column, or an S3 Inventory manifest.json (CSV or Parquet parts). "
        "Read by Ray Data in parallel: the way to run on buckets of millions of objects.",
    )
    format: str = option(
        DEFAULT_OUTPUT_FORMAT,
        help="Format of the restored outputs: jpeg (at --jpeg-quality with 4:4:4 chroma: on LIVE1 q10-q50 about "
        "0.03-0.05 dB below the restored pixels, 3.3-4.5x the bytes of a q50 JPEG, encoded at 160-490 MP/s per "
        "core), png (lossless; zlib level 1: 4.8-11.6x the bytes, 16-50 MP/s per core) or webp (lossy, "
        "--jpeg-quality; slow). docs/benchmarks.md, 'Output formats', has the table.",
        choices=tuple(OUTPUT_FORMATS),
    )
    jpeg_quality: int = option(
        98, help="Quality of --format jpeg/webp outputs. 98 costs 0.03-0.05 dB on LIVE1; 95 costs 0.10 dB for 25-30 %% fewer bytes."
    )
    overwrite: bool = option(False, help="Restore inputs whose output already exists (default: skip them).")
    retry_failed: bool = option(False, help="Restore only the inputs listed in OUTPUT/_failures.jsonl by the last run.")
    include_hidden: bool = option(
        False, help="Also restore files in hidden folders or with hidden names (starting with '.'); by default they are counted as skipped."
    )
    max_attempts: int = option(3, help="An image whose restoring actor dies this many times (out of memory?) becomes a failure line; the job goes on.")
    actors: int = option(0, help="Restoring actors (one model each); 0 = --actors-per-gpu per GPU, or one per CPU.")
    actors_per_gpu: int = option(
        1, help="Restoring actors sharing each GPU (each asks for 1/N of it): they overlap their own CPU work "
        "(unpacking, colour conversion, stitching) with the GPU's.",
    )
    split_above: Optional[float] = option(
        None,
        help="Images above this many megapixels are cut into --tile tiles that every actor restores (and "
        "stitched back, exactly equal to restoring them whole): a scan or a panorama then uses the whole "
        "cluster, with memory per actor bounded by a pack of tiles. Cutting costs the CPUs about 1.6 times "
        f"the work per MP of restoring whole. Default: {SPLIT_ABOVE_MP_GPU:g} on GPU actors (every camera photo "
        f"whole: the CPUs feed the GPU), {SPLIT_ABOVE_MP_CPU:g} on CPU actors (the network dominates there). 0 = never cut.",
    )
    tile_batch: int = option(
        0,
        help="Tile windows (and images no larger than a tile) restored together in one forward pass of the "
        "network, in pinned memory with non-blocking copies on a GPU; packs grow to hold a batch. "
        "0 = auto: 8 on GPUs, 1 on CPUs (where one forward at a time measured faster).",
    )

    preview: int = option(
        0,
        help="Look before you spend: restore only a seeded random sample of N inputs, spread over the whole listing "
        "or manifest, and write OUTPUT/index.html (before/after at 100 %% where restoring changed each one most, "
        "what the policy decided and why), the collection's make-up from its headers, and the full run's "
        "estimated time and cost, with OUTPUT/_summary.json. On shards: a sample of the images inside up to 8 of "
        "them. 0 = restore everything (the job itself).",
    )
    preview_scan: int = option(
        1000,
        help="--preview: headers read (no pixels decoded) for the collection's make-up: qualities, sizes, formats, "
        "what would be restored or passed through. A larger sample, a closer estimate, at the speed of reading headers.",
    )
    seed: int = option(0, help="--preview: the sample's seed; same seed and collection, same sample.")

    def check(self) -> "InferConfig":
        """Raises OptionError for a value the job cannot use, before any work starts."""
        self.policy()
        if self.preview < 0 or self.preview_scan < 0:
            raise OptionError(f"--preview and --preview-scan must be 0 or more, got {self.preview} and {self.preview_scan}")
        if self.preview and self.retry_failed:
            raise OptionError("--preview samples the input or --manifest; it does not take --retry-failed")
        if self.max_attempts < 1:
            raise OptionError(f"--max-attempts must be at least 1, got {self.max_attempts}")
        if self.tile_batch < 0:
            raise OptionError(f"--tile-batch must be 0 (auto) or a number of windows per forward pass, got {self.tile_batch}")
        if self.split_above is not None and self.split_above < 0:
            raise OptionError(f"--split-above must be 0 (never cut) or a number of megapixels, got {self.split_above}")
        if self.actors_per_gpu < 1:
            raise OptionError(f"--actors-per-gpu must be at least 1, got {self.actors_per_gpu}")
        return self

    def split_above_mp(self, gpus: bool) -> float:
        """--split-above, or its default for where the networks run (GPU or CPU actors)."""
        if self.split_above is not None:
            return self.split_above
        return SPLIT_ABOVE_MP_GPU if gpus else SPLIT_ABOVE_MP_CPU


@dataclass(frozen=True, kw_only=True)
class EvaluateConfig(RestoreOptions, ClusterOptions):
    images: str = option(help="Folder (or s3://...) of clean images, e.g. LIVE1 or Classic5.")
    output: str = option(help="Report folder: results.csv (per image), results.md (means), figures/.")
    quality: tuple = option(("10", "20", "30", "40"), help="JPEG qualities to evaluate at (values or ranges, up to 100).", nargs="+")
    double: tuple = option(
        (),
        help="Double-JPEG settings Q1,Q2 (e.g. 30,10): compressed at Q1, shifted by (4, 4) pixels, "
        "compressed again at Q2 (FBCNN's non-aligned double JPEG); scored against the shifted original.",
        nargs="*",
    )
    color: bool = option(False, help="Evaluate RGB (PSNR on RGB, SSIM mean over channels) with the colour model; default: gray Y channel (MATLAB).")
    subsampling: str = option(
        "4:2:0",
        help="--color: chroma subsampling of the test JPEGs (single-compression settings). 4:2:0 with the chroma table at "
        "the luma quality is libjpeg's default and how published results make their JPEGs; 4:4:4 and 4:2:2 are common "
        "from cameras and editors at high qualities.",
        choices=("4:2:0", "4:2:2", "4:4:4"),
    )
    chroma_offset: int = option(
        0, help="--color: code the test JPEGs' chroma table at the luma quality plus this (clipped to 1..100); 0 = libjpeg's default."
    )
    figures: int = option(3, help="Side-by-side crops (original | JPEG | restored) for this many images, at the first setting.")


@dataclass(frozen=True, kw_only=True)
class ExportConfig(StorageOptions):
    format: str = option(help="'onnx' (onnxruntime, TensorRT, browsers...) or 'torchscript' (libtorch, C++).", choices=("onnx", "torchscript"))
    model: Optional[str] = option(None, help="Model file (local or s3://); default: the shipped model for the mode (gray or --color).")
    color: bool = option(False, help="Export the shipped colour model instead of the gray one (when --model is not given).")
    output: Optional[str] = option(None, help="Output file; default: carray-gray.onnx / carray-gray.pt (or -color) in the current folder.")
