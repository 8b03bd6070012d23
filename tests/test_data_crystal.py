"""Amber and Crystal as published, data side: FIM per stage and source, ftfy cleaning, exact
per-chunk mixtures."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers_data import base_tree, check_rows, cli, fim_reference, make_docs, write_config, write_jsonl

from llm360.data.assemble import per_chunk_counts
from llm360.data.fim import FIM_TOKENS, draw, rearrange
from llm360.data.store import RunData

IDS = {"<fim_prefix>": 901, "<fim_middle>": 902, "<fim_suffix>": 903}


def code_and_books(folder: Path) -> list[dict]:
    write_jsonl(folder / "code.jsonl", make_docs(260, seed=11, tag="def"))
    write_jsonl(folder / "books.jsonl", make_docs(120, seed=12, min_words=100, max_words=200, tag="book"))
    return [{"name": "code", "kind": "jsonl", "paths": ["code.jsonl"]},
            {"name": "books", "kind": "jsonl", "paths": ["books.jsonl"]}]


def manifest(run: Path) -> dict:
    return json.loads((run / "data" / "manifest.json").read_text())


def test_rearrange_by_hand_and_against_the_reference():
    c = np.arange(10, 20, dtype=np.uint16)  # P = 10 11, M = 12 13 14, S = 15..19 less its last 3
    assert rearrange(c, 2, 3, False, IDS).tolist() == [901, 10, 11, 903, 15, 16, 902, 12, 13, 14]
    assert rearrange(c, 2, 3, True, IDS).tolist() == [901, 903, 15, 16, 902, 10, 11, 12, 13, 14]
    rng = np.random.default_rng(0)
    for n in (4, 9, 40, 133):
        content = rng.integers(0, 900, n).astype(np.uint16)
        for _ in range(20):
            i, j = sorted(rng.integers(0, n - 3, 2).tolist())
            for mode in ("psm", "spm"):
                got = rearrange(content, i, j - i, mode == "spm", IDS)
                assert got.tolist() == fim_reference(content.tolist(), i, j - i, mode, IDS)
                assert len(got) == n and got.dtype == content.dtype


def test_draws_follow_rate_and_spm_ratio():
    n = 20_000
    content = np.full(n, 50)
    mode, prefix, middle = draw(np.random.default_rng(1), content, np.full(n, 0.3), np.full(n, 0.5))
    applied = mode > 0
    # a piece stays as it is when the later cut leaves a suffix of 3 tokens or fewer (cut >= 47 of 0..50)
    assert abs(applied.mean() - 0.3 * (47 / 51) ** 2) < 0.015
    assert abs((mode[applied] == 2).mean() - 0.5) < 0.03
    assert (50 - prefix - middle > 3)[applied].all() and (prefix[~applied] == 0).all()
    none, _, _ = draw(np.random.default_rng(1), content, np.zeros(n), np.full(n, 0.5))
    assert not none.any()


def test_per_chunk_counts_spread_every_source_evenly():
    for totals, chunks in (([17, 7], 3), ([18, 6], 3), ([100, 1, 43, 0], 8), ([360 * 5 + 7, 360 * 2 - 7], 360)):
        counts = per_chunk_counts(totals, chunks)
        assert counts.sum(axis=0).tolist() == totals
        assert len(set(counts.sum(axis=1).tolist())) == 1  # every chunk the same number of rows
        for j, t in enumerate(totals):
            assert set(counts[:, j].tolist()) <= {t // chunks, -(-t // chunks)}


@pytest.fixture(scope="module")
def fim_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fim")
    tree = base_tree(code_and_books(folder), stages=[
        {"name": "two", "chunks": 2, "mix": {"code": 0.5, "books": 0.5}, "fim": {"code": {"rate": 0.9, "spm_ratio": 0.5}}},
        {"name": "three", "chunks": 1, "mix": {"code": 1.0}, "fim": {"code": {"rate": 0.3}}},
        {"name": "plain", "chunks": 1, "mix": {"code": 1.0}},
    ])
    cfg = write_config(folder, tree)
    rc = __import__("llm360.cli", fromlist=["main"]).main(["prepare", str(cfg), "--out", str(folder / "run")])
    assert rc == 0
    return folder, folder / "run"


def test_fim_rows_are_exact_and_recorded(fim_run):
    folder, run = fim_run
    m = manifest(run)
    assert m["tokenizer"]["fim_tokens"] == {t: i + 1 for i, t in enumerate(FIM_TOKENS)}  # trained: ids 1-3
    assert m["tokenizer"]["vocab_size"] == 320
    assert m["stages"][0]["fim"] == {"code": {"rate": 0.9, "spm_ratio": 0.5}}
    assert "fim" not in m["stages"][2]
    assert check_rows(run, folder, n=60) > 0  # every span: FIM undone by the reference, or untouched
    seen = {"psm": 0, "spm": 0}
    for c, entry in enumerate(m["chunks"]):
        spans = pq.read_table(run / "data" / entry["spans_file"]).to_pydict()
        for source in ("code", "books"):
            modes = [f for f, s in zip(spans["fim"], spans["source"]) if s == source and f]
            if source == "books" or entry["stage"] == 2:
                assert not modes  # a source or stage without FIM is never rearranged
            else:
                assert entry["fim"][source] == {k: modes.count(k) for k in ("psm", "spm")}
                seen["psm"] += modes.count("psm")
                seen["spm"] += modes.count("spm")
    assert seen["psm"] > 0 and seen["spm"] > 0


def test_data_batch_shows_fim(fim_run, capsys):
    _, run = fim_run
    outs = [cli(["data", "batch", run, "--step", step], capsys)[1] for step in range(4)]
    assert any("FIM PSM: prefix" in o for o in outs) and any("FIM SPM: prefix" in o for o in outs)


def test_fim_with_a_brought_tokenizer(tmp_path, capsys):
    from llm360.data.tokenizer import train_bpe

    brought = tmp_path / "tok" / "tokenizer.json"
    brought.parent.mkdir()
    train_bpe(make_docs(100, seed=15), 300).save(str(brought))  # no FIM tokens in it
    tree = base_tree(code_and_books(tmp_path), stages=[
        {"name": "two", "chunks": 1, "mix": {"code": 1.0}, "fim": {"code": {"rate": 1.0}}}],
        tokenizer={"path": str(brought)})
    rc, _, err = cli(["prepare", write_config(tmp_path, tree), "--out", tmp_path / "run"], capsys)
    assert rc == 0, err
    tok = manifest(tmp_path / "run")["tokenizer"]
    assert tok["fim_tokens"] == {"<fim_prefix>": 300, "<fim_middle>": 301, "<fim_suffix>": 302}  # after the vocabulary
    assert tok["vocab_size"] == 303
    assert check_rows(tmp_path / "run", tmp_path, n=20) > 0


@pytest.mark.parametrize("fim, says", [
    ({"code": {"rate": 1.5}}, "data.stages.0.fim.code.rate"),
    ({"code": {"rate": 0.5, "spm_ratio": -0.1}}, "data.stages.0.fim.code.spm_ratio"),
    ({"books": {"rate": 0.5}}, "fim for books, not in its mix"),
])
def test_fim_config_mistakes_are_one_sentence(tmp_path, capsys, fim, says):
    tree = base_tree(code_and_books(tmp_path), stages=[{"name": "s", "chunks": 1, "mix": {"code": 1.0}, "fim": fim}])
    rc, _, err = cli(["prepare", write_config(tmp_path, tree), "--out", tmp_path / "run"], capsys)
    assert rc == 2 and says in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_exact_mix_holds_the_proportions_in_every_chunk(tmp_path, capsys):
    stage = {"name": "amber", "chunks": 6, "mix": {"code": 0.75, "books": 0.25}}
    tree = base_tree(code_and_books(tmp_path), stages=[{**stage, "exact_mix": True}, {**stage, "name": "loose"}])
    rc, _, err = cli(["prepare", write_config(tmp_path, tree), "--out", tmp_path / "run"], capsys)
    assert rc == 0, err
    m = manifest(tmp_path / "run")
    assert m["stages"][0]["exact_mix"] is True and "exact_mix" not in m["stages"][1]
    data = RunData(tmp_path / "run")
    for entry in m["chunks"][:6]:
        assert entry["rows_per_source"] == {"code": 6, "books": 2}  # 8 rows: 3/4 and 1/4, to the row
        sources = data.row_sources(entry["index"])
        assert {s: sources.count(s) for s in ("code", "books")} == entry["rows_per_source"]
    loose = [tuple(e["rows_per_source"].values()) for e in m["chunks"][6:]]
    assert len(set(loose)) > 1  # without it the shares wander from chunk to chunk (seed 7)
    assert check_rows(tmp_path / "run", tmp_path, n=20) > 0


MOJIBAKE = ["The cafÃ© on the corner serves coffee all day long.", "naÃ¯ve readers like Ã¥ngstrÃ¶m units a lot."]


def test_ftfy_fixes_text_and_is_recorded(tmp_path, capsys):
    ftfy = pytest.importorskip("ftfy")
    docs = [f"{MOJIBAKE[i % 2]} {d}" for i, d in enumerate(make_docs(200, seed=13))]
    write_jsonl(tmp_path / "web.jsonl", docs)
    tree = base_tree([{"name": "web", "kind": "jsonl", "paths": ["web.jsonl"], "ftfy": True}],
                     stages=[{"name": "s", "chunks": 1, "mix": {"web": 1.0}}])
    rc, _, err = cli(["prepare", write_config(tmp_path, tree), "--out", tmp_path / "run"], capsys)
    assert rc == 0, err
    assert manifest(tmp_path / "run")["sources"][0]["ftfy"] == ftfy.__version__
    data = RunData(tmp_path / "run")
    text = data.document_text(0, tmp_path)
    assert text.startswith("The café on the corner") and "Ã" not in text
    assert check_rows(tmp_path / "run", tmp_path, n=10) > 0  # found again by uri, fixed the same way


def test_ftfy_missing_is_one_sentence(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ftfy", None)  # import ftfy now raises ImportError
    write_jsonl(tmp_path / "web.jsonl", make_docs(50, seed=14))
    tree = base_tree([{"name": "web", "kind": "jsonl", "paths": ["web.jsonl"], "ftfy": True}],
                     stages=[{"name": "s", "chunks": 1, "mix": {"web": 1.0}}])
    rc, _, err = cli(["prepare", write_config(tmp_path, tree), "--out", tmp_path / "run"], capsys)
    assert rc == 2 and "data.sources[0].ftfy is on but ftfy is not installed" in err
    assert not (tmp_path / "run").exists()
