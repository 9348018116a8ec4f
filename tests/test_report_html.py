"""report.html on real tokens: what it holds, that it loads nothing, and what headless Chromium renders."""

from __future__ import annotations

import html
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helpers import chat_rows
from tokenweight.components.chat_encode import encode_conversation
from tokenweight.components.token_weights import sample_weights, token_classes
from tokenweight.report_html import write_report
from tokenweight.components.class_tally import ClassTally
from tokenweight.schemas import WEIGHTED
from tokenweight.stage_outputs import WeightsSummary

TRICKY = "Use <b>&amp; 'quotes'\nthen a new line"


@pytest.fixture(scope="module")
def shards(smol_tokenizer, tmp_path_factory):
    """Two weight shards of real chats (one with markup and a newline in its answer) with seeded
    losses, and the summary the weights stage would write for them."""
    rows, tally, rng = [], ClassTally(), np.random.default_rng(0)
    # The rows without tool calls (those need the source reader's rendering first).
    chats = [r["messages"] for r in chat_rows(14) if "tools" not in r]
    chats.append([{"role": "user", "content": "html?"}, {"role": "assistant", "content": TRICKY}])
    for i, messages in enumerate(chats):
        enc = encode_conversation(smol_tokenizer, messages, None, max_tokens=None)
        mask = np.asarray(enc.loss_mask, dtype=np.int8)
        base, disc, ref = ((rng.gamma(1.0, 1.5, len(mask)) * mask).astype(np.float32) for _ in range(3))
        classes = token_classes(disc, ref, mask, 0.2)
        weight = sample_weights("rft", base, classes, mask, 3.0)
        split = "eval" if i % 4 == 3 else "train"
        tally.add(split, np.asarray(enc.input_ids), classes, disc - ref, None)
        rows.append({"id": f"chat-{i}", "split": split, "text": enc.text, "input_ids": enc.input_ids,
                     "offsets": [list(o) for o in enc.offsets], "loss_mask": mask, "loss_base": base,
                     "loss_disc": disc, "loss_ref": ref, "token_class": classes, "weight": weight})
    directory = tmp_path_factory.mktemp("weights")
    paths = []
    for index, part in enumerate((rows[:6], rows[6:])):
        paths.append(directory / f"part-{index:05d}.parquet")
        pq.write_table(pa.Table.from_pylist(part, schema=WEIGHTED), paths[-1])
    summary = WeightsSummary(method="rft", reference="control", margin=0.2, margin_setting=0.2, min_gap=0.0, granularity="token",
                             **tally.summary(smol_tokenizer, 20), preflight=None)
    return paths, summary, rows


def test_the_page_holds_every_sample_and_token_and_loads_nothing(shards, tmp_path):
    paths, summary, rows = shards
    out = tmp_path / "report.html"
    shown = write_report(paths, summary, out)
    page = out.read_text(encoding="utf-8")
    assert shown == {"samples": len(rows), "tokens": sum(len(r["input_ids"]) for r in rows),
                     "bytes": out.stat().st_size}
    assert page.count("<div class='sample'") == len(rows)
    assert len(re.findall(r"<span class='tok c[m01]'", page)) == shown["tokens"]
    reasoning = sum(int((r["token_class"] == 1).sum()) for r in rows)
    assert f"<span id='n-reasoning'>{reasoning}</span>" in page and reasoning == summary.target_tokens["reasoning"]
    assert not re.search(r"(src|href)\s*=\s*['\"]?(https?:)?//", page)  # self-contained: no network
    # Each sample's tokens, tags stripped and entities decoded, give back its text: markup in the
    # data is escaped, not rendered, and no character is lost or doubled.
    for row in rows:
        body = page.split(f"data-id='{row['id']}'", 1)[1].split("</div>", 2)[1]
        body = body.replace("<span class='nl'>↵</span>", "")
        assert html.unescape(re.sub(r"<[^>]+>", "", body)) == row["text"], row["id"]
    assert "<b>" not in page
    tip = re.search(r"title='LD ([+-][0-9.]+) \| loss base ([0-9.]+), disc ([0-9.]+), ref ([0-9.]+)", page)
    assert tip and float(tip.group(1)) == pytest.approx(float(tip.group(3)) - float(tip.group(4)), abs=2e-3)


def test_max_samples_is_honoured(shards, tmp_path):
    paths, summary, rows = shards
    shown = write_report(paths, summary, tmp_path / "r.html", max_samples=3)
    assert shown["samples"] == 3 and shown["tokens"] == sum(len(r["input_ids"]) for r in rows[:3])
    assert (tmp_path / "r.html").read_text().count("<div class='sample'") == 3


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("no chromium binary: install Debian's chromium package (.ci/run does)")
    return path


def test_headless_chromium_renders_every_sample_and_token(shards, tmp_path):
    chromium = _chromium()
    paths, summary, rows = shards
    out = tmp_path / "report.html"
    write_report(paths, summary, out)
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([chromium, *flags, "--virtual-time-budget=2000", "--dump-dom", out.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    assert dom.count('class="sample"') == len(rows)
    assert len(re.findall(r'<span class="tok c[m01]"', dom)) == sum(len(r["input_ids"]) for r in rows)
    assert f'<span id="shown">{len(rows)}</span>' in dom  # the filter script ran without error
    shot = tmp_path / "report.png"
    subprocess.run([chromium, *flags, f"--screenshot={shot}", "--window-size=1280,1600", "--hide-scrollbars",
                    out.as_uri()], capture_output=True, timeout=120)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    keep = Path(__file__).resolve().parents[1] / ".pytest_cache" / "report-screenshot.png"
    keep.parent.mkdir(exist_ok=True)
    shutil.copy(shot, keep)  # to look at after a run
