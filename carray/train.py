"""train: data-parallel training of the CNN with Ray Train (GPU workers when present, else CPU).

The driver checks the data, builds a TorchTrainer and, at the end, exports the model file, the
metrics and the loss figure. The workers run :func:`train_loop_per_worker`: the train Parquet is
streamed to each worker's shard (never loaded whole), validation runs on rank 0 every
``val_every`` steps, checkpoints go to ``RunConfig(storage_path)`` every ``checkpoint_every``
steps, and a re-run with the same output and name resumes from the latest one.
"""
from __future__ import annotations

import csv
import io
import math
import os
import posixpath
import tempfile
import time
from dataclasses import asdict, replace
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import torch
import torch.nn.functional as F

from . import storage
from .config import TrainConfig
from .errors import JobError, OptionError
from .model import build_model, init_from, load_model_bytes, model_bytes
from .pairs import CHROMA_QUALITY, COMPRESSED, ORIGINAL, QUALITY, SUBSAMPLING, patch_shape, patches_from_arrow

STATE_FILE = "state.pt"
METRIC_FIELDS = ("step", "train_loss", "train_psnr", "val_loss", "val_psnr", "val_psnr_gain", "lr", "samples_per_s")


class DataError(JobError):
    """Training data that cannot be used; raised before any worker starts."""


# --- pure torch helpers (no Ray) ---


def to_tensor(column) -> torch.Tensor:
    """A fixed-size binary patch column -> float32 (n, c, p, p) on [0, 1]."""
    return torch.from_numpy(patches_from_arrow(column).astype(np.float32) / 255.0)


def augment(x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The same random flip and 90-degree rotation of inputs and targets (one of 8 per batch)."""
    k = int(torch.randint(0, 4, (1,), generator=generator))
    flip = bool(torch.randint(0, 2, (1,), generator=generator))
    if flip:
        x, y = x.flip(-1), y.flip(-1)
    return torch.rot90(x, k, (-2, -1)), torch.rot90(y, k, (-2, -1))


def psnr_per_patch(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of each patch (n,), on [0, 1]; a perfect patch counts as 100 dB."""
    mse = ((pred.clamp(0, 1) - target) ** 2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-10))


def learning_rate(cfg_lr: float, schedule: str, step: int, steps: int, warmup: int = 0) -> float:
    """The learning rate at `step`: the schedule's, times a linear warm-up over the first `warmup` steps."""
    if step < warmup:
        return learning_rate(cfg_lr, schedule, step, steps) * (step + 1) / warmup
    if schedule == "cosine":
        floor = 0.01 * cfg_lr
        return floor + 0.5 * (cfg_lr - floor) * (1 + math.cos(math.pi * min(step, steps) / max(steps, 1)))
    if schedule == "step":
        return cfg_lr * (0.1 ** sum(step >= f * steps for f in (0.6, 0.85)))
    return cfg_lr


# --- the worker ---


#: What a training batch reads: the patches, the quality, and the chroma coding where prep wrote it.
CODING_COLUMNS = (CHROMA_QUALITY, SUBSAMPLING)


def training_columns(names) -> list[str]:
    """The columns to read from Parquet with these column names (data from before the chroma
    coding columns existed has none: its patches are read as libjpeg's default coding)."""
    return [COMPRESSED, ORIGINAL, QUALITY] + [c for c in CODING_COLUMNS if c in names]


def quality_tensor(batch) -> torch.Tensor:
    """The batch's conditioning input as float32: JPEG qualities (n,), or codings (n, 3) when the
    batch has the chroma coding columns (carray.model: luma quality, chroma quality, subsampling)."""
    columns = [QUALITY] + [c for c in CODING_COLUMNS if c in batch.column_names]
    values = np.stack([batch[c].to_numpy().astype(np.float32) for c in columns], axis=1)
    return torch.from_numpy(values if values.shape[1] == 3 else values[:, 0].copy())


def _validate(model, batches, device) -> dict:
    model.eval()
    losses, psnrs, base = [], [], []
    with torch.no_grad():
        for x, y, q in batches:
            x, y = x.to(device), y.to(device)
            out = model(x, q.to(device))
            losses.append(F.mse_loss(out, y, reduction="none").flatten(1).mean(1).cpu())
            psnrs.append(psnr_per_patch(out, y).cpu())
            base.append(psnr_per_patch(x, y).cpu())
    model.train()
    loss, psnr, before = (torch.cat(v).mean().item() for v in (losses, psnrs, base))
    return {"val_loss": loss, "val_psnr": psnr, "val_psnr_gain": psnr - before}


def _val_batches(cfg: TrainConfig, limit: int, batch_size: int) -> list:
    """`limit` val patches spread evenly over all the val files (every k-th row of them in file-name
    order), read by rank 0 straight from storage.

    The same patches on every run and every resume: validation figures, and with them the choice
    of the best checkpoint, compare across resumes (Ray Data's parallel read returned a different
    first `limit` rows after each resume, which moved the val PSNR by 0.3 dB). Spread, not the first
    `limit` rows: those came from the first file's two or three images, and the held-out gain then
    swung by 0.5 dB between checkpoints of a colour run that LIVE1 saw move by 0.02 (docs/training.md).
    """
    import pyarrow.parquet as pq

    fs, root = storage.resolve(cfg.data, cfg.s3())
    paths = [storage.join(root, "val", name) for name in storage.list_files(fs, storage.join(root, "val"), (".parquet",))]
    counts = []
    for path in paths:  # row counts from the footers alone
        with fs.open_input_file(path) as f:
            counts.append(pq.ParquetFile(f).metadata.num_rows)
    total = sum(counts)
    wanted = [int(i * total / limit) for i in range(limit)] if total > limit else list(range(total))
    batches, offset = [], 0
    for path, count in zip(paths, counts):
        rows = [g - offset for g in wanted if offset <= g < offset + count]
        offset += count
        if not rows:
            continue
        with fs.open_input_file(path) as f:
            parquet = pq.ParquetFile(f)
            table = parquet.read(columns=training_columns(parquet.schema_arrow.names)).take(rows)
        for start in range(0, table.num_rows, batch_size):
            part = table.slice(start, batch_size)
            batches.append((to_tensor(part[COMPRESSED]), to_tensor(part[ORIGINAL]), quality_tensor(part)))
    return batches


def _report_with_checkpoint(row: dict, state: dict) -> None:
    """ray.train.report with a checkpoint of `state`; the local copy is removed once Ray Train has
    persisted it to storage (left behind, a long run filled the temp dir at 1.3 MB per save)."""
    import ray.train
    from ray.train import Checkpoint

    with tempfile.TemporaryDirectory(prefix="carray-ckpt-") as folder:
        torch.save(state, os.path.join(folder, STATE_FILE))
        ray.train.report(row, checkpoint=Checkpoint.from_directory(folder))


def optimizer_on_device(model: torch.nn.Module, lr: float, saved: Optional[dict] = None, film_lr_scale: float = 1.0) -> torch.optim.Optimizer:
    """Adam over `model`'s parameters, with a checkpoint's optimizer state if there is one. Call it
    once the model is on its device: loading casts the saved state (Adam's moments) to the device
    its parameters are on at that moment, so an optimizer loaded before the move kept its moments on
    the CPU and a resumed GPU run failed at its first step (found on an H100).

    `film_lr_scale` != 1: the quality/coding FiLM (`film.*`) learns at that multiple of the rate, in
    a group of its own (each group's "scale" multiplies the schedule's rate). Frozen parameters
    (:func:`freeze_all_but`) are left out."""
    learning = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    film = [p for name, p in learning if name.startswith("film.")]
    rest = [p for name, p in learning if not name.startswith("film.")]
    if film and film_lr_scale != 1.0:
        groups = [{"params": rest, "scale": 1.0}, {"params": film, "scale": film_lr_scale, "lr": lr * film_lr_scale}]
    else:
        groups = [{"params": [p for _, p in learning], "scale": 1.0}]
    optimizer = torch.optim.Adam(groups, lr=lr)
    if saved is not None:
        optimizer.load_state_dict(saved)
    return optimizer


def freeze_all_but(model: torch.nn.Module, prefixes: tuple) -> None:
    """Stop the gradient of every parameter whose name starts with none of `prefixes` (none given:
    all learn). Raises ValueError when no parameter matches, naming the network's modules."""
    if not prefixes:
        return
    prefixes = tuple(prefixes)
    named = list(model.named_parameters())
    if not any(name.startswith(prefixes) for name, _ in named):
        modules = sorted({name.rsplit(".", 2)[0] for name, _ in named})
        raise ValueError(f"--train-only {' '.join(prefixes)} matches no weight of this network; its modules: {', '.join(modules)}")
    for name, p in named:
        p.requires_grad_(name.startswith(prefixes))


def train_loop_per_worker(config: dict) -> dict:
    """Ray Train worker: one DDP replica. `config` = {"cfg": TrainConfig fields, "channels": c,
    "threads": n, "arch": name, "model_args": {...}, "init": model file bytes or None}.
    Returns {"step", "resumed_from", "diverged"}; rank 0's reaches the driver."""
    import ray.train
    import ray.train.torch
    import torch.distributed as dist

    cfg = TrainConfig(**config["cfg"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cuda" and not torch.cuda.is_available():
        # Ray gave this worker a GPU that PyTorch cannot see (a CPU build of torch, a missing
        # driver, or Ray's fake autoscaling nodes): train on the CPU rather than crash.
        if rank == 0:
            print("carray: the GPU Ray assigned is not visible to PyTorch (CPU build or no driver?); training on the CPU")
        device = torch.device("cpu")
    if device.type == "cpu":
        torch.set_num_threads(config["threads"])
    torch.manual_seed(cfg.seed)
    model = build_model(config["arch"], **config["model_args"])
    step, history = 0, []
    checkpoint = ray.train.get_checkpoint()
    if config.get("init") and not checkpoint:  # a resume continues its own weights, not the file's
        fresh = init_from(model, load_model_bytes(config["init"], cfg.init_from)[0])
        if rank == 0:
            print(f"carray: weights from {cfg.init_from}" + (f"; new (not in the file): {', '.join(fresh)}" if fresh else ""))
    state = None
    if checkpoint:
        with checkpoint.as_directory() as folder:
            state = torch.load(os.path.join(folder, STATE_FILE), map_location="cpu", weights_only=True)
        model.load_state_dict(state.get("raw", state["model"]))  # with --ema, "model" is the average
        step, history = int(state["step"]), list(state["history"])
        if rank == 0:
            print(f"carray: resuming from the checkpoint at step {step}")
    resumed_from = step
    freeze_all_but(model, cfg.train_only)  # before DDP, which all-reduces the gradients of what learns
    model = ray.train.torch.prepare_model(model, move_to_device=device)  # wraps in DDP when world > 1
    if device.type == "cpu":
        model = model.to(memory_format=torch.channels_last)  # ~25% faster convolutions on CPU
    plain = model.module if hasattr(model, "module") else model
    optimizer = optimizer_on_device(plain, cfg.lr, state["optimizer"] if state else None, cfg.film_lr_scale)
    ema = weight_average(plain, cfg.ema, state)
    judged = ema.module if ema is not None else plain  # what is validated, checkpointed as "model" and exported

    train_shard = ray.train.get_dataset_shard("train")
    val_batches = _val_batches(cfg, cfg.val_patches, 256) if rank == 0 and cfg.val_patches > 0 else []
    generator = torch.Generator().manual_seed(cfg.seed * 1000 + rank + step)
    window = {"loss": [], "psnr": [], "samples": 0, "start": time.perf_counter(), "reported": False}

    def state_dict() -> dict:
        saved = {"model": judged.state_dict(), "optimizer": optimizer.state_dict(), "step": step, "history": history, "config": asdict(cfg)}
        if ema is not None:
            saved.update(raw=plain.state_dict(), ema_averaged=int(ema.n_averaged))
        return saved

    def report(checkpoint_due: bool, extra: Optional[dict] = None) -> None:
        elapsed = max(time.perf_counter() - window["start"], 1e-9)
        row = {
            "step": step,
            "train_loss": float(np.mean(window["loss"])) if window["loss"] else float("nan"),
            "train_psnr": float(np.mean(window["psnr"])) if window["psnr"] else float("nan"),
            "lr": optimizer.param_groups[0]["lr"],
            "samples_per_s": window["samples"] * world / elapsed,
            "resumed_from": resumed_from,
        }
        if rank == 0 and val_batches and (step % cfg.val_every == 0 or checkpoint_due):
            row.update(_validate(judged, val_batches, device))
        row.update(extra or {})
        if rank == 0:
            history.append({k: row.get(k, float("nan")) for k in METRIC_FIELDS})
        if checkpoint_due and rank == 0:
            _report_with_checkpoint(row, state_dict())
        else:
            ray.train.report(row)  # every rank: it is a barrier
        window.update(loss=[], psnr=[], samples=0, start=time.perf_counter(), reported=True)

    diverged = timed_out = False
    started = time.monotonic()
    while step < cfg.steps and not (diverged or timed_out):
        for batch in train_shard.iter_batches(batch_size=cfg.batch_size, batch_format="pyarrow", drop_last=True, local_shuffle_buffer_size=cfg.batch_size * 16):
            x, y, q = to_tensor(batch[COMPRESSED]), to_tensor(batch[ORIGINAL]), quality_tensor(batch)
            if cfg.augment:
                x, y = augment(x, y, generator)
            x, y, q = x.to(device), y.to(device), q.to(device)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(cfg.lr, cfg.lr_schedule, step, cfg.steps, cfg.warmup_steps) * group.get("scale", 1.0)
            out = model(x, q)
            loss = F.mse_loss(out, y)
            bad = torch.tensor([0.0 if torch.isfinite(loss) else 1.0], device=device)
            if world > 1:  # every rank must stop together, or the others hang in the next all-reduce
                dist.all_reduce(bad)
            if bad.item():
                diverged = True
                break
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if ema is not None:
                ema.update_parameters(plain)
            step += 1
            window["loss"].append(loss.item())
            window["psnr"].append(psnr_per_patch(out.detach(), y).mean().item())
            window["samples"] += len(x)
            timed_out = step % 10 == 0 and out_of_time(cfg.time_limit, started, device, world)
            checkpoint_due = step % cfg.checkpoint_every == 0 or step == cfg.steps or timed_out
            if checkpoint_due or step % cfg.val_every == 0:
                report(checkpoint_due)
            if step >= cfg.steps or timed_out:
                break
    if diverged:
        # No checkpoint: the last good one stays the latest. The driver turns this into an error.
        report(False, {"diverged": 1.0})
    elif not window["reported"]:  # resumed at or past --steps: hand back the final state anyway
        report(True)
    return {"step": step, "resumed_from": resumed_from, "diverged": diverged, "timed_out": timed_out}


def out_of_time(limit: float, started: float, device, world: int) -> bool:
    """--time-limit reached? Every rank answers the same (rank 0's clock decides), or the others would
    wait in the next all-reduce for a rank that stopped."""
    if not limit:
        return False
    over = torch.tensor([1.0 if time.monotonic() - started > limit else 0.0], device=device)
    if world > 1:
        import torch.distributed as dist

        dist.broadcast(over, src=0)
    return bool(over.item())


def weight_average(plain: torch.nn.Module, decay: float, state: Optional[dict]):
    """--ema: torch's AveragedModel keeping an exponential moving average of `plain`'s weights,
    starting from them (or from a resumed checkpoint's average); None when decay is 0."""
    if not decay:
        return None
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    ema = AveragedModel(plain, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
    if state is not None and "raw" in state:  # the checkpoint's "model" is its average
        ema.module.load_state_dict(state["model"])
        ema.n_averaged.fill_(int(state.get("ema_averaged", 1)))
    return ema


# --- the driver ---


def inspect_data(cfg: TrainConfig, fs, root: str) -> dict:
    """Check train/ and val/ before any worker starts. Returns {"channels", "patch_size", rows...}."""
    found = {}
    for split in ("train", "val"):
        path = storage.join(root, split)
        if not storage.exists(fs, path):
            raise DataError(f"{cfg.data}: no {split}/ dataset (run the prep job first: python jobs/prep.py --input IMAGES --output {cfg.data})")
        try:
            dataset = pads.dataset(path, filesystem=fs, format="parquet")
            rows = dataset.count_rows()
        except Exception as exc:
            raise DataError(f"{cfg.data}/{split}: not a readable Parquet dataset ({exc})") from None
        if rows == 0:
            raise DataError(f"{cfg.data}/{split}: the dataset is empty")
        schema = dataset.schema
        for column in (COMPRESSED, ORIGINAL):
            if column not in schema.names:
                raise DataError(f"{cfg.data}/{split}: Parquet without the '{column}' column (found {schema.names}); was it written by prep?")
            kind = schema.field(column).type
            if not pa.types.is_fixed_size_binary(kind):
                raise DataError(f"{cfg.data}/{split}: column '{column}' is {kind}, expected fixed-size binary patches")
        try:
            channels, side, _ = patch_shape(schema.field(COMPRESSED).type.byte_width)
        except ValueError as exc:
            raise DataError(f"{cfg.data}/{split}: {exc}") from None
        if schema.field(ORIGINAL).type != schema.field(COMPRESSED).type:
            raise DataError(f"{cfg.data}/{split}: 'original' and 'compressed' patches differ in size")
        if QUALITY not in schema.names:
            raise DataError(f"{cfg.data}/{split}: Parquet without the '{QUALITY}' column; was it written by prep?")
        if cfg.quality_input:
            unknown = dataset.count_rows(filter=pads.field(QUALITY) < 1)
            if unknown:
                raise DataError(
                    f"{cfg.data}/{split}: {unknown} patches have no JPEG quality (--pairs JPEGs without tables?); "
                    "a quality-conditioned network (--quality-input) needs it for every patch"
                )
        found[split] = {"rows": rows, "channels": channels, "patch_size": side, "columns": set(schema.names)}
    train, val = found["train"], found["val"]
    if (train["channels"], train["patch_size"]) != (val["channels"], val["patch_size"]):
        raise DataError(f"{cfg.data}: train patches are {train['patch_size']}px x{train['channels']}, val {val['patch_size']}px x{val['channels']}")
    if cfg.patch_size is not None and train["patch_size"] != cfg.patch_size:
        raise DataError(f"{cfg.data}: patches are {train['patch_size']}x{train['patch_size']}, but --patch-size {cfg.patch_size} was asked for")
    if train["patch_size"] < 8:
        raise DataError(f"{cfg.data}: {train['patch_size']}x{train['patch_size']} patches are too small to train on (8 at least)")
    if train["rows"] < cfg.batch_size * cfg.workers:
        raise DataError(f"{cfg.data}: {train['rows']} train patches are fewer than one batch per worker ({cfg.batch_size} x {cfg.workers})")
    columns = train["columns"] & val["columns"]
    if cfg.coding_input and not set(CODING_COLUMNS) <= columns:
        raise DataError(f"{cfg.data}: no chroma coding columns ({', '.join(CODING_COLUMNS)}): --coding-input needs data "
                        "from prep --color (with --vary-chroma for codings other than libjpeg's default)")
    return {"channels": train["channels"], "patch_size": train["patch_size"], "train_rows": train["rows"], "val_rows": val["rows"],
            "columns": sorted(columns)}


def build_trainer(cfg: TrainConfig, data: dict, fs, root: str, out_fs, out_root: str):
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from .runtime import plan_train_workers

    use_gpu, resources, threads, why = plan_train_workers(cfg.workers, cfg.gpu, cfg.threads)
    print(f"carray: {cfg.workers} {'GPU' if use_gpu else 'CPU'} training worker(s), {resources} each ({why})", flush=True)
    # select_columns, not read_parquet(columns=) (deprecated): Ray Data pushes it into the read.
    train = ray.data.read_parquet(storage.join(root, "train"), filesystem=fs).select_columns(training_columns(data["columns"]))
    return TorchTrainer(
        train_loop_per_worker,
        # NCCL between GPU workers; one worker needs no collective backend that requires CUDA.
        torch_config=TorchConfig(backend="nccl" if use_gpu and cfg.workers > 1 else "gloo"),
        train_loop_config={
            "cfg": asdict(cfg), "channels": data["channels"], "threads": threads,
            "arch": data["arch"], "model_args": data["model_args"], "init": data.get("init"),
        },
        scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=use_gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=cfg.name,
            storage_path=out_root,
            storage_filesystem=out_fs,
            checkpoint_config=CheckpointConfig(
                num_to_keep=cfg.keep_checkpoints, checkpoint_score_attribute="val_psnr_gain", checkpoint_score_order="max"
            ),
            failure_config=FailureConfig(max_failures=cfg.max_failures),
        ),
        datasets={"train": train.randomize_block_order()},  # val: a fixed sample, read by rank 0 (_val_batches)
    )


def remove_unregistered_checkpoints(fs, run_root: str, result) -> list[str]:
    """Delete the checkpoint folders of a finished run that Ray Train never registered; returns
    their names. A worker writes its folder before the controller takes the report, and Ray Train
    drops the queued reports of a worker that dies in between: such a folder is never resumed from,
    nor counted or deleted by --keep-checkpoints, and would stay in the output for good."""
    registered = [checkpoint for checkpoint, _ in result.best_checkpoints or []] + [result.checkpoint]
    kept = {posixpath.basename(checkpoint.path.rstrip("/")) for checkpoint in registered if checkpoint is not None}
    removed = []
    for info in fs.get_file_info(pafs.FileSelector(run_root, allow_not_found=True)):
        if info.type == pafs.FileType.Directory and info.base_name.startswith("checkpoint_") and info.base_name not in kept:
            storage.delete_dir_if_exists(fs, info.path)
            removed.append(info.base_name)
    return sorted(removed)


def _load_state(checkpoint) -> dict:
    with checkpoint.as_directory() as folder:
        return torch.load(os.path.join(folder, STATE_FILE), map_location="cpu", weights_only=True)


def write_metrics_csv(history: list[dict]) -> bytes:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=METRIC_FIELDS)
    writer.writeheader()
    for row in history:
        writer.writerow({k: ("" if isinstance(row.get(k), float) and math.isnan(row[k]) else row.get(k)) for k in METRIC_FIELDS})
    return buf.getvalue().encode()


def loss_figure(history: list[dict]) -> bytes:
    """Train and validation loss by step (the original project's figure), as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in history]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(steps, [r["train_loss"] for r in history], label="train loss", lw=1)
    val = [(r["step"], r["val_loss"]) for r in history if not math.isnan(r["val_loss"])]
    if val:
        ax.plot(*zip(*val), label="val loss", lw=1.5)
    ax.set_xlabel("step")
    ax.set_ylabel("MSE (pixels on [0, 1])")
    ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def network_for(cfg: TrainConfig, channels: int) -> dict:
    """The network to train: {"arch", "model_args"} from the options, or, with --init-from, the
    model file's own architecture and shape (plus the quality input when asked for), its bytes
    ("init") and how it was trained ("init_training", kept in the new file's provenance)."""
    if (cfg.quality_input or cfg.coding_input) and not cfg.init_from and cfg.arch != "unshuffled-cnn":
        raise DataError(f"--{'coding' if cfg.coding_input else 'quality'}-input needs --arch unshuffled-cnn (got {cfg.arch})")
    if cfg.coding_input and channels != 3:
        raise DataError("--coding-input: the chroma coding is a colour network's input; the data has gray patches")
    if not cfg.init_from:
        return {"arch": cfg.arch, "model_args": cfg.model_args(channels)}
    from .model import ModelFileError
    from .modelfiles import read_model_file

    raw = read_model_file(cfg.init_from, cfg.s3())  # ModelFileError names the file
    source, training = load_model_bytes(raw, cfg.init_from)
    args = dict(source.args)
    if args.get("channels") != channels:
        raise DataError(f"--init-from {cfg.init_from}: a {args.get('channels')}-channel model, but the data has {channels}-channel patches")
    if cfg.blocks is not None and source.arch == "unshuffled-cnn":
        if cfg.blocks < args["blocks"]:
            raise DataError(f"--blocks {cfg.blocks}: the model in --init-from {cfg.init_from} has {args['blocks']}; a network can grow, not shrink")
        args["blocks"] = cfg.blocks  # grown: the new blocks start as the identity (model.init_from)
    if cfg.quality_input or cfg.coding_input:
        if source.arch != "unshuffled-cnn":
            flag = "--coding-input" if cfg.coding_input else "--quality-input"
            raise ModelFileError(f"--init-from {cfg.init_from}: {flag} needs an unshuffled-cnn model, this is {source.arch}")
        args["quality_input"] = True
        if cfg.coding_input:
            args["coding_input"] = True
    summary = {"file": cfg.init_from, "arch": source.arch, "steps": training.get("steps"), "data": training.get("data")}
    return {"arch": source.arch, "model_args": args, "init": raw, "init_training": summary}


class TrainingDiverged(JobError):
    """The loss became NaN/inf; the last good checkpoint is kept."""


def run_train(cfg: TrainConfig) -> dict:
    """Run the train job; returns its summary. Raises DataError before starting on bad data,
    TrainingDiverged when the loss became NaN/inf (the last good checkpoint is kept)."""
    from .runtime import connect

    started = time.time()
    cfg.check()
    # Workers run in Ray's own folders: relative local paths must mean what they meant here.
    cfg = replace(cfg, data=storage.absolute(cfg.data), output=storage.absolute(cfg.output), init_from=storage.absolute(cfg.init_from))
    fs, root = storage.resolve(cfg.data, cfg.s3())
    out_fs, out_root = storage.resolve(cfg.output, cfg.s3())
    data = inspect_data(cfg, fs, root)
    data.update(network_for(cfg, data["channels"]))
    try:  # a --train-only that names nothing in this network is refused before anything starts
        freeze_all_but(build_model(data["arch"], **data["model_args"]), cfg.train_only)
    except ValueError as error:
        raise OptionError(str(error)) from None
    connect(cfg.address)
    storage.make_output_root(out_fs, out_root, cfg.output, cfg.create_bucket)
    result = build_trainer(cfg, data, fs, root, out_fs, out_root).fit()
    status = result.return_value or {}
    if status.get("diverged"):
        raise TrainingDiverged(
            f"the training loss became NaN/inf after step {status['step']}; the last good checkpoint "
            f"is kept in {cfg.output}/{cfg.name}/ (lower --lr and re-run with the same --name to resume from it)"
        )
    final = _load_state(result.checkpoint)
    history = final["history"]
    best = result.get_best_checkpoint("val_psnr_gain", "max") if any(not math.isnan(r["val_psnr_gain"]) for r in history) else None
    chosen = _load_state(best) if best is not None else final
    model = build_model(data["arch"], **data["model_args"])
    model.load_state_dict(chosen["model"])
    chosen_row = next((r for r in history if r["step"] == chosen["step"]), {})
    training = {
        "data": cfg.data, "steps": int(chosen["step"]), "config": asdict(cfg), "patch_size": data["patch_size"],
        "val_psnr_gain": chosen_row.get("val_psnr_gain"), "train_patches": data["train_rows"],
        "init_from": data.get("init_training"),
    }
    model_path = storage.join(out_root, "model.pt")
    storage.write_bytes_atomic(out_fs, model_path, model_bytes(model, training))
    storage.write_bytes_atomic(out_fs, storage.join(out_root, "metrics.csv"), write_metrics_csv(history))
    storage.write_bytes_atomic(out_fs, storage.join(out_root, "loss.png"), loss_figure(history))
    load_model_bytes(storage.read_bytes(out_fs, model_path), model_path)  # the file we ship must load
    orphans = remove_unregistered_checkpoints(out_fs, storage.join(out_root, cfg.name), result)
    if orphans:
        print(f"carray: removed {len(orphans)} checkpoint folder(s) Ray Train never registered (written as a worker died): {', '.join(orphans)}")
    last = history[-1] if history else {}
    return {
        "output": cfg.output, "model": storage.join(cfg.output, "model.pt"), "steps": int(final["step"]),
        "exported_step": int(chosen["step"]), "val_psnr_gain": chosen_row.get("val_psnr_gain"),
        "last": last, "seconds": round(time.time() - started, 1), "checkpoints": result.path,
        "resumed_from": int(status.get("resumed_from", 0)), "stopped_by_time_limit": bool(status.get("timed_out")),
    }
