"""What a prepare must not leave behind: paths of the machine that made the run, staging folders
of killed runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers_data import base_tree, cli, make_docs, write_config, write_jsonl

from llm360.data import prepare as P
from llm360.data import sources as S
from llm360.data.store import RunData
from llm360.release.cards import data_card
from llm360.release.facts import Facts


def few_stdlib_files() -> list[Path]:
    """The json package only: the built-in sources' paths are covered without reading the stdlib."""
    return sorted((S.stdlib_dir() / "json").glob("*.py"))


def every_file(folder: Path):
    for dirpath, _, files in os.walk(folder):
        for name in files:
            yield Path(dirpath) / name


def test_no_path_of_this_machine_under_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(S, "stdlib_files", few_stdlib_files)
    monkeypatch.setattr(S, "TOPICS_FILE", "json/tool.py")  # a small stand-in for the topics file
    folder = tmp_path / "project"
    write_jsonl(folder / "corpus" / "web.jsonl", ["tiny"] + make_docs(150, seed=5))  # "tiny": too short
    sources = [
        {"name": "web", "kind": "jsonl", "paths": ["corpus/*.jsonl"], "description": "pages we crawled in May"},
        {"name": "docs", "kind": "python-docs"},
        {"name": "code", "kind": "python-code"},
    ]
    tree = base_tree(sources, stages=[{"name": "s", "chunks": 2, "mix": {"web": 1, "docs": 1, "code": 1}}],
                     tokenizer={"path": None})
    config = write_config(folder, tree)
    monkeypatch.chdir(tmp_path)  # another cwd than the config's folder: paths still resolve from the config
    rc, _, err = cli(["prepare", "project/cfg.yaml", "--out", tmp_path / "project" / "run", "--data.strict=true"], capsys)
    assert rc == 0, err
    run = folder / "run"
    leaks = [str(tmp_path), str(tmp_path.resolve()), str(S.stdlib_dir()), sys.prefix]
    for path in every_file(run):
        data = path.read_bytes()
        for leak in leaks:
            assert leak.encode() not in data, f"{path.relative_to(run)} holds {leak}"
    assert "base_dir" not in yaml.safe_load((run / "run.yaml").read_text())
    m = json.loads((run / "data" / "manifest.json").read_text())
    web, docs, code = m["sources"]
    assert web["root"] == "corpus" and web["description"] == "pages we crawled in May"
    assert web["drop_examples"]["too_short"].startswith("web.jsonl:1: ")
    assert docs["root"] == code["root"] == "python:stdlib"
    # the documents are found again from the config's folder, and the built-ins from this Python
    data = RunData(run)
    uris = data.documents().column("uri").to_pylist()
    code_doc = next(i for i, u in enumerate(uris) if u.startswith("json/"))
    docs_doc = next(i for i, u in enumerate(uris) if u.startswith("python:json"))
    for doc_id in (0, code_doc, docs_doc):
        assert data.document_text(doc_id, folder)
    with pytest.raises(Exception, match="relative to the folder of the config"):
        data.document_text(0)
    card = data_card(Facts(run, "t", manifest=m))
    assert "pages we crawled in May" in card and "python-docs, Python" in card and str(tmp_path) not in card
    # run again on the existing run: nothing to do, and run.yaml still loads
    rc, out, err = cli(["prepare", config, "--out", run, "--data.strict=true"], capsys)
    assert rc == 0 and "already prepared" in out, err
    rc, out, err = cli(["prepare", run / "run.yaml", "--out", run], capsys)
    assert rc == 0 and "already prepared" in out, err


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", ""])
    child.wait()  # exited and reaped: no process has this pid now (short of reuse)
    return child.pid


def test_dead_staging_folders_are_removed(tmp_path):
    run = tmp_path / "run"
    prep = run / P.PREPARE_DIR
    host = P.owner_tag().rsplit("-", 1)[0]
    dead, live = dead_pid(), os.getpid()
    names = {
        tmp_path / f".run.prepare-{host}-{dead}": False,
        tmp_path / f".run.prepare-{host}-{live}": True,
        tmp_path / f".other.prepare-{host}-{dead}": True,  # another run's
        prep / f"build-{host}-{dead}": False,
        prep / f"build-{host}-{live}": True,
        prep / f"build-elsewhere-{dead}": True,  # another host sharing RUN: its pids mean nothing here
        prep / f".shard-0-of-2.tmp-{host}-{dead}": False,
        prep / f".tokenizer.tmp-{host}-{dead}": False,
        prep / "shard-0-of-2": True,
    }
    for path in names:
        path.mkdir(parents=True)
        (path / "x").write_bytes(b"half written")
    removed = P.remove_dead_leftovers(run)
    assert sorted(removed) == sorted(p for p, kept in names.items() if not kept)
    assert all(path.exists() == kept for path, kept in names.items())


def test_prepare_removes_them_and_says_so(tmp_path, capsys):
    write_jsonl(tmp_path / "a.jsonl", make_docs(120, seed=6))
    config = write_config(tmp_path, base_tree([{"name": "a", "kind": "jsonl", "paths": ["a.jsonl"]}]))
    host = P.owner_tag().rsplit("-", 1)[0]
    dead = tmp_path / f".run.prepare-{host}-{dead_pid()}"
    live = tmp_path / f".run.prepare-{host}-{os.getppid()}"  # not ours: our own is our staging
    for path in (dead, live):
        (path / "data").mkdir(parents=True)
    rc, _, err = cli(["prepare", config, "--out", tmp_path / "run"], capsys)
    assert rc == 0, err
    assert f"removed 1 staging folder(s) left by killed prepare runs: {dead.name}" in err
    assert not dead.exists() and live.exists()
