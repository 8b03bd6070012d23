"""`llm360 run`: the whole pipeline, resumable after an interruption in any stage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from conftest import tiny_config
from llm360.cli import main
from llm360.pipeline import run_pipeline
from llm360.release.verify import verify

SHARED_BENCHMARKS = Path(__file__).resolve().parents[2] / "shared" / "benchmarks"


def config(tmp_path: Path) -> Path:
    tasks = ["arc_easy"] if SHARED_BENCHMARKS.exists() else []
    return tiny_config(tmp_path, eval={"every_checkpoint": True, "tasks": tasks, "max_questions": 8},
                       analysis={"memorization": {"samples_per_chunk": 4}})


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One uninterrupted run, the reference for the interrupted ones."""
    root = tmp_path_factory.mktemp("finished")
    cfg = config(root)
    run = root / "run"
    assert main(["run", str(cfg), "--out", str(run)]) == 0
    return cfg, run


def test_run_produces_a_verified_release(finished, capsys):
    cfg, run = finished
    for path in ["run.yaml", "env.json", "data/manifest.json", "checkpoints/init", "checkpoints/ckpt_002",
                 "metrics/train.jsonl", "metrics/eval.jsonl", "analysis/memorization/summary.jsonl",
                 "report/index.html", "MODEL_CARD.md", "DATA_CARD.md", "release.json"]:
        assert (run / path).exists(), path
    assert verify(run) == []
    evaluated = {json.loads(line)["checkpoint"] for line in (run / "metrics" / "eval.jsonl").open()}
    assert evaluated >= {"init", "ckpt_000", "ckpt_001", "ckpt_002"}
    # a finished run does nothing the second time, and says so
    before = (run / "release.json").read_bytes()
    assert main(["run", str(cfg), "--out", str(run)]) == 0
    assert "nothing to do" in capsys.readouterr().err
    assert (run / "release.json").read_bytes() == before


def _interrupt_on_call(monkeypatch, owner, name: str, call: int):
    """Let the real `owner.name` run `call - 1` times, then interrupt on the next call, after
    it has done its work (so the interruption leaves that stage half done)."""
    real = getattr(owner, name)
    calls = {"n": 0}

    def wrapped(*args, **kwargs):
        calls["n"] += 1
        result = real(*args, **kwargs)
        if calls["n"] == call:
            raise KeyboardInterrupt(f"interrupted in {name}")
        return result

    monkeypatch.setattr(owner, name, wrapped)


def _stage_targets():
    import llm360.analysis.memorization as memorization
    import llm360.data.prepare as prepare
    import llm360.eval.runner as runner
    import llm360.release.release as release
    from llm360.train.trainer import Trainer

    return {
        "prepare": (prepare, "assemble", 1),
        "train": (Trainer, "_checkpoint", 2),
        "eval": (runner, "evaluate_checkpoint", 2),
        "memorization": (memorization, "_commit", 3),
        "release": (release, "_write_if_changed", 2),
    }


@pytest.mark.parametrize("stage", ["prepare", "train", "eval", "memorization", "release"])
def test_run_resumes_after_an_interruption(finished, tmp_path, monkeypatch, stage):
    _, reference = finished
    cfg = config(tmp_path)
    run = tmp_path / "run"
    owner, name, call = _stage_targets()[stage]
    with monkeypatch.context() as patch:
        _interrupt_on_call(patch, owner, name, call)
        with pytest.raises(KeyboardInterrupt):
            run_pipeline(str(cfg), str(run), [])
    if stage == "prepare":
        assert not run.exists() and not list(tmp_path.glob(".run.prepare-*"))  # nothing half-written
    run_pipeline(str(cfg), str(run), [])
    assert verify(run) == []
    ours = load_file(run / "checkpoints" / "ckpt_002" / "model.safetensors")
    ref = load_file(reference / "checkpoints" / "ckpt_002" / "model.safetensors")
    assert all((ours[k] == ref[k]).all() for k in ref)
    lines = [json.loads(line) for line in (run / "metrics" / "eval.jsonl").open()]
    keys = [(r["checkpoint"], r["task"], r["metric"]) for r in lines]
    assert len(keys) == len(set(keys))  # nothing evaluated twice
    ref_lines = [json.loads(line) for line in (reference / "metrics" / "eval.jsonl").open()]
    assert sorted(keys) == sorted((r["checkpoint"], r["task"], r["metric"]) for r in ref_lines)
    summary = [json.loads(line) for line in (run / "analysis" / "memorization" / "summary.jsonl").open()]
    ref_summary = [json.loads(line) for line in (reference / "analysis" / "memorization" / "summary.jsonl").open()]
    pairs = {(r["checkpoint"], r["chunk"]): r["mean_score"] for r in summary}
    assert pairs == {(r["checkpoint"], r["chunk"]): r["mean_score"] for r in ref_summary}
