"""Stages of different lengths: each stage its own steps per chunk (Crystal's phases had 79,721,
214,387 and 27,728 steps), with the step rule still a pure function of the step."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import tiny_config
from llm360.cli import main
from llm360.data.store import RunData, batch_at
from llm360.rundir import RunDir, StepRule, read_manifest
from llm360.train.trainer import apply_train_overrides, run_training
from llm360.utils import read_jsonl

STAGES = [{"name": "one", "chunks": 2, "mix": {"prose": 1.0}},  # 3 steps per chunk (train's)
          {"name": "two", "chunks": 1, "mix": {"prose": 1.0}, "steps_per_chunk": 5, "rewarm_steps": 1}]


@pytest.fixture(scope="module")
def uneven(tmp_path_factory):
    root = tmp_path_factory.mktemp("uneven")
    config = tiny_config(root, data={"stages": STAGES})
    run = root / "run"
    assert main(["prepare", str(config), "--out", str(run)]) == 0
    return run


def test_the_step_rule_by_hand():
    rule = StepRule([3, 3, 5], default=3, batch_rows=4)
    assert rule.total_steps == 11 and [rule.end(c) for c in range(3)] == [3, 6, 11]
    assert [rule.locate(t) for t in (0, 2, 3, 6, 10)] == [(0, 0), (0, 2), (1, 0), (2, 0), (2, 4)]
    assert [rule.chunks_seen(s) for s in (0, 2, 3, 10, 11)] == [0, 0, 1, 2, 3]
    assert rule.is_chunk_end(6) and not rule.is_chunk_end(7) and rule.end(4) == 17  # past the run: default


def test_prepare_cuts_each_stage_to_its_length(uneven):
    manifest = read_manifest(uneven)
    assert [c.rows for c in manifest.chunks] == [12, 12, 20]
    assert manifest.raw["stages"][1]["steps_per_chunk"] == 5 and "steps_per_chunk" not in manifest.raw["stages"][0]
    data = RunData(uneven)
    assert data.total_steps == 11 and data.verify_chunks() == []
    chunk2 = np.asarray(data.chunk(2))
    for step in range(6, 11):  # every step of the long chunk, by the rule
        j = step - 6
        assert np.array_equal(data.rows_at(step), chunk2[j * 4:(j + 1) * 4])
        assert np.array_equal(np.concatenate([data.rows_at(step, r, 2) for r in range(2)]), data.rows_at(step))
    assert [r["row"] for r in batch_at(data, 10)] == [16, 17, 18, 19] and batch_at(data, 10)[0]["chunk"] == 2
    with pytest.raises(Exception, match="outside the run"):
        data.rows_at(11)


def test_training_checkpoints_each_chunk_at_its_end_and_replays(uneven, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(uneven, run)
    assert run_training(run, apply_train_overrides(run, []))["finished"]
    infos = RunDir(run).checkpoints(read_manifest(run).step_rule)
    assert [(c.name, c.steps_done) for c in infos] == [("init", 0), ("ckpt_000", 3), ("ckpt_001", 6), ("ckpt_002", 11)]
    records = read_jsonl(run / "metrics" / "train.jsonl")
    assert [r["chunk"] for r in records] == [0] * 3 + [1] * 3 + [2] * 5
    stage_start = [e for e in read_jsonl(run / "metrics" / "events.jsonl") if e["kind"] == "stage_start"]
    assert [(e["stage"], e["step"]) for e in stage_start] == [("one", 0), ("two", 6)]
    lrs = [r["lr"] for r in records]
    assert lrs[7] == pytest.approx(3e-3)  # stage two re-warms over 1 step from its first step (6)
    from llm360.train.replay import replay

    result = replay(run, 2)
    assert result["bitwise_equal"] and result["steps"] == [6, 10]
    assert main(["release", str(run)]) == 0 and main(["verify", str(run)]) == 0
    import json

    table = json.loads((run / "release.json").read_text())["checkpoints"]
    assert [(c["name"], c["step"], c["chunks_seen"]) for c in table][-2:] == [("ckpt_001", 6, 2), ("ckpt_002", 11, 3)]
