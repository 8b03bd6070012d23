"""The suffix-array index on its own: counts and positions against a brute-force scan."""

from __future__ import annotations

import numpy as np
import pytest

from helpers_analysis import brute_force
from llm360.analysis import search
from llm360.analysis.search import TokenIndex, build_token_index
from llm360.errors import UserError

BACKENDS = search.available_backends()
needs_backend = pytest.mark.skipif(not BACKENDS, reason=f"no index backend: {search.EXTRA_HINT}")


def blocks(rng, vocab=50, width=33):
    chunk0 = rng.integers(0, vocab, size=(120, width))
    chunk1 = rng.integers(0, vocab, size=(80, width))
    held = rng.integers(0, vocab, size=(6, width))
    chunk0[5, 3:8] = [1, 2, 3, 4, 5]
    chunk0[-1, -2:] = [1, 2]  # "1 2 | 3 4 5" across a row boundary must not match
    chunk1[0, :3] = [3, 4, 5]
    held[1, :5] = [1, 2, 3, 4, 5]
    return [({"kind": "chunk", "chunk": 0}, chunk0), ({"kind": "chunk", "chunk": 1}, chunk1),
            ({"kind": "heldout", "source": "prose"}, held)]


@needs_backend
@pytest.mark.parametrize("backend", BACKENDS)
def test_positions_equal_brute_force(tmp_path, backend):
    rng = np.random.default_rng(0)
    parts = blocks(rng)
    info = build_token_index(tmp_path / "idx", parts, 50, backend=backend)
    rows = np.concatenate([b for _, b in parts])
    assert info["rows"] == len(rows) and info["tokens"] == rows.size and info["backend"] == backend
    with TokenIndex(tmp_path / "idx") as index:
        assert index.count([1, 2, 3, 4, 5]) == 2
        assert index.count_split([1, 2, 3, 4, 5]) == (1, 1)
        for length in range(1, 11):
            for _ in range(15):
                r, o = rng.integers(len(rows)), rng.integers(rows.shape[1] - length + 1)
                query = rows[r, o:o + length]
                expected = brute_force(rows, query)
                got_rows, got_offsets = index.positions(query.tolist())
                assert list(zip(got_rows.tolist(), got_offsets.tolist())) == expected
                assert index.count(query.tolist()) == len(expected)
        assert index.count([49, 48, 47, 46, 45, 44, 43]) == len(brute_force(rows, [49, 48, 47, 46, 45, 44, 43]))
        assert index.segment_of(121) == (info["segments"][1], 1)
        assert index.row_tokens_at(5).tolist() == rows[5].tolist()


@pytest.mark.skipif(len(BACKENDS) < 2, reason="needs infini-gram and pydivsufsort")
def test_backends_write_the_same_table(tmp_path):
    parts = blocks(np.random.default_rng(1))
    for backend in BACKENDS:
        build_token_index(tmp_path / backend, parts, 50, backend=backend)
    tables = [(tmp_path / b / "table.0").read_bytes() for b in BACKENDS]
    assert tables[0] == tables[1]


def test_infinigram_engine_reads_our_index(tmp_path):
    pytest.importorskip("infini_gram")
    from infini_gram.engine import InfiniGramEngine

    parts = blocks(np.random.default_rng(2))
    build_token_index(tmp_path / "idx", parts, 50)
    engine = InfiniGramEngine(index_dir=str(tmp_path / "idx"), eos_token_id=0, vocab_size=65535, token_dtype="u16")
    with TokenIndex(tmp_path / "idx") as index:
        for query in ([1, 2, 3, 4, 5], [7], [3, 4], [1, 2, 3]):
            assert engine.count(query)["count"] == index.count(query)


@needs_backend
def test_large_vocabulary_uses_32_bit_tokens(tmp_path):
    rng = np.random.default_rng(3)
    rows = rng.integers(0, 100_000, size=(40, 17))
    rows[3, 4:7] = [70_000, 70_001, 5]
    info = build_token_index(tmp_path / "idx", [({"kind": "chunk", "chunk": 0}, rows)], 100_000)
    assert info["token_dtype"] == "u32"
    with TokenIndex(tmp_path / "idx") as index:
        assert index.count([70_000, 70_001, 5]) == len(brute_force(rows, [70_000, 70_001, 5])) >= 1


@needs_backend
def test_bad_queries_and_tokens(tmp_path):
    build_token_index(tmp_path / "idx", [({"kind": "chunk", "chunk": 0}, np.ones((3, 9), np.int64))], 50)
    with TokenIndex(tmp_path / "idx") as index:
        with pytest.raises(UserError, match="no tokens"):
            index.count([])
        with pytest.raises(UserError, match="token ids"):
            index.count([65535])
        assert index.count([1] * 9) == 3 and index.count([1] * 10) == 0
    with pytest.raises(UserError, match="outside"):
        build_token_index(tmp_path / "bad", [({"kind": "chunk", "chunk": 0}, np.full((2, 4), 65535))], 50)
    assert not (tmp_path / "bad").exists() and not list(tmp_path.glob(".bad.tmp*"))


def test_missing_backend_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setattr(search, "available_backends", lambda: [])
    with pytest.raises(UserError, match=r"llm360\[search\]"):
        build_token_index(tmp_path / "idx", [({"kind": "chunk", "chunk": 0}, np.ones((2, 4)))], 50)
    with pytest.raises(UserError, match="no search index"):
        TokenIndex(tmp_path / "idx")


@pytest.mark.skipif(len(BACKENDS) < 2, reason="needs infini-gram and pydivsufsort")
def test_backend_choice(monkeypatch):
    pick = search._pick_backend
    monkeypatch.setattr(search, "_default_memory", lambda: 1 << 30)
    assert pick(None, 2, 100 << 20) == "pydivsufsort"  # 500 MiB to sort in memory: fits
    assert pick(None, 2, 300 << 20) == "infini-gram"  # 1.5 GiB does not: sort in parts
    assert pick(None, 4, 300 << 20) == "pydivsufsort"  # infini-gram cannot do 32-bit tokens
    assert pick("infini-gram", 2, 1) == "infini-gram"
    monkeypatch.setenv("LLM360_INDEX_BACKEND", "infini-gram")
    assert pick(None, 2, 1) == "infini-gram"
    with pytest.raises(UserError, match="unknown index backend"):
        pick("sais", 2, 1)
    monkeypatch.setattr(search, "available_backends", lambda: ["infini-gram"])
    monkeypatch.delenv("LLM360_INDEX_BACKEND")
    with pytest.raises(UserError, match="32-bit tokens"):
        pick(None, 4, 1)
