"""infer: restore a JPEG collection from a folder or bucket into another, on Ray Data.

    read_binary_files (keeps the path) -> decode (CPU tasks) -> Restorer (actor pool, one model
    per actor, GPUs when present) -> encode (CPU tasks) -> ImageSink (one file per input)

Every input ends as exactly one output at the same relative path, or one line in
``_failures.jsonl``; outputs appear atomically; a re-run skips inputs whose output exists.
Rows carry an ``error`` column: a stage that fails on one image records why and passes the row
on, so bad input never stops the job.
"""
from __future__ import annotations

import posixpath
import time
from dataclasses import asdict
from importlib import resources
from typing import Optional

import numpy as np
import pyarrow.fs as pafs
import ray
from ray.data import Datasink

from . import storage
from .config import InferConfig
from .images import IMAGE_EXTENSIONS, OUTPUT_FORMATS, DecodedImage, ImageError, decode_image, encode_image

FAILURES_FILE = "_failures.jsonl"
SUMMARY_FILE = "_summary.json"
SHIPPED_MODELS = ("gray", "color")

# --- rows: Arrow-friendly columns between the stages ---


def _empty_row(path: str, error: str) -> dict:
    return {"path": path, "pixels": b"", "height": 0, "width": 0, "channels": 0, "alpha": b"", "icc": b"", "exif": b"", "error": error, "node": ""}


def to_row(path: str, image: DecodedImage) -> dict:
    h, w = image.pixels.shape[:2]
    return {
        "path": path, "pixels": image.pixels.tobytes(), "height": h, "width": w,
        "channels": 3 if image.is_color else 1,
        "alpha": b"" if image.alpha is None else image.alpha.tobytes(),
        "icc": image.icc or b"", "exif": image.exif or b"", "error": "", "node": "",
    }


def from_row(row: dict) -> DecodedImage:
    h, w, c = int(row["height"]), int(row["width"]), int(row["channels"])
    shape = (h, w) if c == 1 else (h, w, c)
    pixels = np.frombuffer(row["pixels"], np.uint8).reshape(shape)
    alpha = np.frombuffer(row["alpha"], np.uint8).reshape(h, w) if len(row["alpha"]) else None
    return DecodedImage(pixels=pixels, alpha=alpha, icc=bytes(row["icc"]) or None, exif=bytes(row["exif"]) or None)


def decode_row(row: dict, *, root: str, max_pixels: Optional[int]) -> dict:
    """map() stage: file bytes -> pixels, or the reason it cannot be decoded."""
    path = posixpath.relpath(row["path"], root) if root else row["path"]
    try:
        return to_row(path, decode_image(row["bytes"], max_pixels))
    except ImageError as exc:
        return _empty_row(path, str(exc))
    except MemoryError:
        return _empty_row(path, "out of memory while decoding (lower --max-pixels or add memory)")
    except Exception as exc:  # last resort: one bad file must never stop the job
        return _empty_row(path, f"cannot decode: {type(exc).__name__}: {exc}")


def encode_row(row: dict, *, fmt: str, quality: int) -> dict:
    """map() stage: restored pixels -> output file bytes."""
    out = {"path": row["path"], "data": b"", "megapixels": 0.0, "error": row["error"], "node": row["node"]}
    if row["error"]:
        return out
    try:
        image = from_row(row)
        out["data"] = encode_image(image, fmt, quality)
        out["megapixels"] = image.pixels.shape[0] * image.pixels.shape[1] / 1e6
    except Exception as exc:  # a codec refusing an image must not stop the job
        out["error"] = f"cannot encode as {fmt}: {exc}"
    return out


class Restorer:
    """map_batches callable class: loads the models once per actor, restores one image per call."""

    def __init__(self, model_files: dict[str, bytes], tile: int, threads: int):
        import torch

        from .model import load_model_bytes
        from .restore import pick_device, prepare_model

        self.device = pick_device()
        if self.device.type == "cpu":
            torch.set_num_threads(threads)
        self.models = {kind: prepare_model(load_model_bytes(data, kind)[0], self.device) for kind, data in model_files.items()}
        self.tile = tile
        self.node = ray.get_runtime_context().get_node_id()  # the summary reports which nodes restored

    def __call__(self, batch: dict) -> dict:
        from .restore import restore_image

        rows = [{k: batch[k][i] for k in batch} for i in range(len(batch["path"]))]
        for row in rows:
            if row["error"]:
                continue
            try:
                restored = restore_image(self.models, from_row(row), self.tile, self.device)
                row["pixels"] = restored.pixels.tobytes()
                row["node"] = self.node
            except MemoryError:
                row.update(_empty_row(row["path"], "out of memory while restoring (lower --tile)"))
            except Exception as exc:  # keep the job alive; the reason goes to _failures.jsonl
                row.update(_empty_row(row["path"], f"restoration failed: {type(exc).__name__}: {exc}"))
        return {k: [row[k] for row in rows] for k in batch}


# --- the sink ---


class ImageSink(Datasink):
    """Writes one file per input at its relative path (extension changed), atomically; rows with
    an error become failure records. The driver's copy collects every task's results."""

    def __init__(self, fs: pafs.FileSystem, root: str, names: dict[str, str]):
        self.fs, self.root, self.names = fs, root, names
        self.written: int = 0
        self.megapixels: float = 0.0
        self.failures: list[dict] = []
        self.nodes: set[str] = set()

    def write(self, blocks, ctx) -> dict:
        from ray.data.block import BlockAccessor

        result = {"written": 0, "megapixels": 0.0, "failures": [], "nodes": set()}
        for block in blocks:
            for row in BlockAccessor.for_block(block).iter_rows(public_row_format=False):
                path = row["path"]
                if row["error"]:
                    result["failures"].append({"path": path, "reason": row["error"]})
                    continue
                try:
                    storage.write_bytes_atomic(self.fs, storage.join(self.root, self.names[path]), row["data"])
                except OSError as exc:
                    result["failures"].append({"path": path, "reason": f"cannot write the output: {exc}"})
                    continue
                result["written"] += 1
                result["megapixels"] += row["megapixels"]
                result["nodes"].add(row["node"])
        return result

    def on_write_complete(self, write_result) -> None:
        for r in write_result.write_returns:
            self.written += r["written"]
            self.megapixels += r["megapixels"]
            self.failures.extend(r["failures"])
            self.nodes |= r["nodes"]


# --- planning (driver, no Ray) ---


def output_names(relative_paths: list[str], fmt: str) -> dict[str, str]:
    """Input relative path -> output relative path with the format's extension.

    Inputs that would collide (photo.jpg and photo.png) keep their own extension in front
    (photo.jpg.png), so that no two inputs ever share an output.
    """
    ext = OUTPUT_FORMATS[fmt][1]
    stems: dict[str, int] = {}
    for rel in relative_paths:
        stem = posixpath.splitext(rel)[0]
        stems[stem] = stems.get(stem, 0) + 1
    return {rel: (posixpath.splitext(rel)[0] if stems[posixpath.splitext(rel)[0]] == 1 else rel) + ext for rel in relative_paths}


def _existing_outputs(fs: pafs.FileSystem, root: str, fmt: str) -> set[str]:
    if not storage.exists(fs, root):
        return set()
    return set(storage.list_files(fs, root, (OUTPUT_FORMATS[fmt][1],)))


def shipped_model_files() -> dict[str, bytes]:
    """The default models in the package: {'gray': bytes, 'color': bytes} (those present)."""
    folder = resources.files("carray") / "models"
    found = {kind: (folder / f"{kind}.pt").read_bytes() for kind in SHIPPED_MODELS if (folder / f"{kind}.pt").is_file()}
    if not found:
        raise storage.StorageError("no model shipped in the package (carray/models/*.pt); pass --model PATH")
    return found


def single_model_file(cfg) -> bytes:
    """The one model a job that works in one mode needs (evaluate, export): cfg.model, or the
    shipped model for cfg.color. Checked here so a bad file fails before any work."""
    if cfg.model:
        return model_files(cfg)["given"]
    from .model import load_model_bytes

    kind = "color" if cfg.color else "gray"
    shipped = shipped_model_files()
    if kind not in shipped:
        raise storage.StorageError(f"no shipped {kind} model; pass --model PATH")
    load_model_bytes(shipped[kind], f"shipped {kind} model")
    return shipped[kind]


def model_files(cfg) -> dict[str, bytes]:
    """Model bytes by kind ({'given': ...} for cfg.model, else the shipped ones), checked on the
    driver so a bad --model fails before any work. cfg: any job config with .model and .s3()."""
    from .model import load_model_bytes

    if cfg.model is None:
        files = shipped_model_files()
    else:
        fs, path = storage.resolve(cfg.model, cfg.s3())
        try:
            files = {"given": storage.read_bytes(fs, path)}
        except OSError as exc:
            raise storage.StorageError(f"{cfg.model}: cannot read the model ({exc})") from None
    for kind, data in files.items():
        load_model_bytes(data, cfg.model or f"shipped {kind} model")
    return files


def _check_locations(cfg: InferConfig, src_root: str, dst_root: str) -> None:
    same_kind = storage.is_uri(cfg.input) == storage.is_uri(cfg.output)
    if same_kind and (dst_root == src_root or dst_root.startswith(src_root.rstrip("/") + "/")):
        raise storage.StorageError(f"{cfg.output} is inside {cfg.input}: a re-run would read its own outputs; choose another output")


def _pool(cfg: InferConfig) -> tuple[int, float, float, int]:
    """(actors, CPUs per actor, GPUs per actor, torch threads per actor).

    CPU actors ask for half a CPU each, so on a small node they never take every CPU from the
    read, decode and write tasks (a pool of whole-CPU actors on 2 CPUs starves them and hangs).
    """
    total = ray.cluster_resources()
    cpus, gpus = float(total.get("CPU", 1)), float(total.get("GPU", 0))
    use_gpu = gpus > 0 if cfg.gpu is None else cfg.gpu
    if use_gpu:
        if gpus < 1:
            raise storage.StorageError("--gpu was asked for, but the cluster has no GPU")
        return cfg.actors or int(gpus), 1.0, 1.0, 1
    actors = cfg.actors or max(1, int(cpus))
    return actors, 0.5, 0.0, max(1, int(cpus // actors))


def run_infer(cfg: InferConfig) -> dict:
    """Run the infer job; returns its summary (also written to ``_summary.json``).

    Raises storage.StorageError when SRC does not exist or holds no images.
    """
    from ray.data import ActorPoolStrategy

    from .runtime import connect, tune_data_context

    started = time.time()
    if cfg.format not in OUTPUT_FORMATS:
        raise ValueError(f"unknown --format {cfg.format!r}")
    src_fs, src_root = storage.resolve(cfg.input, cfg.s3())
    dst_fs, dst_root = storage.resolve(cfg.output, cfg.s3())
    _check_locations(cfg, src_root, dst_root)
    inputs = storage.list_files(src_fs, src_root, IMAGE_EXTENSIONS)
    if not inputs:
        raise storage.StorageError(f"{cfg.input}: no images found (looked for {', '.join(IMAGE_EXTENSIONS)})")
    names = output_names(inputs, cfg.format)
    done = set() if cfg.overwrite else _existing_outputs(dst_fs, dst_root, cfg.format)
    todo = [rel for rel in inputs if names[rel] not in done]
    files = model_files(cfg)
    storage.make_dirs(dst_fs, dst_root)
    storage.remove_stale_temporaries(dst_fs, dst_root)  # left by a run that was killed mid-write

    sink = ImageSink(dst_fs, dst_root, names)
    if todo:
        connect(cfg.address)
        tune_data_context()
        actors, cpus, gpus, threads = _pool(cfg)
        # Tasks ask for half a CPU, like the actors: a node with one CPU then always fits an actor
        # and a task (whole-CPU tasks next to half-CPU actors on 1-CPU nodes never get scheduled).
        task_cpus = {"num_cpus": 0.5}
        ds = ray.data.read_binary_files(
            [storage.join(src_root, rel) for rel in todo], include_paths=True, filesystem=src_fs, **task_cpus
        )
        ds = ds.map(decode_row, fn_kwargs={"root": src_root, "max_pixels": cfg.max_pixels}, **task_cpus)
        ds = ds.map_batches(
            Restorer,
            fn_constructor_kwargs={"model_files": files, "tile": cfg.tile, "threads": threads},
            compute=ActorPoolStrategy(min_size=actors, max_size=actors),
            batch_size=1,  # images differ in size; each is tiled inside the actor
            num_cpus=cpus,
            num_gpus=gpus,
            scheduling_strategy="SPREAD",  # model replicas on as many nodes as possible
        )
        ds = ds.map(encode_row, fn_kwargs={"fmt": cfg.format, "quality": cfg.jpeg_quality}, **task_cpus)
        ds.write_datasink(sink)

    seconds = time.time() - started
    failures = sorted(sink.failures, key=lambda f: f["path"])
    storage.write_jsonl(dst_fs, storage.join(dst_root, FAILURES_FILE), failures)
    summary = {
        "input": cfg.input, "output": cfg.output, "images": len(inputs), "restored": sink.written,
        "skipped": len(inputs) - len(todo), "failed": len(failures), "megapixels": round(sink.megapixels, 3),
        "seconds": round(seconds, 2), "megapixels_per_second": round(sink.megapixels / seconds, 3),
        "nodes": len(sink.nodes), "model": cfg.model or "shipped", "config": asdict(cfg),
    }
    storage.write_json(dst_fs, storage.join(dst_root, SUMMARY_FILE), summary)
    return summary


def format_summary(summary: dict) -> str:
    return (
        f"infer: {summary['restored']} restored, {summary['skipped']} skipped (output exists), "
        f"{summary['failed']} failed (see {FAILURES_FILE}) of {summary['images']} | "
        f"{summary['megapixels']:.1f} MP in {summary['seconds']:.1f} s, {summary['megapixels_per_second']:.2f} MP/s\n"
        f"output: {summary['output']}"
    )
