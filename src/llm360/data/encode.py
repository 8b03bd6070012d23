"""Tokenizing units in worker processes, and the shard files that hold the result.

A *task* is a run of consecutive units of one source. A worker reads its units (`read_unit`),
tokenizes the kept documents in batches with `encode_batch_fast`, appends EOS to each and writes:

    tasks/NNNNNN.tokens       the documents' tokens, EOS after each, raw little-endian uint16/32
    tasks/NNNNNN.docs.npy     one row per kept document: unit, key, sha256, n_chars, n_tokens
    tasks/NNNNNN.names.json   the documents' own names (python docs), when they have them

Tokens go to disk as they are produced, so memory stays flat however large the source. A shard
(`shard.json`, written last, marks it complete) lists its tasks in order with their counts; the
final assembly reads shards in order, and concatenating their tasks gives the documents in the
global order whatever the number of workers, tasks or shards.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import sys
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from llm360.data.sources import BROKEN_REASONS, Record, Unit, message, read_unit

SHARD_FORMAT = "llm360-shard/1"
BATCH_CHARS = 1 << 20  # characters per encode_batch call


@dataclass
class Task:
    index: int
    source: int
    units: list[Unit]
    out: str  # path prefix: OUT.tokens, OUT.docs.npy, OUT.names.json
    tokenizer: str  # tokenizer.json path
    eos_id: int
    dtype: str
    min_chars: int
    max_chars: int
    strict: bool  # stop at the first broken record (not at one the filters drop)
    cached: dict[int, list[Record]] = field(default_factory=dict)  # units already read (sampling)


DOC_DTYPE = np.dtype([
    ("unit", "<i4"),
    ("key", "<i8"),
    ("sha256", "V32"),  # of the cleaned text, UTF-8
    ("n_chars", "<i8"),
    ("n_tokens", "<i8"),  # EOS included
])


def write_docs(prefix: str, docs: np.ndarray, names: list[str | None]) -> None:
    """NNNNNN.docs.npy (DOC_DTYPE rows) + NNNNNN.names.json when any document names itself."""
    np.save(prefix + ".docs.npy", docs)
    if any(n is not None for n in names):
        Path(prefix + ".names.json").write_text(json.dumps(names), encoding="utf-8")


def read_docs(prefix: str | Path) -> tuple[np.ndarray, list[str | None]]:
    docs = np.load(str(prefix) + ".docs.npy")
    names_path = Path(str(prefix) + ".names.json")
    names = json.loads(names_path.read_text(encoding="utf-8")) if names_path.exists() else [None] * len(docs)
    return docs, names


_TOKENIZERS: dict[str, object] = {}


def _tokenizer(path: str):
    tok = _TOKENIZERS.get(path)
    if tok is None:
        from tokenizers import Tokenizer

        tok = _TOKENIZERS[path] = Tokenizer.from_file(path)
    return tok


def run_task(task: Task) -> dict:
    """Read, clean, filter and tokenize the units of `task`; write its two files; return counts."""
    tok = _tokenizer(task.tokenizer)
    encode = getattr(tok, "encode_batch_fast", tok.encode_batch)
    dtype = np.dtype(task.dtype)
    cols: dict[str, list] = {name: [] for name in ("unit", "key", "name", "sha256", "n_chars", "n_tokens")}
    dropped: Counter = Counter()
    examples: dict[str, str] = {}
    unit_records: list[int] = []
    batch: list[str] = []
    batch_chars = 0
    tokens = 0
    error = None

    def flush(f) -> None:
        nonlocal batch, batch_chars, tokens
        if not batch:
            return
        ids = [e.ids for e in encode(batch, add_special_tokens=False)]
        lengths = np.fromiter((len(x) + 1 for x in ids), dtype=np.int64, count=len(ids))
        flat = np.empty(int(lengths.sum()), dtype=dtype)
        pos = 0
        for x, n in zip(ids, lengths):
            flat[pos : pos + n - 1] = x
            pos += n
        flat[np.cumsum(lengths) - 1] = task.eos_id
        f.write(flat.tobytes())
        cols["n_tokens"].extend(lengths.tolist())
        tokens += int(lengths.sum())
        batch, batch_chars = [], 0

    with open(task.out + ".tokens", "wb") as f:
        for unit in task.units:
            records = task.cached.get(unit.index)
            if records is None:
                records = read_unit(unit, task.min_chars, task.max_chars)
            n = 0
            for rec in records:
                n += 1
                if rec.reason:
                    dropped[rec.reason] += 1
                    if rec.reason not in examples:  # recorded in the manifest: no path of this machine
                        examples[rec.reason] = message(unit, rec, full=False)
                    if task.strict and rec.reason in BROKEN_REASONS:
                        error = message(unit, rec)
                        break
                    continue
                data = rec.text.encode("utf-8")
                cols["unit"].append(unit.index)
                cols["key"].append(rec.key)
                cols["name"].append(rec.name)
                cols["sha256"].append(hashlib.sha256(data).digest())
                cols["n_chars"].append(len(rec.text))
                batch.append(rec.text)
                batch_chars += len(rec.text)
                if batch_chars >= BATCH_CHARS:
                    flush(f)
            unit_records.append(n)
            if error:
                break
        flush(f)
    docs = np.empty(len(cols["unit"]), dtype=DOC_DTYPE)
    for k in ("unit", "key", "n_chars", "n_tokens"):
        docs[k] = cols[k]
    docs["sha256"] = np.frombuffer(b"".join(cols["sha256"]), dtype="V32")
    write_docs(task.out, docs, cols["name"])
    return {
        "index": task.index,
        "source": task.source,
        "units": [task.units[0].index, task.units[-1].index + 1],
        "unit_records": unit_records,
        "file": Path(task.out).name,
        "read": int(sum(unit_records)),
        "docs": len(cols["unit"]),
        "tokens": tokens,
        "bytes": sum(u.size for u in task.units),
        "dropped": dict(sorted(dropped.items())),
        "examples": dict(sorted(examples.items())),
        "error": error,
    }


def sample_unit(args: tuple[Unit, int, int, int]) -> tuple[int, list[Record], bool]:
    """Records of one unit for the tokenizer sample: (unit index, records, read to the end).

    Reading stops once the kept text reaches `limit` characters (the source's whole share), so a
    huge unit is never read whole for sampling; a unit read to its end is kept for reuse.
    """
    unit, min_chars, max_chars, limit = args
    records, kept = [], 0
    it = read_unit(unit, min_chars, max_chars)
    for rec in it:
        records.append(rec)
        if rec.text is not None:
            kept += len(rec.text)
            if kept >= limit:
                return unit.index, records, next(it, None) is None
    return unit.index, records, True


# ---------------------------------------------------------------------------------------------
# processes


def _init_worker() -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # our processes are the parallelism


def make_pool(workers: int):
    """A process pool for `workers` > 1, else None (everything runs in this process)."""
    if workers <= 1:
        return None
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    return mp.get_context(method).Pool(workers, initializer=_init_worker)


def ordered_map(pool, fn, items, inflight: int):
    """fn over items in order, with at most `inflight` items submitted ahead (stops cheaply)."""
    if pool is None:
        for item in items:
            yield fn(item)
        return
    it = iter(items)
    pending: deque = deque()
    for item in it:
        pending.append(pool.apply_async(fn, (item,)))
        if len(pending) >= inflight:
            break
    while pending:
        result = pending.popleft().get()
        for item in it:
            pending.append(pool.apply_async(fn, (item,)))
            break
        yield result


def group_tasks(units: list[Unit], workers: int) -> list[list[Unit]]:
    """Consecutive units of one source, about total/(8*workers) bytes each (load balance only)."""
    total = sum(u.size for u in units)
    target = max(256 << 10, min(64 << 20, total // max(1, 8 * workers)))
    groups: list[list[Unit]] = []
    size = 0
    for u in units:
        if not groups or groups[-1][0].source != u.source or size >= target:
            groups.append([])
            size = 0
        groups[-1].append(u)
        size += u.size
    return groups


def shard_range(units: list[Unit], shard: int, shards: int) -> tuple[int, int]:
    """Units [a, b) of shard `shard` of `shards`: contiguous, balanced by bytes."""
    sizes = np.array([max(u.size, 1) for u in units], dtype=np.int64)
    starts = np.cumsum(sizes) - sizes
    total = int(sizes.sum())

    def cut(k: int) -> int:
        return int(np.searchsorted(starts * shards, total * k, side="left"))

    return cut(shard), cut(shard + 1)
