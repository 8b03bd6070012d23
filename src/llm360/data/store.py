"""Reading a prepared run's data: what the trainer, evaluation, analysis and release use.

    data = RunData("runs/demo")
    rows = data.rows_at(step, rank, world)      # (B/W, seq_len + 1) int64, the step rule (run-directory.md §4)
    x, y = rows[:, :-1], rows[:, 1:]
    batch_at(data, step)                        # the same rows with their documents and text

Everything is read from RUN/data/manifest.json and the files it lists; nothing here writes.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import numpy as np

from llm360.data.sources import read_by_uri
from llm360.errors import UserError
from llm360.rundir import ChunkInfo, HeldoutInfo, Manifest, RunDir, StageInfo, read_manifest
from llm360.utils import sha256_file

class RunData:
    """The prepared data of a run directory (RUN/data), by the manifest."""

    def __init__(self, run_dir: str | Path):
        self.run = RunDir(run_dir)
        self.run_dir = self.run.root
        self.data_dir = self.run.data_dir
        self.manifest: Manifest = read_manifest(self.run)
        m = self.manifest
        self.seq_len: int = m.seq_len
        self.row_tokens: int = m.row_tokens
        self.global_batch_rows: int = m.global_batch_rows
        self.rule = m.step_rule  # chunk and rows of each step; stages may have their own chunk lengths
        self.steps_per_chunk: int = m.steps_per_chunk  # the run's; see `rule` for a stage's own
        self.n_chunks: int = m.n_chunks
        self.total_steps: int = m.total_steps
        self.fingerprint: str = m.fingerprint
        self.eos_id: int = m.tokenizer.eos_id
        self.vocab_size: int = m.tokenizer.vocab_size
        self.dtype = np.dtype(m.dtype)
        self.tokenizer_dir: Path = self.run.tokenizer_dir
        self.source_names: list[str] = m.source_names
        self._chunks: dict[int, np.ndarray] = {}
        self._spans: dict[int, object] = {}
        self._tokenizer = None

    def __repr__(self) -> str:
        return (f"RunData({str(self.run_dir)!r}: {self.n_chunks} chunks of {self.row_tokens}-token rows, "
                f"{self.total_steps} steps, fingerprint {self.fingerprint[:12]})")

    def rows_in_chunk(self, c: int) -> int:
        return self.manifest.rows_of_chunk(c)

    # -- tokenizer

    def tokenizer(self):
        """The run's tokenizer (tokenizers.Tokenizer)."""
        if self._tokenizer is None:
            from tokenizers import Tokenizer

            self._tokenizer = Tokenizer.from_file(str(self.tokenizer_dir / "tokenizer.json"))
        return self._tokenizer

    def decode(self, ids) -> str:
        return self.tokenizer().decode([int(i) for i in ids], skip_special_tokens=False)

    # -- chunks and the step rule

    def _check_chunk(self, c: int) -> ChunkInfo:
        if not 0 <= c < self.n_chunks:
            raise UserError(f"chunk {c} does not exist: {self.run_dir} has chunks 0..{self.n_chunks - 1}")
        return self.manifest.chunks[c]

    def chunk(self, c: int) -> np.ndarray:
        """Chunk c as a read-only memmap, shape (rows of the chunk, seq_len + 1), in training order."""
        arr = self._chunks.get(c)
        if arr is None:
            entry = self._check_chunk(c)
            path = self.data_dir / entry.file
            if not path.exists():
                raise UserError(f"{path} is missing (listed in the manifest as chunk {c})")
            arr = self._chunks[c] = np.load(path, mmap_mode="r")
        return arr

    def step_location(self, step: int) -> tuple[int, int]:
        """(chunk, first row) of global step `step`: its chunk c, and row j * B at the chunk's j-th step."""
        if not 0 <= step < self.total_steps:
            raise UserError(f"step {step} is outside the run: steps are 0..{self.total_steps - 1}")
        c, j = self.rule.locate(int(step))
        return c, j * self.global_batch_rows

    def rows_at(self, step: int, rank: int = 0, world: int = 1) -> np.ndarray:
        """The rows rank `rank` of `world` trains on at global step `step` (run-directory.md §4), int64.

        Rank r gets rows [j*B + r*B/W, j*B + (r+1)*B/W) of the step's chunk, so the
        ranks' slices, concatenated in rank order, are the global batch.
        """
        B = self.global_batch_rows
        if world < 1 or B % world:
            raise UserError(f"global_batch_rows {B} is not divisible by the world size {world}")
        if not 0 <= rank < world:
            raise UserError(f"rank {rank} is outside world size {world}")
        c, first = self.step_location(step)
        per = B // world
        start = first + rank * per
        return np.asarray(self.chunk(c)[start : start + per], dtype=np.int64)

    def stage_of_chunk(self, c: int) -> StageInfo:
        self._check_chunk(c)
        stage = self.manifest.stage_of_chunk(c)
        if stage is None:
            raise UserError(f"chunk {c} belongs to no stage in the manifest")
        return stage

    # -- held-out rows

    @property
    def heldout_sources(self) -> list[str]:
        return [h.source for h in self.manifest.heldout if h.rows > 0]

    def _heldout_entry(self, source: str) -> HeldoutInfo:
        for h in self.manifest.heldout:
            if h.source == source:
                return h
        raise UserError(f"no held-out rows for source {source!r}; sources: {', '.join(self.source_names)}")

    def heldout(self, source: str) -> np.ndarray:
        """Held-out rows of `source`, shape (heldout_rows, seq_len + 1); never in any chunk."""
        entry = self._heldout_entry(source)
        path = self.data_dir / entry.file
        return np.load(path, mmap_mode="r") if entry.rows else np.load(path)

    def heldout_spans(self, source: str):
        import pyarrow.parquet as pq

        return pq.read_table(self.data_dir / self._heldout_entry(source).spans_file)

    # -- provenance

    def spans(self, c: int):
        """Provenance of chunk c (pyarrow.Table): row, offset, length, doc_id, doc_token_offset, source."""
        table = self._spans.get(c)
        if table is None:
            import pyarrow.parquet as pq

            entry = self._check_chunk(c)
            table = pq.read_table(self.data_dir / entry.spans_file)
            if len(self._spans) >= 4:
                self._spans.pop(next(iter(self._spans)))
            self._spans[c] = table
        return table

    def row_sources(self, c: int) -> list[str]:
        """The source of every row of chunk c (a row never mixes sources)."""
        spans = self.spans(c)
        rows = spans.column("row").to_numpy()
        _, first = np.unique(rows, return_index=True)
        return spans.column("source").take(first).to_pylist()

    @cached_property
    def _documents(self):
        import pyarrow.parquet as pq

        return pq.read_table(self.data_dir / self.manifest.documents.file)

    def documents(self):
        """documents.parquet (pyarrow.Table): doc_id, source, uri, sha256, n_tokens, n_chars, stream_offset."""
        return self._documents

    def document(self, doc_id: int) -> dict:
        docs = self._documents
        if not 0 <= doc_id < docs.num_rows:
            raise UserError(f"doc_id {doc_id} does not exist (0..{docs.num_rows - 1})")
        return {k: v[0] for k, v in docs.slice(doc_id, 1).to_pydict().items()}

    def document_text(self, doc_id: int, base_dir: str | Path | None = None) -> str:
        """Read document `doc_id` again from its source by its uri (cleaned as prepare did).

        The manifest records source roots relative to the folder of the config that prepared the
        run (never a path of that machine): give that folder as `base_dir` for file sources.
        """

        doc = self.document(doc_id)
        source = next(s for s in self.manifest.sources if s.name == doc["source"])
        return read_by_uri(source.as_config(), doc["uri"], base_dir)

    # -- checks

    def verify_chunks(self, chunks=None) -> list[str]:
        """Problems with the chunk files (and their spans) against the manifest; [] when all match."""
        problems = []
        indices = range(self.n_chunks) if chunks is None else chunks
        for c in indices:
            entry = self._check_chunk(int(c))
            for file, digest in ((entry.file, entry.sha256), (entry.spans_file, entry.spans_sha256)):
                path = self.data_dir / file
                if not path.exists():
                    problems.append(f"data/{file}: missing")
                elif sha256_file(path) != digest:
                    problems.append(f"data/{file}: sha256 differs from the manifest")
            path = self.data_dir / entry.file
            if path.exists() and not any(p.startswith(f"data/{entry.file}") for p in problems):
                shape = np.load(path, mmap_mode="r").shape
                expected = (self.rows_in_chunk(int(c)), self.row_tokens)
                if shape != expected:
                    problems.append(f"data/{entry.file}: shape {shape}, expected {expected}")
        return problems


def batch_at(run: str | Path | RunData, step: int) -> list[dict]:
    """The rows of global step `step`, with provenance: one dict per row, in batch order.

    Keys: step, chunk, row (index in the chunk), source, tokens (list of ints), spans (list of
    {doc_id, uri, source, offset, length, doc_token_offset}, and fim, fim_prefix, fim_middle,
    fim_suffix in a run with FIM: see data/fim.py) and text (decoded, EOS shown).
    """
    data = run if isinstance(run, RunData) else RunData(run)
    c, first = data.step_location(step)
    rows = data.rows_at(step)
    spans = data.spans(c)
    row_col = spans.column("row").to_numpy()
    lo, hi = np.searchsorted(row_col, [first, first + data.global_batch_rows])
    part = spans.slice(int(lo), int(hi - lo)).to_pydict()
    doc_ids = sorted(set(part["doc_id"]))
    docs = data.documents()
    uris = dict(zip(doc_ids, docs.column("uri").take(doc_ids).to_pylist())) if doc_ids else {}
    out = []
    by_row: dict[int, list[dict]] = {}
    fim_keys = [k for k in ("fim", "fim_prefix", "fim_middle", "fim_suffix") if k in part]
    for i in range(len(part["row"])):
        by_row.setdefault(part["row"][i], []).append({
            "doc_id": part["doc_id"][i], "uri": uris[part["doc_id"][i]], "source": part["source"][i],
            "offset": part["offset"][i], "length": part["length"][i], "doc_token_offset": part["doc_token_offset"][i],
            **{k: part[k][i] for k in fim_keys},
        })
    for k, tokens in enumerate(rows):
        r = first + k
        row_spans = by_row.get(r, [])
        out.append({
            "step": int(step), "chunk": c, "row": r,
            "source": row_spans[0]["source"] if row_spans else None,
            "tokens": tokens.tolist(), "spans": row_spans, "text": data.decode(tokens),
        })
    return out


def token_bytes(tokenizer, ids) -> bytes:
    """The exact bytes of token ids (byte-level BPE), so slices that cut a character still compare.

    Falls back to decoding for tokenizers that are not byte-level.
    """
    table = _byte_decoder()
    out = bytearray()
    for i in ids:
        piece = tokenizer.id_to_token(int(i))
        if piece is None:
            continue
        try:
            out += bytes(table[ch] for ch in piece)
        except KeyError:
            out += tokenizer.decode([int(i)], skip_special_tokens=False).encode("utf-8")
    return bytes(out)


def _byte_decoder() -> dict[str, int]:
    # GPT-2's byte <-> printable character map, as the ByteLevel pre-tokenizer uses
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = keep[:]
    n = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(keep, chars)}
