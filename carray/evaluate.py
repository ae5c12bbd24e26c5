"""evaluate: PSNR / SSIM / PSNR-B of JPEG and of carray against the originals, on Ray Data.

For every (image, quality): compress the clean image with Pillow's libjpeg, restore it, and score
both against the original with the published conventions (gray = MATLAB Y channel, colour = RGB,
no border crop). Metrics are per image, then averaged per quality. The (image, quality) pairs
are spread over an actor pool, one model per actor.
"""
from __future__ import annotations

import csv
import io
import time
from dataclasses import asdict

import numpy as np
from PIL import Image, ImageDraw

from . import jpeg, metrics, storage
from .config import EvaluateConfig, parse_qualities
from .images import IMAGE_EXTENSIONS, decode_image
from .pairs import prepare_pixels

SCORES = ("psnr", "ssim", "psnr_b")


def score(original: np.ndarray, test: np.ndarray) -> dict[str, float]:
    return {"psnr": metrics.psnr(original, test), "ssim": metrics.ssim(original, test), "psnr_b": metrics.psnr_b(original, test)}


def evaluate_image(model, data: bytes, quality: int, color: bool, tile: int, device=None) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray]:
    """One clean image at one quality -> (scores row, original, JPEG, restored)."""
    from .restore import restore_pixels

    original = prepare_pixels(decode_image(data, None).pixels, color)
    degraded = jpeg.roundtrip(original, quality)
    restored = restore_pixels(model, degraded, tile, device)
    row = {f"jpeg_{k}": v for k, v in score(original, degraded).items()}
    row.update({f"carray_{k}": v for k, v in score(original, restored).items()})
    return row, original, degraded, restored


class Evaluator:
    """map_batches callable class: one model per actor; scores (image, quality) rows."""

    def __init__(self, model_file: bytes, fs, root: str, color: bool, tile: int, threads: int):
        import torch

        from .model import load_model_bytes
        from .restore import pick_device, prepare_model

        self.device = pick_device()
        if self.device.type == "cpu":
            torch.set_num_threads(threads)
        self.model = prepare_model(load_model_bytes(model_file)[0], self.device)
        self.fs, self.root, self.color, self.tile = fs, root, color, tile

    def __call__(self, batch: dict) -> dict:
        rows = []
        for image, quality in zip(batch["image"], batch["quality"]):
            data = storage.read_bytes(self.fs, storage.join(self.root, image))
            row, *_ = evaluate_image(self.model, data, int(quality), self.color, self.tile, self.device)
            rows.append({"image": image, "quality": int(quality), **row})
        return {k: [r[k] for r in rows] for k in rows[0]}


def summarize(rows: list[dict]) -> list[dict]:
    """Means per quality (per-image metrics averaged, never pooled)."""
    table = []
    for quality in sorted({r["quality"] for r in rows}):
        group = [r for r in rows if r["quality"] == quality]
        means = {k: float(np.mean([r[k] for r in group])) for k in group[0] if k.startswith(("jpeg_", "carray_"))}
        table.append({"quality": quality, "images": len(group), **means})
    return table


def markdown(table: list[dict], title: str) -> str:
    lines = [
        f"# {title}", "",
        "PSNR (dB) / SSIM / PSNR-B, per image then averaged; gain = carray PSNR - JPEG PSNR.", "",
        "| quality | images | JPEG | carray | gain (dB) |", "|---|---|---|---|---|",
    ]
    for r in table:
        jpeg_cell = f"{r['jpeg_psnr']:.2f} / {r['jpeg_ssim']:.4f} / {r['jpeg_psnr_b']:.2f}"
        ours = f"{r['carray_psnr']:.2f} / {r['carray_ssim']:.4f} / {r['carray_psnr_b']:.2f}"
        lines.append(f"| q{r['quality']} | {r['images']} | {jpeg_cell} | {ours} | {r['carray_psnr'] - r['jpeg_psnr']:+.2f} |")
    return "\n".join(lines) + "\n"


def comparison_figure(original: np.ndarray, degraded: np.ndarray, restored: np.ndarray, crop: int = 160, zoom: int = 2) -> bytes:
    """original | JPEG | restored: a centre crop of each, zoomed, side by side, labelled (PNG)."""
    h, w = original.shape[:2]
    size = min(crop, h, w)
    y, x = (h - size) // 2, (w - size) // 2
    panels = [Image.fromarray(a[y : y + size, x : x + size]).resize((size * zoom, size * zoom), Image.NEAREST) for a in (original, degraded, restored)]
    gap, label = 6, 18
    canvas = Image.new(panels[0].mode, (3 * size * zoom + 2 * gap, size * zoom + label), 255 if panels[0].mode == "L" else (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i, (panel, name) in enumerate(zip(panels, ("original", "JPEG", "carray"))):
        canvas.paste(panel, (i * (size * zoom + gap), label))
        draw.text((i * (size * zoom + gap) + 4, 2), name, fill=0 if canvas.mode == "L" else (0, 0, 0))
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return buf.getvalue()


def run_evaluate(cfg: EvaluateConfig) -> dict:
    import ray
    from ray.data import ActorPoolStrategy

    from .model import load_model_bytes
    from .runtime import connect

    started = time.time()
    fixed, ranges = parse_qualities(cfg.quality)
    qualities = sorted(set(fixed) | {q for lo, hi in ranges for q in range(lo, hi + 1)})
    fs, root = storage.resolve(cfg.images, cfg.s3())
    out_fs, out_root = storage.resolve(cfg.output, cfg.s3())
    images = storage.list_files(fs, root, IMAGE_EXTENSIONS)
    if not images:
        raise storage.StorageError(f"{cfg.images}: no images found")
    from .infer import single_model_file

    model_file = single_model_file(cfg)
    connect(cfg.address)
    cpus = int(ray.cluster_resources().get("CPU", 1))
    items = [{"image": image, "quality": q} for image in images for q in qualities]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.map_batches(
        Evaluator,
        fn_constructor_kwargs=dict(model_file=model_file, fs=fs, root=root, color=cfg.color, tile=cfg.tile, threads=1),
        compute=ActorPoolStrategy(min_size=max(1, cpus), max_size=max(1, cpus)),
        batch_size=1,
        num_cpus=0.5,  # leave room for the other tasks on small nodes (see infer)
    )
    rows = sorted(ds.take_all(), key=lambda r: (r["image"], r["quality"]))
    table = summarize(rows)

    storage.make_dirs(out_fs, out_root)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    storage.write_bytes_atomic(out_fs, storage.join(out_root, "results.csv"), buf.getvalue().encode())
    mode = "colour (RGB)" if cfg.color else "gray (Y)"
    storage.write_bytes_atomic(out_fs, storage.join(out_root, "results.md"), markdown(table, f"{cfg.images}, {mode}").encode())

    model = load_model_bytes(model_file)[0].eval()
    for image in images[: cfg.figures]:
        _, original, degraded, restored = evaluate_image(model, storage.read_bytes(fs, storage.join(root, image)), qualities[0], cfg.color, cfg.tile)
        name = image.replace("/", "_").rsplit(".", 1)[0] + f"_q{qualities[0]}.png"
        storage.write_bytes_atomic(out_fs, storage.join(out_root, "figures", name), comparison_figure(original, degraded, restored))
    summary = {"images": len(images), "qualities": qualities, "table": table, "seconds": round(time.time() - started, 1), "config": asdict(cfg)}
    storage.write_json(out_fs, storage.join(out_root, "summary.json"), summary)
    return summary
