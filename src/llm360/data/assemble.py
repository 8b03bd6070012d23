"""From tokenized shards to RUN/data: dedup, token streams, rows, held-out, stages and chunks.

Nothing here tokenizes; it reads what the shards wrote (`encode.py`) and decides, with seeded
draws only, which rows go where (run-directory.md §2-4):

1. Dedup: the first occurrence of a cleaned text (sha256) wins, in source order then document
   order; later ones are dropped as `duplicate` and counted in their own source.
2. doc_id: 0..n-1 over kept documents in that same order.
3. Each source's token stream (kept documents, EOS after each) is cut into rows of
   seq_len + 1 tokens; the tail that does not fill a row is dropped and counted.
4. Held-out: `heldout_rows` row numbers per source drawn by `seeded_rng(seed, "heldout", SOURCE)`;
   they are written to heldout/SOURCE.npy (in row order) and never to a chunk.
5. Stages: a stage's rows (chunks * rows_per_chunk) are shared between its sources by the
   largest-remainder method on the weights (ties to the earlier source). A source's rows come
   from permutations of its training rows, epoch e by `seeded_rng(seed, "epoch", SOURCE, e)`,
   continuing across stages where the previous stage stopped.
6. The stage's rows (sources in config order, each in draw order) are shuffled by
   `seeded_rng(seed, "stage", STAGE_INDEX)` and cut into chunks in that order. With the stage's
   `exact_mix` (Amber's chunks), each chunk instead holds every source's 1/chunks of the stage's
   rows, to the row (`per_chunk_counts`), shuffled inside the chunk.
7. With FIM in the run, each chunk's pieces of the stage's FIM sources are rearranged as the
   chunk is written (data/fim.py), and its spans say which and how.

Every draw uses numpy's PCG64 seeded from the first 16 bytes of sha256(JSON [seed, *labels]), so
orders depend on the seed and the names only, never on workers, shards or the machine.
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from llm360.data import fim as fim_mod
from llm360.data.encode import read_docs
from llm360.data.sources import Plan, uri_of
from llm360.rundir import DATA_FORMAT
from llm360.errors import UserError
from llm360.rundir import pad_width
from llm360.utils import sha256_file

ROW_BLOCK = 1 << 15  # rows gathered at a time when writing a chunk


def seeded_rng(seed: int, *labels) -> np.random.Generator:
    digest = hashlib.sha256(json.dumps([seed, *labels]).encode("utf-8")).digest()
    return np.random.Generator(np.random.PCG64(int.from_bytes(digest[:16], "little")))


def largest_remainder(total: int, weights: list[float]) -> list[int]:
    """Split `total` in proportion to `weights`: floors, then +1 by largest remainder (ties: first)."""
    s = float(sum(weights))
    quotas = [total * w / s for w in weights]
    counts = [int(q) for q in quotas]
    order = sorted(range(len(weights)), key=lambda i: (-(quotas[i] - counts[i]), i))
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    return counts


def compute_spans(rows: np.ndarray, src_rows: np.ndarray, starts: np.ndarray, lengths: np.ndarray,
                  doc_ids: np.ndarray, row_tokens: int) -> dict[str, np.ndarray]:
    """The spans of rows: where each document's tokens lie in each row.

    `rows[i]` is the row number to report for source row `src_rows[i]`; `starts`/`lengths` are
    the source's kept documents in its stream (EOS included), `doc_ids` their ids.
    """
    a = src_rows.astype(np.int64) * row_tokens
    b = a + row_tokens
    first = np.searchsorted(starts, a, side="right") - 1
    last = np.searchsorted(starts, b - 1, side="right") - 1
    count = last - first + 1
    rep = np.repeat(np.arange(len(a)), count)
    k = np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count)
    d = first[rep] + k
    s0 = np.maximum(starts[d], a[rep])
    s1 = np.minimum(starts[d] + lengths[d], b[rep])
    return {
        "row": rows[rep].astype(np.int64),
        "offset": (s0 - a[rep]).astype(np.int32),
        "length": (s1 - s0).astype(np.int32),
        "doc_id": doc_ids[d].astype(np.int64),
        "doc_token_offset": (s0 - starts[d]).astype(np.int64),
    }


def _spans_columns(parts: list[tuple[str, dict[str, np.ndarray]]]) -> dict[str, np.ndarray]:
    """The spans of `parts` (a source's name and its `compute_spans`) in table order: by row, then offset."""
    if parts:
        cols = {k: np.concatenate([p[k] for _, p in parts]) for k in parts[0][1]}
        cols["source"] = np.concatenate([np.full(len(p["row"]), name, dtype=object) for name, p in parts])
    else:
        cols = {k: np.zeros(0, dtype=t) for k, t in
                [("row", np.int64), ("offset", np.int32), ("length", np.int32), ("doc_id", np.int64),
                 ("doc_token_offset", np.int64), ("source", object)]}
    order = np.lexsort((cols["offset"], cols["row"]))
    return {k: v[order] for k, v in cols.items()}


def _spans_table(cols: dict[str, np.ndarray]):
    import pyarrow as pa

    strings = ("source", "fim")
    return pa.table({k: pa.array(v.tolist(), type=pa.string()) if k in strings else pa.array(v) for k, v in cols.items()})


def _write_parquet(table, path: Path) -> str:
    import pyarrow.parquet as pq

    pq.write_table(table, path)
    return sha256_file(path)


class Progress:
    """What assemble needs from a progress reporter (prepare passes a rich one)."""

    def start(self, description: str, total: float | None) -> None: ...
    def advance(self, amount: float = 1) -> None: ...
    def log(self, message: str) -> None: ...


@dataclass
class Documents:
    """The document index: every document the shards kept, in the global order."""

    source: np.ndarray  # int32 source index
    unit: np.ndarray  # int64 unit index
    key: np.ndarray  # int64 key within the unit
    sha: np.ndarray  # V32 sha256 of the cleaned text
    n_chars: np.ndarray
    n_tokens: np.ndarray  # EOS included
    uri: list[str]
    task_sizes: list[int]  # documents per task, in task order
    keep: np.ndarray | None = None  # after dedup
    stream_offset: np.ndarray | None = None  # where a kept document starts in its source's stream


@dataclass
class SourceCounts:
    read: int = 0
    dropped: dict = field(default_factory=dict)
    examples: dict = field(default_factory=dict)

    def drop(self, reason: str, count: int, example: str | None = None) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + count
        if example is not None:
            self.examples.setdefault(reason, example)


def assemble(cfg, plan: Plan, shards: list[tuple[Path, dict]], tok: dict, data_dir: Path, work_dir: Path,
             progress: Progress | None = None) -> dict:
    """Write RUN/data (all but tokenizer/ and manifest.json) and return the manifest."""
    progress = progress or Progress()
    data = cfg.data
    L = data.seq_len + 1
    dtype = np.dtype(tok["dtype"])
    names = [s.name for s in plan.sources]
    for sub in ("chunks", "heldout"):
        (data_dir / sub).mkdir(parents=True, exist_ok=True)
    work_dir.mkdir(parents=True, exist_ok=True)

    tasks = [(shard_dir, t) for shard_dir, meta in shards for t in meta["tasks"]]
    counts = [SourceCounts() for _ in names]
    for _, t in tasks:
        c = counts[t["source"]]
        c.read += t["read"]
        for reason, n in t["dropped"].items():
            c.drop(reason, n, t["examples"].get(reason))

    docs = _load_documents(plan, tasks, progress)
    _dedup(docs, names, counts, enabled=data.filters.dedup)
    stream_len = _write_streams(docs, tasks, len(names), dtype, work_dir, progress)
    documents_sha = _write_documents(docs, names, data_dir / "documents.parquet")

    kept = np.flatnonzero(docs.keep)
    doc_id = np.cumsum(docs.keep) - 1
    doc_tokens = docs.n_tokens[kept]  # by doc_id
    geometry = []  # per source: its kept documents' (stream offset, length, doc_id), for spans
    for s in range(len(names)):
        idx = kept[docs.source[kept] == s]
        geometry.append((docs.stream_offset[idx], docs.n_tokens[idx], doc_id[idx]))
    n_rows = stream_len // L
    views = [  # each source's stream as rows
        np.memmap(work_dir / f"stream_{s}.bin", dtype=dtype, mode="r", shape=(int(n), L)) if n else np.zeros((0, L), dtype)
        for s, n in enumerate(n_rows)
    ]

    used = {n for st in data.stages for n, w in st.mix.items() if w > 0} if data.stages else set(names)
    heldout_entries, train_rows = [], []
    for s, name in enumerate(names):
        if n_rows[s] < data.heldout_rows + (name in used):
            raise UserError(
                f"source {name!r} has {int(n_rows[s])} rows of {L} tokens ({int(stream_len[s])} tokens from "
                f"{len(geometry[s][0])} documents), fewer than the {data.heldout_rows} held-out rows"
                + (" plus 1 to train on" if name in used else "")
                + "; add data, lower data.heldout_rows or data.seq_len"
            )
        entry, train = _write_heldout(cfg.seed, name, data.heldout_rows, views[s], geometry[s], data_dir)
        heldout_entries.append(entry)
        train_rows.append(train)

    stages = _stage_plan(cfg, names, n_rows)
    B = cfg.train.global_batch_rows
    width = pad_width(sum(st["chunks"] for st in stages))
    progress.start("write chunks", sum(st["chunks"] for st in stages))
    draw = RowDraw(cfg.seed, names, train_rows)
    fim_ids = tok.get("fim_tokens", {})
    chunk_entries, stage_entries = [], []
    for si, st in enumerate(stages):
        R = B * st["steps_per_chunk"]  # this stage's rows per chunk
        src_all, row_all, entry = draw.stage(si, st, R, first_chunk=len(chunk_entries))
        stage_entries.append(entry)
        stage_fim = FimRows(cfg.seed, [st["fim"].get(n) for n in names], doc_tokens, fim_ids) if fim_ids else None
        for k in range(st["chunks"]):
            rows = slice(k * R, (k + 1) * R)
            chunk_entries.append(_write_chunk(
                len(chunk_entries), si, src_all[rows], row_all[rows], views, geometry, names, list(st["mix"]),
                data_dir, width, dtype, stage_fim,
            ))
            progress.advance()
    del views

    sources = []
    for s, sp in enumerate(plan.sources):
        entry = {
            "name": sp.name, "kind": sp.kind, "builtin": sp.builtin, "license": sp.license,
            "description": sp.description, "root": sp.recorded_root, "text_field": sp.text_field,
            "documents_read": int(counts[s].read),
            "documents_kept": len(geometry[s][0]),
            "dropped": dict(sorted(counts[s].dropped.items())),
            "drop_examples": dict(sorted(counts[s].examples.items())),
            "tokens": int(stream_len[s]),
            "rows": int(n_rows[s]),
            "heldout_rows": int(data.heldout_rows),
            "train_rows": int(len(train_rows[s])),
            "tail_tokens_dropped": int(stream_len[s] - n_rows[s] * L),
        }
        if sp.ftfy:
            entry["ftfy"] = sp.ftfy  # the version that fixed the text: fixes change between versions
        if sp.builtin:
            entry["python"] = platform.python_version()  # the built-ins are this Python's own files
        sources.append(entry)

    return {
        "format": DATA_FORMAT,
        "seed": cfg.seed,
        "seq_len": data.seq_len,
        "row_tokens": L,
        "global_batch_rows": cfg.train.global_batch_rows,
        "steps_per_chunk": cfg.train.steps_per_chunk,
        "rows_per_chunk": B * cfg.train.steps_per_chunk,  # the run's; a stage may have its own
        "dtype": dtype.name,
        "tokenizer": {k: v for k, v in tok.items() if k not in ("path", "dtype", "plan_id")},
        "sources": sources,
        "filters": data.filters.model_dump(mode="json"),
        "stages": stage_entries,
        "chunks": chunk_entries,
        "heldout": heldout_entries,
        "documents": {"file": "documents.parquet", "sha256": documents_sha, "count": int(len(kept))},
    }


def _load_documents(plan: Plan, tasks: list[tuple[Path, dict]], progress: Progress) -> Documents:
    # records per unit, so a unit that continues a file (a JSONL byte range) knows how many
    # records of that file came before it
    unit_records = np.zeros(len(plan.units), dtype=np.int64)
    for _, t in tasks:
        unit_records[t["units"][0] : t["units"][0] + len(t["unit_records"])] = t["unit_records"]
    before = np.zeros(len(plan.units), dtype=np.int64)
    for u in plan.units[1:]:
        prev = plan.units[u.index - 1]
        if u.start > 0 and prev.path == u.path:
            before[u.index] = before[prev.index] + unit_records[prev.index]

    progress.start("index documents", len(tasks))
    parts, uris, sizes = [], [], []
    for shard_dir, t in tasks:
        docs, names = read_docs(shard_dir / "tasks" / t["file"])
        units = docs["unit"].astype(np.int64)
        uris += [uri_of(plan.units[u], k, n, int(before[u])) for u, k, n in zip(units.tolist(), docs["key"].tolist(), names)]
        parts.append((np.full(len(docs), t["source"], dtype=np.int32), units, docs))
        sizes.append(len(docs))
        progress.advance()
    cat = lambda i, field=None: np.concatenate([p[i] if field is None else p[i][field] for p in parts])
    if not parts:
        empty = np.zeros(0, dtype=np.int64)
        return Documents(empty.astype(np.int32), empty, empty, np.zeros(0, "V32"), empty, empty, [], [])
    return Documents(
        source=cat(0), unit=cat(1), key=cat(2, "key"), sha=cat(2, "sha256"), n_chars=cat(2, "n_chars"),
        n_tokens=cat(2, "n_tokens"), uri=uris, task_sizes=sizes,
    )


def _dedup(docs: Documents, names: list[str], counts: list[SourceCounts], enabled: bool) -> None:
    """Keep the first occurrence of each text (source order, then document order).

    A duplicate is dropped by design, never an error, even with data.strict.
    """
    docs.keep = np.ones(len(docs.sha), dtype=bool)
    if not enabled or not len(docs.sha):
        return
    _, first, inverse = np.unique(docs.sha, return_index=True, return_inverse=True)
    original = first[inverse.reshape(-1)]  # for each document, the index of its first occurrence
    docs.keep[:] = False
    docs.keep[first] = True
    dups = np.flatnonzero(~docs.keep)
    if not len(dups):
        return

    def what(i: int) -> str:
        j = int(original[i])
        return f"duplicate of {names[docs.source[j]]} document {docs.uri[j]}"

    for s, n in enumerate(np.bincount(docs.source[dups], minlength=len(names)).tolist()):
        if n:
            i = int(dups[docs.source[dups] == s][0])
            counts[s].drop("duplicate", n, f"{names[s]} {docs.uri[i]}: {what(i)}")


def _write_streams(docs: Documents, tasks, n_src: int, dtype, work_dir: Path, progress: Progress) -> np.ndarray:
    """Each source's token stream (kept documents, EOS after each) to work_dir/stream_S.bin."""
    progress.start("token streams", len(tasks))
    docs.stream_offset = np.zeros(len(docs.sha), dtype=np.int64)
    stream_len = np.zeros(n_src, dtype=np.int64)
    outs = [open(work_dir / f"stream_{s}.bin", "wb") for s in range(n_src)]
    try:
        pos = 0
        for (shard_dir, t), n in zip(tasks, docs.task_sizes):
            s = t["source"]
            lengths = docs.n_tokens[pos : pos + n]
            keep = docs.keep[pos : pos + n]
            kept_lengths = np.where(keep, lengths, 0)
            docs.stream_offset[pos : pos + n] = stream_len[s] + np.cumsum(kept_lengths) - kept_lengths
            path = shard_dir / "tasks" / f"{t['file']}.tokens"
            if keep.all():
                with open(path, "rb") as f:
                    shutil.copyfileobj(f, outs[s], 1 << 22)
            elif keep.any():
                tokens = np.memmap(path, dtype=dtype, mode="r")
                offsets = np.cumsum(lengths) - lengths
                # runs of consecutive kept documents
                edges = np.flatnonzero(np.diff(np.concatenate([[0], keep.astype(np.int8), [0]])))
                for a, b in zip(edges[::2], edges[1::2]):
                    outs[s].write(tokens[offsets[a] : offsets[b - 1] + lengths[b - 1]].tobytes())
                del tokens
            stream_len[s] += int(kept_lengths.sum())
            pos += n
            progress.advance()
    finally:
        for f in outs:
            f.close()
    return stream_len


def _write_documents(docs: Documents, names: list[str], path: Path) -> str:
    import pyarrow as pa

    kept = np.flatnonzero(docs.keep)
    hexes = [bytes(x).hex() for x in docs.sha[kept].view(np.uint8).reshape(-1, 32)] if len(kept) else []
    table = pa.table({
        "doc_id": pa.array(np.arange(len(kept), dtype=np.int64)),
        "source": pa.array([names[s] for s in docs.source[kept].tolist()], type=pa.string()),
        "uri": pa.array([docs.uri[i] for i in kept.tolist()], type=pa.string()),
        "sha256": pa.array(hexes, type=pa.string()),
        "n_tokens": pa.array(docs.n_tokens[kept].astype(np.int64)),
        "n_chars": pa.array(docs.n_chars[kept].astype(np.int64)),
        "stream_offset": pa.array(docs.stream_offset[kept]),
    })
    return _write_parquet(table, path)


def _write_heldout(seed: int, name: str, h: int, view: np.ndarray, geometry, data_dir: Path) -> tuple[dict, np.ndarray]:
    """heldout/NAME.npy (+ spans); returns its manifest entry and the source's training rows."""
    n_rows = len(view)
    held = np.sort(seeded_rng(seed, "heldout", name).choice(n_rows, size=h, replace=False)) if h else np.zeros(0, np.int64)
    mask = np.ones(n_rows, dtype=bool)
    mask[held] = False
    file, spans_file = f"heldout/{name}.npy", f"heldout/{name}.spans.parquet"
    np.save(data_dir / file, np.ascontiguousarray(view[held]) if h else np.zeros((0, view.shape[1]), view.dtype))
    spans = compute_spans(np.arange(h), held, *geometry, view.shape[1])
    entry = {
        "source": name, "file": file, "sha256": sha256_file(data_dir / file), "rows": int(h),
        "spans_file": spans_file, "spans_sha256": _write_parquet(_spans_table(_spans_columns([(name, spans)])), data_dir / spans_file),
    }
    return entry, np.flatnonzero(mask)


class RowDraw:
    """Draws each stage's rows: per source, seeded permutations of its training rows, one per
    epoch, continuing across stages; then the stage's seeded shuffle."""

    def __init__(self, seed: int, names: list[str], train_rows: list[np.ndarray]):
        self.seed, self.names, self.train_rows = seed, names, train_rows
        self.position = [(0, 0) for _ in names]  # (epoch, rows taken from that epoch's permutation)
        self.perms: dict[int, tuple[int, np.ndarray]] = {}  # source -> (epoch, permutation)

    def take(self, s: int, need: int) -> tuple[np.ndarray, list[int]]:
        """`need` rows of source s, and the [first, last] epochs they came from."""
        n_train = len(self.train_rows[s])
        epoch, taken = self.position[s]
        first_epoch, got, left = epoch, [], need
        while left > 0:
            if s not in self.perms or self.perms[s][0] != epoch:
                self.perms[s] = (epoch, seeded_rng(self.seed, "epoch", self.names[s], epoch).permutation(n_train))
            perm = self.perms[s][1]
            n = min(left, n_train - taken)
            got.append(self.train_rows[s][perm[taken : taken + n]])
            taken += n
            left -= n
            if taken == n_train:
                epoch, taken = epoch + 1, 0
        self.position[s] = (epoch, taken)
        last_epoch = epoch if taken else epoch - 1
        return (np.concatenate(got) if got else np.zeros(0, np.int64)), ([first_epoch, last_epoch] if need else [])

    def stage(self, si: int, st: dict, rows_per_chunk: int, first_chunk: int) -> tuple[np.ndarray, np.ndarray, dict]:
        mix = list(st["mix"])
        rows_per_source = dict(zip(mix, largest_remainder(st["chunks"] * rows_per_chunk, [st["mix"][n] for n in mix])))
        src, rows, epochs, permutations = [], [], {}, {}
        for s, name in enumerate(self.names):  # config order, whatever the order of the mix
            if name not in rows_per_source:
                continue
            need = rows_per_source[name]
            got, permutations[name] = self.take(s, need)
            src.append(np.full(len(got), s, dtype=np.int32))
            rows.append(got)
            epochs[name] = round(need / len(self.train_rows[s]), 6) if len(self.train_rows[s]) else 0.0
        if st["exact_mix"]:
            totals = [rows_per_source[n] for n in self.names if n in rows_per_source]  # config order, as `src`
            order = self.exact_order(si, per_chunk_counts(totals, st["chunks"]))
        else:
            order = seeded_rng(self.seed, "stage", si).permutation(st["chunks"] * rows_per_chunk)
        entry = {
            "index": si, "name": st["name"], "first_chunk": first_chunk, "chunks": st["chunks"],
            "mix": st["mix"], "rows_per_source": rows_per_source, "epochs": epochs,
            "permutations": permutations, "rewarm_steps": st["rewarm_steps"],
        }
        if st["steps_per_chunk"] is not None and st["own_steps"]:
            entry["steps_per_chunk"] = st["steps_per_chunk"]
        if st["exact_mix"]:
            entry["exact_mix"] = True
        if st["fim"]:
            entry["fim"] = {n: f.model_dump() for n, f in st["fim"].items()}
        return np.concatenate(src)[order], np.concatenate(rows)[order], entry

    def exact_order(self, si: int, counts: np.ndarray) -> np.ndarray:
        """The stage's rows (sources in turn, each in draw order) dealt out so that chunk k takes
        the next `counts[k, j]` rows of the stage's j-th source, shuffled inside the chunk by
        `seeded_rng(seed, "stage", STAGE, "chunk", k)`."""
        totals = counts.sum(axis=0)
        source_start = np.cumsum(totals) - totals  # where each source's rows begin in the stage
        taken = np.cumsum(counts, axis=0) - counts  # rows of each source in earlier chunks
        order = []
        for k, row in enumerate(counts):
            idx = np.concatenate([source_start[j] + taken[k, j] + np.arange(n) for j, n in enumerate(row)])
            order.append(idx[seeded_rng(self.seed, "stage", si, "chunk", k).permutation(len(idx))])
        return np.concatenate(order)


def per_chunk_counts(totals: list[int], chunks: int) -> np.ndarray:
    """(chunks, sources): each source's `totals` spread over the chunks as evenly as whole rows allow.

    Every chunk gets floor(total / chunks) rows of a source; the remainders, listed source by source,
    go one to a chunk in turn. A source's remainder is below `chunks`, so no chunk gets two of it, and
    the remainders sum to a multiple of `chunks`, so every chunk gets as many: each chunk holds each
    source at floor or ceil of its share, and all chunks hold the same number of rows.
    """
    counts = np.tile(np.array([t // chunks for t in totals], dtype=np.int64), (chunks, 1))
    extras = [j for j, t in enumerate(totals) for _ in range(t % chunks)]
    for i, j in enumerate(extras):
        counts[i % chunks, j] += 1
    return counts


def _write_chunk(index: int, stage: int, src: np.ndarray, rows: np.ndarray, views, geometry, names: list[str],
                 mix: list[str], data_dir: Path, width: int, dtype, stage_fim: "FimRows | None" = None) -> dict:
    R, L = len(src), views[0].shape[1]
    file = f"chunks/chunk_{index:0{width}d}.npy"
    spans_file = f"chunks/chunk_{index:0{width}d}.spans.parquet"
    # written through a memmap, a block of rows at a time: a chunk may be larger than memory
    arr = np.lib.format.open_memmap(data_dir / file, mode="w+", dtype=dtype, shape=(R, L))
    for lo in range(0, R, ROW_BLOCK):
        block_src, block_rows = src[lo : lo + ROW_BLOCK], rows[lo : lo + ROW_BLOCK]
        for s in np.unique(block_src).tolist():
            at = np.flatnonzero(block_src == s)
            arr[lo + at] = views[s][block_rows[at]]
    parts = []
    for s in np.unique(src).tolist():
        at = np.flatnonzero(src == s)
        parts.append((names[s], compute_spans(at, rows[at], *geometry[s], L)))
    spans = _spans_columns(parts)
    fim_counts = stage_fim.apply(index, arr, spans, names) if stage_fim else None
    arr.flush()
    del arr
    per_source = np.bincount(src, minlength=len(names))
    entry = {
        "index": index, "stage": stage, "file": file, "sha256": sha256_file(data_dir / file),
        "rows": R, "tokens": R * L,
        "rows_per_source": {n: int(per_source[names.index(n)]) for n in mix},
        "spans_file": spans_file,
        "spans_sha256": _write_parquet(_spans_table(spans), data_dir / spans_file),
    }
    if fim_counts is not None:
        entry["fim"] = fim_counts
    return entry


class FimRows:
    """A stage's FIM (data/fim.py) on the chunks it writes; the spans gain its columns."""

    def __init__(self, seed: int, fim: list, doc_tokens: np.ndarray, ids: dict[str, int]):
        self.seed, self.fim, self.doc_tokens, self.ids = seed, fim, doc_tokens, ids

    def apply(self, chunk: int, arr: np.ndarray, spans: dict[str, np.ndarray], names: list[str]) -> dict:
        """Rearrange chunk `chunk` (`arr`) in place, add the FIM columns to `spans`; the counts per
        source and mode for the manifest's chunk entry."""
        index = {n: i for i, n in enumerate(names)}
        source = np.array([index[n] for n in spans["source"].tolist()], dtype=np.int64)
        rng = seeded_rng(self.seed, "fim", chunk)
        spans.update(fim_mod.apply_to_chunk(arr, spans, self.doc_tokens[spans["doc_id"]], self.fim, source, rng, self.ids))
        counts = {}
        for s, f in enumerate(self.fim):
            if f is not None:
                modes = spans["fim"][source == s]
                counts[names[s]] = {m: int((modes == m).sum()) for m in ("psm", "spm")}
        return counts


def _stage_plan(cfg, names: list[str], n_rows: np.ndarray) -> list[dict]:
    """The configured stages, or one stage `all` that takes every source's rows once."""
    spc = cfg.train.steps_per_chunk
    stages = [
        {"name": st.name, "chunks": st.chunks, "mix": dict(st.mix), "rewarm_steps": st.rewarm_steps,
         "exact_mix": st.exact_mix, "fim": {n: f for n, f in st.fim.items() if f.rate > 0},
         "steps_per_chunk": st.steps_per_chunk or spc, "own_steps": st.steps_per_chunk not in (None, spc)}
        for st in cfg.data.stages
    ]
    if stages:
        return stages
    R = cfg.train.global_batch_rows * cfg.train.steps_per_chunk
    train = {n: int(max(0, r - cfg.data.heldout_rows)) for n, r in zip(names, n_rows.tolist())}
    chunks = sum(train.values()) // R
    if chunks < 1:
        raise UserError(
            f"no data.stages given and {sum(train.values())} training rows are fewer than one chunk "
            f"({R} rows = train.global_batch_rows x train.steps_per_chunk); add data or lower those"
        )
    return [{"name": "all", "chunks": chunks, "mix": {n: float(r) for n, r in train.items() if r > 0}, "rewarm_steps": 0,
             "exact_mix": False, "fim": {}, "steps_per_chunk": spc, "own_steps": False}]
