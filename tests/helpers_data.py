"""Small corpora and configs for the data tests, built in tmp_path (nothing big, nothing shipped)."""

from __future__ import annotations

import gzip
import hashlib
import json
import random
from pathlib import Path

import numpy as np
import yaml

from llm360.cli import main
from llm360.data.store import RunData, token_bytes

SHARED_CORPORA = Path(__file__).resolve().parents[2] / "shared" / "corpora"

WORDS = (
    "the of and to in is was for on that with as by at from his her they which this be an are had "
    "river mountain city history music science garden library engine language number window market "
    "winter summer station village harbor forest island bridge castle valley theory pattern signal "
    "café naïve Zürich façade jalapeño Ångström 東京 мир λόγος 🙂 data model token row chunk stage "
    "quickly slowly north south early later before after between under over around through"
).split()


def make_docs(n: int, seed: int = 0, min_words: int = 15, max_words: int = 90, tag: str = "doc") -> list[str]:
    """n distinct pseudo-English documents (a few non-ASCII words, so byte-level BPE is exercised)."""
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(min_words, max_words))]
        lines, line = [], []
        for w in words:
            line.append(w)
            if rng.random() < 0.08:
                lines.append(" ".join(line) + ".")
                line = []
        lines.append(" ".join(line) + ".")
        docs.append(f"{tag} {seed}-{i}: " + "\n".join(lines))
    return docs


def write_jsonl(path: Path, docs: list[str], field: str = "text", compress: str | None = None) -> Path:
    body = "".join(json.dumps({field: d, "id": i}, ensure_ascii=False) + "\n" for i, d in enumerate(docs)).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress == "gz":
        with gzip.open(path, "wb") as f:
            f.write(body)
    elif compress == "zst":
        import zstandard

        path.write_bytes(zstandard.ZstdCompressor().compress(body))
    else:
        path.write_bytes(body)
    return path


def base_tree(sources: list[dict], stages: list[dict] | None = None, **data) -> dict:
    tree = {
        "name": "t",
        "seed": 7,
        "data": {
            "seq_len": 32,
            "workers": 1,
            "heldout_rows": 2,
            "tokenizer": {"vocab_size": 320, "sample_chars": 200_000},
            "sources": sources,
            "filters": {"min_chars": 10, "max_chars": 5000},
            "stages": stages if stages is not None else [
                {"name": "one", "chunks": 2, "mix": {s["name"]: 1.0 for s in sources}},
                {"name": "two", "chunks": 1, "mix": {sources[0]["name"]: 1.0}},
            ],
        },
        "train": {"global_batch_rows": 4, "micro_batch_rows": 4, "steps_per_chunk": 2},
    }
    for key, value in data.items():
        if isinstance(value, dict) and isinstance(tree["data"].get(key), dict):
            tree["data"][key].update(value)
        else:
            tree["data"][key] = value
    return tree


def write_config(folder: Path, tree: dict, name: str = "cfg.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(tree, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def cli(argv: list[str], capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def chunk_hashes(run: Path) -> list[str]:
    return [c["sha256"] for c in json.loads((run / "data" / "manifest.json").read_text())["chunks"]]


def fim_reference(content: list[int], prefix: int, middle: int, mode: str, ids: dict[str, int]) -> list[int]:
    """FIM written out plainly, apart from llm360.data.fim: StarCoder's PSM and SPM (bigcode
    Megatron-LM), the suffix giving up its last 3 tokens for the 3 markers."""
    P, M, S = content[:prefix], content[prefix : prefix + middle], content[prefix + middle :]
    S = S[: len(S) - 3]
    pre, mid, suf = ids["<fim_prefix>"], ids["<fim_middle>"], ids["<fim_suffix>"]
    if mode == "psm":
        return [pre] + P + [suf] + S + [mid] + M
    assert mode == "spm"
    return [pre, suf] + S + [mid] + P + M


def check_rows(run: Path, base: Path, n: int = 12, seed: int = 0, heldout: bool = False) -> int:
    """Round trip of random rows: every span's tokens are exactly that slice of its document,
    re-read from the source by uri (roots relative to `base`, the config's folder) and
    re-tokenized; returns the number of spans checked."""
    data = RunData(run)
    tok = data.tokenizer()
    docs = data.documents().to_pydict()
    rng = np.random.default_rng(seed)
    encoded: dict[int, list[int]] = {}
    fim_ids = json.loads((Path(run) / "data" / "manifest.json").read_text())["tokenizer"].get("fim_tokens")
    checked = 0
    picks = []
    if heldout:
        for src in data.heldout_sources:
            for r in range(len(data.heldout(src))):
                picks.append((data.heldout(src)[r], data.heldout_spans(src), r))
    for _ in range(n):
        c = int(rng.integers(data.n_chunks))
        r = int(rng.integers(data.rows_in_chunk(c)))
        picks.append((data.chunk(c)[r], data.spans(c), r))
    for row, spans, r in picks:
        table = spans.to_pydict()
        mine = [i for i, x in enumerate(table["row"]) if x == r]
        assert mine, f"row {r} has no spans"
        assert sum(table["length"][i] for i in mine) == data.row_tokens
        assert len({table["source"][i] for i in mine}) == 1, "a row mixes sources"
        expect_offset = 0
        for i in mine:
            doc_id = table["doc_id"][i]
            off, length, dto = table["offset"][i], table["length"][i], table["doc_token_offset"][i]
            assert off == expect_offset
            expect_offset += length
            assert docs["source"][doc_id] == table["source"][i]
            if doc_id not in encoded:
                text = data.document_text(doc_id, base)  # found again from its uri
                assert hashlib.sha256(text.encode()).hexdigest() == docs["sha256"][doc_id]
                ids = tok.encode_batch_fast([text], add_special_tokens=False)[0].ids + [data.eos_id]
                assert len(ids) == docs["n_tokens"][doc_id]
                encoded[doc_id] = ids
                doc_bytes = text.encode()
            else:
                doc_bytes = data.document_text(doc_id, base).encode()
            piece = [int(x) for x in row[off : off + length]]
            original = encoded[doc_id][dto : dto + length]
            ends_doc = dto + length == docs["n_tokens"][doc_id]
            if table.get("fim", [""] * len(table["row"]))[i]:
                content = original[:-1] if ends_doc else original
                split = (table["fim_prefix"][i], table["fim_middle"][i], table["fim_suffix"][i])
                assert sum(split) == len(content) - 3
                expect = fim_reference(content, *split[:2], table["fim"][i], fim_ids)
                assert piece == expect + ([data.eos_id] if ends_doc else [])
            else:
                assert piece == original
            text_ids = original[:-1] if ends_doc else original
            assert token_bytes(tok, text_ids) in doc_bytes
            checked += 1
    return checked
