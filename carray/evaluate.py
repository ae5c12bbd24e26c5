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
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np
from PIL import Image, ImageDraw

from . import jpeg, metrics, storage
from .config import EvaluateConfig, parse_double, parse_qualities
from .images import IMAGE_EXTENSIONS, ImageError, decode_image, read_header
from .pairs import prepare_pixels
from .quality import DEFAULT_SUBSAMPLING, SUBSAMPLING_CODES, Policy, coding

SCORES = ("psnr", "ssim", "psnr_b")


def score(original: np.ndarray, test: np.ndarray) -> dict[str, float]:
    return {"psnr": metrics.psnr(original, test), "ssim": metrics.ssim(original, test), "psnr_b": metrics.psnr_b(original, test)}


DOUBLE_SHIFT = (4, 4)  # FBCNN's non-aligned double-JPEG benchmark


@dataclass(frozen=True)
class ChromaCoding:
    """How the test JPEGs code colour: `subsampling` code (carray.quality.SUBSAMPLING_CODES) and the
    chroma table's quality relative to the luma's (`offset`). The default is how published results
    make their JPEGs (libjpeg at quality q: 4:2:0, chroma table at q)."""

    subsampling: int = DEFAULT_SUBSAMPLING
    offset: int = 0

    def arguments(self, quality: int) -> dict:
        chroma = int(np.clip(quality + self.offset, 1, 100))
        return {"chroma_quality": chroma, "subsampling": self.subsampling}


def compress_for_test(original: np.ndarray, quality: int, first_quality: int = -1, chroma: ChromaCoding = ChromaCoding()) -> tuple[np.ndarray, bytes]:
    """The test input: (reference, JPEG bytes). Single: the original at `quality`. Double
    (first_quality > 0): at `first_quality`, shifted by DOUBLE_SHIFT, then at `quality`; the
    reference is the original shifted the same way."""
    if first_quality > 0:
        return jpeg.compress_twice(original, first_quality, quality, DOUBLE_SHIFT)
    return original, jpeg.compress(original, quality, **chroma.arguments(quality))


def evaluate_image(
    model, data: bytes, quality: int, color: bool, tile: int, device=None, first_quality: int = -1,
    policy: Policy = Policy(), max_pixels: Optional[int] = None, tta: bool = False, chroma: ChromaCoding = ChromaCoding(),
) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray]:
    """One clean image at one setting -> (scores row, reference, JPEG, result), the result being
    what the infer job would write: restored at the quality the JPEG's own tables say, or the JPEG
    itself where the policy passes it through."""
    from .restore import restore_pixels

    original = prepare_pixels(decode_image(data, max_pixels).pixels, color)
    reference, jpeg_bytes = compress_for_test(original, quality, first_quality, chroma)
    degraded = prepare_pixels(decode_image(jpeg_bytes, None).pixels, color)
    header = read_header(jpeg_bytes)
    use, passed = policy.decide(header.quality)
    # As the infer job does: the coding the file's own header says.
    how = None if use is None else coding(use, policy.chroma_quality(use, header.chroma_quality), header.subsampling)
    restored = degraded if passed else restore_pixels(model, degraded, tile, device, quality=how, tta=tta)
    row = {f"jpeg_{k}": v for k, v in score(reference, degraded).items()}
    row.update({f"carray_{k}": v for k, v in score(reference, restored).items()})
    row["passed"] = passed
    return row, reference, degraded, restored


def setting_name(quality: int, first_quality: int) -> str:
    return f"q{first_quality}>q{quality}" if first_quality > 0 else f"q{quality}"


class Evaluator:
    """map_batches callable class: one model per actor; scores (image, quality) rows. A row that
    fails carries its reason in `error` instead of stopping the job; rows asked for a figure carry
    its PNG bytes (so nothing is restored twice)."""

    def __init__(self, model_file: bytes, fs, root: str, color: bool, tile: int, threads: int, policy: Policy, max_pixels: Optional[int], tta: bool = False,
                 precision: str = "fp32", onnx: Optional[dict] = None, chroma: ChromaCoding = ChromaCoding()):
        from .quantize import setup_restoring_process

        self.device, networks = setup_restoring_process({"model": model_file}, precision, threads, onnx)
        self.model = networks["model"]
        self.fs, self.root, self.color, self.tile, self.policy, self.max_pixels, self.tta = fs, root, color, tile, policy, max_pixels, tta
        self.chroma = chroma

    def __call__(self, batch: dict) -> dict:
        rows = []
        for image, quality, first, figure in zip(batch["image"], batch["quality"], batch["first_quality"], batch["figure"]):
            out = {"image": image, "quality": int(quality), "first_quality": int(first), "setting": setting_name(int(quality), int(first)), "error": "", "figure": b""}
            try:
                data = storage.read_bytes(self.fs, storage.join(self.root, image))
                row, reference, degraded, restored = evaluate_image(
                    self.model, data, int(quality), self.color, self.tile, self.device, int(first), self.policy, self.max_pixels, self.tta, self.chroma
                )
                out.update(row)
                if figure:
                    out["figure"] = comparison_figure(reference, degraded, restored)
            except Exception as exc:  # one bad image is a line in the report, not the end of the job
                out.update({f"{who}_{k}": float("nan") for who in ("jpeg", "carray") for k in SCORES}, passed="")
                out["error"] = str(exc) if isinstance(exc, ImageError) else f"{type(exc).__name__}: {exc}"
            rows.append(out)
        return {k: [r[k] for r in rows] for k in rows[0]}


def summarize(rows: list[dict]) -> list[dict]:
    """Means per setting (per-image metrics averaged, never pooled); failed rows left out."""
    table = []
    good = [r for r in rows if not r["error"]]
    for first, quality in sorted({(r["first_quality"], r["quality"]) for r in good}):
        group = [r for r in good if (r["first_quality"], r["quality"]) == (first, quality)]
        means = {k: float(np.mean([r[k] for r in group])) for k in group[0] if k.startswith(("jpeg_", "carray_"))}
        table.append({
            "setting": setting_name(quality, first), "quality": quality, "first_quality": first, "images": len(group),
            "passed_through": sum(1 for r in group if r["passed"]), **means,
        })
    return table


def markdown(table: list[dict], title: str) -> str:
    lines = [
        f"# {title}", "",
        "PSNR (dB) / SSIM / PSNR-B, per image then averaged; gain = carray PSNR - JPEG PSNR.", "",
        "Double JPEG (qA>qB): compressed at A, shifted by (4, 4), compressed at B; scored against the shifted original.",
        "Passed through: images the default policy leaves as they are (their tables say a quality at or above its threshold).", "",
        "| setting | images | passed through | JPEG | carray | gain (dB) |", "|---|---|---|---|---|---|",
    ]
    for r in table:
        jpeg_cell = f"{r['jpeg_psnr']:.2f} / {r['jpeg_ssim']:.4f} / {r['jpeg_psnr_b']:.2f}"
        ours = f"{r['carray_psnr']:.2f} / {r['carray_ssim']:.4f} / {r['carray_psnr_b']:.2f}"
        lines.append(f"| {r['setting']} | {r['images']} | {r['passed_through']} | {jpeg_cell} | {ours} | {r['carray_psnr'] - r['jpeg_psnr']:+.2f} |")
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

    from .modelfiles import single_model_file
    from .quantize import plan_networks
    from .runtime import connect, plan_pool

    started = time.time()
    fixed, ranges = parse_qualities(cfg.quality)
    qualities = sorted(set(fixed) | {q for lo, hi in ranges for q in range(lo, hi + 1)})
    settings = [(q, -1) for q in qualities] + [(second, first) for first, second in parse_double(cfg.double)]
    policy = cfg.policy()
    fs, root = storage.resolve(cfg.images, cfg.s3())
    out_fs, out_root = storage.resolve(cfg.output, cfg.s3())
    images = storage.list_files(fs, root, IMAGE_EXTENSIONS)
    if not images:
        raise storage.StorageError(f"{cfg.images}: no images found")
    model_file = single_model_file(cfg.model, cfg.color, cfg.s3())
    storage.make_output_root(out_fs, out_root, cfg.output, cfg.create_bucket)
    connect(cfg.address)
    pool = plan_pool(actors=0, gpu=cfg.gpu)
    precision, runtime, onnx = plan_networks({"model": model_file}, cfg.precision, cfg.runtime, cuda=bool(pool.gpus))
    figure_setting = settings[0]
    items = [
        {"image": image, "quality": q, "first_quality": first, "figure": (q, first) == figure_setting and image in images[: cfg.figures]}
        for image in images for q, first in settings
    ]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.map_batches(
        Evaluator,
        fn_constructor_kwargs=dict(
            model_file=model_file, fs=fs, root=root, color=cfg.color, tile=cfg.tile, threads=pool.threads, policy=policy, max_pixels=cfg.max_pixels, tta=cfg.tta,
            precision=precision, onnx=onnx, chroma=ChromaCoding(SUBSAMPLING_CODES[cfg.subsampling], cfg.chroma_offset),
        ),
        compute=ActorPoolStrategy(min_size=pool.actors, max_size=pool.actors),
        batch_size=1,
        num_cpus=pool.cpus,
        num_gpus=pool.gpus,
    )
    rows = sorted(ds.take_all(), key=lambda r: (r["image"], r["first_quality"], r["quality"]))
    # Only the rows of the first setting carry a figure: take it from whichever row has one.
    figures = {}
    for r in rows:
        png = r.pop("figure", None)
        if png:
            figures[r["image"]] = png
    table = summarize(rows)

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    storage.write_bytes_atomic(out_fs, storage.join(out_root, "results.csv"), buf.getvalue().encode())
    mode = "colour (RGB)" if cfg.color else "gray (Y)"
    if cfg.color:  # how the JPEGs coded colour: published results use libjpeg's default
        mode += f", JPEGs by Pillow's libjpeg with {cfg.subsampling} chroma" + (f", chroma table at q{cfg.chroma_offset:+d}" if cfg.chroma_offset else "")
    storage.write_bytes_atomic(out_fs, storage.join(out_root, "results.md"), markdown(table, f"{cfg.images}, {mode}").encode())
    for image, png in figures.items():
        name = image.replace("/", "_").rsplit(".", 1)[0] + f"_{setting_name(figure_setting[0], figure_setting[1]).replace('>', '-')}.png"
        storage.write_bytes_atomic(out_fs, storage.join(out_root, "figures", name), png)
    failures = [{"image": r["image"], "setting": r["setting"], "reason": r["error"]} for r in rows if r["error"]]
    summary = {
        "images": len(images), "precision": precision, "runtime": runtime, "settings": [setting_name(q, f) for q, f in settings], "table": table, "failures": failures,
        "seconds": round(time.time() - started, 1), "config": asdict(cfg),
    }
    storage.write_json(out_fs, storage.join(out_root, "summary.json"), summary)
    return summary
