"""report.html: one self-contained page (no network) to look at what the weights stage found.

A summary (class shares, mean LD per class, the most frequent boilerplate and reasoning tokens, an
LD histogram over every target token) and a browser over the first samples, each token coloured by
class, shaded by its weight and showing LD and the three losses on hover. The page is rendered
here, in Python, so that what it shows is exactly what the shards hold; the only script filters
samples by id or split.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from .stage_outputs import WeightsSummary

COLUMNS = ["id", "split", "text", "offsets", "loss_mask", "loss_base", "loss_disc", "loss_ref", "token_class",
           "weight"]
_BINS = 40

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:20px}h2{font-size:16px;margin-top:28px}
table.s td,table.s th{padding:2px 10px;text-align:left}
.legend span{padding:1px 6px;margin-right:8px;border-radius:3px}
.sample{border:1px solid #ddd;border-radius:6px;padding:8px 10px;margin:10px 0;white-space:pre-wrap;
  font:13px/1.6 ui-monospace,monospace}
.sample .hd{font:12px system-ui,sans-serif;color:#666;margin-bottom:4px;white-space:normal}
.tok{border-radius:2px}
.cm{color:#999}
.c0{background:rgba(70,110,230,var(--w));outline:1px solid rgba(70,110,230,.35)}
.c1{background:rgba(230,90,40,var(--w));outline:1px solid rgba(230,90,40,.45)}
.nl{color:#bbb}
.top code{background:#f3f3f3;padding:0 4px;margin:0 2px;border-radius:3px}
#filter{padding:4px 8px;width:260px}
.ok{color:#1a7f37;font-weight:600}.warn{color:#b42318;font-weight:600}
"""

_SCRIPT = """
const box=document.getElementById('filter'),split=document.getElementById('split');
function apply(){const q=box.value.toLowerCase(),s=split.value;let n=0;
 for(const d of document.querySelectorAll('div.sample')){
  const ok=d.dataset.id.toLowerCase().includes(q)&&(!s||d.dataset.split===s);
  d.style.display=ok?'':'none';n+=ok;}
 document.getElementById('shown').textContent=n;}
box.addEventListener('input',apply);split.addEventListener('change',apply);
"""


def write_report(shards: list[Path], summary: WeightsSummary, out: Path, max_samples: int = 200) -> dict[str, int]:
    """Write the page to `out`; returns what it shows: samples, tokens, bytes."""
    rendered: list[str] = []
    lds: list[np.ndarray] = []
    tokens = 0
    for path in shards:
        for row in pq.read_table(path, columns=COLUMNS).to_pylist():
            mask = np.asarray(row["loss_mask"], dtype=bool)
            if row["loss_disc"] is not None:  # null on a critical answer: SHAD never scored that text
                lds.append((np.asarray(row["loss_disc"], np.float32) - np.asarray(row["loss_ref"], np.float32))[mask])
            if len(rendered) < max_samples:
                rendered.append(_sample(row))
                tokens += len(row["offsets"])
    page = "".join([
        "<!doctype html><html><head><meta charset='utf-8'><title>tokenweight token report</title>",
        f"<style>{_CSS}</style></head><body><h1>tokenweight: which tokens carry the reasoning</h1>",
        _summary(summary, np.concatenate(lds) if lds else np.zeros(0, np.float32)),
        "<h2>Samples</h2><p class='legend'><span class='key c1' style='--w:.55'>reasoning</span>"
        "<span class='key c0' style='--w:.55'>boilerplate</span><span class='cm'>not trained</span>"
        "shade: the token's weight against the sample's largest; hover a token for LD and its losses.</p>",
        "<p><input id='filter' placeholder='filter by id'> <select id='split'><option value=''>both splits</option>"
        "<option>train</option><option>eval</option></select> "
        f"<span id='shown'>{len(rendered)}</span> of {len(rendered)} samples shown"
        f"{' (the first ' + str(max_samples) + ')' if len(rendered) == max_samples else ''}</p>",
        *rendered,
        f"<script>{_SCRIPT}</script></body></html>",
    ])
    out.write_text(page, encoding="utf-8")
    return {"samples": len(rendered), "tokens": tokens, "bytes": out.stat().st_size}


def _sample(row: dict[str, Any]) -> str:
    text, classes, weights = row["text"], row["token_class"], np.asarray(row["weight"], np.float64)
    top = float(weights.max()) if len(weights) else 0.0
    parts = [f"<div class='sample' data-id='{html.escape(row['id'], quote=True)}' data-split='{row['split']}'>"
             f"<div class='hd'>{html.escape(row['id'])} · {row['split']} · {len(row['offsets'])} tokens, "
             f"{sum(c == 1 for c in classes)} reasoning, {sum(c == 0 for c in classes)} boilerplate</div>"]
    for i, (start, end) in enumerate(row["offsets"]):
        piece = html.escape(text[start:end]).replace("\n", "<span class='nl'>↵</span>\n")
        c = classes[i]
        if c < 0:
            parts.append(f"<span class='tok cm'>{piece}</span>")
            continue
        shade = 0.15 + 0.7 * (weights[i] / top if top > 0 else 0.0)
        if row["loss_disc"] is None:  # a critical answer: class 1 is a critical token
            tip = f"{'critical' if c == 1 else 'not critical'} | loss base {row['loss_base'][i]:.3f} | weight {weights[i]:.4g}"
        else:
            ld = row["loss_disc"][i] - row["loss_ref"][i]
            tip = (f"LD {ld:+.3f} | loss base {row['loss_base'][i]:.3f}, disc {row['loss_disc'][i]:.3f}, "
                   f"ref {row['loss_ref'][i]:.3f} | weight {weights[i]:.4g}")
        parts.append(f"<span class='tok c{c}' style='--w:{shade:.2f}' title='{tip}'>{piece}</span>")
    parts.append("</div>")
    return "".join(parts)


def _summary(s: WeightsSummary, ld: np.ndarray) -> str:
    n_b, n_r = s.target_tokens["boilerplate"], s.target_tokens["reasoning"]
    rows = [("samples", ", ".join(f"{k} {v}" for k, v in s.samples.items())),
            ("method / reference / margin / min gap", f"{s.method} / {s.reference} / {s.margin} / {s.min_gap}"),
            ("boilerplate tokens", f"<span id='n-boilerplate'>{n_b}</span> ({s.boilerplate_share:.1%})"),
            ("reasoning tokens", f"<span id='n-reasoning'>{n_r}</span> ({1 - s.boilerplate_share:.1%})"),
            ("mean LD", f"boilerplate {s.mean_ld['boilerplate']}, reasoning {s.mean_ld['reasoning']}")]
    if s.roles is not None:
        r = s.roles
        rows.append(("against known roles", f"accuracy {r['accuracy']:.3f}, reasoning F1 {r['reasoning_f1']:.3f}"))
    if s.preflight is not None:
        p = s.preflight
        rows.append(("pre-flight", "<span class='{}'>{}</span>".format(
            "ok" if p["fits"] else "warn", "fits the method's premise" if p["fits"] else "does NOT fit the method's premise")))
        rows += [(f"{'ok' if c['ok'] else 'WARN'}: {c['name']}", html.escape(c["message"])) for c in p["checks"]]
    if s.critical is not None:
        c = s.critical
        rows.append(("critical answers (trained on)", f"{c['accepted']} accepted ({c['wrong']} wrong, {c['unchecked']} "
                     f"unchecked); {c['critical_tokens']} of {c['answer_tokens']} tokens critical (class 1 on them)"))
    table = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    top = "".join(
        f"<p class='top'>most frequent {cls}: "
        + " ".join(f"<code>{html.escape(json.dumps(t['token'], ensure_ascii=False))}</code>×{t['count']}"
                   for t in s.top_tokens[cls][:20]) + "</p>"
        for cls in ("boilerplate", "reasoning"))
    return f"<h2>Summary</h2><table class='s'>{table}</table>{top}<h2>LD over target tokens</h2>{_histogram(ld, s.margin)}"


def _histogram(ld: np.ndarray, margin: float) -> str:
    """Inline SVG bars of LD = loss_disc - loss_ref; bars right of the margin line are reasoning."""
    if ld.size == 0:
        return "<p>no target tokens</p>"
    lo, hi = float(np.percentile(ld, 0.5)), float(np.percentile(ld, 99.5))
    if hi <= lo:
        lo, hi = lo - 1, hi + 1
    counts, edges = np.histogram(np.clip(ld, lo, hi), bins=_BINS, range=(lo, hi))
    w, h, bar = 720, 160, 720 / _BINS
    peak = max(int(counts.max()), 1)
    bars = "".join(
        f"<rect x='{i * bar:.1f}' y='{h - c / peak * h:.1f}' width='{bar - 1:.1f}' height='{c / peak * h:.1f}' "
        f"fill='{'#e65a28' if edges[i] >= margin else '#466ee6'}'><title>{edges[i]:.2f} to {edges[i + 1]:.2f}: "
        f"{c} tokens</title></rect>"
        for i, c in enumerate(counts))
    x_margin = (min(max(margin, lo), hi) - lo) / (hi - lo) * w
    return (f"<svg width='{w}' height='{h + 20}' role='img' aria-label='LD histogram'>{bars}"
            f"<line x1='{x_margin:.1f}' x2='{x_margin:.1f}' y1='0' y2='{h}' stroke='#222' stroke-dasharray='4'/>"
            f"<text x='0' y='{h + 15}' font-size='11'>{lo:.2f}</text>"
            f"<text x='{w - 40}' y='{h + 15}' font-size='11'>{hi:.2f}</text>"
            f"<text x='{x_margin + 4:.1f}' y='12' font-size='11'>margin {margin}</text></svg>"
            f"<p>{ld.size} target tokens; clipped to the 0.5–99.5th percentile.</p>")
