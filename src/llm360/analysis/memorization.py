"""Memorization across checkpoints, as LLM360 Analysis360 and Pythia measure it (docs/run-directory.md §6).

From a training row, the first k tokens (k = 32) are the prompt and the next l (l = 32) the
truth. The model continues the prompt greedily for l tokens; the score is the fraction of the l
positions where it equals the truth (a multiple of 1/l), and a row with score 1 is
k-extractable. Rows are sampled per chunk by a seeded draw that anyone can repeat:

    rows = np.sort(np.random.default_rng([seed, chunk]).permutation(rows_per_chunk)[:samples])

(seed from run.yaml), so a larger --samples keeps the rows of a smaller one.

Outputs, under RUN/analysis/:

    memorization/summary.jsonl    one line per (checkpoint, chunk): checkpoint, chunk, seen, n,
                                  mean_score, extractable_frac, histogram (l + 1 bins: how many
                                  rows matched 0, 1, ..., l tokens), step, prompt_tokens,
                                  continuation_tokens, time
    memorization/scores.parquet   one row per (checkpoint, chunk, row): checkpoint, step, chunk,
                                  row, row_step (the step that trained on the row), seen, score,
                                  matched, extractable, train_count (occurrences of the row's
                                  first k + l tokens in the training chunks, for extractable
                                  rows, when the search index can be had), time
    memorization_*.png            the plots (llm360.analysis.plots)

Rows shorter than the default 32 + 32 tokens (toy runs) are scored with k = l = half a row,
as the records say; other settings that do not fit are refused. train_count comes from the
search index (llm360.analysis.search), which is built on the way when it is missing or stale,
an index backend is installed and the run has under 2B tokens; else it stays empty.

`seen` says whether the checkpoint had trained on the chunk: ckpt_c has seen chunks 0..c, and
a checkpoint after K steps has seen chunk c when chunk c's last step is before K. Unseen chunks
are the control: a model cannot have memorized them. Per row, `seen` is exact: the row's step
came before the checkpoint and its batch was not skipped by the spike guard.

Resumable: a (checkpoint, chunk) pair is committed by its summary line, written right after its
scores (a small parquet file under memorization/.parts/); the parts are folded into
scores.parquet (written atomically) at the end of each run, and a run skips the pairs on record.
"""

from __future__ import annotations


import math
import os
import time
from pathlib import Path

import numpy as np

from llm360.analysis import search
from llm360.analysis.plots import plot_memorization
from llm360.analysis.records import out_dir, read_scores, read_summary  # noqa: F401  (re-exported)
from llm360.config import load_run_config
from llm360.data.store import RunData
from llm360.errors import UserError
from llm360.model.generate import generate
from llm360.model.hf import load_hf
from llm360.rundir import STATE_FILE, RunDir, StepRule, as_rule, checkpoint_problems, read_trainer_state
from llm360.utils import append_jsonl, fsync_dir

SCORE_COLUMNS = ("checkpoint", "step", "chunk", "row", "row_step", "seen", "score", "matched", "extractable",
                 "train_count", "time")


# --------------------------------------------------------------------------------------------
# what to score


def sample_rows(seed: int, chunk: int, rows_per_chunk: int, samples: int) -> np.ndarray:
    """The rows of `chunk` that memorization scores: a seeded draw, the same for everyone."""
    rng = np.random.default_rng([seed % 2**64, chunk])
    return np.sort(rng.permutation(rows_per_chunk)[:min(samples, rows_per_chunk)])


def has_seen(chunk: int, steps_done: int, rule: StepRule | int) -> bool:
    return as_rule(rule).end(chunk) <= steps_done


def parse_chunks(spec, n_chunks: int) -> list[int]:
    """None / "all" / [0, 2] / "0,2,5-7" -> sorted chunk indices."""
    if spec is None or spec == "all":
        return list(range(n_chunks))
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    chunks: set[int] = set()
    for item in items:
        text = str(item).strip()
        try:
            if "-" in text[1:]:
                a, b = text.split("-", 1)
                chunks.update(range(int(a), int(b) + 1))
            elif text:
                chunks.add(int(text))
        except ValueError:
            raise UserError(f"chunks must look like 0,3,7 or 2-5, got {text!r}") from None
    bad = sorted(c for c in chunks if not 0 <= c < n_chunks)
    if bad:
        raise UserError(f"chunk {bad[0]} does not exist: the run has chunks 0..{n_chunks - 1}")
    return sorted(chunks)


# --------------------------------------------------------------------------------------------
# records


def _scores_table(columns: dict):
    import pyarrow as pa

    schema = pa.schema([("checkpoint", pa.string()), ("step", pa.int64()), ("chunk", pa.int64()),
                        ("row", pa.int64()), ("row_step", pa.int64()), ("seen", pa.bool_()),
                        ("score", pa.float64()), ("matched", pa.int64()), ("extractable", pa.bool_()),
                        ("train_count", pa.int64()), ("time", pa.float64())])
    return pa.table({name: pa.array(columns[name], type=schema.field(name).type) for name in SCORE_COLUMNS},
                    schema=schema)


def _write_parquet(table, path: Path) -> None:
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(table, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def consolidate(run_dir: str | Path, counter=None) -> int:
    """Fold committed parts into scores.parquet (atomically), drop rows no summary line backs,
    and fill train_count of extractable rows when `counter(chunk, rows) -> counts` is given.
    Returns the number of score rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = out_dir(run_dir)
    parts = sorted((folder / ".parts").glob("*.parquet")) if (folder / ".parts").exists() else []
    old = read_scores(run_dir)
    tables = ([old] if old is not None else []) + [pq.read_table(p) for p in parts]
    if not tables:
        return 0
    table = pa.concat_tables([t.select(list(SCORE_COLUMNS)).cast(tables[0].schema) for t in tables])
    latest = {(r["checkpoint"], r["chunk"]): r["time"] for r in read_summary(run_dir)}
    cols = {name: table.column(name).to_numpy(zero_copy_only=False) for name in SCORE_COLUMNS}
    keep = np.fromiter((latest.get((c, k)) == t for c, k, t in zip(cols["checkpoint"], cols["chunk"], cols["time"])),
                       dtype=bool, count=len(table))
    cols = {k: v[keep] for k, v in cols.items()}
    # one row per (checkpoint, chunk, row); order by step, checkpoint, chunk, row
    order = np.lexsort((cols["row"], cols["chunk"], cols["checkpoint"], cols["step"]))
    cols = {k: v[order] for k, v in cols.items()}
    if len(order):
        same = ((cols["checkpoint"][1:] == cols["checkpoint"][:-1]) & (cols["chunk"][1:] == cols["chunk"][:-1])
                & (cols["row"][1:] == cols["row"][:-1]))
        unique = np.concatenate([[True], ~same])
        cols = {k: v[unique] for k, v in cols.items()}
    counts = cols["train_count"].astype(object)
    counts[np.array([c is None or (isinstance(c, float) and math.isnan(c)) for c in counts], dtype=bool)] = None
    if counter is not None:
        need = cols["extractable"].astype(bool) & np.array([c is None for c in counts], dtype=bool)
        for chunk in np.unique(cols["chunk"][need]):
            at = np.nonzero(need & (cols["chunk"] == chunk))[0]
            for i, n in zip(at, counter(int(chunk), cols["row"][at])):
                counts[i] = int(n)
    cols["train_count"] = counts
    _write_parquet(_scores_table({k: list(v) if v.dtype == object else v for k, v in cols.items()}),
                   folder / "scores.parquet")
    for p in parts:
        p.unlink(missing_ok=True)
    if (folder / ".parts").exists() and not any((folder / ".parts").iterdir()):
        (folder / ".parts").rmdir()
    return len(cols["row"])


# --------------------------------------------------------------------------------------------
# scoring


def score_matches(generated: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Matched positions per row, (n,), from generated and true continuations, both (n, l)."""
    return (np.asarray(generated) == np.asarray(truth)).sum(axis=1)


def memorization(run_dir: str | Path, checkpoints=None, chunks=None, samples: int | None = None, *,
                 batch_size: int | None = None, device: str | None = None, plots: bool = True,
                 plot_chunk: int | None = None, train_counts: bool = True, quiet: bool = False) -> list[dict]:
    """Score memorization of sampled training rows for each (checkpoint, chunk) not on record yet.

    checkpoints: "all", "last", names or chunk numbers (default: analysis.memorization.checkpoints);
    chunks: chunk indices or "0,2-5" (default: all); samples: rows per chunk (default:
    analysis.memorization.samples_per_chunk). Returns the summary records of the pairs asked for.
    """
    import torch
    from rich.console import Console


    run_dir = Path(run_dir)
    console = Console(stderr=True, quiet=quiet)
    cfg = load_run_config(run_dir)
    mcfg = cfg.analysis.memorization
    data = RunData(run_dir)
    k, l = mcfg.prompt_tokens, mcfg.continuation_tokens
    width = data.seq_len + 1
    fields = type(mcfg).model_fields
    if k + l > width and (k, l) == (fields["prompt_tokens"].default, fields["continuation_tokens"].default):
        # the defaults (32 + 32) do not fit rows this short (a toy run): halve the row instead
        k = l = width // 2
        console.print(f"rows have {width} tokens, fewer than the default 32 + 32: prompt {k} + continuation {l}")
    if k + l > width:
        raise UserError(f"analysis.memorization needs prompt_tokens + continuation_tokens = {k + l} tokens "
                        f"from each row, but rows have {width}")
    rule, gbr = data.rule, data.global_batch_rows
    samples = samples if samples is not None else mcfg.samples_per_chunk
    if samples < 1:
        raise UserError(f"--samples must be at least 1, got {samples}")
    batch_size = batch_size or mcfg.batch_size
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")

    # checkpoints are renamed into place when complete; their hashes are checked before loading
    chosen = RunDir(run_dir).select(checkpoints if checkpoints is not None else mcfg.checkpoints, rule)
    chunk_list = parse_chunks(chunks, data.n_chunks)
    rows_of = {c: sample_rows(cfg.seed, c, data.rows_in_chunk(c), samples) for c in chunk_list}
    n = max(len(r) for r in rows_of.values())  # the most rows of one chunk (chunks may differ in size)

    folder = out_dir(run_dir)
    consolidate(run_dir)  # fold in what an interrupted run committed
    done = {(r["checkpoint"], r["chunk"]) for r in read_summary(run_dir) if r.get("chunk") in rows_of
            and r.get("n") == len(rows_of[r["chunk"]]) and r.get("prompt_tokens") == k
            and r.get("continuation_tokens") == l}
    todo = [(info, [c for c in chunk_list if (info.name, c) not in done]) for info in chosen]
    todo = [(info, cs) for info, cs in todo if cs]
    total = sum(len(rows_of[c]) for _, cs in todo for c in cs)
    if todo:
        console.print(f"memorization: {len(todo)} checkpoint(s) x up to {len(chunk_list)} chunk(s) x {n} rows, "
                      f"prompt {k} + continuation {l} tokens, on {device}")
        from rich.markup import escape
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("rows"),
                      TextColumn("{task.fields[speed]}"), TimeRemainingColumn(), console=console,
                      transient=True, disable=quiet) as bar:
            task = bar.add_task("memorization", total=total, speed="")
            started, scored = time.perf_counter(), 0
            for info, cs in todo:
                bar.update(task, description=info.name)
                found = checkpoint_problems(info)
                if found:
                    console.print(f"[yellow]skipping checkpoint {info.name}[/]: {escape(found[0])}")
                    bar.advance(task, sum(len(rows_of[c]) for c in cs))
                    continue
                model, _ = load_hf(info.path, device=device)
                jobs = [(c, r) for c in cs for r in rows_of[c]]
                pending: dict[int, list] = {c: [] for c in cs}
                for b in range(0, len(jobs), batch_size):
                    batch = jobs[b:b + batch_size]
                    rows = np.stack([np.asarray(data.chunk(c)[r, :k + l], dtype=np.int64) for c, r in batch])
                    generated = generate(model, rows[:, :k].tolist(), l, batch_size=len(batch))
                    matched = score_matches(np.array(generated, dtype=np.int64), rows[:, k:])
                    for (c, r), m in zip(batch, matched):
                        pending[c].append((int(r), int(m)))
                        if len(pending[c]) == len(rows_of[c]):
                            _commit(folder, info, c, pending.pop(c), k, l, rule, gbr)
                    scored += len(batch)
                    bar.update(task, advance=len(batch),
                               speed=f"{scored / max(time.perf_counter() - started, 1e-9):.1f} rows/s")
                del model

    counter = _train_counter(run_dir, data, k + l, console) if train_counts else None
    consolidate(run_dir, counter)
    wanted = {(info.name, c) for info in chosen for c in chunk_list}
    result = [r for r in read_summary(run_dir) if (r["checkpoint"], r["chunk"]) in wanted]
    result.sort(key=lambda r: (r["step"], r["checkpoint"], r["chunk"]))
    if plots:
        for path in plot_memorization(run_dir, chunk=plot_chunk, console=console):
            console.print(f"plot: {path}")
    return result


def skipped_steps(checkpoint: Path) -> list[int]:
    """The steps whose batch the spike guard skipped, up to this checkpoint (its trainer state)."""
    return read_trainer_state(checkpoint).skipped_steps if (Path(checkpoint) / STATE_FILE).exists() else []


def _commit(folder: Path, info, chunk: int, scored: list[tuple[int, int]], k: int, l: int, rule: StepRule,
            gbr: int) -> dict:
    """Write one pair's scores (atomically), then its summary line, which commits it."""
    rows = np.array([r for r, _ in scored], dtype=np.int64)
    matched = np.array([m for _, m in scored], dtype=np.int64)
    now = time.time()
    row_step = rule.first_step(chunk) + rows // gbr
    n = len(rows)
    # a row of a batch that the spike guard skipped was never trained on, though its step passed
    seen = (row_step < info.steps_done) & ~np.isin(row_step, skipped_steps(info.path))
    columns = {"checkpoint": [info.name] * n, "step": np.full(n, info.steps_done), "chunk": np.full(n, chunk),
               "row": rows, "row_step": row_step, "seen": seen, "score": matched / l,
               "matched": matched, "extractable": matched == l, "train_count": [None] * n, "time": np.full(n, now)}
    _write_parquet(_scores_table(columns), folder / ".parts" / f"{info.name}__{chunk:06d}.parquet")
    record = {"checkpoint": info.name, "chunk": chunk, "seen": has_seen(chunk, info.steps_done, rule), "n": n,
              "mean_score": float(matched.mean() / l) if n else 0.0,
              "extractable_frac": float((matched == l).mean()) if n else 0.0,
              "histogram": np.bincount(matched, minlength=l + 1).tolist(),
              "step": info.steps_done, "prompt_tokens": k, "continuation_tokens": l, "time": now}
    append_jsonl(folder / "summary.jsonl", record)
    return record


AUTO_INDEX_TOKENS = 2_000_000_000  # build the search index on the fly only below this size


def _train_counter(run_dir: Path, data, length: int, console):
    """counter(chunk, rows) -> occurrences of each row's first `length` tokens in the training
    chunks, from the search index (built now when missing or stale and the data is small)."""

    try:
        index = search.RunIndex(run_dir, data)
    except UserError as why:
        tokens = sum(data.rows_in_chunk(c) for c in range(data.n_chunks)) * (data.seq_len + 1)
        if not search.available_backends():
            console.print(f"[yellow]train_count left empty[/]: {why}; building it needs {search.EXTRA_HINT}")
            return None
        if tokens > AUTO_INDEX_TOKENS:
            console.print(f"[yellow]train_count left empty[/]: {why}")
            return None
        console.print(f"building the search index for train_count ({tokens:,} tokens)")
        search.build_index(run_dir, quiet=True)
        index = search.RunIndex(run_dir, data)

    def counter(chunk: int, rows) -> list[int]:
        block = data.chunk(chunk)
        return [index.train_count(np.asarray(block[int(r), :length]).tolist()) for r in rows]

    return counter


# --------------------------------------------------------------------------------------------
# command line


def cli_memorization(args) -> int:
    from rich.console import Console
    from rich.table import Table

    result = memorization(args.run, checkpoints=args.checkpoints, chunks=args.chunks, samples=args.samples)
    table = Table(title=f"memorization of {args.run} (mean score; % k-extractable)")
    for col in ("checkpoint", "step", "seen chunks", "unseen chunks (control)"):
        table.add_column(col, justify="right" if col != "checkpoint" else "left")
    by_ckpt: dict[str, list[dict]] = {}
    for rec in result:
        by_ckpt.setdefault(rec["checkpoint"], []).append(rec)

    def cell(recs: list[dict]) -> str:
        n = sum(r["n"] for r in recs)
        if not n:
            return "-"
        mean = sum(r["mean_score"] * r["n"] for r in recs) / n
        frac = sum(r["extractable_frac"] * r["n"] for r in recs) / n
        return f"{mean:.4f}; {100 * frac:.1f}% of {n}"

    for name, recs in by_ckpt.items():
        table.add_row(name, str(recs[0]["step"]), cell([r for r in recs if r["seen"]]),
                      cell([r for r in recs if not r["seen"]]))
    Console().print(table)
    print(f"per (checkpoint, chunk): {out_dir(args.run) / 'summary.jsonl'}")
    return 0
