"""infer --preview N: look at a collection before restoring it.

1. The keys are listed (or read from --manifest) as the job would, and a seeded sample spread over
   all of them is kept (carray.infer.sample).
2. The headers of --preview-scan of them are read (the tables-only scan, carray.infer.scan): the
   collection's make-up and what the policy would do.
3. The first N of the sample go through the real job (carray.infer.job) into OUTPUT/restored/:
   same actors, device and precision as a full run, and its measured rate.
4. Each restored one gets its pictures: before and after at 100 % where restoring changed it most.
5. _summary.json and a self-contained index.html (carray.infer.page) say it all, with the
   estimated time and cost of the full run (carray.infer.cost).
"""
from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING, Optional

import ray

from .. import storage
from ..images import IMAGE_EXTENSIONS, decode_image
from .compare import crop_png, mean_change, most_changed, thumbnail_jpeg
from .cost import estimate
from .layout import FAILURES_FILE, SUMMARY_FILE, WORK_DIR, Locations
from .plan import output_name, passed_name, skip_reason
from .report import PROGRESS_EVERY_S
from .resources import READ_CPUS
from .sample import BottomK
from .scan import FAIL, PASS, RESTORE, make_up, scan_pack
from .sink import read_failures

if TYPE_CHECKING:
    from ..config import InferConfig

PAGE_FILE = "index.html"
SAMPLE_KEYS_FILE = "sample.txt"
RESTORED_DIR = "restored"
PICTURES_DIR = "images"
CROP = 256  # the before/after window's side at 100 %
SCAN_PACK = 64  # keys per scan task call
SHARD_SAMPLE_DIR = f"{WORK_DIR}/preview-sample"  # a shard preview's shown members, as files, while the job restores them


def run_preview(cfg: "InferConfig", say=print) -> dict:
    """Run a preview; returns its summary (also OUTPUT/_summary.json, shown by OUTPUT/index.html)."""
    from .job import key_source
    from ..modelfiles import model_files
    from ..runtime import connect, tune_data_context
    from .tracker import start_tracker

    started = time.time()
    cfg.check()
    where = Locations.resolve(cfg.input, cfg.output, cfg.s3())
    model_files(cfg.model, cfg.s3())  # a bad --model fails now, not after the listing
    storage.make_output_root(where.dst_fs, where.dst_root, cfg.output, cfg.create_bucket)
    connect(cfg.address)
    tune_data_context()
    tracker = start_tracker()
    try:
        sample, candidates, skipped = sample_keys(key_source(cfg, where, tracker, say), cfg, tracker, say)
    finally:
        ray.kill(tracker)
    listing_seconds = time.time() - started
    if not candidates:
        raise storage.StorageError(f"{cfg.input}: no images found (looked for {', '.join(IMAGE_EXTENSIONS)})")
    say(f"carray: {candidates} images listed in {listing_seconds:.1f} s; reading the headers of a sample of {len(sample)}")
    scan_started = time.time()
    scanned = scan_headers(sample, where, cfg)
    say(f"carray: headers read at {len(sample) / max(time.time() - scan_started, 1e-6):.0f} files/s")
    return finish_preview(cfg, where, scanned, candidates, skipped, listing_seconds, time.time() - scan_started, started, say)


def run_shard_preview(cfg: "InferConfig", say=print) -> dict:
    """A preview of shards: a seeded sample of the images inside a few of them (carray.infer.shardsample),
    their first --preview written as files SHARD/MEMBER under OUT/_carray/preview-sample/ and restored
    from there by the job; the collection's make-up, time and cost estimated as for files."""
    from ..modelfiles import model_files
    from ..runtime import connect, tune_data_context
    from .job import shard_root
    from .shardjob import shard_keys
    from .shardsample import PREVIEW_SHARDS, sample_shards, write_sample

    started = time.time()
    cfg.check()
    shards_where = Locations.resolve(shard_root(cfg.input), cfg.output, cfg.s3())
    model_files(cfg.model, cfg.s3())
    storage.make_output_root(shards_where.dst_fs, shards_where.dst_root, cfg.output, cfg.create_bucket)
    keys = shard_keys(cfg, shards_where)
    say(f"carray: {len(keys)} shard(s); reading the images of {min(len(keys), PREVIEW_SHARDS)} of them for a sample of {max(cfg.preview_scan, cfg.preview)}")
    sample = sample_shards(shards_where, keys, keys == [""], scan=cfg.preview_scan, shown=cfg.preview, seed=cfg.seed, max_pixels=cfg.max_pixels,
                           policy=cfg.policy(), image_keys=tuple(cfg.image_keys), image_column=cfg.image_column)
    if not sample.images_read:
        raise storage.StorageError(f"{cfg.input}: no images found in the {sample.shards_read} shard(s) read")
    scan_seconds = time.time() - started
    write_sample(sample, shards_where, SHARD_SAMPLE_DIR)
    say(f"carray: {sample.images_read} images in {sample.shards_read} shard(s) read: about {sample.estimated_images} in all")
    files_cfg = dataclasses.replace(cfg, input=storage.join(cfg.output, SHARD_SAMPLE_DIR), input_kind="files", manifest=None, retry_failed=False)
    where = Locations.resolve(files_cfg.input, cfg.output, cfg.s3())
    connect(cfg.address)
    tune_data_context()
    shards = {"in_all": sample.shards, "read": sample.shards_read, "images_read": sample.images_read}
    try:
        return finish_preview(files_cfg, where, sample.scanned, sample.estimated_images, {}, 0.0, scan_seconds, started, say,
                              extra={"input": cfg.input, "shards": shards})
    finally:
        storage.delete_dir_if_exists(where.dst_fs, where.work_path())  # the sample's files, and their folder


def finish_preview(cfg: "InferConfig", where: Locations, scanned: list[dict], candidates: int, skipped: dict, listing_seconds: float,
                   scan_seconds: float, started: float, say=print, extra: Optional[dict] = None) -> dict:
    """The sample's first --preview through the real job, their pictures, the summary (with `extra`)
    and the page."""
    from .job import run_job

    shown = [row["path"] for row in scanned[: cfg.preview]]
    storage.write_bytes_atomic(where.dst_fs, where.output_path(SAMPLE_KEYS_FILE), "".join(k + "\n" for k in shown).encode())
    say(f"carray: restoring {len(shown)} of them as the job would")
    run = run_job(dataclasses.replace(cfg, preview=0, output=storage.join(cfg.output, RESTORED_DIR),
                                      manifest=storage.join(cfg.output, SAMPLE_KEYS_FILE), overwrite=True, retry_failed=False), say)
    outcomes = sample_outcomes(shown, scanned, where, cfg.format)
    items = make_pictures(outcomes, where)
    summary = build_preview_summary(cfg, candidates, skipped, scanned, items, run, listing_seconds, scan_seconds, time.time() - started)
    summary.update(extra or {})
    storage.write_json(where.dst_fs, where.output_path(SUMMARY_FILE), summary)
    from .page import render_page

    storage.write_bytes_atomic(where.dst_fs, where.output_path(PAGE_FILE), render_page(summary).encode())
    return summary


def sample_keys(source, cfg: "InferConfig", tracker, say=print) -> tuple[list[str], int, dict]:
    """Every key of the source seen once, in the driver, keeping the sample (--preview-scan keys):
    (sample in priority order, candidate images in all, {skip reason: count})."""
    bottom = BottomK(max(cfg.preview_scan, cfg.preview), cfg.seed)
    skipped: dict[str, int] = {}
    said = time.monotonic()
    for batch in source.keys.iter_batches(batch_size=None, batch_format="pyarrow"):
        if time.monotonic() - said > PROGRESS_EVERY_S:
            say(f"carray: {bottom.count} images listed so far")
            said = time.monotonic()
        for keys in batch.column("key").to_pylist():
            for key in keys:
                reason = skip_reason(key, cfg.include_hidden)
                if reason:
                    skipped[reason] = skipped.get(reason, 0) + 1
                else:
                    bottom.add(key)
    for reason, n in ray.get(tracker.listing_skips.remote()).items():  # what the listing tasks counted and did not hand on
        skipped[reason] = skipped.get(reason, 0) + n
    return bottom.keys(), bottom.count, skipped


def scan_headers(keys: list[str], where: Locations, cfg: "InferConfig") -> list[dict]:
    """The tables-only scan of `keys` by Ray Data tasks, in the keys' order."""
    ds = ray.data.from_items([{"path": k} for k in keys], override_num_blocks=max(1, -(-len(keys) // SCAN_PACK)))
    ds = ds.map_batches(scan_pack, batch_size=SCAN_PACK, batch_format="pyarrow", **READ_CPUS,
                        fn_kwargs=dict(where=where, max_pixels=cfg.max_pixels, policy=cfg.policy()))
    rows = {row["path"]: row for row in ds.take_all()}
    return [rows[k] for k in keys]


def sample_outcomes(shown: list[str], scanned: list[dict], where: Locations, fmt: str) -> list[dict]:
    """What the job did with each shown input: restored, passed through, or failed, and why."""
    failures = read_failures(where.dst_fs, storage.join(where.dst_root, RESTORED_DIR, FAILURES_FILE)) or {}
    outcomes = []
    for index, (path, row) in enumerate(zip(shown, scanned)):
        restored = output_name(path, fmt)
        item = {**row, "index": index, "restored": f"{RESTORED_DIR}/{restored}"}
        if path in failures:
            item.update(outcome=FAIL, reason=failures[path])
        elif row["decision"] == PASS:
            item.update(outcome=PASS, restored=f"{RESTORED_DIR}/{passed_name(path, restored)}")
        else:
            item["outcome"] = row["decision"]
        outcomes.append(item)
    return outcomes


@ray.remote(**READ_CPUS)
def _pictures(item: dict, where: Locations) -> dict:
    return pictures(item, where)


def make_pictures(outcomes: list[dict], where: Locations) -> list[dict]:
    """Each restored item's pictures, one task each."""
    return ray.get([_pictures.remote(item, where) for item in outcomes])


def pictures(item: dict, where: Locations) -> dict:
    """One sampled input's pictures: a thumbnail, and for a restored one the before/after crops of
    the CROP x CROP window where restoring changed it most. Never raises: a picture that cannot be
    made is said on the page instead."""
    item = dict(item, pictures={})
    if item["outcome"] == FAIL:
        return item
    stem = f"{PICTURES_DIR}/{item['index']:04d}"
    try:
        before = decode_image(storage.read_bytes(where.src_fs, where.input_path(item["path"])), None).pixels
        write = lambda name, data: storage.write_bytes_atomic(where.dst_fs, where.output_path(name), data)  # noqa: E731
        write(f"{stem}-thumbnail.jpg", thumbnail_jpeg(before))
        item["pictures"]["thumbnail"] = f"{stem}-thumbnail.jpg"
        if item["outcome"] != RESTORE:
            return item
        after = decode_image(storage.read_bytes(where.dst_fs, where.output_path(item["restored"])), None).pixels
        region = most_changed(before, after, CROP)
        write(f"{stem}-before.png", crop_png(before, region))
        write(f"{stem}-after.png", crop_png(after, region))
        item["pictures"].update(before=f"{stem}-before.png", after=f"{stem}-after.png")
        item.update(region=dataclasses.asdict(region), image_height=int(before.shape[0]), image_width=int(before.shape[1]),
                    change=round(mean_change(before, after), 3), region_change=round(mean_change(before, after, region), 3))
    except Exception as exc:  # the page says it; the preview goes on
        item["picture_error"] = f"{type(exc).__name__}: {exc}"
    return item


def combined_decisions(scanned: list[dict], items: list[dict]) -> list[dict]:
    """The scanned rows, with what the job actually did for the shown ones (it decodes: it finds
    what a header alone cannot, such as a truncated file)."""
    done = {item["path"]: item for item in items}
    return [dict(row, decision=done[row["path"]]["outcome"], reason=done[row["path"]]["reason"]) if row["path"] in done else row
            for row in scanned]


def build_preview_summary(cfg, candidates: int, skipped: dict, scanned: list[dict], items: list[dict], run: dict,
                          listing_seconds: float, scan_seconds: float, seconds: float) -> dict:
    rows = combined_decisions(scanned, items)
    makeup = make_up(rows)
    share = {d: n / len(rows) for d, n in makeup["decisions"].items()}
    restore_mp = candidates * makeup["megapixels"][RESTORE] / len(rows)
    rate = run.get("steady_megapixels_per_second") or run["megapixels_per_second"]
    return {
        "input": cfg.input, "output": cfg.output, "seed": cfg.seed,
        "listed": candidates + sum(skipped.values()), "images": candidates, "skipped": sum(skipped.values()), "skipped_by_reason": skipped,
        "scanned": len(rows), "shown": len(items),
        "estimated": {"restored": round(candidates * share[RESTORE]), "passed_through": round(candidates * share[PASS]),
                      "failed": round(candidates * share[FAIL]), "share": {d: round(s, 4) for d, s in share.items()},
                      "bytes_read": round(candidates * sum(makeup["bytes"].values()) / len(rows))},
        "make_up": makeup,
        "cost": estimate(megapixels=restore_mp, rate_here=rate, gpus_here=run["gpus"], cpus_here=run["cpus"], listing_seconds=listing_seconds),
        "sample_run": {key: run[key] for key in ("restored", "passed_through", "failed", "megapixels", "seconds", "megapixels_per_second",
                                                 "steady_megapixels_per_second", "seconds_to_first_output", "gpus", "cpus",
                                                 "restoring_actors", "precision", "runtime")},
        "headers_per_second": round(len(rows) / max(scan_seconds, 1e-6), 1),
        "listing_seconds": round(listing_seconds, 2), "seconds": round(seconds, 2),
        "model": run["model"], "model_sha256": run["model_sha256"], "precision": run["precision"], "carray_version": run["carray_version"],
        "items": items,
    }


def format_preview(summary: dict) -> str:
    from .page import dollars_text, hours_text

    est, cost = summary["estimated"], summary["cost"]
    here = cost["this_cluster"]
    lines = [
        f"preview: {summary['images']} images listed ({summary['skipped']} other files skipped); headers of {summary['scanned']} read "
        f"({summary['headers_per_second']:.0f} files/s), {summary['shown']} restored as samples",
        f"estimated: {est['restored']} to restore, {est['passed_through']} passed through, {est['failed']} failing; "
        f"{cost['megapixels_to_restore']:.0f} MP to restore",
        f"this cluster: {here['megapixels_per_second']:.3f} MP/s measured -> {hours_text(here['hours'])}, {dollars_text(here['dollars'])} "
        f"({here['devices']:g} {here['device']}s)",
        f"one H100, the job as measured ({cost['h100_job_as_measured']['megapixels_per_second']} MP/s): "
        f"{hours_text(cost['h100_job_as_measured']['hours'])}, {dollars_text(cost['h100_job_as_measured']['dollars'])}",
        f"page: {summary['output']}/{PAGE_FILE}",
    ]
    return "\n".join(lines)
