"""`llm360 prepare`: the run directory's data part (SPEC 1-4), end to end on tiny corpora."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers_data import (
    SHARED_CORPORA,
    base_tree,
    check_rows,
    chunk_hashes,
    cli,
    make_docs,
    write_config,
    write_jsonl,
)

from llm360.config import CONFIG_DIR, load_config
from llm360.data.store import RunData
from llm360.rundir import compute_fingerprint
from llm360.utils import sha256_file


def two_sources(folder: Path) -> list[dict]:
    write_jsonl(folder / "corpus" / "web" / "part-0.jsonl", make_docs(220, seed=1))
    write_jsonl(folder / "corpus" / "web" / "part-1.jsonl", make_docs(160, seed=2))
    books = folder / "corpus" / "books"
    books.mkdir(parents=True)
    for i, doc in enumerate(make_docs(40, seed=3, min_words=150, max_words=400, tag="book")):
        (books / f"book_{i:02d}.txt").write_text(doc, encoding="utf-8")
    return [
        {"name": "web", "kind": "jsonl", "paths": ["corpus/web/*.jsonl"], "license": "CC0"},
        {"name": "books", "kind": "text", "paths": ["corpus/books"], "license": "public domain"},
    ]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    folder = tmp_path_factory.mktemp("prep")
    tree = base_tree(two_sources(folder), stages=[
        {"name": "mixed", "chunks": 3, "mix": {"web": 0.7, "books": 0.3}},
        {"name": "books", "chunks": 2, "mix": {"books": 1.0}, "rewarm_steps": 2},
    ], workers=2)
    cfg = write_config(folder, tree)
    rc = __import__("llm360.cli", fromlist=["main"]).main(["prepare", str(cfg), "--out", str(folder / "run")])
    assert rc == 0
    return folder, cfg, folder / "run"


def test_layout_and_manifest(prepared):
    _, _, run = prepared
    data = run / "data"
    m = json.loads((data / "manifest.json").read_text())
    assert (run / "run.yaml").exists() and load_config(run / "run.yaml").data.seq_len == 32
    assert m["format"] == "llm360-data/1" and m["row_tokens"] == 33 and m["rows_per_chunk"] == 8
    assert m["dtype"] == "uint16" and m["tokenizer"]["trained"] is True
    assert (data / m["tokenizer"]["file"]).exists() and sha256_file(data / m["tokenizer"]["file"]) == m["tokenizer"]["sha256"]
    assert [c["file"] for c in m["chunks"]] == [f"chunks/chunk_{i:03d}.npy" for i in range(5)]
    for c in m["chunks"]:
        arr = np.load(data / c["file"])
        assert arr.shape == (8, 33) and arr.dtype == np.uint16
        assert sha256_file(data / c["file"]) == c["sha256"] and sha256_file(data / c["spans_file"]) == c["spans_sha256"]
        assert sum(c["rows_per_source"].values()) == 8
    assert m["fingerprint"] == compute_fingerprint(m)
    web, books = m["sources"]
    for s in (web, books):
        assert s["rows"] == s["train_rows"] + s["heldout_rows"]
        assert s["tokens"] == s["rows"] * 33 + s["tail_tokens_dropped"]
        assert s["documents_read"] == s["documents_kept"] + sum(s["dropped"].values())
    assert web["documents_kept"] == 380 and books["documents_kept"] == 40
    st0, st1 = m["stages"]
    assert st0["rows_per_source"] == {"web": 17, "books": 7}  # 24 rows by largest remainder
    assert st1["first_chunk"] == 3 and st1["rewarm_steps"] == 2 and st1["rows_per_source"] == {"books": 16}
    docs = pq.read_table(data / "documents.parquet").to_pydict()
    assert docs["doc_id"] == list(range(420)) and m["documents"]["count"] == 420
    assert docs["uri"][0] == "part-0.jsonl:1" and docs["uri"][220] == "part-1.jsonl:1"
    assert docs["uri"][380] == "book_00.txt"  # relative to each source's root
    hidden = [p for p in run.parent.iterdir() if p.name.startswith(".") and not p.name.endswith(".llm360-lock")]
    assert not hidden, "staging folder left behind"


def test_round_trip_spans_to_documents(prepared):
    folder, _, run = prepared
    assert check_rows(run, folder, n=16, heldout=True) > 16


def test_heldout_rows_never_in_chunks(prepared):
    _, _, run = prepared
    data = RunData(run)
    docs = data.documents().to_pydict()
    L = data.row_tokens

    def stream_rows(spans) -> set[tuple[str, int]]:
        t = spans.to_pydict()
        out = set()
        for src, doc, dto, off in zip(t["source"], t["doc_id"], t["doc_token_offset"], t["offset"]):
            pos = docs["stream_offset"][doc] + dto - off  # where the row starts in the source stream
            assert pos % L == 0
            out.add((src, pos // L))
        return out

    held = set().union(*(stream_rows(data.heldout_spans(s)) for s in data.heldout_sources))
    assert len(held) == 4  # 2 per source
    trained = set().union(*(stream_rows(data.spans(c)) for c in range(data.n_chunks)))
    assert held.isdisjoint(trained)


def test_step_rule(prepared):
    _, _, run = prepared
    data = RunData(run)
    assert data.total_steps == 10 and data.rows_in_chunk(0) == 8
    from llm360.data.store import batch_at
    from llm360.errors import UserError

    for step in range(data.total_steps):
        c, first = data.step_location(step)
        assert (c, first) == (step // 2, (step % 2) * 4)
        rows = data.rows_at(step)
        assert rows.dtype == np.int64 and rows.shape == (4, 33)
        assert np.array_equal(rows, data.chunk(c)[first : first + 4])
        for world in (2, 4):
            parts = [data.rows_at(step, r, world) for r in range(world)]
            assert np.array_equal(np.concatenate(parts), rows)
    with pytest.raises(UserError, match="divisible"):
        data.rows_at(0, 0, 3)
    with pytest.raises(UserError, match="outside"):
        data.rows_at(data.total_steps)
    assert data.stage_of_chunk(3).name == "books" and data.stage_of_chunk(2).name == "mixed"
    batch = batch_at(run, 7)
    assert len(batch) == 4 and batch[0]["chunk"] == 3 and batch[0]["row"] == 4
    assert batch[1]["tokens"] == data.rows_at(7)[1].tolist()
    assert all(r["source"] == "books" for r in batch)
    assert all(s["uri"].startswith("book_") for r in batch for s in r["spans"])
    assert batch[2]["text"] == data.tokenizer().decode(batch[2]["tokens"], skip_special_tokens=False)


def test_batch_and_export_commands(prepared, tmp_path, capsys):
    _, _, run = prepared
    rc, out, _ = cli(["data", "batch", run, "--step", 1, "--json"], capsys)
    assert rc == 0
    got = json.loads(out)
    assert [r["row"] for r in got["rows"]] == [4, 5, 6, 7]
    rc, out, _ = cli(["data", "batch", run, "--step", 1], capsys)
    assert rc == 0 and "row 4" in out and ".jsonl:" in out
    rc, _, err = cli(["data", "batch", run, "--step", 99], capsys)
    assert rc == 2 and "outside" in err

    rc, out, _ = cli(["data", "export-llm360", run, tmp_path / "amber"], capsys)
    assert rc == 0
    files = sorted((tmp_path / "amber").iterdir())
    assert [f.name for f in files] == [f"train_{i:03d}.jsonl" for i in range(5)]
    data = RunData(run)
    for c, f in enumerate(files):
        lines = [json.loads(x) for x in f.read_text().splitlines()]
        assert len(lines) == 8 and set(lines[0]) == {"token_ids", "source"}
        assert [x["token_ids"] for x in lines] == data.chunk(c).tolist()
        assert [x["source"] for x in lines] == data.row_sources(c)


def test_verify_chunks_names_the_file(prepared, tmp_path):
    _, _, run = prepared
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    data = RunData(copy)
    assert data.verify_chunks() == []
    arr = np.load(copy / "data" / "chunks" / "chunk_002.npy")
    arr[0, 0] ^= 1
    np.save(copy / "data" / "chunks" / "chunk_002.npy", arr)
    (copy / "data" / "chunks" / "chunk_004.spans.parquet").unlink()
    problems = RunData(copy).verify_chunks()
    assert problems == ["data/chunks/chunk_002.npy: sha256 differs from the manifest", "data/chunks/chunk_004.spans.parquet: missing"]


def test_tokenizer_loads_with_transformers(prepared):
    transformers = pytest.importorskip("transformers")
    _, _, run = prepared
    data = RunData(run)
    hf = transformers.AutoTokenizer.from_pretrained(str(data.tokenizer_dir))
    text = "The river café near Zürich: 東京 🙂 and more."
    assert hf(text)["input_ids"] == data.tokenizer().encode(text, add_special_tokens=False).ids
    assert hf.eos_token == "<|endoftext|>" and hf.eos_token_id == data.eos_id
    assert hf.decode(hf(text)["input_ids"]) == text


def test_idempotent_and_config_change(prepared, capsys):
    _, cfg, run = prepared
    before = sha256_file(run / "data" / "manifest.json")
    rc, out, _ = cli(["prepare", cfg, "--out", run, "--workers", 1], capsys)
    assert rc == 0 and "already prepared" in out
    assert sha256_file(run / "data" / "manifest.json") == before
    rc, _, err = cli(["prepare", cfg, "--out", run, "--data.seq_len=16"], capsys)
    assert rc == 2 and "data.seq_len" in err and "another config" in err


def test_same_bytes_for_workers_and_shards_other_seed_differs(tmp_path, capsys):
    tree = base_tree(two_sources(tmp_path), stages=[  # with FIM and an exact mixture, which add draws
        {"name": "one", "chunks": 2, "mix": {"web": 1.0, "books": 1.0}, "exact_mix": True,
         "fim": {"web": {"rate": 0.9, "spm_ratio": 0.5}}},
        {"name": "two", "chunks": 1, "mix": {"web": 1.0}},
    ])
    cfg = write_config(tmp_path, tree)
    rc, _, _ = cli(["prepare", cfg, "--out", tmp_path / "w1", "--workers", 1], capsys)
    assert rc == 0
    rc, _, _ = cli(["prepare", cfg, "--out", tmp_path / "w2", "--workers", 2], capsys)
    assert rc == 0
    for i in (1, 0):  # any order
        rc, out, _ = cli(["prepare", cfg, "--out", tmp_path / "sh", "--shard", f"{i}/2", "--workers", 2], capsys)
        assert rc == 0 and f"shard {i}/2" in out
    assert not (tmp_path / "sh" / "data").exists()
    rc, _, err = cli(["prepare", cfg, "--out", tmp_path / "sh3", "--shard", "0/3"], capsys)
    rc, _, err = cli(["prepare", cfg, "--out", tmp_path / "sh3"], capsys)
    assert rc == 2 and "1/3, 2/3" in err and "not done" in err
    rc, _, _ = cli(["prepare", cfg, "--out", tmp_path / "sh"], capsys)
    assert rc == 0 and not (tmp_path / "sh" / ".prepare").exists()

    base = chunk_hashes(tmp_path / "w1")
    first = json.loads((tmp_path / "w1" / "data" / "manifest.json").read_text())["chunks"][0]
    assert sum(first["fim"]["web"].values()) > 0
    assert chunk_hashes(tmp_path / "w2") == base
    assert chunk_hashes(tmp_path / "sh") == base
    for name in ("manifest.json", "documents.parquet", "tokenizer/tokenizer.json"):
        assert sha256_file(tmp_path / "w2" / "data" / name) == sha256_file(tmp_path / "w1" / "data" / name)
        assert sha256_file(tmp_path / "sh" / "data" / name) == sha256_file(tmp_path / "w1" / "data" / name)

    rc, _, _ = cli(["prepare", write_config(tmp_path, {**tree, "seed": 8}, "seed8.yaml"), "--out", tmp_path / "s8"], capsys)
    assert rc == 0
    other = chunk_hashes(tmp_path / "s8")
    assert all(a != b for a, b in zip(other, base))


def test_epochs_when_a_source_runs_out(tmp_path, capsys):
    from collections import Counter

    write_jsonl(tmp_path / "big.jsonl", make_docs(300, seed=4))
    write_jsonl(tmp_path / "small.jsonl", make_docs(3, seed=5, min_words=20, max_words=30))
    tree = base_tree(
        [{"name": "big", "kind": "jsonl", "paths": ["big.jsonl"]}, {"name": "small", "kind": "jsonl", "paths": ["small.jsonl"]}],
        stages=[{"name": "a", "chunks": 3, "mix": {"big": 0.5, "small": 0.5}}, {"name": "b", "chunks": 2, "mix": {"big": 1, "small": 1}}],
        heldout_rows=1,
    )
    rc, _, err = cli(["prepare", write_config(tmp_path, tree), "--out", tmp_path / "run"], capsys)
    assert rc == 0, err
    m = json.loads((tmp_path / "run" / "data" / "manifest.json").read_text())
    n = next(s for s in m["sources"] if s["name"] == "small")["train_rows"]
    assert 1 <= n < 12
    a, b = m["stages"]
    assert a["rows_per_source"] == {"big": 12, "small": 12} and b["rows_per_source"] == {"big": 8, "small": 8}
    assert a["epochs"]["small"] == pytest.approx(12 / n, abs=1e-6)
    last = 12 // n - (1 if 12 % n == 0 else 0)
    assert a["permutations"]["small"] == [0, last]
    assert b["permutations"]["small"][0] == 12 // n  # stage b goes on where stage a stopped
    data = RunData(tmp_path / "run")
    rows = Counter(tuple(r) for c in range(3) for r, s in zip(data.chunk(c).tolist(), data.row_sources(c)) if s == "small")
    assert len(rows) == n and set(rows.values()) <= {12 // n, 12 // n + 1}


def test_default_stage_and_too_few_rows(tmp_path, capsys):
    write_jsonl(tmp_path / "a.jsonl", make_docs(200, seed=6))
    tree = base_tree([{"name": "a", "kind": "jsonl", "paths": ["a.jsonl"]}], stages=[])
    rc, _, _ = cli(["prepare", write_config(tmp_path, tree), "--out", tmp_path / "run"], capsys)
    assert rc == 0
    m = json.loads((tmp_path / "run" / "data" / "manifest.json").read_text())
    (stage,) = m["stages"]
    assert stage["name"] == "all" and stage["chunks"] == m["sources"][0]["train_rows"] // 8
    rc, _, err = cli(["prepare", write_config(tmp_path, tree), "--out", tmp_path / "run2", "--data.heldout_rows=100000"], capsys)
    assert rc == 2 and "source 'a' has" in err and "100000 held-out rows" in err
    assert not (tmp_path / "run2").exists()


@pytest.mark.skipif(not (SHARED_CORPORA / "wikitext-2").exists(), reason="../shared/corpora not present")
def test_wikitext(tmp_path, capsys):
    files = sorted((SHARED_CORPORA / "wikitext-2").glob("*.txt"))
    tree = base_tree(
        [{"name": "wikitext", "kind": "text", "paths": [str(f) for f in files], "license": "CC BY-SA 3.0"}],
        stages=[{"name": "wiki", "chunks": 4, "mix": {"wikitext": 1.0}}],
        seq_len=64, filters={"max_chars": 2_000_000}, tokenizer={"vocab_size": 512, "sample_chars": 300_000},
        workers=2,
    )
    rc, _, err = cli(["prepare", write_config(tmp_path, tree), "--out", tmp_path / "run"], capsys)
    assert rc == 0, err
    m = json.loads((tmp_path / "run" / "data" / "manifest.json").read_text())
    assert m["sources"][0]["documents_kept"] == len(files)
    assert m["sources"][0]["tokens"] > 400_000
    assert check_rows(tmp_path / "run", tmp_path, n=6) >= 6
    assert (SHARED_CORPORA / "wikitext-2").exists() and not any((tmp_path / "run").rglob("*.txt"))


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_validate(path):
    cfg = load_config(path)
    assert cfg.data.seq_len >= 8
    names = {s.name for s in cfg.data.sources}
    for stage in cfg.data.stages:
        assert set(stage.mix) <= names


def test_largest_remainder_shares():
    from llm360.data.assemble import largest_remainder

    assert largest_remainder(10, [1, 1, 1]) == [4, 3, 3]  # ties go to the earlier source
    assert largest_remainder(24, [0.7, 0.3]) == [17, 7]
    assert largest_remainder(256 * 3, [0.4, 0.6]) == [307, 461]
    assert largest_remainder(5, [0, 2.5]) == [0, 5]
