"""A release read as hostile: damaged JSON is a finding naming the file, never a crash; a torn
JSONL line is named and costs only itself; a forgery is caught by the release root; an extra
file is reported without being read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers_release import copy_run, released_template
from llm360.cli import main
from llm360.release import files as release_files
from llm360.release.facts import gather
from llm360.release.verify import check
from llm360.utils import sha256_file

DEEP = "[" * 5000 + "]" * 5000
STATE = "checkpoints/ckpt_001/trainer_state/state.json"

HOSTILE = {
    "release.json": [DEEP, b"\xff\xfe{}", '{"format": "llm360-release/1", "files": [["run.yaml", 1]], "checkpoints": [1, 2]}',
                     '{"format": ' + DEEP + ', "files": []}', "null"],
    "data/manifest.json": [DEEP, b"\xff\xfe{}", '{"chunks": 5, "stages": ["a"], "heldout": 3, "tokenizer": [1], "fingerprint": [2]}',
                           '{"chunks": [{"file": 5, "sha256": [1], "index": "x"}], "steps_per_chunk": "3"}', "[]"],
    STATE: [DEEP, b"\xff\xfe{}", '{"tokens": {"a": 1}, "fingerprint": [1], "skipped_steps": 4}', "7"],
}


def _release_json_shapes(run: Path) -> list[str]:
    """Wrong types inside an otherwise whole release.json."""
    record = json.loads((run / "release.json").read_text())
    shapes = []
    for key, value in (("files", [[1, 2], "x", None]), ("checkpoints", [1, "ckpt_000", None]), ("data", [1]),
                       ("checkpoints", {"name": "init"})):
        shapes.append(json.dumps({**record, key: value}))
    bytes_as_text = [{**f, "bytes": str(f["bytes"])} for f in record["files"]]
    shapes.append(json.dumps({**record, "files": bytes_as_text}))
    return shapes


@pytest.fixture
def run(prepared_template, tmp_path_factory, tmp_path) -> Path:
    return copy_run(released_template(prepared_template, tmp_path_factory), tmp_path / "run")


def _assert_named_without_a_crash(run: Path, rel: str, capsys) -> None:
    result = check(run)
    assert result.findings and any(f.path == rel for f in result.findings), result.findings
    assert main(["verify", str(run)]) == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err and rel in captured.out


@pytest.mark.parametrize("rel", sorted(HOSTILE))
def test_hostile_json_is_a_finding_never_a_crash(run, rel, capsys):
    for shape in HOSTILE[rel]:
        path = run / rel
        path.write_bytes(shape if isinstance(shape, bytes) else shape.encode())
        _assert_named_without_a_crash(run, rel, capsys)
        gather(run)  # the report's reader keeps what it can
        # a damaged release.json is replaced; anything else is refused in one sentence
        assert main(["release", str(run)]) == (0 if rel == "release.json" else 2)
        assert "Traceback" not in capsys.readouterr().err


def test_wrong_types_inside_release_json_are_findings(run, capsys):
    for shape in _release_json_shapes(run):
        (run / "release.json").write_text(shape)
        _assert_named_without_a_crash(run, "release.json", capsys)


def test_a_deep_metrics_line_is_a_finding_and_release_refuses_in_one_sentence(run, capsys):
    with open(run / "metrics" / "train.jsonl", "a") as f:
        f.write(DEEP + "\n")
    findings = [str(f) for f in check(run).findings]
    assert any(f.startswith("metrics/train.jsonl:") and "torn or damaged" in f for f in findings), findings
    (run / "data" / "manifest.json").write_text(DEEP)
    assert main(["release", str(run)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "data/manifest.json" in err


# -- torn lines ---------------------------------------------------------------------------------


def _tear(path: Path, line: int) -> None:
    """Cut line `line` (from 1) short in the middle, as a crash mid-append followed by a resume does."""
    lines = path.read_text().splitlines(keepends=True)
    lines[line - 1] = lines[line - 1][: len(lines[line - 1]) // 2] + "\n"  # e.g. `{"time": 1, "st`
    path.write_text("".join(lines))


def test_a_torn_events_line_costs_only_itself(run, capsys):
    events = run / "metrics" / "events.jsonl"
    whole = len(events.read_text().splitlines())
    _tear(events, 1)
    facts = gather(run)
    assert len(facts.events) == whole - 1 and facts.skipped_batches()  # the skipped batch is still there
    assert f"{events}:1 is not a JSON record" in capsys.readouterr().err
    result = check(run)
    torn = [f for f in result.findings if f.kind == "invalid"]
    assert [str(f) for f in torn] == ["metrics/events.jsonl:1: not a JSON record (a torn or damaged line)"]
    assert main(["release", str(run)]) == 0
    card = (run / "MODEL_CARD.md").read_text()
    assert "No events recorded" not in card and "Batches left out of training: 1" in card
    assert [str(f) for f in check(run).findings] == [str(torn[0])]  # released, and still named


def test_a_torn_analysis_line_is_a_finding(run):
    _tear(run / "analysis" / "memorization" / "summary.jsonl", 2)
    findings = [str(f) for f in check(run).findings]
    assert "analysis/memorization/summary.jsonl:2: not a JSON record (a torn or damaged line)" in findings


def test_a_torn_eval_line_is_skipped_and_repaired_before_appending(tmp_path, capsys):
    from llm360.eval.results import EvalLog

    log = EvalLog(tmp_path)
    row = {"checkpoint": "init", "step": 0, "tokens": 0, "task": "t", "metric": "acc", "value": 0.5, "stderr": 0.1,
           "n": 4}
    log.write([row])
    with open(log.path, "a") as f:
        f.write('{"checkpoint": "ckpt_000", "st\n')  # torn in the middle, then more whole lines
    log.write([{**row, "checkpoint": "ckpt_001"}])
    with open(log.path, "a") as f:
        f.write('{"checkpoint": "ckpt_002", "ta')  # torn at the end: no newline
    assert [r["checkpoint"] for r in log.read()] == ["init", "ckpt_001"]
    assert f"{log.path}:2 is not a JSON record" in capsys.readouterr().err
    log.write([{**row, "checkpoint": "ckpt_002", "value": float("nan")}])
    lines = log.path.read_text().splitlines()
    assert len(lines) == 4 and json.loads(lines[-1])["value"] is None  # strict JSON: NaN as null
    assert [r["checkpoint"] for r in log.read()] == ["init", "ckpt_001", "ckpt_002"]
    assert log.done("ckpt_002", "t", ("acc",))


def test_read_jsonl_report_and_repair_torn_tail(tmp_path):
    from llm360.utils import read_jsonl, read_jsonl_report, repair_torn_tail

    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"a": 1}\n{"a": \n[1]\n\xff\n\n' + DEEP.encode() + b'\n{"a": 2}\n{"a": 3')
    assert read_jsonl_report(path) == ([{"a": 1}, {"a": 2}], [2, 3, 4, 6, 8])
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]
    assert repair_torn_tail(path) and path.read_bytes().endswith(b'{"a": 2}\n')
    assert not repair_torn_tail(path) and not repair_torn_tail(tmp_path / "absent.jsonl")
    long = tmp_path / "long.jsonl"  # a torn line longer than one read block: only it is cut
    long.write_bytes(b'{"a": 1}\n' + b"x" * (3 << 20))
    assert repair_torn_tail(long) and long.read_bytes() == b'{"a": 1}\n'


# -- the release root ---------------------------------------------------------------------------


def _forge_a_chunk(run: Path) -> None:
    """Change a chunk and write its new hash into release.json."""
    chunk = run / "data" / "chunks" / "chunk_001.npy"
    data = bytearray(chunk.read_bytes())
    data[-1] ^= 1
    chunk.write_bytes(bytes(data))
    record = json.loads((run / "release.json").read_text())
    for entry in record["files"]:
        if entry["path"] == "data/chunks/chunk_001.npy":
            entry["sha256"] = sha256_file(chunk)
    (run / "release.json").write_text(json.dumps(record, indent=2) + "\n")


def test_the_release_root_pins_every_file(run, capsys):
    root = sha256_file(run / "release.json")
    assert f"llm360-root:{root}" in (run / "MODEL_CARD.md").read_text()
    assert f"llm360-root:{root}" in (run / "report" / "index.html").read_text()
    assert main(["verify", str(run), "--expect", root]) == 0
    capsys.readouterr()
    assert main(["release", str(run)]) == 0
    printed = capsys.readouterr().out.split()
    assert printed[:2] == ["release", "root"] and printed[2] == sha256_file(run / "release.json")
    root = printed[2]

    record = json.loads((run / "release.json").read_text())  # a forgery the root alone reveals:
    record["training_environment"]["gpu"] = "a forged GPU"  # no file changed, release.json did
    (run / "release.json").write_text(json.dumps(record, indent=2) + "\n")
    findings = [str(f) for f in check(run, expect=root).findings]
    assert any(f.startswith("release.json: its sha256 (the release root) is ") for f in findings)
    # the documents show the root: a release.json changed without them no longer matches them
    assert any(f.startswith("MODEL_CARD.md: shows the release root") for f in findings)
    assert main(["verify", str(run), "--expect", "xyz"]) == 2


def test_a_self_consistent_forgery_fails_against_the_expected_root(run):
    root = sha256_file(run / "release.json")
    _forge_a_chunk(run)
    assert not any(f.path == "data/chunks/chunk_001.npy" and f.kind == "changed" for f in check(run).findings)
    findings = [str(f) for f in check(run, expect=root).findings]
    assert any(f.startswith("release.json: its sha256 (the release root)") for f in findings), findings


def test_a_document_showing_another_root_is_a_finding(run):
    root = sha256_file(run / "release.json")
    card = run / "MODEL_CARD.md"
    card.write_text(card.read_text().replace(root, "ab" * 32))  # same normal form, wrong root
    findings = [str(f) for f in check(run).findings]
    assert findings == [f"MODEL_CARD.md: shows the release root {'ab' * 32}, but release.json's sha256 is {root}"]
    card.write_text(card.read_text().replace("ab" * 32, root) + "one more line\n")
    assert [str(f) for f in check(run).findings][0].startswith("MODEL_CARD.md: ")


# -- extra files ------------------------------------------------------------------------------


def test_an_extra_file_is_reported_without_being_read(run, monkeypatch):
    big = run / "metrics" / "huge.bin"
    with open(big, "wb") as f:
        f.truncate(10 << 30)  # 10 GiB, sparse
    read = []
    real = release_files.sha256_regular
    monkeypatch.setattr(release_files, "sha256_regular", lambda p, progress=None: read.append(Path(p)) or real(p, progress))
    result = check(run)
    assert [str(f) for f in result.findings] == ["metrics/huge.bin: not listed in release.json (an extra file)"]
    assert big not in read and result.bytes < 1 << 30

