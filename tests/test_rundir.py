"""The run directory's grammar (llm360.rundir): checkpoint names, their order, selection,
checksums and the typed manifest, on real folders."""

import json
import subprocess
import sys

import pytest

from llm360.errors import UserError
from llm360.rundir import (CheckpointName, Manifest, ManifestError, RunDir, TrainerState, checkpoint_problems,
                           checksum_problems, chunk_checkpoint_name, compute_fingerprint, parse_checksums,
                           step_checkpoint_name, write_checksums)


def make_checkpoints(root, names):
    for name in names:
        folder = root / "checkpoints" / name
        (folder / "trainer_state").mkdir(parents=True)
        (folder / "trainer_state" / "state.json").write_text("{}")
        write_checksums(folder)


def test_names_parse_and_order(tmp_path):
    assert chunk_checkpoint_name(3, 10) == "ckpt_003" and chunk_checkpoint_name(3, 1001) == "ckpt_0003"
    assert step_checkpoint_name(30) == "step_0000030"
    assert CheckpointName.parse("ckpt_012") == CheckpointName("ckpt", 12)
    assert CheckpointName.parse("ckpt_1x") is None and CheckpointName.parse("ckpt_") is None
    assert CheckpointName.parse("ckpt_²") is None  # str.isdigit() alone would take it
    names = ["ckpt_001", "step_0000030", "init", "ckpt_000", "step_0000020"]
    make_checkpoints(tmp_path, names)
    (tmp_path / "checkpoints" / ".ckpt_002.tmp-99").mkdir()
    (tmp_path / "checkpoints" / "notes").mkdir()
    run = RunDir(tmp_path)
    found = run.checkpoints(20)
    # at 20 steps, ckpt_000 and step_0000020 hold the same weights: the chunk checkpoint is last
    assert [c.name for c in found] == ["init", "step_0000020", "ckpt_000", "step_0000030", "ckpt_001"]
    assert [c.steps_done for c in found] == [0, 20, 20, 30, 40]
    assert [p.name for p in run.checkpoint_temporaries()] == [".ckpt_002.tmp-99"]


def test_selection_grammar(tmp_path):
    make_checkpoints(tmp_path, ["init", "ckpt_000", "step_0000030", "ckpt_001"])
    run = RunDir(tmp_path)
    names = lambda spec: [c.name for c in run.select(spec, 20)]  # noqa: E731
    assert names("all") == names(None) == ["init", "ckpt_000", "step_0000030", "ckpt_001"]
    assert names("last") == ["ckpt_001"]
    assert names("1,init") == ["init", "ckpt_001"] == names(["ckpt_001", "init", "1"])
    assert names("ckpt_1") == ["ckpt_001"]  # the number, not the padding
    assert run.resolve(0, 20).name == "ckpt_000"
    with pytest.raises(UserError, match="no checkpoint 'ckpt_009'.*checkpoints: init, ckpt_000"):
        run.select("ckpt_009", 20)
    with pytest.raises(UserError, match="has no checkpoints"):
        RunDir(tmp_path / "empty").select("all", 20)


def test_checksums_find_every_change(tmp_path):
    folder = tmp_path / "ckpt_000"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.bin").write_bytes(b"a" * 10)
    (folder / "sub" / "b.json").write_text("{}")
    write_checksums(folder, {"a.bin": "0" * 64})  # hashes computed while writing are trusted
    assert checksum_problems(folder) == ["ckpt_000/a.bin: sha256 differs"]
    write_checksums(folder)
    assert checksum_problems(folder) == []
    (folder / "extra").write_text("x")
    (folder / "sub" / "b.json").unlink()
    assert checksum_problems(folder) == ["ckpt_000/sub/b.json: missing", "ckpt_000/extra: not in CHECKSUMS.sha256"]
    sums, bad = parse_checksums("nothex  a\n" + "f" * 64 + "  b\n\n")
    assert sums == {"b": "f" * 64} and bad == [1]
    (folder / "CHECKSUMS.sha256").unlink()
    assert checksum_problems(folder) == ["ckpt_000: no CHECKSUMS.sha256 (incomplete)"]


def test_checkpoint_without_state_is_incomplete(tmp_path):
    make_checkpoints(tmp_path, ["ckpt_000"])
    info = RunDir(tmp_path).checkpoints(4)[0]
    assert checkpoint_problems(info) == []
    (info.path / "trainer_state" / "state.json").unlink()
    write_checksums(info.path)
    assert checkpoint_problems(info) == ["ckpt_000: no trainer_state/state.json"]


def manifest_dict():
    return {
        "format": "llm360-data/1", "seed": 0, "seq_len": 8, "row_tokens": 9, "global_batch_rows": 2,
        "steps_per_chunk": 3, "rows_per_chunk": 6, "dtype": "uint16",
        "tokenizer": {"sha256": "t" * 64, "vocab_size": 300, "eos_id": 0, "file": "tokenizer/tokenizer.json"},
        "sources": [{"name": "prose", "kind": "text", "tokens": 100, "rows": 10, "license": "cc0"}],
        "stages": [{"index": 0, "name": "s", "first_chunk": 0, "chunks": 2, "mix": {"prose": 1.0}, "rewarm_steps": 0}],
        "chunks": [{"index": i, "stage": 0, "file": f"chunks/chunk_{i:03d}.npy", "sha256": str(i) * 64, "rows": 6,
                    "tokens": 54, "spans_file": f"chunks/chunk_{i:03d}.spans.parquet", "spans_sha256": "s" * 64}
                   for i in range(2)],
        "heldout": [{"source": "prose", "file": "heldout/prose.npy", "sha256": "h" * 64, "rows": 1}],
        "documents": {"file": "documents.parquet", "sha256": "d" * 64, "count": 4},
    }


def test_manifest_is_typed_and_keeps_unknown_keys():
    raw = manifest_dict()
    raw["fingerprint"] = compute_fingerprint(raw)
    m = Manifest.from_json(raw)
    assert m.n_chunks == 2 and m.total_steps == 6 and m.tokens_per_step == 16
    assert m.sources[0].extra == {"license": "cc0"} and m.sources[0].to_json() == raw["sources"][0]
    assert m.stage_of_chunk(1).name == "s" and m.stage_of_chunk(2) is None
    assert compute_fingerprint(m) == raw["fingerprint"]


@pytest.mark.parametrize("change, message", [
    (lambda m: m.update(format="other/1"), "format 'other/1'"),
    (lambda m: m.update(seq_len="8"), "seq_len must be an integer"),
    (lambda m: m["chunks"][1].update(index=5), r"chunks\[1\] has index 5"),
    (lambda m: m["chunks"][0].pop("sha256"), r"chunks\[0\] has no 'sha256'"),
    (lambda m: m.update(stages={}), "stages is not a list"),
])
def test_manifest_errors_name_the_key(change, message):
    raw = manifest_dict()
    change(raw)
    with pytest.raises(ManifestError, match=message):
        Manifest.from_json(raw, "RUN/data/manifest.json")


def test_trainer_state_round_trip():
    state = TrainerState(steps_done=8, tokens=128, skipped_steps=[3], seed=7)
    obj = {**state.to_json(), "future_key": 1}
    again = TrainerState.from_json(json.loads(json.dumps(obj)))
    assert again.steps_done == 8 and again.skipped_steps == [3] and again.extra == {"future_key": 1}
    with pytest.raises(UserError, match="skipped_steps"):
        TrainerState.from_json({"steps_done": 1, "skipped_steps": ["x"]})


def test_rundir_imports_no_torch():
    code = "import sys, llm360.rundir; assert 'torch' not in sys.modules and 'numpy' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
