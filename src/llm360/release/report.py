"""report/index.html: one self-contained page about a run, to look at rather than read JSON.

    html = render(gather(run_dir), config_sha256)

Everything is inline: the style sheet, the chart script (llm360.release.report_assets), the data
(JSON in a <script type="application/json"> block, escaped so that no `</script>` can close it)
and the images (PNG files of analysis/ as data: URIs). The page opens from disk with no network.
Every string that came from a corpus, a model, a config or a record is HTML-escaped where it is
written; the script sets text only with `textContent`.
"""

from __future__ import annotations

import base64
import math
from collections import Counter

from llm360 import __version__
from llm360.release.cards import event_detail, eval_columns, latest_evals, memorization_by_checkpoint
from llm360.release.facts import Facts, first_batch
from llm360.release.report_assets import CSS, JS
from llm360.release.root import placeholder_mark
from llm360.release.text import esc, finite, human, num, script_json, thousands

MAX_POINTS = 2000  # per training curve; longer runs are averaged into this many buckets
MAX_IMAGE_BYTES = 8 << 20
MARKED_EVENTS = ("nonfinite", "spike", "skip_batch", "rollback", "resume", "corrupt_checkpoint")
MAX_EVENTS_SHOWN = 500


# -- the data behind the charts ------------------------------------------------------------------


def _bucketed(train: list[dict]) -> dict:
    """Columns step, tokens, loss, lr, grad_norm, tokens_per_s, mfu (+ loss_ema), at most MAX_POINTS long."""
    keys = ("loss", "lr", "grad_norm", "tokens_per_s", "mfu")
    records = sorted((r for r in train if isinstance(r.get("step"), int)), key=lambda r: r["step"])
    cols: dict[str, list] = {k: [] for k in ("step", "tokens", *keys, "loss_ema")}
    ema, alpha = None, 2 / (1 + max(5, min(100, len(records) // 20 or 5)))
    emas = []
    for r in records:
        loss = finite(r.get("loss"))
        if loss is not None:
            ema = loss if ema is None else ema + alpha * (loss - ema)
        emas.append(ema if loss is not None else None)
    size = max(1, math.ceil(len(records) / MAX_POINTS))
    for start in range(0, len(records), size):
        group = records[start:start + size]
        cols["step"].append(group[-1]["step"] if size > 1 else group[0]["step"])
        cols["tokens"].append(finite(group[-1].get("tokens")))
        for k in keys:
            values = [v for v in (finite(r.get(k)) for r in group) if v is not None]
            cols[k].append(sum(values) / len(values) if values else None)
        e = [v for v in emas[start:start + size] if v is not None]
        cols["loss_ema"].append(e[-1] if e else None)
    return cols


def _stages(facts: Facts) -> list[dict]:
    out = []
    for i, s in enumerate(facts.stages):
        first, n = int(s.get("first_chunk", 0) or 0), int(s.get("chunks", 0) or 0)
        out.append({"name": str(s.get("name", i)), "first_chunk": first, "chunks": n,
                    "first_step": facts.stage_steps(first, n)[0] if n else 0,
                    "end_step": facts.stage_steps(first, n)[1] if n else 0})
    return out


def _events(facts: Facts) -> list[dict]:
    out = []
    for e in facts.events:
        if e.get("kind") in MARKED_EVENTS and isinstance(e.get("step"), int):
            out.append({"step": e["step"], "kind": e["kind"], "text": event_detail(e)[:300]})
    return out[:MAX_EVENTS_SHOWN]


def _evals(facts: Facts) -> list[dict]:
    records = latest_evals(facts)
    order = {c["name"]: c for c in facts.checkpoints}
    out = []
    for task, metric in eval_columns(facts):
        points = []
        for (name, t, mt), r in records.items():
            if (t, mt) != (task, metric):
                continue
            ck = order.get(name, {})
            tokens = finite(r.get("tokens"))
            points.append({"checkpoint": name, "step": finite(r.get("step")),
                           "tokens": tokens if tokens is not None else finite(ck.get("tokens")),
                           "value": finite(r.get("value")), "stderr": finite(r.get("stderr"))})
        points = [p for p in points if p["tokens"] is not None]
        points.sort(key=lambda p: p["tokens"])
        out.append({"task": task, "metric": metric, "points": points})
    return out


def _composition(facts: Facts) -> dict:
    sources: list[str] = [str(s.get("name")) for s in facts.sources]
    chunks = []
    stage_names = {s.get("index", i): s.get("name") for i, s in enumerate(facts.stages)}
    for i, c in enumerate(facts.chunks):
        counts = c.get("rows_per_source") if isinstance(c.get("rows_per_source"), dict) else {}
        counts = {str(k): v for k, v in counts.items() if finite(v) is not None}
        for name in counts:
            if name not in sources:
                sources.append(name)
        chunks.append({"index": c.get("index", i), "stage": str(stage_names.get(c.get("stage"), c.get("stage"))),
                       "counts": counts})
    return {"sources": sources, "chunks": chunks}


def _memorization(facts: Facts) -> dict:
    order = {c["name"]: i for i, c in enumerate(facts.checkpoints)}
    by_ck: dict[str, list] = {}
    for r in facts.memorization:
        if not isinstance(r.get("chunk"), int):
            continue
        by_ck.setdefault(str(r.get("checkpoint")), []).append({
            "chunk": r["chunk"], "mean_score": finite(r.get("mean_score")),
            "extractable_frac": finite(r.get("extractable_frac")), "seen": bool(r.get("seen")),
            "n": finite(r.get("n"))})
    names = sorted(by_ck, key=lambda n: (order.get(n, 1 << 30), n))
    checkpoints = [{"name": n, "points": sorted(by_ck[n], key=lambda p: p["chunk"])} for n in names]
    histogram = {"checkpoint": None, "counts": []}
    if names:
        last = names[-1]
        total: list[float] = []
        for r in facts.memorization:
            h = r.get("histogram")
            if str(r.get("checkpoint")) == last and isinstance(h, list):
                if len(total) < len(h):
                    total += [0] * (len(h) - len(total))
                for i, v in enumerate(h):
                    total[i] += finite(v) or 0
        histogram = {"checkpoint": last, "counts": total}
    n_chunks = max([len(facts.chunks)] + [p["chunk"] + 1 for c in checkpoints for p in c["points"]])
    return {"checkpoints": checkpoints, "chunks": n_chunks, "histogram": histogram}


def _contamination(facts: Facts) -> list[dict]:
    """Per task: clean and contaminated accuracy per checkpoint (from summary.json)."""
    tasks = facts.contamination.get("tasks")
    out = []
    for task, t in (tasks if isinstance(tasks, dict) else {}).items():
        points = [p for p in (t.get("accuracy") or []) if isinstance(p, dict)] if isinstance(t, dict) else []
        out.append({"task": str(task), "points": [{"checkpoint": str(p.get("checkpoint")), "step": finite(p.get("step")),
                                                   "clean": finite(p.get("clean_acc")),
                                                   "contaminated": finite(p.get("contaminated_acc"))}
                                                  for p in points if finite(p.get("step")) is not None]})
    return out


def payload(facts: Facts) -> dict:
    return {"train": _bucketed(facts.train), "stages": _stages(facts), "events": _events(facts),
            "checkpoints": [{"name": c["name"], "step": c["step"]} for c in facts.checkpoints],
            "evals": _evals(facts), "composition": _composition(facts), "memorization": _memorization(facts),
            "contamination": _contamination(facts)}


# -- the page ------------------------------------------------------------------------------------


def _stat(key: str, value: str, detail: str = "") -> str:
    return (f'<div class="stat"><div class="k">{esc(key)}</div><div class="v" title="{esc(value)}">{esc(value)}</div>'
            f'<div class="d">{esc(detail)}</div></div>')


def _table(header: list[str], rows: list[list[str]], numeric: set[int] = frozenset(), scroll: bool = False) -> str:
    """Cells are HTML already (escaped by the caller)."""
    head = "".join(f'<th class="num">{h}</th>' if i in numeric else f"<th>{h}</th>" for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>"
                                    for i, c in enumerate(row)) + "</tr>" for row in rows)
    table = f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    return f'<div class="scroll">{table}</div>' if scroll else table


def _hash(digest: object) -> str:
    if not isinstance(digest, str) or not digest:
        return "-"
    return f'<span class="hash" title="{esc(digest)}">{esc(digest[:16])}…</span>'


def _summary(facts: Facts, config_sha256: str | None) -> str:
    m = facts.model
    params = m.get("parameters")
    arch = (f"{m.get('n_layers')} layers, d={m.get('dim')}, {m.get('n_heads')} heads"
            if m.get("n_layers") else "")
    train_time = _wall_time(facts)
    stats = [
        _stat("parameters", human(params) if params else "-", f"{thousands(params)}; {arch}" if params else ""),
        _stat("tokens trained", human(facts.tokens_trained), f"{thousands(facts.tokens_trained)} tokens"),
        _stat("steps", human(facts.steps_done),
              f"of {thousands(facts.total_steps)}; {facts.batch_rows} rows x {facts.seq_len} tokens each"),
        _stat("final loss", num(facts.final_loss), f"at step {facts.train[-1].get('step')}" if facts.train else ""),
        _stat("chunks", str(len(facts.chunks)), f"{len(facts.sources)} sources, {len(facts.stages)} stages"),
        _stat("checkpoints", str(len(facts.checkpoints)),
              (facts.checkpoints[0]["name"] + " … " + facts.checkpoints[-1]["name"]) if facts.checkpoints else ""),
        _stat("events", str(len([e for e in facts.events if e.get("kind") in MARKED_EVENTS])),
              ", ".join(f"{k} {v}" for k, v in sorted(Counter(
                  e.get("kind") for e in facts.events if e.get("kind") in MARKED_EVENTS).items())) or "none notable"),
        _stat("training time", train_time or "-", str(facts.env.get("gpu") or facts.env.get("device") or "")),
    ]
    return f'<div class="stats">{"".join(stats)}</div>'


def _wall_time(facts: Facts) -> str | None:
    times = [e.get("time") for e in facts.events if finite(e.get("time")) is not None]
    if len(times) < 2:
        return None
    seconds = max(times) - min(times)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _training_section(facts: Facts, data: dict) -> str:
    if not data["train"]["step"]:
        return '<p class="empty">No training records (metrics/train.jsonl) yet.</p>'
    charts = [("chart-loss", "Loss"), ("chart-lr", "Learning rate"), ("chart-grad", "Gradient norm (before clipping)"),
              ("chart-tps", "Throughput (tokens/s)")]
    if any(v is not None for v in data["train"]["mfu"]):
        charts.append(("chart-mfu", "Model FLOPs utilization"))
    cards = "".join(f'<div class="card"><h3>{esc(title)}</h3><div class="chart" id="{cid}"></div></div>'
                    for cid, title in charts)
    kinds = sorted({e["kind"] for e in data["events"]})
    legend = ""
    if kinds:
        colors = {"spike": "#e15759", "nonfinite": "#b42318", "skip_batch": "#f28e2b", "rollback": "#7a3e9d",
                  "resume": "#2f5d9b", "corrupt_checkpoint": "#101828"}
        legend = '<div class="legend">' + "".join(
            f'<span><span class="sw" style="background:{colors.get(k, "#667085")}"></span>{esc(k)}</span>'
            for k in kinds) + "</div>"
    return ('<p class="note">One point per optimizer step (averaged when there are many). Shaded bands and dashed '
            'lines are the stages; triangles mark events (hover for details). A skipped batch has no loss.</p>'
            f'{legend}<div class="grid2">{cards}</div>')


def _events_section(facts: Facts) -> str:
    notable = [e for e in facts.events if e.get("kind") in MARKED_EVENTS]
    counts = Counter(str(e.get("kind")) for e in facts.events)
    out = [f'<p class="note">All events: {esc(", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none")}.'
           ' Every batch left out of training is listed, so what each checkpoint saw stays exact.</p>']
    if notable:
        rows = [[esc(thousands(e.get("step")) if isinstance(e.get("step"), int) else "-"),
                 f'<span class="tag" style="background:{_event_color(e.get("kind"))}">{esc(e.get("kind"))}</span>',
                 esc(event_detail(e))] for e in notable[:MAX_EVENTS_SHOWN]]
        out.append(_table(["step", "event", "details"], rows, numeric={0}, scroll=True))
    else:
        out.append('<p class="empty">No spikes, skipped batches, rollbacks or resumes.</p>')
    return "".join(out)


def _event_color(kind: object) -> str:
    return {"spike": "#e15759", "nonfinite": "#b42318", "skip_batch": "#f28e2b", "rollback": "#7a3e9d",
            "resume": "#2f5d9b", "corrupt_checkpoint": "#101828"}.get(str(kind), "#667085")


def _eval_section(facts: Facts, data: dict) -> str:
    if not data["evals"]:
        return '<p class="empty">No evaluation records (metrics/eval.jsonl) in this run.</p>'
    cards = "".join(f'<div class="card"><h3>{esc(ev["task"])} <span class="note">{esc(ev["metric"])}</span></h3>'
                    f'<div class="chart" id="chart-eval-{i}"></div></div>' for i, ev in enumerate(data["evals"]))
    records = latest_evals(facts)
    columns = eval_columns(facts)
    names = [c["name"] for c in facts.checkpoints] + sorted({k[0] for k in records} - {c["name"] for c in facts.checkpoints})
    rows = []
    for name in names:
        cells = []
        for task, metric in columns:
            r = records.get((name, task, metric))
            err = r.get("stderr") if r else None
            cells.append("" if r is None else esc(num(r.get("value"))) + (
                f' <span class="note">± {esc(num(err, 2))}</span>' if finite(err) is not None else ""))
        if any(cells):
            rows.append([f"<code>{esc(name)}</code>", *cells])
    header = ["checkpoint", *[f"{esc(t)}<br><span class=\"note\">{esc(m)}</span>" for t, m in columns]]
    return (f'<p class="note">Every checkpoint on every task; value ± standard error, against tokens trained.</p>'
            f'<div class="grid3">{cards}</div><h3>All results</h3>'
            + _table(header, rows, numeric=set(range(1, len(columns) + 1)), scroll=True))


def _data_section(facts: Facts, data: dict, samples: list[dict]) -> str:
    out = []
    if facts.sources:
        rows = []
        for s in facts.sources:
            dropped = s.get("dropped") if isinstance(s.get("dropped"), dict) else {}
            reasons = ", ".join(f"{k}: {v}" for k, v in sorted(dropped.items())) or "none"
            rows.append([f"<b>{esc(s.get('name'))}</b>", esc(s.get("kind", "-")), esc(s.get("license") or "not given"),
                         esc(thousands(s.get("documents_read"))), esc(thousands(s.get("documents_kept"))),
                         esc(reasons), esc(thousands(s.get("tokens"))), esc(thousands(s.get("train_rows"))),
                         esc(thousands(s.get("heldout_rows")))])
        out.append(_table(["source", "kind", "license", "documents read", "kept", "dropped (reason: documents)",
                           "tokens", "training rows", "held-out rows"], rows, numeric={3, 4, 6, 7, 8}))
    else:
        out.append('<p class="empty">No data manifest (data/manifest.json).</p>')
    if data["composition"]["chunks"]:
        out.append('<h3>Rows per source in each chunk, in training order</h3>'
                   '<div class="card"><div class="chart" id="chart-composition"></div></div>')
    if facts.stages:
        rows = []
        for st in data["stages"]:
            raw = next((s for s in facts.stages if str(s.get("name")) == st["name"]), {})
            mix = raw.get("mix") if isinstance(raw.get("mix"), dict) else {}
            total = sum(v for v in mix.values() if finite(v) is not None) or 1
            epochs = raw.get("epochs") if isinstance(raw.get("epochs"), dict) else {}
            rows.append([f"<b>{esc(st['name'])}</b>",
                         esc(f"{st['first_chunk']}..{st['first_chunk'] + st['chunks'] - 1}"),
                         esc(f"{thousands(st['first_step'])}..{thousands(st['end_step'] - 1)}"),
                         esc(", ".join(f"{k} {100 * v / total:.3g}%" for k, v in mix.items() if finite(v) is not None)),
                         esc(", ".join(f"{k} {v}" for k, v in epochs.items()) or "-"),
                         esc(raw.get("rewarm_steps") or 0)])
        out.append("<h3>Stages and mixtures</h3>" + _table(["stage", "chunks", "steps", "mixture", "epochs per source",
                                                            "LR re-warm steps"], rows))
    if facts.chunks:
        rows = [[esc(c.get("index", i)), esc(next((s["name"] for s in data["stages"]
                                                 if s["first_chunk"] <= i < s["first_chunk"] + s["chunks"]), "-")),
                 esc(thousands(c.get("rows"))), esc(thousands(c.get("tokens"))), _hash(c.get("sha256"))]
                for i, c in enumerate(facts.chunks)]
        out.append("<details><summary>Chunk files and their sha256</summary>"
                   + _table(["chunk", "stage", "rows", "tokens", "sha256"], rows, numeric={0, 2, 3}, scroll=True)
                   + "</details>")
    out.append("<h3>What the model saw first: the rows of step 0, decoded</h3>")
    if samples:
        out.append(f'<p class="note">At the j-th step of a chunk the model trains on its rows [j·B, (j+1)·B) '
                   f'(B = {facts.batch_rows}); <code>llm360 data batch RUN --step T</code> '
                   'prints any step. The text is shown exactly as decoded from the tokens.</p>')
        for s in samples:
            docs = ", ".join(f"{d.get('uri') or d.get('doc_id')}" for d in s["documents"])
            out.append(f'<div class="sample"><div class="meta">chunk {esc(s["chunk"])}, row {esc(s["row"])} · '
                       f'source {esc(", ".join(s["sources"]) or "-")} · documents: {esc(docs or "-")}</div>'
                       f'<pre>{esc(s["text"] if s["text"] is not None else "(no tokenizer to decode with)")}</pre></div>')
    else:
        out.append('<p class="empty">The rows of step 0 could not be read.</p>')
    return "".join(out)


def _images(facts: Facts) -> list[tuple[str, str]]:
    """(name, data URI) of the PNG plots under analysis/ (regular files, PNG signature, not too big)."""
    root = facts.run_dir / "analysis"
    found = []
    for folder in (root, root / "memorization"):
        if not folder.is_dir() or folder.is_symlink():
            continue
        for path in sorted(folder.glob("*.png")):
            try:
                if path.is_symlink() or not path.is_file() or path.stat().st_size > MAX_IMAGE_BYTES:
                    continue
                data = path.read_bytes()
            except OSError:
                continue
            if data.startswith(b"\x89PNG\r\n\x1a\n"):
                rel = path.relative_to(facts.run_dir).as_posix()
                found.append((rel, "data:image/png;base64," + base64.b64encode(data).decode("ascii")))
    return found


def _memorization_section(facts: Facts, data: dict) -> str:
    out = []
    mem = data["memorization"]
    if mem["checkpoints"]:
        out.append('<p class="note">Analysis360: the first 32 tokens of a sampled training row are the prompt, the model '
                   'continues greedily, the score is the fraction of the next 32 tokens it gets right; score 1 = '
                   'memorized (k-extractable). Chunks a checkpoint has not trained on yet are the control.</p>'
                   '<div class="grid2"><div class="card"><h3>Mean score per chunk</h3>'
                   '<div class="chart" id="chart-mem-mean_score"></div></div>'
                   '<div class="card"><h3>Fraction memorized per chunk</h3>'
                   '<div class="chart" id="chart-mem-extractable_frac"></div></div></div>')
        if mem["histogram"]["counts"]:
            out.append('<div class="card" style="margin-top:14px"><h3>Histogram of scores, newest checkpoint</h3>'
                       '<div class="chart" id="chart-mem-hist"></div></div>')
        rows = []
        for r in memorization_by_checkpoint(facts):
            cells = [f"<code>{esc(r['checkpoint'])}</code>"]
            for key in ("seen", "unseen"):
                b = r[key]
                cells += ([esc(num(b["mean_score"])), esc(f"{100 * b['extractable_frac']:.3g}%"), esc(thousands(b["n"]))]
                          if b else ["-", "-", "-"])
            rows.append(cells)
        out.append("<h3>Summary per checkpoint</h3>" + _table(
            ["checkpoint", "seen: mean score", "seen: memorized", "seen: rows", "unseen: mean score",
             "unseen: memorized", "unseen: rows"], rows, numeric={1, 2, 3, 4, 5, 6}))
    else:
        out.append('<p class="empty">No memorization records (analysis/memorization/summary.jsonl) in this run.</p>')
    images = _images(facts)
    if images:
        out.append('<h3>Plots</h3><div class="grid2">' + "".join(
            f'<figure><img src="{uri}" alt="{esc(name)}"><figcaption>{esc(name)}</figcaption></figure>'
            for name, uri in images) + "</div>")
    return "".join(out)


def _contamination_section(facts: Facts, data: dict) -> str:
    tasks = facts.contamination.get("tasks")
    if not isinstance(tasks, dict) or not tasks:
        return ('<p class="empty">No contamination records (analysis/contamination/summary.json): '
                '<code>llm360 analyze contamination RUN --tasks ...</code> writes them.</p>')
    rows = []
    for task, t in tasks.items():
        t = t if isinstance(t, dict) else {}
        frac = finite(t.get("contaminated_frac"))
        sources = t.get("sources") if isinstance(t.get("sources"), list) else []
        rows.append([esc(task), esc(thousands(finite(t.get("items")))),
                     esc(thousands(finite(t.get("contaminated"))))
                     + (f' <span class="note">{100 * frac:.3g}%</span>' if frac is not None else ""),
                     esc(thousands(finite(t.get("longest_span")))), esc(thousands(finite(t.get("first_step")))),
                     esc(", ".join(map(str, sources)) or "-")])
    cards = "".join(f'<div class="card"><h3>{esc(c["task"])} <span class="note">acc, clean vs contaminated</span></h3>'
                    f'<div class="chart" id="chart-contam-{i}"></div></div>'
                    for i, c in enumerate(data["contamination"]) if c["points"])
    no_logs = [c["task"] for c in data["contamination"] if not c["points"]]
    return (f'<p class="note">An item (question and gold answer) is contaminated when one of its '
            f'{esc(facts.contamination.get("ngram"))}-grams occurs in a training row (an item shorter than that: the '
            'whole item). Held-out rows do not count. Per item: analysis/contamination/items.parquet.</p>'
            + _table(["task", "items", "contaminated", "longest span (tokens)", "first step", "sources"], rows,
                     numeric={1, 2, 3, 4})
            + (f'<div class="grid3">{cards}</div>' if cards else "")
            + (f'<p class="note">No per-question evaluation logs for {esc(", ".join(no_logs))}: overlaps only.</p>'
               if no_logs else ""))


def _checkpoint_section(facts: Facts) -> str:
    if not facts.checkpoints:
        return '<p class="empty">No checkpoints yet.</p>'
    evals = latest_evals(facts)
    rows = []
    for c in facts.checkpoints:
        results = sorted((t, m, r.get("value")) for (ck, t, m), r in evals.items() if ck == c["name"])
        rows.append([f'<a href="../checkpoints/{esc(c["name"])}/"><code>{esc(c["name"])}</code></a>',
                     esc(thousands(c["step"])), esc(thousands(c["tokens"])), esc(c["chunks_seen"]),
                     esc(", ".join(str(s) for s in c.get("skipped_steps") or []) or "-"),
                     _hash(c.get("weights_sha256")),
                     esc("; ".join(f"{t} {m} {num(v, 3)}" for t, m, v in results[:4])
                         + ("; ..." if len(results) > 4 else "") or "-")])
    return ('<p class="note"><code>ckpt_c</code> is saved after the last step of chunk c and has seen chunks 0..c; '
            '<code>init</code> is the seeded initial model. Each folder loads with transformers as it is and has its '
            'own CHECKSUMS.sha256.</p>'
            + _table(["checkpoint", "step", "tokens", "chunks seen", "skipped steps", "model.safetensors sha256",
                      "evaluation"], rows, numeric={1, 2, 3}, scroll=len(rows) > 12))


def _config_section(facts: Facts, config_sha256: str | None) -> str:
    try:
        config_text = (facts.run_dir / "run.yaml").read_text(encoding="utf-8", errors="replace")
    except OSError:
        config_text = "(run.yaml could not be read)"
    env_rows = [[esc(k), esc(v)] for k, v in facts.env.items() if not isinstance(v, (dict, list))]
    return (f'<p class="note">run.yaml sha256 <span class="hash">{esc(config_sha256 or "-")}</span> · data fingerprint '
            f'<span class="hash">{esc(facts.fingerprint or "-")}</span></p>'
            f"<details><summary>run.yaml (the resolved config, as trained)</summary><pre>{esc(config_text)}</pre></details>"
            + (f"<details><summary>env.json (software and hardware at the start)</summary>"
               f"{_table(['key', 'value'], env_rows)}</details>" if env_rows else ""))


def render(facts: Facts, config_sha256: str | None = None) -> str:
    data = payload(facts)
    samples = first_batch(facts)
    title = f"{facts.name}: llm360 run report"
    sections = [
        ("training", "Training", _training_section(facts, data)),
        ("events", "Events", _events_section(facts)),
        ("evaluation", "Evaluation", _eval_section(facts, data)),
        ("data", "Data", _data_section(facts, data, samples)),
        ("memorization", "Memorization", _memorization_section(facts, data)),
        ("contamination", "Contamination", _contamination_section(facts, data)),
        ("checkpoints", "Checkpoints", _checkpoint_section(facts)),
        ("config", "Config and environment", _config_section(facts, config_sha256)),
    ]
    nav = "".join(f'<a href="#{sid}">{esc(name)}</a>' for sid, name, _ in sections)
    nav += ('<a href="../MODEL_CARD.md">Model card</a><a href="../DATA_CARD.md">Data card</a>'
            '<a href="../release.json">release.json</a>')
    body = "".join(f'<section id="{sid}"><h2>{esc(name)}</h2>{html}</section>' for sid, name, html in sections)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<title>{esc(title)}</title>
<style>{CSS}</style>
</head>
<body>
<header class="top">
<h1>{esc(facts.name)}</h1>
<div class="sub">llm360 run report · LLaMA-style model pretrained in the open · data fingerprint
<code>{esc((facts.fingerprint or "-")[:16])}</code> · <a href="../MODEL_CARD.md">model card</a> ·
<a href="../DATA_CARD.md">data card</a> · release root (sha256 of release.json) <code>{placeholder_mark()}</code> ·
verify with <code>llm360 verify RUN --expect ROOT</code></div>
{_summary(facts, config_sha256)}
</header>
<nav>{nav}</nav>
<main>
{body}
<footer>Written by llm360 {esc(__version__)} (<code>llm360 release</code>) from the files of this run directory.
Every file is listed with its sha256 in release.json; text from the corpus and the config is shown escaped.</footer>
</main>
<script type="application/json" id="report-data">{script_json(data)}</script>
<script>{JS}</script>
</body>
</html>
"""
