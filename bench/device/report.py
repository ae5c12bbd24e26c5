"""What a prepared GPU call brought back, into the docs: one command after the call, on the CPU.

    python bench/device/report.py RESULTS [RESULTS2]     # the call's files (the device tool's files_at)

RESULTS holds call 1's env.json, network.json, infer.json, train.json, metrics.csv, model.pt (any of
them: a call cut short brought back fewer); RESULTS2 call 2's train-2.json, metrics-2.csv, model-2.pt.
It writes, between `<!-- device-call -->` markers (replaced on a later call, added at the end the first
time): the GPU section of docs/benchmarks.md (the network by precision, tile batch and variant, its
LIVE1 PSNR against fp32, the job beside the network, against the targets), docs/cost.md's rows for
the measured rates, and docs/training.md's run. Then it prints the evaluate commands that decide
whether a returned model ships (better at every setting than the shipped one: LIVE1 colour and gray,
Classic5, q10-q95, double JPEG).
"""
from __future__ import annotations

import argparse
import csv
import json
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BEGIN, END = "<!-- device-call -->", "<!-- /device-call -->"
#: The issue's targets for the day a machine is lent.
TARGET_NETWORK_MP_S = 400.0
TARGET_JOB_SHARE = 0.75
TARGET_PSNR_DB = 0.01
PHOTO_MP = 12.0
GPU_HOUR_DOLLARS = (2.50, 4.00)  # docs/cost.md's assumption for an H100/H200 hour


def load(folder: Path, name: str):
    path = folder / name
    return json.loads(path.read_text()) if path.is_file() else None


def network_section(env: dict, net: dict) -> list[str]:
    lines = [f"Device: {env.get('gpu') or 'no GPU'} ({env.get('cpus')} CPUs), Python {env.get('python')}, torch {env.get('torch')} "
             f"(CUDA {env.get('cuda')}), Ray {env.get('ray')}; network {Path(net.get('model', '?')).name}, tiles {net.get('tile')} + margin {net.get('margin')}.", ""]
    upload = env.get("upload")
    if isinstance(upload, dict):
        lines += [f"A 12 MP photo's upload (bench/device/upload.py): from a GPU actor's kept buffer (pinned: {upload['kept_buffer_is_pinned']}) "
                  + " / ".join(f"{_f(upload['pinned_kept_buffer'][k])}" for k in ("wall_ms_per_mp", "cpu_ms_per_mp"))
                  + ", from pageable memory " + " / ".join(f"{_f(upload['pageable'][k])}" for k in ("wall_ms_per_mp", "cpu_ms_per_mp"))
                  + " ms per MP (wall / CPU).", ""]
    if not net.get("rows"):
        return lines + ["The network step brought nothing back.", ""]
    lines += ["| precision | tile batch | network MP/s | actor path MP/s | share of peak |", "|---|---|---|---|---|"]
    for r in net["rows"]:
        share = f"{100 * r['share_of_peak']:.1f} %" if r.get("share_of_peak") else "n/a"
        lines.append(f"| {r['precision']} | {r['batch']} | {_f(r['mp_per_s'])} | {_f(r['actor_mp_per_s'])} | {share} |")
    for v in net.get("variants", []):
        lines.append(f"- {v['variant']}: " + (f"{_f(v['mp_per_s'])} MP/s at {v['precision']}, tile batch {v['batch']}" if "mp_per_s" in v else f"not measured ({v['error']})"))
    for kind, by_precision in net.get("psnr", {}).items():
        base = by_precision.get("fp32", {})
        for precision, by_q in by_precision.items():
            deltas = " / ".join(f"{v - base.get(q, v):+.3f}" for q, v in by_q.items())
            lines.append(f"- LIVE1 {kind}, {precision}: " + " / ".join(f"q{q} {v:.3f}" for q, v in by_q.items()) + f" dB (minus fp32: {deltas})")
    return lines + [""]


def infer_section(infer: dict, net: dict) -> list[str]:
    if not infer or not infer.get("runs"):
        return ["The infer step brought nothing back.", ""]
    lines = [f"`jobs/infer.py` on {infer['photos']} colour photos ({infer['megapixels']:.0f} MP, q50), one local Ray of the node:", "",
             "| run | MP/s | steady MP/s | network's actor path, same precision | job / network | GPU busy | CPUs busy |", "|---|---|---|---|---|---|---|"]
    for r in infer["runs"]:
        rate, network = r.get("steady_megapixels_per_second") or r.get("megapixels_per_second"), r.get("network_actor_path_mp_per_s")
        share = f"{rate / network:.2f}" if rate and network else "n/a"
        lines.append(f"| {r['label']} ({r.get('precision')}) | {_f(r.get('megapixels_per_second'))} | {_f(r.get('steady_megapixels_per_second'))} | "
                     f"{_f(network)} | {share} | {_pct(r.get('gpu_util'), 100)} | {_pct(r.get('cpu_busy'), 1)} |")
    return lines + [""]


def targets_section(net: dict, infer: dict) -> list[str]:
    rows = net.get("rows", []) if net else []
    psnr = net.get("psnr", {}) if net else {}
    auto = "fp16" if rows and any(r["precision"] == "fp16" for r in rows) else "fp32"
    at_auto = max((r["mp_per_s"] for r in rows if r["precision"] == auto), default=None)
    worst = max((abs(v - by_p["fp32"][q]) for by_p in psnr.values() if auto in by_p for q, v in by_p[auto].items()), default=None)
    jobs = [r for r in (infer or {}).get("runs", []) if r.get("network_actor_path_mp_per_s")]
    share = max(((r.get("steady_megapixels_per_second") or r.get("megapixels_per_second") or 0) / r["network_actor_path_mp_per_s"] for r in jobs), default=None)
    return ["Against the targets:", "",
            f"- network at `--precision auto` ({auto}) ≥ {TARGET_NETWORK_MP_S:.0f} MP/s within {TARGET_PSNR_DB} dB of fp32: "
            f"{_f(at_auto)} MP/s, {('%.3f dB' % worst) if worst is not None else 'PSNR not measured'} — "
            + ("**met**" if at_auto and at_auto >= TARGET_NETWORK_MP_S and worst is not None and worst <= TARGET_PSNR_DB else "not met"),
            f"- the job ≥ {TARGET_JOB_SHARE:.0%} of the network's rate under the same settings: "
            + (f"{share:.0%} — " + ("**met**" if share >= TARGET_JOB_SHARE else "not met") if share is not None else "not measured"), ""]


def cost_rows(env: dict, infer: dict, net: dict) -> list[str]:
    gpu = env.get("gpu") or "no GPU"
    lines = ["| hardware, configuration | MP/s per device (measured) | device-hours per 10⁶ photos | dollars per 10⁶ photos |", "|---|---|---|---|"]
    rates = [(f"1 × {gpu}, the infer job: {r['label']} ({r.get('precision')})", r.get("steady_megapixels_per_second") or r.get("megapixels_per_second"))
             for r in (infer or {}).get("runs", [])]
    best = max((net or {}).get("rows", []), key=lambda r: r["mp_per_s"], default=None)
    if best:
        rates.append((f"1 × {gpu}, the network alone ({best['precision']}, tile batch {best['batch']}; bench/gpu.py)", best["mp_per_s"]))
    for label, rate in rates:
        if rate:
            hours = PHOTO_MP * 1e6 / rate / 3600
            lines.append(f"| {label} | {_f(rate)} | {hours:,.0f} GPU-h | ${hours * GPU_HOUR_DOLLARS[0]:,.0f}–{hours * GPU_HOUR_DOLLARS[1]:,.0f} |")
    return lines + [""]


def training_section(folder: Path, name: str, result: dict) -> list[str]:
    if not result:
        return []
    lines = [f"Call {name}: prep of {result['sources']} clean colour images in {result.get('prep_s')} s; the train job from "
             f"{'the shipped colour model' if name == '1' else 'call 1’s model'}, {result.get('steps_planned')} steps planned, "
             f"--time-limit {result.get('time_limit_s')} s, {result.get('metrics_rows')} metric rows in {result.get('seconds')} s."]
    metrics = folder / ("metrics.csv" if name == "1" else f"metrics-{name}.csv")
    if metrics.is_file():
        rows = list(csv.DictReader(metrics.read_text().splitlines()))
        gains = [(r["step"], r["val_psnr_gain"]) for r in rows if r.get("val_psnr_gain") not in (None, "", "nan")]
        rates = [float(r["samples_per_s"]) for r in rows if r.get("samples_per_s") not in (None, "", "nan")]
        if rates:
            lines.append(f"Patches per second: {max(rates):,.0f} at best, {rates[-1]:,.0f} last.")
        if gains:
            lines.append("Held-out PSNR gain (dB) by step: " + ", ".join(f"{s}: {float(g):+.3f}" for s, g in gains[:: max(1, len(gains) // 8)]) + ".")
    return lines + [""]


def _f(value) -> str:
    if not isinstance(value, (int, float)):
        return "n/a"
    return f"{value:,.1f}" if abs(value) >= 10 else f"{value:.3g}"


def _pct(value, scale) -> str:
    return f"{100 * value / scale:.0f} %" if isinstance(value, (int, float)) else "n/a"


def replace_block(path: Path, title: str, lines: list[str]) -> None:
    """The call's block in a doc: replaced where the markers are, else added at the end."""
    block = "\n".join([BEGIN, title, "", *lines, END])
    text = path.read_text() if path.is_file() else ""
    if BEGIN in text and END in text:
        text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, nargs="+", help="the folders the call(s) brought back (call 1's first)")
    parser.add_argument("--docs", type=Path, default=REPO / "docs", help="the docs folder to write (default: this checkout's)")
    parser.add_argument("--date", default=None, help="the call's date for the headings (default: env.json's file date)")
    args = parser.parse_args(argv)
    first = args.results[0]
    env, net, infer = load(first, "env.json") or {}, load(first, "network.json") or {}, load(first, "infer.json") or {}
    date = args.date or __import__("datetime").date.fromtimestamp((first / "env.json").stat().st_mtime if (first / "env.json").is_file() else 0).isoformat()
    title = f"## The prepared GPU call ({date}, {env.get('gpu') or 'no GPU'}; `python bench/device/report.py`)"
    replace_block(args.docs / "benchmarks.md", title, network_section(env, net) + infer_section(infer, net) + targets_section(net, infer))
    replace_block(args.docs / "cost.md", title.replace("## ", "### "), cost_rows(env, infer, net))
    training = training_section(first, "1", load(first, "train.json"))
    for folder in args.results[1:]:
        training += training_section(folder, "2", load(folder, "train-2.json"))
    replace_block(args.docs / "training.md", title.replace("## ", "### "), training or ["No training came back."])
    print(f"report: wrote the call's sections into {args.docs}/benchmarks.md, cost.md and training.md")
    for folder, model in [(first, "model.pt")] + [(f, "model-2.pt") for f in args.results[1:]]:
        if (folder / model).is_file():
            m = folder / model
            print(f"report: {m} came back; it ships only if better at every setting than carray/models/color.pt:\n"
                  f"  python jobs/evaluate.py --images ../shared/data/LIVE1_color --color --quality 10 20 30 40 50 60 70 80 90 95 --double 30,10 --model {m} --output reports/device-live1c\n"
                  f"  python jobs/evaluate.py --images ../shared/data/LIVE1_color --color --quality 10 20 30 40 50 60 70 80 90 95 --double 30,10 --output reports/shipped-live1c\n"
                  f"  (and --images tests/data/LIVE1_gray / tests/data/Classic5 for the gray model's sets; then python -m carray export for its ONNX networks)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
