"""report/index.html: self-contained, drawn without errors in a real browser, and every string from
the corpus or the config escaped."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import pytest
import yaml

from conftest import tiny_config
from helpers_release import ARTIFACTS, CHROMIUM, PLANTED, PLANTED_NAME, console_messages, released_template, render
from llm360.cli import main
from llm360.release.release import make_release
from llm360.release.text import md, script_json

needs_chromium = pytest.mark.skipif(not CHROMIUM.exists(), reason="headless Chromium (/usr/bin/chromium) is not "
                                    "installed: `apt-get install -y chromium` to test the report in a browser")


@pytest.fixture
def released(prepared_template, tmp_path_factory) -> Path:
    return released_template(prepared_template, tmp_path_factory)  # read only here


def charts(dom: str) -> dict[str, dict[str, str]]:
    """id -> attributes of every chart container in a DOM dump."""
    out = {}
    for tag in re.findall(r'<div class="chart"[^>]*>', dom):
        attrs = dict(re.findall(r'([\w-]+)="([^"]*)"', tag))
        out[attrs["id"]] = attrs
    return out


@needs_chromium
def test_report_draws_every_chart_in_chromium(released, tmp_path):
    shot = ARTIFACTS / "report.png"
    dom, log = render(released / "report" / "index.html", tmp_path, screenshot=shot, height=2400)
    assert 'data-report="ready"' in dom, log[-3000:]
    assert console_messages(log) == []
    drawn = charts(dom)
    expected = {"chart-loss", "chart-lr", "chart-grad", "chart-tps", "chart-composition", "chart-mem-mean_score",
                "chart-mem-extractable_frac", "chart-mem-hist", "chart-eval-0", "chart-eval-1", "chart-eval-2"}
    assert expected <= set(drawn)
    for cid, attrs in drawn.items():
        assert attrs.get("data-rendered") == "1", cid
        assert int(attrs.get("data-paths") or attrs.get("data-bars") or 0) > 0, cid
    assert dom.count('class="marker"') >= 2 * 4  # the NaN at step 4 and its skipped batch, on each curve
    assert shot.stat().st_size > 20_000


def test_report_is_self_contained(released):
    page = (released / "report" / "index.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "<link" not in page and "@import" not in page and "url(" not in page
    assert "default-src 'none'" in page  # the browser itself refuses any network load
    data = json.loads(re.search(r'<script type="application/json" id="report-data">(.*?)</script>', page, re.S).group(1))
    assert len(data["train"]["step"]) == 9 and data["train"]["loss"][4] is None  # the skipped step
    assert [s["name"] for s in data["stages"]] == ["one", "two"]
    for link in ("../MODEL_CARD.md", "../DATA_CARD.md", "../checkpoints/ckpt_002/"):
        assert f'href="{link}"' in page


def test_script_json_cannot_close_its_script():
    text = script_json({"a": "</script><script>alert(1)</script>", "b": "<!-- \u2028", "c": [1.5, None]})
    assert "<" not in text and ">" not in text and "\u2028" not in text
    assert json.loads(text) == {"a": "</script><script>alert(1)</script>", "b": "<!-- \u2028", "c": [1.5, None]}
    assert md("<b>x</b> | *y*") == "&lt;b&gt;x&lt;/b&gt; \\| \\*y\\*"


def test_corpus_and_config_text_is_escaped(tmp_path):
    """A corpus full of `<script>`, a document named like an <img> tag, a license and a run name
    that are HTML: the report and the cards show them as text, and a browser builds no element."""
    config = tiny_config(tmp_path)
    corpus = tmp_path / "corpus"
    for i, path in enumerate(sorted(corpus.glob("*.txt"))):  # a few plain documents, most of the text planted
        if i >= 3:
            path.unlink()
    (corpus / PLANTED_NAME).write_text(f"{PLANTED} the model data token train chunk step loss.\n" * 150)
    tree = yaml.safe_load(config.read_text())
    tree["name"] = "tiny<b onmouseover=alert(4)>"
    tree["data"]["sources"][0]["license"] = '<a href="javascript:alert(3)">CC0</a>'
    config.write_text(yaml.safe_dump(tree))
    run = tmp_path / "run"
    assert main(["prepare", str(config), "--out", str(run)]) == 0
    make_release(run)  # prepared only: no checkpoints or records, the report says so

    page = (run / "report" / "index.html").read_text()
    for raw in (PLANTED, "<img src=x", "<b onmouseover", '<a href="javascript'):
        assert raw not in page, raw
    assert html.escape(PLANTED) in page  # the decoded rows of step 0 show the text, escaped
    assert html.escape(PLANTED_NAME) in page  # ... and the uris of their documents
    assert html.escape('<a href="javascript:alert(3)">CC0</a>') in page
    assert "No training records" in page and "No checkpoints yet" in page
    for card in ("MODEL_CARD.md", "DATA_CARD.md"):
        text = (run / card).read_text()
        assert "<b onmouseover" not in text and '<a href="javascript' not in text
    assert "&lt;a href=\"javascript:alert(3)\"&gt;CC0&lt;/a&gt;" in (run / "DATA_CARD.md").read_text()

    if CHROMIUM.exists():
        dom, log = render(run / "report" / "index.html", tmp_path)
        assert 'data-report="ready"' in dom and console_messages(log) == []
        assert "alert(" not in "".join(re.findall(r"<script[^>]*>[^<]{0,40}", dom))  # no planted script ran
        assert not re.search(r"<img[^>]*src=\"?x", dom) and "<b onmouseover" not in dom
