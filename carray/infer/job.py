"""The driver: check the options and locations, choose where the keys come from, build the
pipeline, run it, and write the summary. Each step is one short function below."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import pyarrow.fs as pafs
import ray

from .. import storage
from ..images import IMAGE_EXTENSIONS
from .decode import read_packs
from .keys import KEY_CHUNK, failures_as_manifest, listing_dataset, read_manifest
from .layout import FAILURES_FILE, SUMMARY_FILE, Locations
from .plan import plan_keys
from .report import ProgressPrinter, build_summary
from .resources import PLAN_CPUS, READ_CPUS
from .restorer import GPU_TILE_BATCH, Restorer
from .sink import ImageSink, merge_failure_parts, merge_parts
from .tracker import ask, start_tracker
from .write import write_pack

if TYPE_CHECKING:  # the stages run in task processes that need not import torch
    from ..config import InferConfig


@dataclass
class KeySource:
    """Where this run's keys come from: a Dataset of packs of keys, how many (None: not known
    before the run: a listing in progress, a manifest), and whether existing outputs count."""

    keys: "ray.data.Dataset"
    total: Optional[int]
    overwrite: bool
    listed: bool = False  # the input is being listed: the progress line says how many keys so far


def run_job(cfg: "InferConfig", say=print) -> dict:
    """Run the infer job on files or shards; returns its summary (also written to ``_summary.json``).
    (The preview is another mode of infer: carray.infer.driver chooses.)

    Raises OptionError for options it cannot use and storage.StorageError when the input does not
    exist or holds no images."""
    from ..modelfiles import model_files
    from ..runtime import connect, tune_data_context

    started = time.time()
    cfg.check()
    check_input(cfg)  # before Ray starts: a typo costs a second, not a cluster
    shards = input_kind(cfg) != "files"
    where = Locations.resolve(shard_root(cfg.input) if shards else cfg.input, cfg.output, cfg.s3())
    files = model_files(cfg.model, cfg.s3())
    prepare_output(cfg, where)
    connect(cfg.address)
    tune_data_context()
    if shards:
        from .shardjob import run_shards

        return run_shards(cfg, where, files, say)
    # One pack per block: a block is what Ray Data hands to one task or actor call, so every pack
    # is scheduled on its own and packs spread over every actor. Set before the first Dataset is
    # made (each copies the context). (Not Dataset.repartition: its task asks for a whole CPU,
    # which a 1-CPU node beside a half-CPU actor never has.)
    context = ray.data.DataContext.get_current()
    block_size, context.target_max_block_size = context.target_max_block_size, 1
    tracker = start_tracker()
    try:
        source = key_source(cfg, where, tracker, say)
        totals, networks = restore_all(cfg, where, files, source, tracker, say)
        listed_skips = ask(tracker.listing_skips.remote)
        networks["first_restored"] = ask(tracker.first_restored.remote)
        networks["actor_cpu"] = ask(tracker.actor_cpu.remote)
    finally:  # the context belongs to the process: a later job here gets its own default back
        context.target_max_block_size = block_size
        # The tracker lives as long as its driver: one that runs several jobs (tests, a notebook) would keep one per job.
        ray.kill(tracker)
    summary = finish(cfg, where, files, totals, listed_skips, networks, started)
    if source.listed and summary["seen"] == sum(listed_skips.values()):  # the listing handed on no key at all
        raise storage.StorageError(f"{cfg.input}: no images found (looked for {', '.join(IMAGE_EXTENSIONS)})")
    return summary


def input_kind(cfg: "InferConfig") -> str:
    """'files' or 'shards', from --input-kind or, with auto, from the input: a brace pattern or a
    .tar/.parquet file is shards; a folder is shards when its first files are shards and none is an
    image (a look at up to 1,000 files, before Ray starts)."""
    from .shards import shard_kind

    if cfg.input_kind != "auto":
        return "files" if cfg.input_kind == "files" else "shards"
    if "{" in cfg.input or shard_kind(cfg.input):
        return "shards"
    fs, root = probe(cfg.input, cfg)
    try:
        seen = [rel for _, (rel, _size) in zip(range(1000), storage.walk_files(fs, root))]
    except (storage.StorageError, OSError):
        return "files"  # check_input says what is wrong with it
    images = any(rel.lower().endswith(IMAGE_EXTENSIONS) for rel in seen)
    return "shards" if not images and any(shard_kind(rel) for rel in seen) else "files"


def shard_root(location: str) -> str:
    """The folder a shard pattern's names are relative to: 's3://b/shards/{000..009}.tar' -> 's3://b/shards'."""
    return location.split("{", 1)[0].rsplit("/", 1)[0] if "{" in location else location


def probe(location: str, cfg: "InferConfig") -> tuple:
    """(filesystem, path) for a first look at a location: on S3 one that gives up within seconds
    (the jobs' own retries for minutes, as a store that restarts needs)."""
    fs, path = storage.resolve(location, cfg.s3())
    return (cfg.s3().filesystem(probe=True) if isinstance(fs, pafs.S3FileSystem) else fs), path


def check_input(cfg: "InferConfig") -> None:
    """The input exists and answers, before any cluster starts: one line with what to do, not a
    traceback from deep inside a listing task."""
    fs, root = probe(shard_root(cfg.input), cfg)
    try:
        info = fs.get_file_info(root)
    except OSError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise storage.StorageError(f"cannot reach the input {cfg.input}: {first} (check --endpoint-url / AWS_ENDPOINT_URL, the "
                                   "network and the credentials)") from None
    if info.type == pafs.FileType.NotFound and not cfg.manifest and not cfg.retry_failed:
        raise storage.StorageError(f"{cfg.input}: does not exist (check the path or bucket and prefix)")


def prepare_output(cfg: "InferConfig", where: Locations) -> None:
    """The output root exists, and nothing a killed run left behind is in the way."""
    storage.make_output_root(where.dst_fs, where.dst_root, cfg.output, cfg.create_bucket)
    storage.remove_stale_temporaries(where.dst_fs, where.dst_root)  # left by a run that was killed mid-write
    for stale in ("failures", "metadata", "tiles"):  # from a run that was killed
        storage.delete_dir_if_exists(where.dst_fs, where.work_path(stale))


def key_source(cfg: "InferConfig", where: Locations, tracker, say) -> KeySource:
    """--retry-failed: the last run's failures; --manifest: its keys; else the input, listed by
    parallel tasks while the rest of the pipeline already restores."""
    if cfg.retry_failed:
        keys = failures_as_manifest(where)
        if keys is None:
            raise storage.StorageError(f"--retry-failed: {cfg.output}/{FAILURES_FILE} does not exist (no earlier run)")
        packs = [{"key": keys[i : i + KEY_CHUNK]} for i in range(0, len(keys), KEY_CHUNK)]
        say(f"carray: retrying the {len(keys)} inputs of the last {FAILURES_FILE}")
        return KeySource(ray.data.from_items(packs, override_num_blocks=max(1, len(packs))), len(keys), overwrite=True)
    if cfg.manifest:
        say(f"carray: keys from the manifest {cfg.manifest}")
        return KeySource(read_manifest(cfg.manifest, cfg.s3(), where.src_root), None, cfg.overwrite)
    say(f"carray: listing {cfg.input} in parallel tasks (one per top-level folder); restoring starts with the first keys")
    return KeySource(listing_dataset(where, cfg.include_hidden, tracker), None, cfg.overwrite, listed=True)


def restore_all(cfg: "InferConfig", where: Locations, files: dict, source: KeySource, tracker, say) -> tuple[dict, dict]:
    """Run the pipeline to its sink. Returns (the sink's counts, how the networks ran)."""
    from ..quantize import RUNTIME_NAMES, plan_networks
    from ..runtime import plan_pool

    pool = plan_pool(cfg.actors, cfg.gpu, per_gpu=cfg.actors_per_gpu, codecs=True)
    precision, runtime, onnx = plan_networks(files, cfg.precision, cfg.runtime, cuda=bool(pool.gpus), say=say)
    say(f"carray: {pool.actors} restoring actor(s) on {'GPU' if pool.gpus else 'CPU'} ({pool.reason}); precision {precision} ({RUNTIME_NAMES[runtime]})")
    networks = {"precision": precision, "runtime": runtime, "onnx": onnx, "actors": pool.actors,
                "gpus": round(pool.actors * pool.gpus, 3), "cpus": ray.cluster_resources().get("CPU", 0)}
    ds = build_pipeline(cfg, where, files, source, pool, networks, tracker)
    sink = ImageSink(where)
    with ProgressPrinter(tracker, source.total, say):
        ds.write_datasink(sink, ray_remote_args=PLAN_CPUS)  # Ray's default, a whole CPU, waits for the actors to finish
    networks.pop("onnx")
    return sink.totals, networks


def build_pipeline(cfg: "InferConfig", where: Locations, files: dict, source: KeySource, pool, networks: dict, tracker):
    """keys -> plan -> read + header (tiles of large images: decoded and cut) -> Restorer actors
    (decode, restore, encode, write) -> the write stage (tiles stored and stitched; counts)."""
    from ray.data import ActorPoolStrategy


    tile_batch = cfg.tile_batch or (GPU_TILE_BATCH if pool.gpus else 1)
    ds = source.keys.map_batches(
        plan_keys, batch_size=1, batch_format="pyarrow", **PLAN_CPUS,
        fn_kwargs=dict(fmt=cfg.format, where=where, overwrite=source.overwrite, include_hidden=cfg.include_hidden),
    )
    ds = ds.map_batches(
        read_packs, batch_size=1, batch_format="pyarrow", **READ_CPUS,
        fn_kwargs=dict(where=where, max_pixels=cfg.max_pixels, policy=cfg.policy(), split_above=cfg.split_above_mp(bool(pool.gpus)),
                       tile=cfg.tile, margin=restore_margin(files), tile_batch=tile_batch),
    )
    ds = ds.map_batches(
        Restorer,
        fn_constructor_kwargs={
            "model_files": files, "tile": cfg.tile, "threads": pool.threads, "tracker": tracker, "max_attempts": cfg.max_attempts,
            "tta": cfg.tta, "precision": networks["precision"], "onnx": networks["onnx"], "tile_batch": tile_batch,
            "where": where, "max_pixels": cfg.max_pixels, "fmt": cfg.format, "quality": cfg.jpeg_quality,
        },
        # A GPU actor decodes and encodes for its GPU: `calls` packs at once, in threads (the codecs
        # release Python's lock; the network takes one call at a time).
        compute=ActorPoolStrategy(min_size=pool.min_actors, max_size=pool.actors, max_concurrent_calls_per_actor=pool.calls,
                                  enable_true_multi_threading=pool.calls > 1),
        batch_size=1, batch_format="pyarrow",  # one pack per call
        num_cpus=pool.cpus,
        num_gpus=pool.gpus,
        # No scheduling_strategy: Ray Data spreads an actor pool over the nodes by itself (model
        # replicas on as many nodes as possible), and Ray 2.64 drops the argument.
    )
    return ds.map_batches(  # the sink's resources: Ray Data fuses the two into one task per pack
        write_pack, batch_size=1, batch_format="pyarrow", **PLAN_CPUS,
        fn_kwargs={"fmt": cfg.format, "quality": cfg.jpeg_quality, "where": where, "tracker": tracker},
    )


def restore_margin(files: dict[str, bytes]) -> int:
    """The context a tile of a large image is read with: the widest of the models' margins."""
    from ..model import load_model_bytes
    from ..restore import tile_margin

    return max(tile_margin(load_model_bytes(data, kind)[0]) for kind, data in files.items())


def finish(cfg: "InferConfig", where: Locations, files: dict, totals: dict, listed_skips: dict, networks: dict, started: float) -> dict:
    """Failure lines and metadata notes merged, the work folder removed, the summary written."""
    failed = merge_failure_parts(where)
    merge_parts(where, "metadata")
    storage.delete_dir_if_exists(where.dst_fs, where.work_path())
    summary = build_summary(cfg, totals, listed_skips, failed, started, networks, files)
    storage.write_json(where.dst_fs, where.output_path(SUMMARY_FILE), summary)
    return summary
