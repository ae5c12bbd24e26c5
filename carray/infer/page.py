"""The preview's page: one self-contained index.html beside its images/ folder, made from the
preview's summary alone (every number on it is in _summary.json). It links nothing outside its
folder, so it opens from a bucket or a disk with no server and no network. No Ray here."""
from __future__ import annotations

import json
from html import escape

from .scan import FAIL, PASS, RESTORE

STYLE = """
body{font:15px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1100px;padding:0 1em;color:#222}
h1{font-size:1.5em}h2{margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.5em 0}td,th{padding:.2em .7em;text-align:left;vertical-align:top}
td.n{text-align:right;font-variant-numeric:tabular-nums}.bar{background:#4a7;height:.9em;display:inline-block}
.note{color:#666;font-size:.9em}#missing{background:#fdd;padding:.5em;border:1px solid #c66}
.item{border-top:1px solid #ddd;padding:1em 0}.pair{display:flex;gap:12px;flex-wrap:wrap;align-items:flex-start}
.pair figure{margin:0}.pair img.crop{image-rendering:pixelated;max-width:none}
.thumb{position:relative;display:inline-block}.thumb img{display:block}
.box{position:absolute;border:2px solid #f0f;box-sizing:border-box}
.restore{color:#185}.pass{color:#555}.fail{color:#b22}
"""
# Marks each picture as shown or not once the page has loaded, and says so when some are missing
# (a preview folder copied without its images/): the reader learns it, and a test can read it.
CHECK_PICTURES = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images), missing = 0;
  imgs.forEach(function (i) { var ok = i.complete && i.naturalWidth > 0; i.dataset.shown = ok ? 'yes' : 'no'; if (!ok) missing++; });
  document.body.dataset.pictures = imgs.length; document.body.dataset.missing = missing;
  if (missing) { var n = document.getElementById('missing'); n.hidden = false;
    n.textContent = missing + ' of ' + imgs.length + ' pictures did not load: keep index.html beside its images/ folder.'; }
});
"""
OUTCOME_WORDS = {RESTORE: "restored", PASS: "passed through", FAIL: "failed"}


def value(key: str, raw, text: str | None = None) -> str:
    """A number on the page, tagged with its place in _summary.json (data-key) and its value there."""
    shown = text if text is not None else _format(raw)
    return f'<span data-key="{escape(key)}" data-value="{escape(json.dumps(raw))}">{escape(shown)}</span>'


def _format(raw) -> str:
    if raw is None:
        return "n/a"
    if isinstance(raw, float):
        return f"{raw:,.2f}" if abs(raw) < 1000 else f"{raw:,.0f}"
    if isinstance(raw, int):
        return f"{raw:,}"
    return str(raw)


def hours_text(hours) -> str:
    if hours is None:
        return "n/a"
    return f"{hours * 3600:.0f} s" if hours < 1 / 60 else f"{hours * 60:,.1f} min" if hours < 1 else f"{hours:,.1f} h"


def dollars_text(dollars) -> str:
    if dollars is None:
        return "n/a"
    return "under $0.01" if dollars[1] < 0.01 else f"${dollars[0]:,.2f} – ${dollars[1]:,.2f}"


def _hours(key: str, hours) -> str:
    return value(key, hours, hours_text(hours))


def _dollars(key: str, dollars) -> str:
    return value(key, dollars, dollars_text(dollars))


def _histogram(title: str, key: str, counts: dict, total: int, labels: dict | None = None) -> str:
    if not counts:
        return f"<h3>{escape(title)}</h3><p class=note>none in the sample</p>"
    top = max(counts.values())
    rows = "".join(
        f"<tr><td>{escape(str((labels or {}).get(label, label)))}</td><td class=n>{value(f'{key}.{label}', n)}</td><td class=n>{100 * n / total:.1f} %</td>"
        f"<td><span class=bar style='width:{240 * n / top:.0f}px'></span></td></tr>"
        for label, n in counts.items()
    )
    return f"<h3>{escape(title)}</h3><table>{rows}</table>"


def _estimate(summary: dict) -> str:
    est, cost = summary["estimated"], summary["cost"]
    rows = [
        ("Images (image file names) listed", value("images", summary["images"])),
        ("Other files, skipped", value("skipped", summary["skipped"])),
        ("would be restored", value("estimated.restored", est["restored"])),
        ("would be passed through unchanged", value("estimated.passed_through", est["passed_through"])),
        ("would fail", value("estimated.failed", est["failed"])),
        ("Megapixels to restore", value("cost.megapixels_to_restore", cost["megapixels_to_restore"])),
    ]
    table = "".join(f"<tr><td>{label}</td><td class=n>{v}</td></tr>" for label, v in rows)
    runs = [("this cluster, at the rate this preview measured", "cost.this_cluster"),
            ("one H100 GPU node, the infer job as measured (docs/cost.md)", "cost.h100_job_as_measured"),
            ("one H100 GPU node at the network's own rate (the job's target)", "cost.h100_network_rate")]
    lines = []
    for label, key in runs:
        c = cost[key.split(".")[1]]
        lines.append(
            f"<tr><td>{label}</td><td class=n>{value(key + '.megapixels_per_second', c['megapixels_per_second'])} MP/s</td>"
            f"<td class=n>{value(key + '.devices', c['devices'])} {escape(c['device'])}</td>"
            f"<td class=n>{_dollars(key + '.price_per_device_hour_usd', c['price_per_device_hour_usd'])} / {escape(c['device'])}-hour</td>"
            f"<td class=n>{_hours(key + '.hours', c['hours'])}</td><td class=n>{_dollars(key + '.dollars', c['dollars'])}</td></tr>"
        )
    sample = summary["sample_run"]
    return (
        f"<h2>The full run, estimated</h2><table>{table}</table>"
        "<table><tr><th>where</th><th>rate used</th><th>devices</th><th>price (assumed)</th><th>time</th><th>cost</th></tr>"
        + "".join(lines) + "</table>"
        f"<p class=note>Shares from the {value('scanned', summary['scanned'])} headers read (the restored samples count as what the job did "
        f"with them), times the images listed. This cluster's rate: the sample's run after its start-up "
        f"({value('sample_run.steady_megapixels_per_second', sample['steady_megapixels_per_second'])} MP/s; "
        f"{value('sample_run.megapixels_per_second', sample['megapixels_per_second'])} MP/s counting the start-up of "
        f"{value('sample_run.seconds_to_first_output', sample['seconds_to_first_output'])} s); its time includes listing the input again "
        f"({value('cost.this_cluster.listing_seconds', cost['this_cluster']['listing_seconds'])} s). Passing files through is not counted "
        "(thousands of files per second). Prices are on-demand list prices as an order of magnitude, not quotes.</p>"
    )


def _make_up(summary: dict) -> str:
    m = summary["make_up"]
    n = m["scanned"]
    reasons = "".join(
        f"<tr><td class={ 'pass' if d == PASS else 'fail'}>{OUTCOME_WORDS[d]}</td><td>{escape(reason)}</td><td class=n>{count}</td></tr>"
        for d, by_reason in m["reasons"].items() for reason, count in by_reason.items()
    )
    return (
        f"<h2>What the collection holds</h2><p>From the headers of {value('make_up.scanned', n)} images sampled at random "
        f"(seed {value('seed', summary['seed'])}), read at {value('headers_per_second', summary['headers_per_second'])} files/s, "
        "no pixels decoded.</p>"
        + _histogram("What the job would do", "make_up.decisions", {d: c for d, c in m["decisions"].items() if c}, n, OUTCOME_WORDS)
        + (f"<table>{reasons}</table>" if reasons else "")
        + _histogram("JPEG quality (from the quantization tables)", "make_up.quality_histogram", m["quality_histogram"], n)
        + _histogram("Size, megapixels", "make_up.megapixel_histogram", m["megapixel_histogram"], n)
        + _histogram("Format", "make_up.formats", m["formats"], n)
        + _histogram("JPEG chroma subsampling", "make_up.subsampling", m["subsampling"], n)
    )


def _item(item: dict) -> str:
    outcome = item["outcome"]
    header = (f"{item['format'] or '?'}, {item['width']}×{item['height']}"
              + (f", quality {item['quality']} (tables)" if item["quality"] is not None else "")
              + (f", chroma {item['subsampling']}" if item.get("subsampling") else ""))
    parts = [f"<div class=item id='item-{item['index']}'><h3>{escape(item['path'])}</h3>",
             f"<p>{escape(header)} — <b class='{outcome.split()[0]}'>{OUTCOME_WORDS[outcome]}</b>: {escape(item['reason'])}</p>"]
    pics = item["pictures"]
    if item.get("picture_error"):
        parts.append(f"<p class=fail>no pictures: {escape(item['picture_error'])}</p>")
    if "before" in pics:
        r, h, w, key = item["region"], item["image_height"], item["image_width"], f"items.{item['index']}"
        box = f"left:{100 * r['left'] / w:.3f}%;top:{100 * r['top'] / h:.3f}%;width:{100 * r['width'] / w:.3f}%;height:{100 * r['height'] / h:.3f}%"
        parts.append(
            f"<p>Mean change {value(key + '.change', item['change'])} grey levels over the image, "
            f"{value(key + '.region_change', item['region_change'])} in the window shown at 100 % "
            f"({r['width']}×{r['height']} at x {r['left']}, y {r['top']}).</p><div class=pair>"
            f"<figure><img class=crop src='{escape(pics['before'])}' width={r['width']} height={r['height']} alt='before'><figcaption>before (the input)</figcaption></figure>"
            f"<figure><img class=crop src='{escape(pics['after'])}' width={r['width']} height={r['height']} alt='after'><figcaption>after (the output as written)</figcaption></figure>"
            f"<figure><div class=thumb><img src='{escape(pics['thumbnail'])}' alt='whole image'><div class=box style='{box}'></div></div>"
            "<figcaption>where the window is</figcaption></figure></div>"
        )
    elif "thumbnail" in pics:
        parts.append(f"<figure><img src='{escape(pics['thumbnail'])}' alt='whole image'><figcaption>the input, unchanged</figcaption></figure>")
    parts.append("</div>")
    return "".join(parts)


def render_page(summary: dict) -> str:
    models = "".join(f"<li>{escape(kind)}: <code data-key='model_sha256.{escape(kind)}'>{escape(digest)}</code></li>"
                     for kind, digest in summary["model_sha256"].items())
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8><meta name=viewport content='width=device-width'>"
        f"<title>carray preview: {escape(summary['input'])}</title><style>{STYLE}</style></head><body>"
        f"<h1>carray preview of {escape(summary['input'])}</h1><p id=missing hidden></p>"
        f"<p>{value('shown', summary['shown'])} images restored as samples, as the full job would, with the model "
        f"<code>{escape(str(summary['model']))}</code> at precision <code data-key=precision>{escape(str(summary['precision']))}</code> "
        f"(carray {escape(summary['carray_version'])}). Model files, sha256 (a full run's _summary.json gives the same):</p><ul>{models}</ul>"
        + _estimate(summary) + _make_up(summary)
        + "<h2>The samples</h2><p class=note>Before and after at 100 %, on the window where restoring changed the image most.</p>"
        + "".join(_item(item) for item in summary["items"])
        + f"<script>{CHECK_PICTURES}</script></body></html>"
    )
