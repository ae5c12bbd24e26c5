"""Throughput of the shipped network's forward pass per precision and tile batch, pure PyTorch
(no Ray: the GPU machines we borrow have PyTorch but not Ray).

Tiles of --tile pixels (with the margin the infer job reads around each) are batched --batches at
a time into one forward pass, pinned host memory and non-blocking copies in and out. Prints
megapixels/s of output per (precision, tile batch), the ratio to fp32 with a batch of 1 measured in
the same run, the share of the card's peak FLOP/s, and the rate of the restoring actors' own code path
on 12 MP photos (carray.ondevice.restore_tiled_on_device: uint8 in, converted, tiled, batched --tile-batch
windows at a time, stitched and rounded on the device, uint8 out).

    python bench/gpu.py                          # CUDA if present, else the CPU path (fp32 only)
    python bench/gpu.py --precisions fp32 fp16 bf16 --batches 1 4 16 --tile 512
    python bench/gpu.py --peak-tflops 989        # a card not in the table below (dense fp16/bf16)
    python bench/gpu.py --psnr                   # and each precision's PSNR on LIVE1 against fp32's
    python bench/gpu.py --variants contiguous graphs compile --json net.json   # the prepared GPU call's step b

--variants measures, at the best precision and tile batch of the table, the forward loop without
channels_last ("contiguous"), replayed as a CUDA graph ("graphs", CUDA only) and through
torch.compile ("compile", mode max-autotune-no-cudagraphs; "compile-graphs": mode reduce-overhead).

--psnr restores the bundled LIVE1 images (gray: 29, q10-q40; colour: 2, q10 and q40) through the infer
job's own networks at each precision (carray.quantize.load_networks) and whole-image tiling
(carray.restore), and prints the mean PSNR and its difference from fp32: what `--precision auto`
on this device is decided by (the fastest precision within 0.05 dB of fp32).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from carray.model import load_model_bytes, multiply_adds_per_pixel  # noqa: E402  (no Ray in carray.model)
from carray.ondevice import restore_tiled_on_device  # noqa: E402  (nor in carray.ondevice)

BUNDLED = Path(__file__).resolve().parents[1] / "tests" / "data"

MODELS = Path(__file__).resolve().parents[1] / "carray" / "models"
# Dense peak TFLOP/s from the vendors' data sheets: (fp32 without tensor cores, fp16/bf16 tensor cores).
PEAKS = {"H100 SXM": (67.0, 989.0), "H100 PCIe": (51.0, 756.0), "H100": (67.0, 989.0), "H200": (67.0, 989.0),
         "A100": (19.5, 312.0), "L4": (30.3, 121.0), "A10": (31.2, 125.0)}
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def peak_tflops(device: torch.device, precision: str, override: float) -> float:
    if override:
        return override
    if device.type != "cuda":
        return 0.0
    name = torch.cuda.get_device_name(device)
    for key, (fp32, half) in PEAKS.items():
        if key in name:
            return fp32 if precision == "fp32" else half
    return 0.0


def autocast_for(device: torch.device, precision: str):
    return torch.autocast(device.type, dtype=DTYPES[precision]) if precision in DTYPES else torch.autocast(device.type, enabled=False)


@torch.inference_mode()
def output_rate(step, device: torch.device, batch: int, tile: int, seconds: float) -> float:
    """Output megapixels/s of `step` (one forward of `batch` windows, a core of tile^2 kept each),
    after a warm-up in which cuDNN / oneDNN pick their kernels for these shapes."""
    cuda = device.type == "cuda"
    for _ in range(3):
        step()
    if cuda:
        torch.cuda.synchronize()
    started, steps = time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        step()
        steps += 1
    if cuda:
        torch.cuda.synchronize()
    return steps * batch * tile * tile / 1e6 / (time.perf_counter() - started)


def measure(model, device, precision: str, batch: int, tile: int, margin: int, seconds: float, variant: str = "eager") -> float:
    """The forward loop at its best: `batch` windows of (tile + 2 margin)^2 kept in pinned host
    memory, copied in and their cores out without blocking. `variant` (module doc): how the network runs."""
    side = tile + 2 * margin
    channels = model.args["channels"]
    cuda = device.type == "cuda"
    host = torch.rand(batch, channels, side, side).pin_memory() if cuda else torch.rand(batch, channels, side, side)
    quality = torch.full((batch,), 30.0, device=device)
    out_host = torch.empty(batch, channels, tile, tile, pin_memory=cuda)
    autocast = autocast_for(device, precision)
    layout = torch.contiguous_format if variant == "contiguous" else torch.channels_last
    network = model.to(memory_format=layout)
    if variant.startswith("compile"):
        network = torch.compile(model, mode="reduce-overhead" if variant == "compile-graphs" else "max-autotune-no-cudagraphs", dynamic=False)
    x_static = torch.empty(batch, channels, side, side, device=device).contiguous(memory_format=layout)

    def forward():
        with torch.inference_mode(), autocast:
            return network(x_static, quality)

    if variant == "graphs":
        if not cuda:
            raise ValueError("CUDA graphs need a CUDA device")
        forward = cuda_graph(forward, device)

    def step():
        x_static.copy_(host, non_blocking=True)
        y = forward()
        out_host.copy_(y[..., margin : margin + tile, margin : margin + tile].float(), non_blocking=True)

    rate = output_rate(step, device, batch, tile, seconds)
    model.to(memory_format=torch.channels_last)
    return rate


def cuda_graph(forward, device):
    """`forward` captured once as a CUDA graph and replayed (its inputs are static tensors): no
    per-kernel launch cost, which matters for a small network on a large card."""
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for _ in range(3):  # warm-up outside the capture: cuDNN picks its kernels
            forward()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = forward()

    def replay():
        graph.replay()
        return out

    return replay


def measure_actor_path(model, device, precision: str, batch: int, tile: int, margin: int, seconds: float, megapixels: float = 12.0) -> float:
    """carray.ondevice.restore_tiled_on_device, the restoring actors' code for an image: a 4:3
    uint8 photo of `megapixels` (12: 4000 x 3000) uploaded, converted, cut into windows on the device
    and run `batch` per forward, stitched, rounded to uint8 and downloaded. MP/s of photos."""
    import numpy as np

    height = max(1, round((megapixels * 1e6 * 3 / 4) ** 0.5))
    size = (height, max(1, round(height * 4 / 3)))
    shape = (*size, 3) if model.args["channels"] == 3 else size
    photo = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    autocast = autocast_for(device, precision)

    def step():
        with autocast:
            restore_tiled_on_device(model, photo, device, 30.0, tile, margin, batch)

    step()  # cuDNN / oneDNN pick their kernels for these shapes
    started, photos = time.perf_counter(), 0
    while time.perf_counter() - started < seconds or photos < 2:
        step()
        photos += 1
    return photos * photo.shape[0] * photo.shape[1] / 1e6 / (time.perf_counter() - started)


def psnr_by_precision(device: torch.device, precisions: list[str], tile: int, limit: int = 0) -> dict:
    """Mean PSNR of the shipped models on the bundled LIVE1 sets per precision and quality, and the
    difference from fp32 (compressed once per image and quality, restored by each precision).
    `limit`: the first N images of each set only (0: all). Returns {kind: {precision: {q: dB}}}."""
    from carray import jpeg, metrics
    from carray.images import decode_image
    from carray.pairs import prepare_pixels
    from carray.images import jpeg_quality
    from carray.quantize import load_networks
    from carray.restore import restore_pixels

    results = {}
    for kind, folder, color, qualities in (("gray", "LIVE1_gray", False, (10, 20, 30, 40)), ("color", "LIVE1_color", True, (10, 40))):
        files = {kind: (MODELS / f"{kind}.pt").read_bytes()}
        networks = {p: load_networks(files, p, device)[kind] for p in precisions}
        sums = {(p, q): 0.0 for p in precisions for q in qualities}
        images = sorted((BUNDLED / folder).glob("*.png"))[: limit or None]
        for path in images:
            original = prepare_pixels(decode_image(path.read_bytes()).pixels, color)
            for quality in qualities:
                data = jpeg.compress(original, quality)
                degraded = prepare_pixels(decode_image(data).pixels, color)
                with torch.inference_mode():
                    for precision, network in networks.items():
                        restored = restore_pixels(network, degraded, tile, device, quality=jpeg_quality(data))
                        sums[precision, quality] += metrics.psnr(original, restored)
        print(f"LIVE1 {kind} ({len(images)} images), mean PSNR (dB) at q{'/'.join(map(str, qualities))}, and minus fp32:")
        for precision in precisions:
            means = [sums[precision, q] / len(images) for q in qualities]
            deltas = [m - sums["fp32", q] / len(images) for m, q in zip(means, qualities)] if "fp32" in precisions else []
            print(f"{precision:>9}  " + " / ".join(f"{m:.3f}" for m in means)
                  + ("   (" + " / ".join(f"{d:+.3f}" for d in deltas) + ")" if deltas else ""))
        results[kind] = {p: {q: sums[p, q] / len(images) for q in qualities} for p in precisions}
    return results


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(MODELS / "gray.pt"))
    parser.add_argument("--precisions", nargs="+", default=None, help="fp32 fp16 bf16 (default: all on CUDA, fp32 on CPU)")
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 4, 16])
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--seconds", type=float, default=3.0, help="measuring time per case")
    parser.add_argument("--photo-mp", type=float, default=12.0, help="megapixels of the actor path's photo (4:3)")
    parser.add_argument("--psnr", action="store_true", help="also each precision's PSNR on the bundled LIVE1 images, against fp32's")
    parser.add_argument("--peak-tflops", type=float, default=0.0, help="the card's peak, when it is not in the table")
    parser.add_argument("--variants", nargs="*", default=[], choices=["contiguous", "graphs", "compile", "compile-graphs"],
                        help="also these ways of running the network, at the best precision and tile batch")
    parser.add_argument("--psnr-images", type=int, default=0, help="--psnr on the first N images of each set (0: all)")
    parser.add_argument("--json", default=None, help="also write every figure to this file")
    args = parser.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = True  # as the restoring actors set it (carray.quantize.setup_restoring_process)
    model, _ = load_model_bytes(Path(args.model).read_bytes(), args.model)
    model = model.to(device, memory_format=torch.channels_last).eval()
    margin = -(-model.receptive_radius // 8) * 8
    flops_per_pixel = 2 * multiply_adds_per_pixel(model.cpu().float()) * ((args.tile + 2 * margin) / args.tile) ** 2
    model = model.to(device, memory_format=torch.channels_last)
    precisions = args.precisions or (["fp32", "fp16", "bf16"] if device.type == "cuda" else ["fp32"])
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name} | model {model.arch} {model.args} | tile {args.tile} + margin {margin} | "
          f"{flops_per_pixel / 1e3:.0f} kFLOP per output pixel (margins included)")
    print(f"{'precision':>9} {'tile batch':>10} {'MP/s':>9} {'x fp32 b1':>10} {'% of peak':>10} {f'actor path, {args.photo_mp:g} MP photos':>25}")
    baseline = None
    figures = {"device": name, "model": args.model, "tile": args.tile, "margin": margin, "flops_per_pixel": flops_per_pixel, "rows": [], "variants": []}

    def write():
        if args.json:
            Path(args.json).write_text(json.dumps(figures, indent=1))

    for precision in precisions:
        for batch in args.batches:
            rate = measure(model, device, precision, batch, args.tile, margin, args.seconds)
            baseline = baseline or rate
            peak = peak_tflops(device, precision, args.peak_tflops)
            share = f"{100 * rate * 1e6 * flops_per_pixel / (peak * 1e12):9.1f}%" if peak else f"{'n/a':>10}"
            actor = measure_actor_path(model, device, precision, batch, args.tile, margin, args.seconds, args.photo_mp)
            print(f"{precision:>9} {batch:>10} {rate:9.2f} {rate / baseline:10.2f} {share} {actor:25.2f}", flush=True)
            figures["rows"].append({"precision": precision, "batch": batch, "mp_per_s": rate, "actor_mp_per_s": actor,
                                    "share_of_peak": rate * 1e6 * flops_per_pixel / (peak * 1e12) if peak else None})
            write()  # as each figure comes: a call cut short keeps what it measured
    best = max(figures["rows"], key=lambda r: r["mp_per_s"])
    for variant in args.variants:
        try:
            rate = measure(model, device, best["precision"], best["batch"], args.tile, margin, args.seconds, variant)
        except Exception as exc:  # one variant that does not run here must not lose the others
            print(f"{variant:>16}: not measured ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})", flush=True)
            figures["variants"].append({"variant": variant, "error": f"{type(exc).__name__}: {exc}"[:300]})
        else:
            print(f"{variant:>16}: {rate:9.2f} MP/s at {best['precision']}, tile batch {best['batch']} ({rate / best['mp_per_s']:.2f}x eager)", flush=True)
            figures["variants"].append({"variant": variant, "precision": best["precision"], "batch": best["batch"], "mp_per_s": rate})
        write()
    if args.psnr:
        figures["psnr"] = psnr_by_precision(device, precisions, args.tile, args.psnr_images)
    write()
    return figures


if __name__ == "__main__":
    main()
