"""Search of the training data: where, and at which step, did the model see this text?

`llm360 index RUN` writes a suffix array over every token of every chunk (and of the held-out
rows, flagged as such) into RUN/analysis/search/. The files follow the layout of infini-gram
(Liu et al. 2024, https://infini-gram.io), so its engine opens our index as it is:

    tokenized.0   each row of seq_len + 1 tokens preceded by a separator token (all bits set),
                  little-endian uint16 (uint32 when the vocabulary needs it)
    offset.0      uint64 byte offset of each row's separator
    table.0       the suffix array: byte offsets into tokenized.0, `ratio` bytes each,
                  little-endian, sorted by the bytes that follow them
    index.json    what is where: token width, ratio, row width, the chunk and held-out segments,
                  and the data fingerprint the index was built from

The separator is no token of the vocabulary, so a match never runs from one row into the next.
A query is two binary searches over the memory-mapped table (a few dozen page reads), so counts
take microseconds whatever the corpus size; locating an occurrence is arithmetic on its pointer:
row = pointer // row bytes, and the step rule (docs/run-directory.md §4) gives the step that trained on it.

Building needs the optional extra `search`: pydivsufsort (libdivsufsort) sorts the whole token
file in memory (5 bytes per byte, 9 from 2 GiB on), and is used when that fits in half of the
memory available; infini-gram's Rust indexer sorts parts that fit a memory budget and merges
them, for corpora too big for that (its merge slows down on repeated rows, and it cannot index
32-bit tokens in less than 32 GiB). LLM360_INDEX_BACKEND=infini-gram|pydivsufsort chooses.
"""

from __future__ import annotations

import bisect
import json
import math
import mmap
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np

from llm360.data.prepare import parse_shard
from llm360.data.store import RunData
from llm360.errors import UserError
from llm360.rundir import SEARCH_DIR, parse_search_shard_name, search_shard_name
from llm360.utils import atomic_write_json, replace_dir

FORMAT = "llm360-search/1"
EXTRA_HINT = "pip install 'llm360[search]' (pydivsufsort and infini-gram)"
HACK = 100_000  # bytes each infini-gram part reads past its end, so suffixes near the cut sort right


def index_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / SEARCH_DIR


# --------------------------------------------------------------------------------------------
# building


def available_backends() -> list[str]:
    found = []
    for name, module in (("infini-gram", "infini_gram"), ("pydivsufsort", "pydivsufsort")):
        try:
            __import__(module)
            found.append(name)
        except ImportError:
            pass
    return found


def _pick_backend(backend: str | None, token_bytes: int = 2, data_bytes: int | None = None) -> str:
    """The named backend (argument, else $LLM360_INDEX_BACKEND), checked; else the choice for
    this data: pydivsufsort when its in-memory sort fits in half the memory available (it is
    3-4x faster here and not slowed by repeated rows), infini-gram's bounded build otherwise."""
    backend = backend or os.environ.get("LLM360_INDEX_BACKEND") or None
    found = available_backends()
    if backend is not None:
        if backend not in ("infini-gram", "pydivsufsort"):
            raise UserError(f"unknown index backend {backend!r}; use infini-gram or pydivsufsort")
        if backend not in found:
            raise UserError(f"the index backend {backend} is not installed: {EXTRA_HINT}")
        return backend
    if not found:
        raise UserError(f"building the search index needs a suffix array builder: {EXTRA_HINT}")
    if found == ["infini-gram"] and token_bytes == 4:
        # infini-gram's indexer allocates 8 bytes per possible 32-bit token (32 GiB) per part
        raise UserError("this vocabulary needs 32-bit tokens, for which infini-gram's indexer wants 32 GiB of "
                        "memory per part: pip install pydivsufsort (or set LLM360_INDEX_BACKEND=infini-gram)")
    if len(found) == 1 or data_bytes is None:
        return found[0] if len(found) == 1 else "pydivsufsort"
    fits = divsufsort_memory(data_bytes) <= _default_memory()
    return "pydivsufsort" if fits or token_bytes == 4 else "infini-gram"


def divsufsort_memory(data_bytes: int) -> int:
    """Peak memory of the pydivsufsort build: the text plus a 32-bit (64-bit from 2 GiB) suffix
    array entry per byte."""
    return data_bytes * (1 + (4 if data_bytes < 2**31 else 8))


def build_token_index(folder: str | Path, blocks, vocab_size: int, *, backend: str | None = None,
                      mem_bytes: int | None = None, cpus: int | None = None, meta: dict | None = None,
                      progress=None) -> dict:
    """Write an index of `blocks` into `folder` (made anew, atomically) and return its index.json.

    blocks: iterable of (segment, rows) with rows a 2-D integer array [n, width] (memmaps are
    fine: they are read block by block) and segment a dict describing them (kept in index.json
    with `rows` and `first_row` added). Every block must have the same width.
    """
    folder = Path(folder)
    dtype = np.dtype("<u2") if vocab_size <= 0xFFFF else np.dtype("<u4")
    _pick_backend(backend, dtype.itemsize)  # fail before the work when nothing can build it
    sep = np.iinfo(dtype).max
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        started = time.perf_counter()
        segments, width, n_rows = [], None, 0
        with open(tmp / "tokenized.0", "wb") as data, open(tmp / "offset.0", "wb") as offsets:
            for segment, rows in blocks:
                if rows.ndim != 2:
                    raise ValueError(f"segment {segment} is not a 2-D array of rows")
                if width is None:
                    width = rows.shape[1]
                elif rows.shape[1] != width:
                    raise UserError(f"segment {segment} has rows of {rows.shape[1]} tokens, others {width}")
                row_bytes = (width + 1) * dtype.itemsize
                step = max(1, (64 << 20) // row_bytes)  # 64 MiB at a time
                for start in range(0, rows.shape[0], step):
                    part = np.asarray(rows[start:start + step])
                    if part.size and (part.min() < 0 or part.max() >= sep):
                        raise UserError(f"segment {segment} holds token ids outside [0, {sep}): not a token file of "
                                        f"this tokenizer (vocab {vocab_size})")
                    out = np.empty((part.shape[0], width + 1), dtype)
                    out[:, 0] = sep
                    out[:, 1:] = part
                    data.write(out.tobytes())
                    first = n_rows + start
                    (np.arange(first, first + part.shape[0], dtype="<u8") * np.uint64(row_bytes)).tofile(offsets)
                segments.append({**segment, "first_row": n_rows, "rows": int(rows.shape[0])})
                n_rows += int(rows.shape[0])
                if progress is not None:
                    progress(segment)
        if not n_rows:
            raise UserError("there are no rows to index")
        size = (tmp / "tokenized.0").stat().st_size
        ratio = max(1, math.ceil(math.log2(size) / 8))
        backend = _pick_backend(backend, dtype.itemsize, size)
        if backend == "infini-gram":
            _sort_infinigram(tmp, dtype.itemsize, ratio, mem_bytes, cpus)
        else:
            _sort_divsufsort(tmp, dtype.itemsize, ratio)
        expected = size // dtype.itemsize * ratio
        if (tmp / "table.0").stat().st_size != expected:
            raise RuntimeError(f"{backend} wrote a suffix table of {(tmp / 'table.0').stat().st_size} bytes, "
                               f"expected {expected}")
        info = {
            "format": FORMAT,
            "token_dtype": "u16" if dtype.itemsize == 2 else "u32",
            "token_bytes": dtype.itemsize,
            "separator": int(sep),
            "ratio": ratio,
            "row_tokens": width,
            "rows": n_rows,
            "tokens": n_rows * width,
            "vocab_size": vocab_size,
            "segments": segments,
            "backend": backend,
            "build_seconds": round(time.perf_counter() - started, 3),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **(meta or {}),
        }
        atomic_write_json(tmp / "index.json", info)
        folder.parent.mkdir(parents=True, exist_ok=True)
        replace_dir(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return info


def _sort_infinigram(folder: Path, width: int, ratio: int, mem_bytes: int | None, cpus: int | None) -> None:
    """infini-gram's Rust indexer, driven as its own indexing script does: sort parts (each at
    most mem / 8 bytes, `cpus` at a time), merge them, concatenate into table.0."""
    import infini_gram

    exe = Path(infini_gram.__file__).parent / "rust_indexing"
    if not exe.is_file():
        raise UserError(f"the infini-gram package has no rust_indexing program at {exe}: reinstall it ({EXTRA_HINT})")
    cpus = max(1, cpus or os.cpu_count() or 1)
    mem_bytes = mem_bytes or _default_memory()
    data = folder / "tokenized.0"
    size = data.stat().st_size
    batches = 1
    while batches * (mem_bytes // 8) < size:
        batches *= 2
    jobs = batches * cpus
    jobs = max(1, min(jobs, -(-size // (1 << 20))))  # no point in parts under 1 MiB
    part = size // jobs
    part += (-part) % width  # whole tokens
    parts, merged = folder / "parts", folder / "merged"
    parts.mkdir()
    merged.mkdir()

    def run(*args: str) -> None:
        cmd = [str(exe), *args, "--ratio", str(ratio), "--token-width", str(width)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"infini-gram's indexer failed ({' '.join(cmd)}): {done.stderr[-2000:]}")

    ranges = [(i * part, min((i + 1) * part + HACK, size)) for i in range(jobs) if i * part < size]
    for b in range(0, len(ranges), cpus):
        procs = []
        for s, e in ranges[b:b + cpus]:
            cmd = [str(exe), "make-part", "--data-file", str(data), "--parts-dir", str(parts),
                   "--start-byte", str(s), "--end-byte", str(e), "--ratio", str(ratio), "--token-width", str(width)]
            procs.append((cmd, subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)))
        for cmd, proc in procs:
            _, err = proc.communicate()
            if proc.returncode:
                raise RuntimeError(f"infini-gram's indexer failed ({' '.join(cmd)}): {err[-2000:]}")
    run("merge", "--data-file", str(data), "--parts-dir", str(parts), "--merged-dir", str(merged),
        "--num-threads", str(cpus), "--hacksize", str(HACK))
    shutil.rmtree(parts)
    # merge may write fewer files than threads (small data); concat must be told how many
    run("concat", "--data-file", str(data), "--merged-dir", str(merged), "--merged-file", str(folder / "table.0"),
        "--num-threads", str(len(list(merged.iterdir()))))
    shutil.rmtree(merged)


def _sort_divsufsort(folder: Path, width: int, ratio: int) -> None:
    """libdivsufsort over the bytes, keeping the suffixes that start on a token: the same order
    as infini-gram's (bytes compared as memcmp)."""
    from pydivsufsort import divsufsort

    data = np.memmap(folder / "tokenized.0", dtype=np.uint8, mode="c")  # writable view, no copy
    sa = divsufsort(data)  # int32 per byte (int64 from 2 GiB on)
    del data
    with open(folder / "table.0", "wb") as f:
        step = 1 << 22  # filter and write in blocks: no second array of the table's size
        for i in range(0, len(sa), step):
            block = sa[i:i + step]
            block = block[block % width == 0].astype("<u8")
            f.write(np.ascontiguousarray(block.view(np.uint8).reshape(-1, 8)[:, :ratio]).tobytes())


def _default_memory() -> int:
    """Half of the memory available now (at least 256 MiB), for the infini-gram parts."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return max(256 << 20, int(line.split()[1]) * 1024 // 2)
    except OSError:
        pass
    return 2 << 30


# --------------------------------------------------------------------------------------------
# querying


class TokenIndex:
    """Counts and positions of token sequences in an index folder (memory-mapped, read-only)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        meta = self.folder / "index.json"
        if not meta.is_file():
            raise UserError(f"{self.folder} holds no search index (no index.json)")
        self.info = json.loads(meta.read_text())
        if self.info.get("format") != FORMAT:
            raise UserError(f"{meta} is of format {self.info.get('format')!r}, not {FORMAT}: build the index again")
        self.width = int(self.info["token_bytes"])
        self.dtype = np.dtype("<u2") if self.width == 2 else np.dtype("<u4")
        self.ratio = int(self.info["ratio"])
        self.row_tokens = int(self.info["row_tokens"])
        self.row_bytes = (self.row_tokens + 1) * self.width
        self.segments = self.info["segments"]
        self._starts = [s["first_row"] for s in self.segments]
        self.heldout_row = self.first_heldout_row()  # rows from here on are held out
        self._files = []
        self.data = self._map("tokenized.0")
        self.table = self._map("table.0")
        self.n = len(self.table) // self.ratio
        if len(self.data) != self.info["rows"] * self.row_bytes or self.n * self.width != len(self.data):
            raise UserError(f"the search index in {self.folder} is incomplete or damaged: build it again")

    def _map(self, name: str) -> mmap.mmap:
        f = open(self.folder / name, "rb")
        self._files.append(f)
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)

    def close(self) -> None:
        for m in (self.data, self.table):
            m.close()
        for f in self._files:
            f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _query_bytes(self, tokens) -> bytes:
        q = np.asarray(list(tokens), dtype=np.int64)
        if q.size == 0:
            raise UserError("the query has no tokens")
        if q.min() < 0 or q.max() >= self.info["separator"]:
            raise UserError(f"token ids must be in [0, {self.info['separator']})")
        return q.astype(self.dtype).tobytes()

    def _ptr(self, i: int) -> int:
        r = self.ratio
        return int.from_bytes(self.table[i * r:(i + 1) * r], "little")

    def range(self, tokens) -> tuple[int, int]:
        """[lo, hi): the ranks of the suffixes that start with `tokens`."""
        q = self._query_bytes(tokens)
        size, data, ptr = len(q), self.data, self._ptr
        lo, hi = 0, self.n
        while lo < hi:  # first suffix >= q
            mid = (lo + hi) // 2
            p = ptr(mid)
            if data[p:p + size] < q:
                lo = mid + 1
            else:
                hi = mid
        first, hi = lo, self.n
        while lo < hi:  # first suffix whose first len(q) bytes are > q
            mid = (lo + hi) // 2
            p = ptr(mid)
            if data[p:p + size] <= q:
                lo = mid + 1
            else:
                hi = mid
        return first, lo

    def count(self, tokens) -> int:
        lo, hi = self.range(tokens)
        return hi - lo

    def pointers(self, lo: int, hi: int) -> np.ndarray:
        """Byte offsets of the suffixes of ranks [lo, hi), as uint64."""
        r, n = self.ratio, hi - lo
        raw = np.frombuffer(self.table, dtype=np.uint8, count=n * r, offset=lo * r).reshape(n, r)
        out = np.zeros((n, 8), np.uint8)
        out[:, :r] = raw
        return out.view("<u8").ravel()

    def positions(self, tokens) -> tuple[np.ndarray, np.ndarray]:
        """(global row, offset in the row) of every occurrence, in row order."""
        lo, hi = self.range(tokens)
        ptrs = np.sort(self.pointers(lo, hi))
        tok = ptrs // self.width
        return (tok // (self.row_tokens + 1)).astype(np.int64), (tok % (self.row_tokens + 1) - 1).astype(np.int64)

    def segment_of(self, row: int) -> tuple[dict, int]:
        """(segment, row within it) of a global row."""
        k = bisect.bisect_right(self._starts, row) - 1
        seg = self.segments[k]
        return seg, row - seg["first_row"]

    def first_heldout_row(self) -> int:
        for seg in self.segments:
            if seg.get("kind") == "heldout":
                return seg["first_row"]
        return self.info["rows"]

    def count_split(self, tokens) -> tuple[int, int]:
        """(occurrences in training chunks, occurrences in held-out rows)."""
        lo, hi = self.range(tokens)
        if hi == lo:
            return 0, 0
        limit = self.first_heldout_row() * self.row_bytes
        if limit >= len(self.data):
            return hi - lo, 0
        train = int((self.pointers(lo, hi) < limit).sum())
        return train, hi - lo - train

    def has_train(self, tokens) -> bool:
        """Whether `tokens` occur in a training (chunk) row of this index. Held-out rows sit after the
        chunk rows, so only a range no bigger than the held-out tokens needs its pointers read."""
        lo, hi = self.range(tokens)
        if hi - lo > len(self.data) // self.width - self.heldout_row * (self.row_tokens + 1) or hi == lo:
            return hi > lo
        return bool((self.pointers(lo, hi) < self.heldout_row * self.row_bytes).any())

    def longest_matches(self, tokens: list[int]) -> np.ndarray:
        """L[i]: the length of the longest prefix of tokens[i:] that occurs in a training row of
        this index. L[i+1] >= L[i] - 1, so each start resumes where the last ended: about two
        lookups per token."""
        out, k = np.zeros(len(tokens), np.int64), 0
        for i in range(len(tokens)):
            k = max(k - 1, 0)
            while i + k < len(tokens) and self.has_train(tokens[i:i + k + 1]):
                k += 1
            out[i] = k
        return out

    def first_train_row(self, tokens) -> tuple[int, int] | None:
        """(row, offset) of the first occurrence of `tokens` in a training row of this index."""
        rows, offsets = self.positions(tokens)
        keep = rows < self.heldout_row
        return (int(rows[keep][0]), int(offsets[keep][0])) if keep.any() else None

    def row_tokens_at(self, row: int) -> np.ndarray:
        start = row * self.row_bytes + self.width
        return np.frombuffer(self.data[start:start + self.row_tokens * self.width], dtype=self.dtype).astype(np.int64)


# --------------------------------------------------------------------------------------------
# the run's index, in shards


def _run_data(run_dir: Path):
    return RunData(run_dir)


def _chunk_hashes(data) -> list:
    return [c.sha256 for c in data.manifest.chunks]


def shard_chunks(n_chunks: int, shard: int, shards: int) -> tuple[int, int]:
    """Chunks [a, b) of shard i of N: contiguous, in training order, shard sizes differing by at
    most one chunk."""
    return shard * n_chunks // shards, (shard + 1) * n_chunks // shards


def shard_dir(run_dir: str | Path, shard: int, shards: int) -> Path:
    return index_dir(run_dir) / search_shard_name(shard, shards)


def shard_folders(run_dir: str | Path) -> dict[tuple[int, int], Path]:
    """{(i, N): folder} of every shard folder in analysis/search/ (complete or not)."""
    folder = index_dir(run_dir)
    found = {}
    if folder.is_dir():
        for path in folder.iterdir():
            parsed = parse_search_shard_name(path.name)
            if parsed is not None and path.is_dir():
                found[parsed] = path
    return found


def index_folders(run_dir: str | Path) -> list[Path]:
    """The folders of the run's index in chunk order: its shards when it has any, else the one
    index of analysis/search/ (also what an unsharded `llm360 index` writes)."""
    run_dir = Path(run_dir)
    shards = shard_folders(run_dir)
    if not shards:
        if not (index_dir(run_dir) / "index.json").is_file():
            raise UserError(f"{run_dir} has no search index yet: run `llm360 index {run_dir}`")
        return [index_dir(run_dir)]
    counts = sorted({n for _, n in shards})
    if len(counts) > 1:
        names = ", ".join(search_shard_name(*min(k for k in shards if k[1] == n)) for n in counts)
        raise UserError(f"{index_dir(run_dir)} mixes shards of different splittings ({names}): delete the "
                        "folders of the splitting you do not want")
    n = counts[0]
    for i in range(n):
        if (i, n) not in shards or not (shards[(i, n)] / "index.json").is_file():
            raise UserError(f"search index shard {search_shard_name(i, n)} of {run_dir} is missing: run "
                            f"`llm360 index {run_dir} --shard {i}/{n}`")
    return [shards[(i, n)] for i in range(n)]


def build_index(run_dir: str | Path, *, shard: tuple[int, int] | None = None, backend: str | None = None,
                mem_bytes: int | None = None, cpus: int | None = None, quiet: bool = False) -> dict:
    """Index the chunks of shard i of N (in training order) into analysis/search/shard-i-of-N/,
    the held-out rows with the last shard; without `shard`, every chunk and held-out row into
    analysis/search/ itself. Memory is bounded by the shard's size (divsufsort_memory)."""
    run_dir = Path(run_dir)
    data = _run_data(run_dir)
    i, n = shard or (0, 1)
    if n > data.n_chunks:
        raise UserError(f"--shard {i}/{n}: {run_dir} has {data.n_chunks} chunks, so at most {data.n_chunks} shards")
    if shard is None and shard_folders(run_dir):
        raise UserError(f"{index_dir(run_dir)} holds index shards: build the missing ones with `llm360 index "
                        f"{run_dir} --shard i/N`, or delete the shard-* folders to build one index")
    others = sorted(k for k in shard_folders(run_dir) if k[1] != n)
    if shard is not None and others:
        raise UserError(f"{index_dir(run_dir)} holds shards of another splitting ({search_shard_name(*others[0])}): "
                        f"delete them before building shards of {n}")
    a, b = shard_chunks(data.n_chunks, i, n)
    heldout = data.heldout_sources if i == n - 1 else []

    def blocks():
        for c in range(a, b):
            yield {"kind": "chunk", "chunk": c}, data.chunk(c)
        for source in heldout:
            yield {"kind": "heldout", "source": source}, data.heldout(source)

    meta = {"fingerprint": data.fingerprint, "chunk_sha256": _chunk_hashes(data)[a:b], "chunk_range": [a, b],
            "shard": [i, n], "steps_per_chunk": data.steps_per_chunk, "global_batch_rows": data.global_batch_rows,
            "chunk_first_steps": [data.rule.first_step(c) for c in range(a, b)]}
    folder = index_dir(run_dir) if shard is None else shard_dir(run_dir, i, n)
    build = dict(backend=backend, mem_bytes=mem_bytes, cpus=cpus, meta=meta)
    if quiet:
        return build_token_index(folder, blocks(), data.vocab_size, **build)
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task("indexing", total=b - a + len(heldout))
        info = build_token_index(folder, blocks(), data.vocab_size, progress=lambda seg: bar.advance(task), **build)
    return info


class ShardIndex(TokenIndex):
    """One folder of the run's index (a shard, or the whole index), checked against the run's
    data, with the run's provenance to say where each occurrence came from."""

    def __init__(self, folder: str | Path, data, run_dir: Path):
        super().__init__(folder)
        try:
            self._check(data, run_dir)
        except BaseException:
            self.close()
            raise
        self.run_data = data
        self.chunk_range = tuple(self.info.get("chunk_range") or (0, data.n_chunks))
        self._spans: dict[tuple, dict] = {}
        self._docs = None

    def _check(self, data, run_dir: Path) -> None:
        a, b = self.info.get("chunk_range") or (0, data.n_chunks)
        i, n = self.info.get("shard") or (0, 1)
        sharded = self.folder != index_dir(run_dir)
        if sharded and (self.folder.name != search_shard_name(i, n) or (a, b) != shard_chunks(data.n_chunks, i, n)):
            raise UserError(f"search index shard {self.folder.name} of {run_dir} holds shard {i}/{n} (chunks {a}-{b - 1}), "
                            f"not what its name says: run `llm360 index {run_dir} --shard {i}/{n}` again")
        if self.info.get("fingerprint") != data.fingerprint or self.info.get("chunk_sha256") != _chunk_hashes(data)[a:b]:
            what = f"search index shard {self.folder.name} of {run_dir}" if sharded else f"the search index of {run_dir}"
            again = f"llm360 index {run_dir}" + (f" --shard {i}/{n}" if sharded else "")
            raise UserError(f"{what} was built from other data (its fingerprint or chunk hashes differ from "
                            f"data/manifest.json): run `{again}` again")

    def _span_columns(self, seg: dict) -> dict:
        key = (seg["kind"], seg.get("chunk", seg.get("source")))
        if key not in self._spans:
            if seg["kind"] == "chunk":
                t = self.run_data.spans(seg["chunk"])
            else:
                t = self.run_data.heldout_spans(seg["source"])
            cols = {name: t.column(name).to_numpy(zero_copy_only=False) for name in t.column_names}
            order = np.lexsort((cols["offset"], cols["row"]))
            self._spans[key] = {k: v[order] for k, v in cols.items()}
        return self._spans[key]

    def _uri(self, doc_id: int) -> str | None:
        if self._docs is None:
            t = self.run_data.documents()
            self._docs = dict(zip(t.column("doc_id").to_pylist(), t.column("uri").to_pylist()))
        return self._docs.get(doc_id)

    def documents_at(self, seg: dict, row: int, offset: int, length: int) -> list[dict]:
        """The documents that tokens [offset, offset + length) of a row of the segment come from."""
        s = self._span_columns(seg)
        found = []
        for k in range(np.searchsorted(s["row"], row, "left"), np.searchsorted(s["row"], row, "right")):
            a, n = int(s["offset"][k]), int(s["length"][k])
            if a < offset + length and offset < a + n:
                doc = int(s["doc_id"][k])
                found.append({"doc_id": doc, "source": str(s["source"][k]), "uri": self._uri(doc),
                              "doc_token_offset": int(s["doc_token_offset"][k]) + max(0, offset - a)})
        return found

    def describe(self, row: int, offset: int, length: int, context: int = 12, tokenizer=None) -> dict:
        """One occurrence (row of this shard): chunk, row, offset, step (held out: the source),
        documents, text around."""
        seg, local = self.segment_of(row)
        docs = self.documents_at(seg, local, offset, length)
        first = docs[0] if docs else {}
        if seg["kind"] == "chunk":
            c = seg["chunk"]
            step = self.run_data.rule.first_step(c) + local // self.run_data.global_batch_rows
            out = {"heldout": False, "chunk": c, "row": local, "offset": offset, "step": step,
                   "source": first.get("source")}
        else:
            out = {"heldout": True, "chunk": None, "row": local, "offset": offset, "step": None,
                   "source": seg["source"]}
        out.update({"doc_id": first.get("doc_id"), "uri": first.get("uri")})
        if len(docs) > 1:
            out["documents"] = docs
        if tokenizer is not None:
            toks = self.row_tokens_at(row)
            a, b = max(0, offset - context), min(len(toks), offset + length + context)
            out["before"] = tokenizer.decode(toks[a:offset].tolist(), skip_special_tokens=False)
            out["match"] = tokenizer.decode(toks[offset:offset + length].tolist(), skip_special_tokens=False)
            out["after"] = tokenizer.decode(toks[offset + length:b].tolist(), skip_special_tokens=False)
        return out


class RunIndex:
    """The run's index: every shard (or the one index), checked against the run's data, queried
    as one. Occurrences come in training order, held-out rows (in the last shard) last."""

    def __init__(self, run_dir: str | Path, data=None):
        self.run_dir = Path(run_dir)
        self.run_data = data if data is not None else _run_data(self.run_dir)
        self.shards: list[ShardIndex] = []
        try:
            for folder in index_folders(self.run_dir):
                self.shards.append(ShardIndex(folder, self.run_data, self.run_dir))
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for shard in self.shards:
            shard.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def count(self, tokens) -> int:
        return sum(s.count(tokens) for s in self.shards)

    def count_split(self, tokens) -> tuple[int, int]:
        """(occurrences in training chunks, occurrences in held-out rows)."""
        parts = [s.count_split(tokens) for s in self.shards]
        return sum(p[0] for p in parts), sum(p[1] for p in parts)

    def train_count(self, tokens) -> int:
        return self.count_split(tokens)[0]

    def positions(self, tokens) -> list[tuple[ShardIndex, np.ndarray, np.ndarray]]:
        """(shard, rows, offsets) of every occurrence, shard by shard, rows of the shard in order."""
        return [(s, *s.positions(tokens)) for s in self.shards]

    def longest_matches(self, tokens: list[int]) -> np.ndarray:
        """L[i]: the longest prefix of tokens[i:] in a training row (a match never spans rows, so
        never shards: the longest over the shards)."""
        return np.max([s.longest_matches(tokens) for s in self.shards], axis=0) if tokens else np.zeros(0, np.int64)

    def first_train_occurrence(self, tokens) -> tuple[ShardIndex, int, int] | None:
        """(shard, row, offset) of the earliest training occurrence: shards are in chunk order."""
        for s in self.shards:
            found = s.first_train_row(tokens)
            if found is not None:
                return s, *found
        return None


def search(run_dir: str | Path, text: str | None = None, tokens: list[int] | None = None, limit: int = 20,
           context: int = 12) -> dict:
    """Count and occurrences (training order first, then held-out) of a text or token ids."""
    run_dir = Path(run_dir)
    with RunIndex(run_dir) as index:
        tokenizer = index.run_data.tokenizer()
        if tokens is None:
            if not text:
                raise UserError("give a TEXT to search for, or --tokens 1,2,3")
            tokens = tokenizer.encode(text, add_special_tokens=False).ids
            if not tokens:
                raise UserError(f"{text!r} encodes to no tokens")
        tokens = [int(t) for t in tokens]
        hits = index.positions(tokens)
        count = sum(len(rows) for _, rows, _ in hits)
        n_train = sum(int((rows < s.first_heldout_row()).sum()) for s, rows, _ in hits)
        shown = []
        for s, rows, offsets in hits:
            take = max(0, limit - len(shown))
            shown += [s.describe(int(r), int(o), len(tokens), context, tokenizer) for r, o in zip(rows[:take], offsets[:take])]
        result = {"query": text, "tokens": tokens, "count": count, "train_count": n_train,
                  "heldout_count": count - n_train, "shown": len(shown), "occurrences": shown,
                  "shards": len(index.shards)}
        if text and not text[0].isspace():
            # byte-level BPE tokenizes a word inside a text with its leading space: say how
            # often that spelling occurs, since it is usually the one meant
            spaced = tokenizer.encode(" " + text, add_special_tokens=False).ids
            result["with_leading_space"] = {"tokens": spaced, "count": index.count(spaced)}
        return result


def parse_tokens(text: str) -> list[int]:
    try:
        return [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise UserError(f"--tokens must be comma separated integers, got {text!r}") from None


# --------------------------------------------------------------------------------------------
# command line


def cli_index(args) -> int:
    from rich.console import Console

    shard = parse_shard(args.shard) if getattr(args, "shard", None) else None
    where = index_dir(args.run) if shard is None else shard_dir(args.run, *shard)
    try:  # an index built from exactly these chunks stays: rebuilding would only change its timestamps
        if shard is None:
            RunIndex(args.run).close()
        else:
            ShardIndex(where, _run_data(Path(args.run)), Path(args.run)).close()
        Console(stderr=True).print(f"the search index of {args.run} is up to date ({where})")
        return 0
    except UserError:
        if shard is None and shard_folders(args.run):
            raise  # a shard is missing or stale: that sentence says which
    info = build_index(args.run, shard=shard)
    Console(stderr=True).print(
        f"indexed {info['tokens']:,} tokens in {info['rows']:,} rows "
        f"(chunks {info['chunk_range'][0]}-{info['chunk_range'][1] - 1}, "
        f"{sum(s['rows'] for s in info['segments'] if s['kind'] == 'heldout'):,} held-out rows) "
        f"with {info['backend']} in {info['build_seconds']:.1f} s -> {where}")
    return 0


def cli_search(args) -> int:
    tokens = parse_tokens(args.tokens) if getattr(args, "tokens", None) else None
    result = search(args.run, text=args.text, tokens=tokens, limit=args.limit)
    if getattr(args, "json", False):
        print(json.dumps(result, ensure_ascii=False))
        return 0
    from rich.console import Console
    from rich.markup import escape

    console = Console()
    what = repr(args.text) if tokens is None else f"tokens {','.join(map(str, result['tokens']))}"
    console.print(f"{what}: [bold]{result['count']}[/] occurrence(s), {result['train_count']} in training "
                  f"chunks, {result['heldout_count']} held out ({len(result['tokens'])} tokens)")
    spaced = result.get("with_leading_space")
    if spaced and spaced["count"]:
        console.print(f"(with a leading space, ' {escape(args.text)}' occurs {spaced['count']} times)", highlight=False)
    for occ in result["occurrences"]:
        if occ["heldout"]:
            where = f"held out  {occ['source']} row {occ['row']} offset {occ['offset']}"
        else:
            where = f"step {occ['step']}  chunk {occ['chunk']} row {occ['row']} offset {occ['offset']}  {occ['source']}"
        where += f"  doc {occ['doc_id']}  {occ['uri']}"
        console.print(escape(where), highlight=False)
        console.print("    " + escape(occ["before"]).replace("\n", "⏎") + "[reverse]"
                      + escape(occ["match"]).replace("\n", "⏎") + "[/]" + escape(occ["after"]).replace("\n", "⏎"),
                      highlight=False)
    if result["count"] > result["shown"]:
        console.print(f"... {result['count'] - result['shown']} more (--limit N)")
    return 0
