"""The search index in shards (`llm360 index RUN --shard i/N`): each shard a chunk range in its
own folder, queries merged across them equal to the one-folder index, and one sentence naming
the shard when a shard is missing, stale or of another splitting."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from helpers_analysis import copy_run, planted_run, torch_threads
from llm360.analysis import search as search_mod
from llm360.analysis.search import RunIndex, build_index, search, shard_chunks
from llm360.cli import main
from llm360.errors import UserError

pytestmark = pytest.mark.skipif(not search_mod.available_backends(), reason=search_mod.EXTRA_HINT)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    with torch_threads(1):
        return planted_run(tmp_path_factory)


def test_shard_chunks_are_contiguous_and_even():
    for n_chunks in (1, 3, 7, 360):
        for shards in range(1, min(n_chunks, 9) + 1):
            ranges = [shard_chunks(n_chunks, i, shards) for i in range(shards)]
            assert ranges[0][0] == 0 and ranges[-1][1] == n_chunks
            assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
            sizes = [b - a for a, b in ranges]
            assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("shards", [2, 3])
def test_sharded_queries_equal_the_one_index(run, tmp_path, shards):
    one = search(run, " copper owls recite", limit=10_000)  # the planted run's own, one-folder index
    work = copy_run(run, tmp_path / "run")
    for i in reversed(range(shards)):  # any order, as on separate machines
        info = build_index(work, shard=(i, shards), quiet=True)
        assert info["chunk_range"] == list(shard_chunks(3, i, shards)) and info["shard"] == [i, shards]
        assert any(s["kind"] == "heldout" for s in info["segments"]) == (i == shards - 1)
    assert not (work / "analysis" / "search" / "index.json").exists()
    for text in (" copper owls recite", " brass clocks", "Nine velvet"):
        merged, single = search(work, text, limit=10_000), search(run, text, limit=10_000)
        assert merged["shards"] == shards and single["shards"] == 1
        assert {k: v for k, v in merged.items() if k != "shards"} == {k: v for k, v in single.items() if k != "shards"}
    assert one["count"] > 20
    with RunIndex(work) as index:
        assert [s.chunk_range for s in index.shards] == [shard_chunks(3, i, shards) for i in range(shards)]
        assert index.count_split(one["tokens"]) == (one["train_count"], one["heldout_count"])


def test_bad_shards_are_named(run, tmp_path):
    work = copy_run(run, tmp_path / "run")
    build_index(work, shard=(0, 2), quiet=True)
    with pytest.raises(UserError, match=r"shard shard-001-of-002 of .* is missing: run `llm360 index .* --shard 1/2`"):
        search(work, " copper")
    build_index(work, shard=(1, 2), quiet=True)
    assert search(work, " copper")["count"] > 0
    # built from other chunks: a chunk hash that is not the run's
    meta = work / "analysis" / "search" / "shard-001-of-002" / "index.json"
    info = json.loads(meta.read_text())
    meta.write_text(json.dumps({**info, "chunk_sha256": ["0" * 64] * len(info["chunk_sha256"])}))
    with pytest.raises(UserError, match=r"shard shard-001-of-002 of .* was built from other data"):
        search(work, " copper")
    # a shard folder of another splitting
    shutil.copytree(work / "analysis" / "search" / "shard-000-of-002", work / "analysis" / "search" / "shard-000-of-003")
    with pytest.raises(UserError, match=r"mixes shards of different splittings \(shard-000-of-002, shard-000-of-003\)"):
        search(work, " copper")
    with pytest.raises(UserError, match="holds shards of another splitting"):
        build_index(work, shard=(1, 3), quiet=True)
    with pytest.raises(UserError, match="at most 3 shards"):
        build_index(work, shard=(0, 4), quiet=True)
    with pytest.raises(UserError, match="holds index shards"):
        build_index(work, quiet=True)  # one index over shard folders would hide them


def test_cli_index_shard(run, tmp_path, capsys):
    work = copy_run(run, tmp_path / "run")
    assert main(["index", str(work), "--shard", "1/2"]) == 0
    assert "shard-001-of-002" in capsys.readouterr().err.replace("\n", "")  # rich wraps long lines
    assert main(["index", str(work)]) == 2  # not complete: names the missing shard
    assert "shard-000-of-002" in capsys.readouterr().err.replace("\n", "")
    assert main(["index", str(work), "--shard", "0/2"]) == 0
    capsys.readouterr()
    assert main(["index", str(work), "--shard", "0/2"]) == 0
    assert "up to date" in capsys.readouterr().err
    assert main(["index", str(work)]) == 0  # the complete set is the run's index
    assert "up to date" in capsys.readouterr().err
    assert main(["search", str(work), " copper owls", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["shards"] == 2
    assert main(["index", str(work), "--shard", "2/2"]) == 2
    assert "need 0 <= i < N" in capsys.readouterr().err
