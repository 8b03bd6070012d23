"""Contamination: was an evaluation item in the training data, from which step, and does the
model score better on the items it saw?

    llm360 analyze contamination RUN --tasks copa,path/to/qa.jsonl [--ngram 13]

An item is its question text and its gold answer (the question format's `question`, the target
delimiter and the gold choice; the benchmarks format's gold context and continuation), encoded
with the run's tokenizer. It is *contaminated* when one of its n-grams (n = 13 by default, as in
the contamination studies of GPT-3, Brown et al. 2020, and LLaMA 2, Touvron et al. 2023) occurs
in a training row; an item shorter than n tokens is contaminated when the whole of it occurs.
Held-out rows never count: the model did not train on them. The search index (every shard of
it) answers both, and the longest matching span: for each start i, the longest prefix of the
item's tokens[i:] found in a training row (matching statistics, about two index lookups per
token).

For a contaminated item: the first global step whose batch held one of its matching n-grams (the
step rule), its chunk, row, source and document (uri), and the first checkpoint of the run whose
weights came after that step. Per task: the contaminated fraction, and accuracy on clean and on
contaminated items for every checkpoint, read from the per-question evaluation logs
(metrics/questions/CHECKPOINT/TASK.parquet); without them, overlaps only.

Written atomically: analysis/contamination/summary.json and items.parquet
(docs/run-directory.md §6.4).
"""

from __future__ import annotations

import io
import time
from pathlib import Path

from llm360.errors import UserError
from llm360.rundir import (
    CONTAMINATION_ITEMS,
    CONTAMINATION_SUMMARY,
    QUESTIONS_DIR,
    RunDir,
    checkpoint_order,
    question_log_file,
)
from llm360.utils import atomic_write_bytes, atomic_write_json

FORMAT = "llm360-contamination/1"
DEFAULT_NGRAM = 13
ITEM_COLUMNS = ("task", "question", "id", "tokens", "contaminated", "longest_span", "matched_ngrams", "ngrams",
                "first_step", "first_checkpoint", "chunk", "row", "offset", "source", "doc_id", "uri")


# -- items ---------------------------------------------------------------------------------------


def item_text(question, spec) -> str:
    """Question text and gold answer, as the task file writes them (no prompt template)."""
    doc = question.doc
    if "question" in doc:
        return doc["question"] + spec.target_delimiter + doc["choices"][question.label]
    context, continuation = question.requests[question.label]
    return context + continuation


def task_items(names: list[str], tokenizer) -> dict[str, list[dict]]:
    """{task label: [{question, id, tokens}]} for every item of every named task file, in file order
    (`question` is the item's 0-based index in its file, as the per-question logs number it)."""
    from llm360.eval.tasks import TaskSpec, read_task_file, resolve_tasks

    out = {}
    for name in names:
        if name.strip() == "heldout" or name.strip().startswith("heldout/"):
            raise UserError(f"task {name.strip()!r} is the run's own held-out data, not a task file: contamination "
                            "reads the questions of multiple-choice task files (NAME or PATH.jsonl / PATH.yaml)")
    for task in resolve_tasks(names):
        if not isinstance(task, TaskSpec):
            raise UserError(f"task {task.label!r} is not a task file: contamination reads the questions of "
                            "multiple-choice task files (NAME or PATH.jsonl / PATH.yaml)")
        questions = read_task_file(task.data, task)
        texts = [item_text(q, task) for q in questions]
        encoded = tokenizer.encode_batch(texts, add_special_tokens=False)
        out[task.label] = [{"question": i, "id": q.id, "tokens": e.ids} for i, (q, e) in
                           enumerate(zip(questions, encoded))]
    return out


# -- the scan --------------------------------------------------------------------------------------


def scan_item(index, tokens: list[int], ngram: int) -> dict:
    """Overlap of one item with the training rows: contaminated, longest span, matching n-grams
    and where the earliest of them was trained on (index: a search.RunIndex)."""
    n = min(ngram, len(tokens))
    longest = index.longest_matches(tokens) if tokens else []
    starts = [i for i in range(len(tokens) - n + 1) if longest[i] >= n] if n else []
    found = {"tokens": len(tokens), "contaminated": bool(starts), "longest_span": int(max(longest, default=0)),
             "matched_ngrams": len(starts), "ngrams": max(len(tokens) - n + 1, 0) if n else 0}
    best = None
    for i in starts:
        hit = index.first_train_occurrence(tokens[i:i + n])
        key = (index.shards.index(hit[0]), hit[1], hit[2])
        if best is None or key < best[0]:
            best = (key, hit)
    if best is not None:
        shard, row, offset = best[1]
        where = shard.describe(row, offset, n)
        found.update({k: where[k] for k in ("step", "chunk", "row", "offset", "source", "doc_id", "uri")})
    return found


def first_checkpoint(checkpoints, step: int | None) -> str | None:
    """The first checkpoint whose weights came after `step` (None: no such checkpoint yet)."""
    if step is None:
        return None
    return next((c.name for c in checkpoints if c.steps_done > step), None)


def scan(run_dir: str | Path, tasks: list[str], ngram: int = DEFAULT_NGRAM, index=None) -> list[dict]:
    """One record per item of every task (the columns of items.parquet)."""
    from llm360.analysis.search import RunIndex

    if ngram < 1:
        raise UserError(f"--ngram must be at least 1, got {ngram}")
    run = RunDir(run_dir)
    own = index is None
    index = RunIndex(run.root) if own else index
    try:
        data = index.run_data
        checkpoints = run.checkpoints(data.rule)
        items = task_items(tasks, data.tokenizer())
        records = []
        for task, task_records in items.items():
            for item in task_records:
                found = scan_item(index, item["tokens"], ngram)
                step = found.get("step")
                records.append({**{k: None for k in ITEM_COLUMNS}, "task": task, "question": item["question"],
                                "id": item["id"], **found, "first_step": step,
                                "first_checkpoint": first_checkpoint(checkpoints, step)})
        return [{k: r[k] for k in ITEM_COLUMNS} for r in records]
    finally:
        if own:
            index.close()


# -- accuracy on clean and contaminated items ----------------------------------------------------------


def accuracy_by_checkpoint(run_dir: str | Path, task: str, contaminated: dict[int, bool], rule) -> list[dict] | None:
    """For every checkpoint with a per-question log of `task`: accuracy (acc and acc_norm) on the
    clean and on the contaminated items; None when the task has no per-question logs."""
    import pyarrow.parquet as pq

    run = RunDir(run_dir)
    folder = run.path(QUESTIONS_DIR)
    names = [p.name for p in folder.iterdir() if p.is_dir() and checkpoint_order(p.name, rule)] if folder.is_dir() else []
    curves = []
    for name in sorted(names, key=lambda n: checkpoint_order(n, rule)):
        path = run.path(question_log_file(name, task))
        if not path.is_file():
            continue
        try:
            log = pq.read_table(path, columns=["step", "question", "correct", "correct_norm"]).to_pydict()
        except Exception as e:  # noqa: BLE001 - any unreadable file is the same user-facing fact
            raise UserError(f"{path}: not a per-question log with columns step, question, correct, correct_norm "
                            f"({str(e)[:80]})") from None
        point = {"checkpoint": name, "step": log["step"][0] if log["step"] else None}
        for part, flag in (("clean", False), ("contaminated", True)):
            picked = [k for k, q in enumerate(log["question"]) if contaminated.get(q) is flag]
            point[f"{part}_n"] = len(picked)
            for metric, column in (("acc", "correct"), ("acc_norm", "correct_norm")):
                point[f"{part}_{metric}"] = (sum(bool(log[column][k]) for k in picked) / len(picked)) if picked else None
        curves.append(point)
    return curves or None


# -- records -------------------------------------------------------------------------------------------


def summarize(run_dir: str | Path, records: list[dict], ngram: int, rule, fingerprint: str, shards: int) -> dict:
    tasks = {}
    for task in dict.fromkeys(r["task"] for r in records):
        rows = [r for r in records if r["task"] == task]
        dirty = [r for r in rows if r["contaminated"]]
        curves = accuracy_by_checkpoint(run_dir, task, {r["question"]: r["contaminated"] for r in rows}, rule)
        steps = [r["first_step"] for r in dirty if r["first_step"] is not None]
        tasks[task] = {"items": len(rows), "contaminated": len(dirty),
                       "contaminated_frac": len(dirty) / len(rows) if rows else 0.0,
                       "longest_span": max((r["longest_span"] for r in rows), default=0),
                       "first_step": min(steps) if steps else None,
                       "sources": sorted({r["source"] for r in dirty if r["source"]}),
                       "accuracy": curves}
    return {"format": FORMAT, "ngram": ngram, "fingerprint": fingerprint, "index_shards": shards,
            "time": time.time(), "tasks": tasks}


def write_records(run_dir: str | Path, records: list[dict], summary: dict) -> None:
    """items.parquet, then summary.json (each atomic)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    run = RunDir(run_dir)
    types = {"task": pa.string(), "question": pa.int64(), "id": pa.string(), "tokens": pa.int64(),
             "contaminated": pa.bool_(), "longest_span": pa.int64(), "matched_ngrams": pa.int64(),
             "ngrams": pa.int64(), "first_step": pa.int64(), "first_checkpoint": pa.string(), "chunk": pa.int64(),
             "row": pa.int64(), "offset": pa.int64(), "source": pa.string(), "doc_id": pa.int64(), "uri": pa.string()}
    table = pa.table({k: pa.array([r[k] for r in records], type=types[k]) for k in ITEM_COLUMNS})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    run.path(CONTAMINATION_ITEMS).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(run.path(CONTAMINATION_ITEMS), buf.getvalue())
    atomic_write_json(run.path(CONTAMINATION_SUMMARY), summary)


def contamination(run_dir: str | Path, tasks: list[str], ngram: int = DEFAULT_NGRAM) -> dict:
    """Scan every item of `tasks`, write the records, return the summary."""
    from llm360.analysis.search import RunIndex

    with RunIndex(run_dir) as index:
        records = scan(run_dir, tasks, ngram, index=index)
        summary = summarize(run_dir, records, ngram, index.run_data.rule, index.run_data.fingerprint,
                            len(index.shards))
    write_records(run_dir, records, summary)
    return summary


# -- command line ----------------------------------------------------------------------------------------


def cli_contamination(args) -> int:
    from rich.console import Console
    from rich.table import Table

    tasks = [t for t in (args.tasks or "").split(",") if t.strip()]
    if not tasks:
        raise UserError("name the tasks to check with --tasks NAME_OR_PATH,...")
    summary = contamination(args.run, tasks, args.ngram)
    console = Console()
    table = Table(title=f"contamination of {args.run} ({summary['ngram']}-gram overlap with the training rows)")
    for col in ("task", "items", "contaminated", "longest span", "first step", "clean acc", "contaminated acc"):
        table.add_column(col, justify="left" if col == "task" else "right")
    missing = []
    for task, t in summary["tasks"].items():
        last = (t["accuracy"] or [None])[-1]
        if last is None:
            missing.append(task)

        def acc(part: str) -> str:
            v = last and last[f"{part}_acc"]
            return "-" if v is None else f"{v:.3f} ({last['checkpoint']})"

        table.add_row(task, str(t["items"]), f"{t['contaminated']} ({100 * t['contaminated_frac']:.1f}%)",
                      str(t["longest_span"]), "-" if t["first_step"] is None else str(t["first_step"]),
                      acc("clean"), acc("contaminated"))
    console.print(table)
    if missing:
        console.print(f"no per-question evaluation logs ({QUESTIONS_DIR}/CHECKPOINT/TASK.parquet) for "
                      f"{', '.join(missing)}: overlaps only, no accuracy on clean vs contaminated items")
    print(f"per item: {RunDir(args.run).path(CONTAMINATION_ITEMS)}")
    return 0
