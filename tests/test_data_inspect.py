"""`llm360 data batch` shows a corpus's text without letting it drive the terminal."""

from __future__ import annotations

import json

from helpers_data import base_tree, cli, make_docs, write_config, write_jsonl


def test_batch_escapes_control_characters(tmp_path, capsys):
    docs = [f"\x1b[2J\x07 {d}" for d in make_docs(120, seed=7)]
    write_jsonl(tmp_path / "a.jsonl", docs)
    tree = base_tree([{"name": "a", "kind": "jsonl", "paths": ["a.jsonl"]}], stages=[{"name": "s", "chunks": 1, "mix": {"a": 1}}])
    rc, _, err = cli(["prepare", write_config(tmp_path, tree), "--out", tmp_path / "run"], capsys)
    assert rc == 0, err
    rc, out, _ = cli(["data", "batch", tmp_path / "run", "--step", 0], capsys)
    assert rc == 0
    assert "\x1b" not in out and "\x07" not in out
    assert "\\x1b[2J\\x07" in out and "\n" in out  # shown escaped; newlines stay
    rc, out, _ = cli(["data", "batch", tmp_path / "run", "--step", 0, "--json"], capsys)
    text = "".join(row["text"] for row in json.loads(out)["rows"])
    assert "\x1b[2J\x07" in text  # exact JSON: the characters themselves
