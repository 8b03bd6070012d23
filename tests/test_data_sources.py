"""Sources, bad input, strict mode and tokenizers of `llm360 prepare`."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers_data import (
    base_tree,
    check_rows,
    chunk_hashes,
    cli,
    make_docs,
    write_config,
    write_jsonl,
)

from llm360.config import validate
from llm360.data import sources as S
from llm360.data.store import RunData
from llm360.errors import UserError


def manifest(run: Path) -> dict:
    return json.loads((run / "data" / "manifest.json").read_text())


def no_leftovers(folder: Path, run: Path) -> None:
    assert not run.exists(), "a failed prepare left the run directory behind"
    hidden = [p for p in folder.iterdir() if p.name.startswith(".") and not p.name.endswith(".llm360-lock")]
    assert not hidden, "staging folder left behind"


# ---------------------------------------------------------------------------------------------
# kinds of sources


def test_compressed_parquet_text_and_code_sources(tmp_path, capsys):
    pytest.importorskip("zstandard")
    write_jsonl(tmp_path / "in" / "gz" / "a.jsonl.gz", make_docs(80, seed=11), compress="gz")
    write_jsonl(tmp_path / "in" / "zst" / "b.jsonl.zst", make_docs(80, seed=12), field="content", compress="zst")
    docs = make_docs(90, seed=13)
    table = pa.table({"body": docs, "n": list(range(90))})
    (tmp_path / "in" / "pq").mkdir(parents=True)
    pq.write_table(table, tmp_path / "in" / "pq" / "c.parquet", row_group_size=25)
    for i, d in enumerate(make_docs(12, seed=14, min_words=100, max_words=200)):
        (tmp_path / "in" / "txt").mkdir(parents=True, exist_ok=True)
        (tmp_path / "in" / "txt" / f"t{i}.md").write_text(d, encoding="utf-8")
    repo = tmp_path / "in" / "repo"
    for i, d in enumerate(make_docs(15, seed=15, min_words=60, max_words=120)):
        f = repo / ("pkg" if i % 2 else "tools") / f"m{i}.py"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(f'"""{d}"""\n\ndef f{i}(x):\n    return x * {i}\n', encoding="utf-8")
    (repo / ".git").mkdir()
    (repo / ".git" / "HEAD.py").write_text("hidden: not part of the tree " * 5)
    (repo / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    sources = [
        {"name": "gz", "kind": "jsonl", "paths": ["in/gz/a.jsonl.gz"]},
        {"name": "zst", "kind": "jsonl", "paths": ["in/zst"], "text_field": "content"},
        {"name": "pq", "kind": "parquet", "paths": ["in/pq/c.parquet"], "text_field": "body"},
        {"name": "txt", "kind": "text", "paths": ["in/txt/*.md"]},
        {"name": "code", "kind": "code", "paths": ["in/repo"], "include": ["**/*.py"]},
    ]
    tree = base_tree(sources, stages=[{"name": "s", "chunks": 4, "mix": {s["name"]: 1 for s in sources}}],
                     )
    rc, _, err = cli(["prepare", write_config(tmp_path, tree), "--out", tmp_path / "run", "--workers", 2], capsys)
    assert rc == 0, err
    m = manifest(tmp_path / "run")
    kept = {s["name"]: s["documents_kept"] for s in m["sources"]}
    assert kept == {"gz": 80, "zst": 80, "pq": 90, "txt": 12, "code": 15}
    uris = RunData(tmp_path / "run").documents().column("uri").to_pylist()
    assert "a.jsonl.gz:80" in uris and "b.jsonl.zst:1" in uris
    assert "c.parquet#0" in uris and "c.parquet#89" in uris
    assert "t0.md" in uris and "pkg/m1.py" in uris and "tools/m0.py" in uris
    assert not any(".git" in u or u.endswith(".png") for u in uris)
    assert check_rows(tmp_path / "run", tmp_path, n=20, seed=3) >= 20


class LinesSource(S.FileSource):
    """A kind made up for the test: every non-blank line of a .lines file is a document."""

    name = "lines"

    def wanted(self, path):
        return path.suffix == ".lines"

    def read(self, unit):
        for i, line in enumerate(Path(unit.path).read_text(encoding="utf-8").splitlines()):
            yield S.Record(i, None, line, None, "")

    def where(self, unit, key, name, path):
        return f"{path}:{key + 1}"

    def uri(self, unit, key, name, before):
        return f"{unit.rel}:{key + 1}"

    def read_one(self, root, uri, field):
        rel, _, line = uri.rpartition(":")
        return (root / rel).read_text(encoding="utf-8").splitlines()[int(line) - 1]


def test_a_new_kind_is_one_registered_class(tmp_path, capsys, monkeypatch):
    tree = base_tree([{"name": "l", "kind": "lines", "paths": ["in"]}], stages=[{"name": "s", "chunks": 1, "mix": {"l": 1}}])
    with pytest.raises(UserError, match=r"data\.sources\.0\.kind.*unknown source kind 'lines'; allowed: builtin, code, jsonl"):
        validate(tree)
    monkeypatch.setitem(S.KINDS, "lines", LinesSource())
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.lines").write_text("\n".join(d.replace("\n", " ") for d in make_docs(120, seed=16)))
    (tmp_path / "in" / "skipped.txt").write_text("not a .lines file " * 20)
    rc, _, err = cli(["prepare", write_config(tmp_path, tree), "--out", tmp_path / "run"], capsys)
    assert rc == 0, err
    assert manifest(tmp_path / "run")["sources"][0]["kind"] == "lines"
    uris = RunData(tmp_path / "run").documents().column("uri").to_pylist()
    assert uris[:2] == ["a.lines:1", "a.lines:2"] and len(uris) == 120
    assert check_rows(tmp_path / "run", tmp_path, n=6) >= 6


def test_large_jsonl_split_into_ranges_changes_nothing(tmp_path, capsys, monkeypatch):
    write_jsonl(tmp_path / "big.jsonl", make_docs(400, seed=21))
    tree = base_tree([{"name": "big", "kind": "jsonl", "paths": ["big.jsonl"]}])
    cfg = write_config(tmp_path, tree)
    rc, _, _ = cli(["prepare", cfg, "--out", tmp_path / "whole"], capsys)
    assert rc == 0
    monkeypatch.setattr(S, "UNIT_BYTES", 4096)  # ~40 byte ranges, lines cut across them
    plan = S.plan_sources(__import__("llm360.config", fromlist=["load_config"]).load_config(cfg).data, tmp_path)
    assert len(plan.units) > 20
    rc, _, _ = cli(["prepare", cfg, "--out", tmp_path / "split", "--workers", 2], capsys)
    assert rc == 0
    assert chunk_hashes(tmp_path / "split") == chunk_hashes(tmp_path / "whole")
    a = RunData(tmp_path / "whole").documents().to_pydict()
    b = RunData(tmp_path / "split").documents().to_pydict()
    assert a == b and b["uri"][-1] == "big.jsonl:400"


# ---------------------------------------------------------------------------------------------
# bad input


GOOD = make_docs(150, seed=31)
BAD_LINES = {
    "invalid_json": b'{"text": "never closed\n',
    "missing_text": b'{"body": "the field is called body here"}\n',
    "not_a_string": b'{"text": 12345}\n',
    "decode_error": b'{"text": "caf\xe9 latin-1 bytes in a line"}\n',
    "empty": b'{"text": ""}\n',
    "too_short": b'{"text": "tiny"}\n',
    "too_long": json.dumps({"text": "long " * 300}).encode() + b"\n",
    "duplicate": json.dumps({"text": GOOD[0]}).encode() + b"\n",
}
REASON = {"not_a_string": "missing_text"}


def _bad_corpus(folder: Path, cases: list[str], blank_tail: bool = False) -> Path:
    path = folder / "bad.jsonl"
    lines = [json.dumps({"text": d}).encode() + b"\n" for d in GOOD]
    for k, case in enumerate(cases):
        lines.insert(2 + k, BAD_LINES[case])  # line 3, 4, ...
    path.write_bytes(b"".join(lines) + (b"\n" if blank_tail else b""))  # a blank last line: empty
    return path


def test_bad_input_is_counted(tmp_path, capsys):
    _bad_corpus(tmp_path, list(BAD_LINES), blank_tail=True)
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "empty.txt").write_bytes(b"")
    (tmp_path / "texts" / "latin1.txt").write_bytes("caf\xe9 ".encode("latin-1") * 20)
    (tmp_path / "texts" / "ok.txt").write_text("\n".join(make_docs(3, seed=32, min_words=30, max_words=40)))
    tree = base_tree([
        {"name": "bad", "kind": "jsonl", "paths": ["bad.jsonl"]},
        {"name": "texts", "kind": "text", "paths": ["texts/*.txt"]},
    ], filters={"max_chars": 1200})
    rc, _, err = cli(["prepare", write_config(tmp_path, tree), "--out", tmp_path / "run"], capsys)
    assert rc == 0, err
    bad, texts = manifest(tmp_path / "run")["sources"]
    assert bad["dropped"] == {"decode_error": 1, "duplicate": 1, "empty": 2, "invalid_json": 1, "missing_text": 2,
                              "too_long": 1, "too_short": 1}
    assert bad["documents_read"] == 150 + 8 + 1 and bad["documents_kept"] == 150
    assert bad["drop_examples"]["invalid_json"].startswith("bad.jsonl:3: invalid JSON")  # no path of this machine
    assert texts["dropped"] == {"decode_error": 1, "empty": 1} and texts["documents_kept"] == 1


def test_corrupt_files_are_counted_not_fatal(tmp_path, capsys):
    good = write_jsonl(tmp_path / "in" / "good.jsonl.gz", make_docs(120, seed=34), compress="gz")
    data = good.read_bytes()
    (tmp_path / "in" / "cut.jsonl.gz").write_bytes(data[: len(data) // 2])  # truncated gzip
    (tmp_path / "in" / "fake.parquet").write_bytes(b"PAR1 this is not parquet at all")
    tree = base_tree([
        {"name": "j", "kind": "jsonl", "paths": ["in/*.jsonl.gz"]},
        {"name": "p", "kind": "parquet", "paths": ["in/fake.parquet"]},
        {"name": "ok", "kind": "jsonl", "paths": ["in/good.jsonl.gz"]},
    ], stages=[{"name": "s", "chunks": 1, "mix": {"j": 1}}], heldout_rows=0, filters={"dedup": False})
    rc, _, err = cli(["prepare", write_config(tmp_path, tree), "--out", tmp_path / "run"], capsys)
    assert rc == 0, err
    j, p, ok = manifest(tmp_path / "run")["sources"]
    assert p["dropped"] == {"unreadable": 1} and p["rows"] == 0 and "not a readable parquet" in p["drop_examples"]["unreadable"]
    assert j["dropped"] == {"unreadable": 1} and 120 < j["documents_kept"] < 240 and ok["documents_kept"] == 120
    assert "cut.jsonl.gz" in j["drop_examples"]["unreadable"]


BROKEN = ["invalid_json", "missing_text", "not_a_string", "decode_error"]
FILTERED = ["empty", "too_short", "too_long", "duplicate"]


@pytest.mark.parametrize("case", BROKEN)
def test_strict_stops_at_the_first_bad_record(tmp_path, capsys, case):
    path = _bad_corpus(tmp_path, [case])
    tree = base_tree([{"name": "bad", "kind": "jsonl", "paths": ["bad.jsonl"]}], filters={"max_chars": 1200})
    rc, out, err = cli(["prepare", write_config(tmp_path, tree), "--out", tmp_path / "run", "--data.strict=true"], capsys)
    assert rc == 2
    assert f"{path}:3: " in err, err
    words = {"invalid_json": "invalid JSON", "missing_text": "text field", "not_a_string": "not a string",
             "decode_error": "not UTF-8"}
    assert words[case] in err
    no_leftovers(tmp_path, tmp_path / "run")


@pytest.mark.parametrize("case", FILTERED)
def test_strict_passes_documents_the_filters_drop(tmp_path, capsys, case):
    # dropped by design, not broken: strict must not stop on them (the demo's short docstrings)
    _bad_corpus(tmp_path, [case])
    tree = base_tree([{"name": "bad", "kind": "jsonl", "paths": ["bad.jsonl"]}], filters={"max_chars": 1200})
    rc, _, err = cli(["prepare", write_config(tmp_path, tree), "--out", tmp_path / "run", "--data.strict=true"], capsys)
    assert rc == 0, err
    assert manifest(tmp_path / "run")["sources"][0]["dropped"] == {case: 1}


def test_strict_passes_an_empty_file(tmp_path, capsys):
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "a.txt").write_text("\n".join(make_docs(40, seed=33)))
    (tmp_path / "t" / "b.txt").write_bytes(b"")
    (tmp_path / "t" / "c.txt").write_text("\n".join(make_docs(40, seed=34)))
    tree = base_tree([{"name": "t", "kind": "text", "paths": ["t"]}], strict=True, filters={"max_chars": 100_000},
                     stages=[{"name": "s", "chunks": 1, "mix": {"t": 1}}])
    rc, _, err = cli(["prepare", write_config(tmp_path, tree), "--out", tmp_path / "run"], capsys)
    assert rc == 0, err
    assert manifest(tmp_path / "run")["sources"][0]["dropped"] == {"empty": 1}


@pytest.mark.parametrize("paths,words", [
    (["nowhere/data.jsonl"], "does not exist"),
    (["corpus/*.jsonl"], "matches no file"),
])
def test_missing_paths_are_named(tmp_path, capsys, paths, words):
    (tmp_path / "corpus").mkdir()
    tree = base_tree([{"name": "x", "kind": "jsonl", "paths": paths}])
    rc, _, err = cli(["prepare", write_config(tmp_path, tree), "--out", tmp_path / "run"], capsys)
    assert rc == 2 and words in err and paths[0].split("/")[0] in err and "source 'x'" in err
    no_leftovers(tmp_path, tmp_path / "run")


def test_bad_shard_argument(tmp_path, capsys):
    write_jsonl(tmp_path / "a.jsonl", make_docs(10, seed=1))
    cfg = write_config(tmp_path, base_tree([{"name": "a", "kind": "jsonl", "paths": ["a.jsonl"]}]))
    for bad in ("3/2", "x", "1/0"):
        rc, _, err = cli(["prepare", cfg, "--out", tmp_path / "run", "--shard", bad], capsys)
        assert rc == 2 and "--shard" in err


# ---------------------------------------------------------------------------------------------
# tokenizers


def _trained_tokenizer(eos: str | None):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from llm360.data.tokenizer import train_bpe

    if eos == "<|endoftext|>":
        return train_bpe(make_docs(200, seed=41), 300)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=[eos] if eos else [],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(make_docs(200, seed=41), trainer)
    return tok


def _one_source(tmp_path: Path) -> list[dict]:
    write_jsonl(tmp_path / "a.jsonl", make_docs(200, seed=42))
    return [{"name": "a", "kind": "jsonl", "paths": ["a.jsonl"]}]


def test_existing_tokenizer_json(tmp_path, capsys):
    tok = _trained_tokenizer("<|endoftext|>")
    (tmp_path / "tok").mkdir()
    tok.save(str(tmp_path / "tok" / "tokenizer.json"))
    tree = base_tree(_one_source(tmp_path), tokenizer={"path": "tok/tokenizer.json"})
    rc, _, err = cli(["prepare", write_config(tmp_path, tree), "--out", tmp_path / "run"], capsys)
    assert rc == 0, err
    t = manifest(tmp_path / "run")["tokenizer"]
    assert t["trained"] is False and t["eos_token"] == "<|endoftext|>" and t["eos_id"] == 0
    assert (tmp_path / "run" / "data" / "tokenizer" / "tokenizer.json").read_bytes() == (tmp_path / "tok" / "tokenizer.json").read_bytes()
    assert check_rows(tmp_path / "run", tmp_path, n=5) >= 5


def test_existing_transformers_folder(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    tok = _trained_tokenizer("</s>")
    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>")
    hf.save_pretrained(str(tmp_path / "hf"))
    tree = base_tree(_one_source(tmp_path), tokenizer={"path": "hf"})
    rc, _, err = cli(["prepare", write_config(tmp_path, tree), "--out", tmp_path / "run"], capsys)
    assert rc == 0, err
    t = manifest(tmp_path / "run")["tokenizer"]
    assert t["eos_token"] == "</s>" and t["eos_id"] == tok.token_to_id("</s>") and t["source"].endswith("hf")
    data = RunData(tmp_path / "run")
    assert int(data.chunk(0).max()) < t["vocab_size"] and data.eos_id == t["eos_id"]
    loaded = transformers.AutoTokenizer.from_pretrained(str(data.tokenizer_dir))
    assert loaded.eos_token == "</s>"


def test_tokenizer_without_eos_is_refused(tmp_path, capsys):
    tok = _trained_tokenizer(None)
    tok.save(str(tmp_path / "noeos.json"))
    tree = base_tree(_one_source(tmp_path), tokenizer={"path": "noeos.json"})
    rc, _, err = cli(["prepare", write_config(tmp_path, tree), "--out", tmp_path / "run"], capsys)
    assert rc == 2 and "no EOS token" in err
    no_leftovers(tmp_path, tmp_path / "run")


def test_training_is_deterministic():
    from llm360.data.tokenizer import train_bpe

    texts = make_docs(300, seed=43)
    assert train_bpe(texts, 400).to_str() == train_bpe(list(texts), 400).to_str()


# ---------------------------------------------------------------------------------------------
# built-in sources (only a few stdlib modules here; the full demo is measured by the benchmark)


def test_python_builtins_read_and_find_again():
    from llm360.config import DataConfig

    cfg = DataConfig.model_validate({"sources": [{"name": "docs", "kind": "python-docs"}, {"name": "code", "kind": "python-code"}]})
    plan = S.plan_sources(cfg, None)
    docs_units, code_units = plan.units_of(0), plan.units_of(1)
    rels = [u.rel for u in code_units]
    assert rels == sorted(rels) and "json/decoder.py" in rels
    assert not any("site-packages" in r or r.startswith("test/") or "/tests/" in r for r in rels)
    assert docs_units[-1].part == "topics" and plan.sources[0].recorded_root == "python:stdlib"
    source = {"kind": "builtin", "builtin": "python-docs", "root": "python:stdlib"}
    found = {}
    for u in docs_units:
        if u.rel.startswith("json/") or u.part == "topics":
            for rec in S.read_unit(u, 1, 10**9):
                if rec.text:
                    found[rec.name] = rec.text
    assert "python:json" in found and "python:json.decoder.JSONDecoder.decode" in found
    assert "python:pydoc_data.topics#assert" in found
    for uri in ("python:json", "python:json.decoder.JSONDecoder.decode", "python:pydoc_data.topics#assert"):
        assert S.read_by_uri(source, uri) == found[uri]
    (unit,) = [u for u in code_units if u.rel == "json/decoder.py"]
    (rec,) = list(S.read_unit(unit))
    assert S.read_by_uri({"kind": "builtin", "builtin": "python-code", "root": "python:stdlib"}, "json/decoder.py") == rec.text


def test_a_one_file_corpus_over_max_chars_is_named_with_the_reason(tmp_path, capsys):
    """Tiny Shakespeare's shape: one text file longer than data.filters.max_chars. The refusal
    names the file, its length, the limit and the key to change."""
    (tmp_path / "t").mkdir()
    big = tmp_path / "t" / "input.txt"
    big.write_text("\n".join(make_docs(400, seed=35)))
    size = len(big.read_text())
    tree = base_tree([{"name": "t", "kind": "text", "paths": ["t"]}], filters={"max_chars": size // 2},
                     stages=[{"name": "s", "chunks": 1, "mix": {"t": 1}}])
    rc, _, err = cli(["prepare", write_config(tmp_path, tree), "--out", tmp_path / "run"], capsys)
    assert rc == 2
    assert f"{big}: {size} characters, more than data.filters.max_chars ({size // 2})" in err, err
    assert "no document passed the filters" in err
    assert "Traceback" not in err
