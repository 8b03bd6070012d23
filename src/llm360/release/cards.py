"""MODEL_CARD.md and DATA_CARD.md, written from the facts of the run and nothing else.

Every string that came from a config, a corpus or a file goes through `md()` (HTML and Markdown
made inert) or `md_code()`; numbers are formatted here. The cards hold no creation time, so a
release of an unchanged run writes the same cards again.
"""

from __future__ import annotations

from collections import Counter

from llm360.release.facts import Facts
from llm360.release.root import placeholder_mark
from llm360.release.text import human, md, md_code, md_table, num, thousands

EVENT_KINDS_SHOWN = ("nonfinite", "spike", "skip_batch", "rollback", "resume", "corrupt_checkpoint")


def latest_evals(facts: Facts) -> dict[tuple[str, str, str], dict]:
    """(checkpoint, task, metric) -> the last record written for it."""
    out = {}
    for r in facts.evals:
        if all(k in r for k in ("checkpoint", "task", "metric")):
            out[(str(r["checkpoint"]), str(r["task"]), str(r["metric"]))] = r
    return out


def eval_columns(facts: Facts) -> list[tuple[str, str]]:
    return sorted({(task, metric) for (_, task, metric) in latest_evals(facts)})


def memorization_by_checkpoint(facts: Facts) -> list[dict]:
    """Per checkpoint: mean score and extractable fraction over seen and over unseen chunks."""
    groups: dict[str, dict] = {}
    for r in facts.memorization:
        name = str(r.get("checkpoint"))
        n = r.get("n") or 0
        if not isinstance(n, (int, float)) or n <= 0:
            continue
        g = groups.setdefault(name, {"checkpoint": name, "seen": [0, 0.0, 0.0], "unseen": [0, 0.0, 0.0]})
        bucket = g["seen" if r.get("seen") else "unseen"]
        bucket[0] += n
        bucket[1] += float(r.get("mean_score") or 0.0) * n
        bucket[2] += float(r.get("extractable_frac") or 0.0) * n
    order = {c["name"]: i for i, c in enumerate(facts.checkpoints)}
    out = []
    for name, g in sorted(groups.items(), key=lambda kv: (order.get(kv[0], 1 << 30), kv[0])):
        row = {"checkpoint": name}
        for key in ("seen", "unseen"):
            n, score, frac = g[key]
            row[key] = {"n": n, "mean_score": score / n, "extractable_frac": frac / n} if n else None
        out.append(row)
    return out


# -- model card -------------------------------------------------------------------------------


def model_card(facts: Facts, config_sha256: str | None) -> str:
    m, cfg = facts.model, facts.config
    train = cfg.get("train") if isinstance(cfg.get("train"), dict) else {}
    params = m.get("parameters")
    parts = [
        f"# {md(facts.name)}: model card",
        "",
        "Written by `llm360 release` from the files of this run directory: every number below is read "
        "from them, and `release.json` lists the sha256 of every file. `llm360 verify` checks them all.",
        "",
        "## Summary",
        "",
        md_table(["", ""], [
            ["Model", f"LLaMA-style decoder (preset {md_code(m.get('preset'))})"],
            ["Parameters", f"{thousands(params)} ({human(params)})" if params else "-"],
            ["Published weights", ", ".join(sorted({str(c.get("weights_dtype") or "-") for c in facts.checkpoints}))
             or "-"],
            ["Tokens trained", tokens_line(facts)],
            ["Optimizer steps", f"{thousands(facts.steps_done)} of {thousands(facts.total_steps)}"],
            ["Data", f"{len(facts.sources)} source(s), {len(facts.stages)} stage(s), {len(facts.chunks)} chunk(s); "
                     "see DATA_CARD.md"],
            ["Data fingerprint", md_code(facts.fingerprint or "-")],
            ["Checkpoints", f"{len(facts.checkpoints)} (" + ", ".join(c["name"] for c in facts.checkpoints[:3])
             + (", ..." if len(facts.checkpoints) > 4 else "")
             + (f", {facts.checkpoints[-1]['name']}" if len(facts.checkpoints) > 3 else "") + ")"],
            ["Final training loss", num(facts.final_loss)],
            ["Config (run.yaml) sha256", md_code(config_sha256 or "-")],
            ["Release root (sha256 of release.json)", md_code(placeholder_mark())],
        ]),
        "",
        "Whoever holds the release root can check every byte of the release: `llm360 verify RUN --expect ROOT`.",
        "",
        "## Architecture",
        "",
    ]
    arch = [(k, m.get(k)) for k in ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "head_dim",
                                     "ffn_dim", "max_seq_len", "rope_theta", "norm_eps", "tie_embeddings")]
    parts += [
        md_table(["field", "value"], [[k, md(v)] for k, v in arch if v is not None]),
        "",
        "RMSNorm, rotary position embeddings, SwiGLU feed-forward, no biases: the LLaMA architecture, "
        "stored as a Hugging Face `LlamaForCausalLM` in every checkpoint folder.",
        "",
        "## Training",
        "",
    ]
    env = facts.env
    started = next((e for e in facts.events if e.get("kind") == "start"), {})
    parts += [
        md_table(["", ""], [
            ["Batch", f"{facts.batch_rows} rows x {facts.seq_len} tokens = {thousands(facts.tokens_per_step)} "
                      "tokens per step"],
            ["Steps per chunk", " / ".join(thousands(n) for n in dict.fromkeys(facts.rule.chunk_steps))
             or thousands(facts.steps_per_chunk)],
            ["Optimizer", f"AdamW, betas {md(train.get('betas'))}, eps {md(train.get('eps'))}, weight decay "
                          f"{md(train.get('weight_decay'))}, gradient clipping {md(train.get('grad_clip'))}"],
            ["Learning rate", f"peak {md(train.get('lr'))}, linear warmup {md(train.get('warmup_steps'))} steps, "
                              f"cosine decay to {md(train.get('min_lr'))}"],
            ["Precision", md(started.get("precision") or train.get("precision"))],
            ["Parallelism", f"strategy {md(started.get('strategy') or train.get('strategy'))}, world size "
                            f"{md(started.get('world_size') or env.get('world_size', '-'))}"],
            ["Hardware", md(env.get("gpu") or env.get("device") or "-") + (
                f" x {md(env.get('gpu_count'))}" if env.get("gpu_count") else "")],
            ["Software", f"llm360 {md(env.get('llm360', '-'))}, torch {md(env.get('torch', '-'))}, "
                         f"python {md(env.get('python', '-'))}"],
            ["Seed", md(cfg.get("seed", "-"))],
            ["Deterministic", md(train.get("deterministic", "-"))],
        ]),
        "",
        "### Stages",
        "",
        _stage_table(facts),
        "",
        "## Checkpoints",
        "",
        "`ckpt_c` is saved after the last step of chunk c and has seen chunks 0..c, as LLM360's ckpt_N has "
        "seen train_000..train_N; `init` holds the weights before the first step. Each folder loads with "
        "`transformers` as it is and has its own `CHECKSUMS.sha256`.",
        "",
        md_table(["checkpoint", "step", "tokens", "chunks seen", "model.safetensors sha256"],
                 [[md_code(c["name"]), thousands(c["step"]), thousands(c["tokens"]), str(c["chunks_seen"]),
                   md_code(c.get("weights_sha256") or "-")] for c in facts.checkpoints]),
        "",
        "## Evaluation",
        "",
        _eval_section(facts),
        "",
        "## Memorization",
        "",
        _memorization_section(facts),
        "",
        "## Training events",
        "",
        _events_section(facts),
        "",
        "## Use",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        f"path = \"checkpoints/{(facts.checkpoints[-1]['name'] if facts.checkpoints else 'ckpt_000')}\"",
        "model = AutoModelForCausalLM.from_pretrained(path)",
        "tokenizer = AutoTokenizer.from_pretrained(path)",
        "```",
        "",
        "`llm360 export hf RUN --checkpoint c OUT` writes one checkpoint as a standalone folder. "
        "`llm360 verify RUN` checks every file of this release; `llm360 replay RUN --checkpoint c` "
        "retrains chunk c from the checkpoint before it and compares the weights.",
        "",
        "## Limitations",
        "",
        "A base language model, pretrained only: not instruction-tuned, not evaluated for safety. It may "
        "reproduce text of its training data (see the memorization section) and repeats the biases of its "
        "sources (see DATA_CARD.md).",
        "",
    ]
    return "\n".join(parts)


def tokens_line(facts: Facts) -> str:
    """Tokens the newest checkpoint stepped through, and how many of them were skipped batches."""
    total = facts.tokens_trained
    skipped = [s for s in facts.skipped_batches() if s["step"] < facts.steps_done]
    text = f"{thousands(total)} ({human(total)})"
    if skipped:
        left = len(skipped) * facts.tokens_per_step
        text += (f", of which {len(skipped)} skipped batch(es) = {thousands(left)} tokens were not trained on "
                 f"(see Training events)")
    return text


def _mix(mix: object) -> str:
    if not isinstance(mix, dict):
        return md(mix) if mix else "-"
    total = sum(v for v in mix.values() if isinstance(v, (int, float))) or 1
    return ", ".join(f"{md(k)} {100 * v / total:.3g}%" for k, v in mix.items() if isinstance(v, (int, float)))


def _per_source(counts: object) -> str:
    if not isinstance(counts, dict) or not counts:
        return "-"
    return ", ".join(f"{md(k)} {md(v)}" for k, v in counts.items())


def _stage_table(facts: Facts) -> str:
    if not facts.stages:
        return "No stages in data/manifest.json."
    rows = []
    for i, s in enumerate(facts.stages):
        first, n = s.get("first_chunk", 0), s.get("chunks", 0)
        rows.append([str(s.get("index", i)), md(s.get("name")),
                     f"{first}..{first + n - 1}" if n else "-",
                     "{}..{}".format(*(thousands(x) for x in (facts.stage_steps(first, n)[0],
                                                             facts.stage_steps(first, n)[1] - 1)))
                     if n else "-",
                     _mix(s.get("mix")), md(s.get("rewarm_steps") or 0)])
    return md_table(["#", "stage", "chunks", "steps", "mixture", "LR re-warm steps"], rows)


def _eval_section(facts: Facts) -> str:
    columns = eval_columns(facts)
    if not columns:
        return "No evaluation records in `metrics/eval.jsonl`."
    records = latest_evals(facts)
    names = [c["name"] for c in facts.checkpoints]
    names += sorted({ck for (ck, _, _) in records} - set(names))
    rows = []
    for name in names:
        cells = []
        for task, metric in columns:
            r = records.get((name, task, metric))
            if r is None:
                cells.append("")
            else:
                err = r.get("stderr")
                cells.append(num(r.get("value")) + (f" ± {num(err, 2)}" if isinstance(err, (int, float)) else ""))
        if any(cells):
            rows.append([md_code(name), *cells])
    header = ["checkpoint", *[f"{md(t)} {md(m)}" for t, m in columns]]
    return "\n".join([f"{len(columns)} (task, metric) pair(s), from `metrics/eval.jsonl` (value ± stderr):", "",
                      md_table(header, rows)])


def _memorization_section(facts: Facts) -> str:
    rows = memorization_by_checkpoint(facts)
    if not rows:
        return "No memorization records in `analysis/memorization/summary.jsonl`."
    table = []
    for r in rows:
        seen, unseen = r["seen"], r["unseen"]
        table.append([
            md_code(r["checkpoint"]),
            f"{num(seen['mean_score'])} / {100 * seen['extractable_frac']:.3g}% (n={seen['n']})" if seen else "-",
            f"{num(unseen['mean_score'])} / {100 * unseen['extractable_frac']:.3g}% (n={unseen['n']})" if unseen else "-",
        ])
    return "\n".join([
        "k-extractable memorization as Analysis360 (prompt: the first k tokens of a training row; the "
        "model continues greedily; score: the fraction of the next l tokens it gets right; score 1 = "
        "memorized). Mean score / fraction memorized, over chunks the checkpoint had trained on (seen) and "
        "had not (unseen):", "",
        md_table(["checkpoint", "seen chunks", "unseen chunks"], table)])


def _events_section(facts: Facts) -> str:
    counts = Counter(str(e.get("kind")) for e in facts.events)
    if not counts:
        return "No events recorded (`metrics/events.jsonl`)."
    lines = ["Counts: " + ", ".join(f"{md(k)} {v}" for k, v in sorted(counts.items())) + ".", ""]
    notable = [e for e in facts.events if e.get("kind") in EVENT_KINDS_SHOWN]
    if notable:
        rows = []
        for e in notable[:200]:
            rows.append([thousands(e.get("step")) if isinstance(e.get("step"), int) else "-", md(e.get("kind")),
                         md(event_detail(e))])
        lines += [md_table(["step", "event", "details"], rows)]
        if len(notable) > 200:
            lines += ["", f"... and {len(notable) - 200} more in `metrics/events.jsonl`."]
    skipped = facts.skipped_batches()
    lines += ["", f"Batches left out of training: {len(skipped)}"
              + (" (" + "; ".join(f"step {s['step']}: chunk {s.get('chunk')} rows {_rows(s.get('rows'))}"
                                  for s in skipped[:50]) + ")" if skipped else "") + "."]
    return "\n".join(lines)


def _rows(rows: object) -> str:
    return md(plain_rows(rows))


def event_detail(e: dict) -> str:
    """One line of what an event says, as plain text (the caller escapes it for its format)."""
    kind = e.get("kind")
    if kind in ("nonfinite", "spike"):
        return f"{e.get('reason', '')}" + (f"; action: {e['action']}" if e.get("action") else "")
    if kind == "skip_batch":
        items = [s for s in (e.get("skipped") or []) if isinstance(s, dict)]
        text = ", ".join(f"step {s.get('step')} (chunk {s.get('chunk')}, rows {plain_rows(s.get('rows'))})"
                         for s in items[:10])
        return f"skipped {text}" + (f" and {len(items) - 10} more" if len(items) > 10 else "")
    if kind == "rollback":
        return f"to {e.get('to_checkpoint')} (step {e.get('to_step')}) after {e.get('reason')}"
    if kind in ("resume", "start"):
        return (f"from {e.get('checkpoint')}, world size {e.get('world_size')}, {e.get('strategy')}, "
                f"{e.get('precision')}")
    if kind == "corrupt_checkpoint":
        return f"{e.get('checkpoint')}: " + "; ".join(str(p) for p in (e.get("problems") or [])[:3])
    rest = {k: v for k, v in e.items() if k not in ("time", "step", "kind")}
    return ", ".join(f"{k}: {v}" for k, v in list(rest.items())[:6])


def plain_rows(rows: object) -> str:
    if isinstance(rows, list) and len(rows) == 2:
        return f"[{rows[0]}, {rows[1]})"
    return str(rows)


# -- data card --------------------------------------------------------------------------------


def data_card(facts: Facts) -> str:
    man, cfg = facts.manifest, facts.config
    data_cfg = cfg.get("data") if isinstance(cfg.get("data"), dict) else {}
    sources = facts.sources
    docs_kept = sum(s.get("documents_kept") or 0 for s in sources)
    tokens = sum(s.get("tokens") or 0 for s in sources)
    chunk_tokens = sum(c.get("tokens") or 0 for c in facts.chunks)
    tok = man.get("tokenizer") if isinstance(man.get("tokenizer"), dict) else {}
    parts = [
        f"# {md(facts.name)}: data card",
        "",
        "Written by `llm360 release` from `data/manifest.json` and the training records. The data itself "
        "is part of the release: `data/chunks/` holds every training row in the exact order it was trained "
        "on, and `data/documents.parquet` with the `*.spans.parquet` files say which document each token "
        "came from.",
        "",
        "## Summary",
        "",
        md_table(["", ""], [
            ["Sources", str(len(sources))],
            ["Documents kept", thousands(docs_kept)],
            ["Tokens after cleaning", f"{thousands(tokens)} ({human(tokens)})"],
            ["Training chunks", f"{len(facts.chunks)}, of {_chunk_rows(facts)} rows of {facts.seq_len} + 1 tokens"],
            ["Tokens in chunks", f"{thousands(chunk_tokens)} ({human(chunk_tokens)})"],
            ["Stages", str(len(facts.stages))],
            ["Tokenizer", f"byte-level BPE, {md(tok.get('vocab_size', '-'))} tokens"],
            ["Data fingerprint", md_code(facts.fingerprint or "-")],
        ]),
        "",
        "## Sources",
        "",
    ]
    if sources:
        rows = []
        for s in sources:
            dropped = s.get("dropped") if isinstance(s.get("dropped"), dict) else {}
            rows.append([md(s.get("name")), md(_source_kind(s)), md(s.get("license") or "not given"),
                         thousands(s.get("documents_read")), thousands(s.get("documents_kept")),
                         thousands(sum(v for v in dropped.values() if isinstance(v, int))),
                         thousands(s.get("tokens")), thousands(s.get("train_rows")), thousands(s.get("heldout_rows")),
                         md(s.get("description") or "not given")])
        # where the data came from is the source's description, in its author's words, never the
        # manifest's root: that is a place on the machine that prepared the run
        parts += [md_table(["source", "kind", "license", "documents read", "kept", "dropped", "tokens",
                            "training rows", "held-out rows", "description"], rows), ""]
        drops = [[md(s.get("name")), md(reason), thousands(n)] for s in sources
                 for reason, n in sorted((s.get("dropped") or {}).items()) if isinstance(s.get("dropped"), dict)]
        parts += ["### Documents dropped or changed, per reason", "",
                  md_table(["source", "reason", "documents"], drops) if drops else "None.", ""]
    else:
        parts += ["No sources in data/manifest.json.", ""]
    filters = man.get("filters") if isinstance(man.get("filters"), dict) else data_cfg.get("filters")
    filters = filters if isinstance(filters, dict) else {}
    if filters:
        parts += ["### Filters", "", ", ".join(f"{md(k)}: {md(v)}" for k, v in filters.items()) + ".", ""]
    parts += ["## Stages and mixtures", "", _stage_detail(facts), "", "## Chunks", "",
              "Chunk c holds the rows of its steps in order: at its j-th step, the model trains on rows "
              f"[j x B, (j + 1) x B), B = {facts.batch_rows}; the chunks of a stage have its steps per chunk "
              "(the stages table). `llm360 data batch RUN --step T` prints the rows of any step.", "",
              _chunk_table(facts), "", "## Held-out data", "",
              "Each source keeps rows out of training in `data/heldout/<source>.npy`: "
              + (", ".join(f"{md(s.get('name'))} {thousands(s.get('heldout_rows'))}" for s in sources) or "none")
              + ".", "", "## Data the model did not see", ""]
    skipped = facts.skipped_batches()
    if skipped:
        parts += ["The spike guard skipped these batches; they are in the chunks but were not trained on:", "",
                  md_table(["step", "chunk", "rows", "reason"],
                           [[thousands(s["step"]), md(s.get("chunk")), _rows(s.get("rows")), md(s.get("reason"))]
                            for s in skipped]), ""]
    unseen = _outside_chunks(sources, facts.stages)
    if unseen:
        parts += ["Prepared but in no chunk, per source: training rows the stages did not draw, the tokens at the "
                  "end of each source's stream that did not fill a row, and the held-out rows:", "",
                  md_table(["source", "rows in no chunk", "tail tokens", "held-out rows"], unseen), ""]
    if not skipped and not unseen:
        parts += ["None: every prepared row is in a chunk, and every row of every trained chunk was trained on.", ""]
    return "\n".join(parts)


def _outside_chunks(sources: list[dict], stages: list[dict]) -> list[list[str]]:
    """Per source with any: (rows in no chunk, tail tokens dropped, held-out rows), from the
    manifest. The stages draw a source's rows through seeded permutations, one epoch after the
    other, so the distinct rows in chunks are min(training rows, rows drawn by all stages)."""
    rows = []
    for s in sources:
        name, train = s.get("name"), s.get("train_rows")
        if not isinstance(train, int):
            continue
        drawn = sum(_count(st["rows_per_source"].get(name)) for st in stages
                    if isinstance(st, dict) and isinstance(st.get("rows_per_source"), dict))
        counts = [max(0, train - min(train, drawn)), _count(s.get("tail_tokens_dropped")), _count(s.get("heldout_rows"))]
        if any(counts):
            rows.append([md(name), *(thousands(n) for n in counts)])
    return rows


def _count(value) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _source_kind(source: dict) -> str:
    """`jsonl`, ..., or the built-in's name with the Python it came from (`python-docs, Python 3.11.9`)."""
    if source.get("kind") == "builtin" and source.get("builtin"):
        python = f", Python {source['python']}" if source.get("python") else ""
        return f"{source['builtin']}{python}"
    return str(source.get("kind", "-"))


def _chunk_rows(facts: Facts) -> str:
    """Rows per chunk: one number, or each distinct one when stages differ."""
    sizes = sorted({steps * facts.batch_rows for steps in facts.rule.chunk_steps}) or [facts.steps_per_chunk * facts.batch_rows]
    return " or ".join(thousands(n) for n in sizes)


def _stage_detail(facts: Facts) -> str:
    if not facts.stages:
        return "No stages in data/manifest.json."
    rows = []
    for i, s in enumerate(facts.stages):
        first, n = s.get("first_chunk", 0), s.get("chunks", 0)
        rows.append([md(s.get("name")), f"{first}..{first + n - 1}" if n else "-", _mix(s.get("mix")),
                     _per_source(s.get("rows_per_source")), _per_source(s.get("epochs"))])
    return md_table(["stage", "chunks", "mixture (weights)", "rows per source", "epochs per source"], rows)


def _chunk_table(facts: Facts) -> str:
    if not facts.chunks:
        return "No chunks in data/manifest.json."
    stage_names = {s.get("index", i): s.get("name") for i, s in enumerate(facts.stages)}
    rows = []
    for c in facts.chunks:
        stage = c.get("stage")
        rows.append([str(c.get("index")), md(stage_names.get(stage, stage)), thousands(c.get("rows")),
                     thousands(c.get("tokens")), _per_source(c.get("rows_per_source")), md_code(c.get("sha256") or "-")])
    return md_table(["chunk", "stage", "rows", "tokens", "rows per source", "sha256"], rows)
