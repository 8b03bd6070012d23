"""`llm360 index` and `llm360 search` on a trained run: every occurrence of a planted passage,
with the step that trained on it, its document and the held-out rows flagged."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from helpers_analysis import brute_force, copy_run, planted_run, torch_threads
from llm360.analysis import search as search_mod
from llm360.analysis.search import RunIndex, build_index, search
from llm360.errors import UserError

pytestmark = pytest.mark.skipif(not search_mod.available_backends(), reason=search_mod.EXTRA_HINT)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    with torch_threads(1):
        return planted_run(tmp_path_factory)


def all_rows(run: Path):
    """Every row in index order, with (chunk, row) or (source, row) for each."""
    from llm360.data.store import RunData

    data = RunData(run)
    blocks, where = [], []
    for c in range(data.n_chunks):
        blocks.append(np.asarray(data.chunk(c)))
        where += [("chunk", c, r) for r in range(len(blocks[-1]))]
    for source in data.heldout_sources:
        blocks.append(np.asarray(data.heldout(source)))
        where += [("heldout", source, r) for r in range(len(blocks[-1]))]
    return data, np.concatenate(blocks), where


def test_search_finds_every_planted_occurrence_with_its_step(run):
    info = build_index(run, quiet=True)
    data, rows, where = all_rows(run)
    assert info["rows"] == len(rows) and info["fingerprint"] == data.fingerprint
    docs = data.documents().to_pylist()
    uri = {d["doc_id"]: d["uri"] for d in docs}
    result = search(run, " copper owls recite", limit=10_000)
    expected = brute_force(rows, result["tokens"])
    assert result["count"] == len(expected) > 20 and result["shown"] == len(expected)
    heldout = [occ for occ in result["occurrences"] if occ["heldout"]]
    assert len(heldout) == result["heldout_count"] >= 1
    assert result["train_count"] + result["heldout_count"] == result["count"]
    got = []
    for occ in result["occurrences"]:
        if occ["heldout"]:
            assert occ["step"] is None and occ["chunk"] is None and occ["source"] == "a"
            got.append(("heldout", occ["source"], occ["row"], occ["offset"]))
        else:
            assert occ["step"] == occ["chunk"] * 20 + occ["row"] // 8  # the step rule
            assert occ["chunk"] in (0, 1) and occ["source"] == "a"
            got.append(("chunk", occ["chunk"], occ["row"], occ["offset"]))
        assert occ["uri"] == uri[occ["doc_id"]] and occ["uri"].endswith(".txt")
        assert occ["match"] == " copper owls recite"
    assert got == [(*where[r], o) for r, o in expected]
    # the other passage: only in chunk 2 and in b's held-out rows
    other = search(run, " brass clocks", limit=10_000)
    assert other["count"] == len(brute_force(rows, other["tokens"])) > 0
    assert {(o["chunk"], o["source"]) for o in other["occurrences"]} <= {(2, "b"), (None, "b")}


def test_matches_never_cross_rows(run):
    build_index(run, quiet=True)
    data, rows, _ = all_rows(run)
    with RunIndex(run) as index:
        for r in (0, 7, 100):
            query = np.concatenate([rows[r, -3:], rows[r + 1, :3]]).tolist()
            assert index.count(query) == len(brute_force(rows, query))
        window = rows[3, 10:42].tolist()
        assert index.train_count(window) == len(brute_force(rows[:sum(data.rows_in_chunk(c) for c in range(data.n_chunks))], window))


def test_cli_index_and_search(run, capsys):
    import shutil

    from llm360.cli import main

    shutil.rmtree(run / "analysis" / "search", ignore_errors=True)
    assert main(["index", str(run)]) == 0
    assert "indexed" in capsys.readouterr().err
    before = (run / "analysis" / "search" / "index.json").read_bytes()
    assert main(["index", str(run)]) == 0  # built from the same chunks: kept as it is
    assert "up to date" in capsys.readouterr().err
    assert (run / "analysis" / "search" / "index.json").read_bytes() == before
    assert main(["search", str(run), " copper owls recite", "--json", "--limit", "3"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["count"] > 3 and len(result["occurrences"]) == 3
    first = result["occurrences"][0]
    assert {"chunk", "row", "offset", "step", "source", "doc_id", "uri", "before", "match", "after"} <= set(first)
    tokens = ",".join(map(str, result["tokens"]))
    assert main(["search", str(run), "--tokens", tokens, "--limit", "2"]) == 0
    out = capsys.readouterr().out
    assert f"{result['count']} occurrence(s)" in out and "step 0" in out and "more (--limit N)" in out
    assert main(["search", str(run), "zebra xylophone quokka"]) == 0
    assert "0 occurrence(s)" in capsys.readouterr().out
    assert main(["search", str(run), "copper owls"]) == 0  # inside a text the word has its space
    assert "with a leading space, ' copper owls' occurs" in capsys.readouterr().out
    assert main(["search", str(run)]) == 2
    assert "give a TEXT" in capsys.readouterr().err
    assert main(["search", str(run), "--tokens", "1,x"]) == 2


def test_missing_or_stale_index_is_refused(run, tmp_path):
    work = copy_run(run, tmp_path / "run")
    with pytest.raises(UserError, match="no search index yet: run `llm360 index"):
        search(work, "copper")
    build_index(work, quiet=True)
    meta = work / "analysis" / "search" / "index.json"
    info = json.loads(meta.read_text())
    meta.write_text(json.dumps({**info, "fingerprint": "0" * 64}))
    with pytest.raises(UserError, match="built from other data"):
        search(work, "copper")
    build_index(work, quiet=True)  # rebuilt in place, atomically
    assert search(work, " copper")["count"] > 0
    assert not list((work / "analysis").glob(".search.tmp*"))
