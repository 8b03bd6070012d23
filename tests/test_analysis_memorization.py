"""Memorization (Analysis360): planted passages become k-extractable, unseen chunks stay a
control, scores equal transformers' greedy decoding, resume, formats and plots."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from helpers_analysis import SAMPLES, STEPS_PER_CHUNK, brute_force, copy_run, planted_run, row_sources, torch_threads
from llm360.analysis import memorization as mem
from llm360.analysis.memorization import memorization, parse_chunks, read_scores, read_summary, sample_rows
from llm360.errors import UserError
from llm360.utils import read_jsonl

K = L = 32


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return planted_run(tmp_path_factory)


@pytest.fixture(autouse=True)
def one_thread():
    with torch_threads(1):
        yield


def scores_by(run: Path) -> list[dict]:
    return read_scores(run).to_pylist()


def by_source(run: Path, checkpoint: str) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    sources = {c: row_sources(run, c) for c in range(3)}
    for r in scores_by(run):
        if r["checkpoint"] == checkpoint:
            out.setdefault(sources[r["chunk"]][r["row"]], []).append(r["score"])
    return out


# -- pure pieces ----------------------------------------------------------------------------


def test_sample_rows_are_seeded_sorted_and_nested():
    a = sample_rows(7, 3, 1000, 50)
    assert a.tolist() == sample_rows(7, 3, 1000, 50).tolist() == sorted(set(a.tolist()))
    assert set(a.tolist()) <= set(sample_rows(7, 3, 1000, 200).tolist())  # more samples keep the rows
    assert a.tolist() != sample_rows(7, 4, 1000, 50).tolist() != sample_rows(8, 3, 1000, 50).tolist()
    assert sample_rows(7, 3, 10, 50).tolist() == list(range(10))


def test_parse_chunks():
    assert parse_chunks(None, 4) == [0, 1, 2, 3] == parse_chunks("all", 4)
    assert parse_chunks("3,0-1", 4) == [0, 1, 3] and parse_chunks([2], 4) == [2]
    with pytest.raises(UserError, match="chunk 4 does not exist"):
        parse_chunks("4", 4)
    with pytest.raises(UserError, match="chunks must look like"):
        parse_chunks("x", 4)


# -- the planted run ------------------------------------------------------------------------


def test_planted_passage_becomes_extractable_and_random_rows_do_not(run):
    last = by_source(run, "ckpt_001")
    assert len(last["a"]) >= 10 and len(last["random"]) >= 2
    assert np.mean(last["a"]) >= 0.95 and np.mean([s == 1.0 for s in last["a"]]) >= 0.9
    assert np.mean(last["random"]) < 0.3 and max(last["random"]) < 1.0
    init = by_source(run, "init")
    assert max(s for scores in init.values() for s in scores) < 0.3


def test_unseen_chunks_are_a_control(run):
    summary = {(r["checkpoint"], r["chunk"]): r for r in read_summary(run)}
    assert {k: r["seen"] for k, r in summary.items()} == {
        ("init", 0): False, ("init", 1): False, ("init", 2): False,
        ("ckpt_000", 0): True, ("ckpt_000", 1): False, ("ckpt_000", 2): False,
        ("step_0000030", 0): True, ("step_0000030", 1): False, ("step_0000030", 2): False,
        ("ckpt_001", 0): True, ("ckpt_001", 1): True, ("ckpt_001", 2): False,
    }
    seen = [summary[("ckpt_001", c)]["mean_score"] for c in (0, 1)]
    unseen = summary[("ckpt_001", 2)]
    assert min(seen) > 0.6 and unseen["mean_score"] < 0.1 and unseen["extractable_frac"] == 0.0
    # the b rows of the unseen chunk are as unknown to the model as they were at init
    assert np.mean(by_source(run, "ckpt_001")["b"]) < 0.1
    # per row: seen means the step that trained on the row came before the checkpoint
    for r in scores_by(run):
        assert r["row_step"] == r["chunk"] * STEPS_PER_CHUNK + r["row"] // 8
        assert r["seen"] == (r["row_step"] < r["step"])
    partial = [r["seen"] for r in scores_by(run) if r["checkpoint"] == "step_0000030" and r["chunk"] == 1]
    assert any(partial) and not all(partial)  # step 30 is half way through chunk 1


def test_output_formats(run):
    folder = run / "analysis" / "memorization"
    table = read_scores(run)
    assert table.column_names[:4] == ["checkpoint", "step", "chunk", "row"]
    assert {"score", "extractable", "train_count", "row_step", "seen", "matched"} <= set(table.column_names)
    rows = table.to_pylist()
    lines = read_jsonl(folder / "summary.jsonl")
    assert len(lines) == 4 * 3 and len(rows) == 4 * 3 * SAMPLES
    for rec in lines:
        assert list(rec)[:7] == ["checkpoint", "chunk", "seen", "n", "mean_score", "extractable_frac", "histogram"]
        assert len(rec["histogram"]) == L + 1 == 33 and sum(rec["histogram"]) == rec["n"] == SAMPLES
        assert (rec["prompt_tokens"], rec["continuation_tokens"]) == (K, L)
        mine = [r for r in rows if (r["checkpoint"], r["chunk"]) == (rec["checkpoint"], rec["chunk"])]
        assert [r["row"] for r in mine] == sample_rows(7, rec["chunk"], 20 * 8, SAMPLES).tolist()
        assert rec["mean_score"] == pytest.approx(np.mean([r["score"] for r in mine]))
        assert rec["extractable_frac"] == pytest.approx(np.mean([r["extractable"] for r in mine]))
        assert np.bincount([r["matched"] for r in mine], minlength=L + 1).tolist() == rec["histogram"]
        assert all(r["score"] == r["matched"] / L and r["extractable"] == (r["matched"] == L) for r in mine)
    assert not (folder / ".parts").exists()
    pytest.importorskip("matplotlib")
    for name in ("memorization_by_chunk", "memorization_histogram", "memorization_correlation",
                 "memorization_chunk_000"):
        assert (run / "analysis" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_train_count_of_extractable_rows_matches_brute_force(run):
    from llm360.analysis.search import EXTRA_HINT, available_backends
    from llm360.data.store import RunData

    if not available_backends():
        pytest.skip(f"train_count needs the search index: {EXTRA_HINT}")

    data = RunData(run)
    chunks = np.concatenate([np.asarray(data.chunk(c)) for c in range(data.n_chunks)])
    counted = 0
    for r in scores_by(run):
        if not r["extractable"]:
            assert r["train_count"] is None
            continue
        window = np.asarray(data.chunk(r["chunk"])[r["row"], :K + L])
        assert r["train_count"] == len(brute_force(chunks, window)) > 1
        counted += 1
    assert counted >= 10


def test_scores_equal_transformers_greedy_generate(run):
    transformers = pytest.importorskip("transformers")
    import torch

    from llm360.data.store import RunData

    data = RunData(run)
    model = transformers.AutoModelForCausalLM.from_pretrained(run / "checkpoints" / "ckpt_001").eval()
    model.generation_config.eos_token_id = None  # score all l tokens, as Analysis360
    model.generation_config.pad_token_id = 0
    mine = [r for r in scores_by(run) if r["checkpoint"] == "ckpt_001"]
    rows = np.stack([np.asarray(data.chunk(r["chunk"])[r["row"], :K + L], dtype=np.int64) for r in mine])
    prompt = torch.from_numpy(rows[:, :K])
    with torch.inference_mode():
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=L, do_sample=False)
    matched = (out[:, K:].numpy() == rows[:, K:]).sum(1)
    assert matched.tolist() == [r["matched"] for r in mine]
    assert sum(r["extractable"] for r in mine) >= 10


# -- resume, CLI, plots ---------------------------------------------------------------------


def test_resume_skips_finished_pairs_after_an_interruption(run, tmp_path, monkeypatch):
    work = copy_run(run, tmp_path / "run")
    commit, calls = mem._commit, []

    def flaky(*args, **kwargs):
        if len(calls) == 5:
            raise KeyboardInterrupt
        calls.append(args[2])
        return commit(*args, **kwargs)

    monkeypatch.setattr(mem, "_commit", flaky)
    with pytest.raises(KeyboardInterrupt):
        memorization(work, checkpoints="init,0,1", chunks="0-2", samples=4, plots=False, quiet=True)
    first = read_jsonl(work / "analysis" / "memorization" / "summary.jsonl")
    assert len(first) == 5
    # a part written by a run killed before its summary line: dropped, never counted
    stray = {"checkpoint": ["ckpt_001"] * 2, "step": [40] * 2, "chunk": [2] * 2, "row": [0, 1], "row_step": [40] * 2,
             "seen": [False] * 2, "score": [1.0] * 2, "matched": [32] * 2, "extractable": [True] * 2,
             "train_count": [None] * 2, "time": [123.0] * 2}
    mem._write_parquet(mem._scores_table(stray), work / "analysis" / "memorization" / ".parts" / "stray.parquet")
    monkeypatch.setattr(mem, "_commit", commit)
    result = memorization(work, checkpoints="init,0,1", chunks="0-2", samples=4, plots=False, quiet=True)
    lines = read_jsonl(work / "analysis" / "memorization" / "summary.jsonl")
    assert lines[:5] == first and len(lines) == 9 and len({(r["checkpoint"], r["chunk"]) for r in lines}) == 9
    assert len(result) == 9 and len(read_scores(work)) == 9 * 4
    assert not (work / "analysis" / "memorization" / ".parts").exists()
    before = (work / "analysis" / "memorization" / "summary.jsonl").read_bytes()
    again = memorization(work, checkpoints="init,0,1", chunks="0-2", samples=4, plots=False, quiet=True)
    assert again == result and (work / "analysis" / "memorization" / "summary.jsonl").read_bytes() == before
    # the same pairs with the full run's numbers for the rows both scored
    full = {(r["checkpoint"], r["chunk"], r["row"]): r["score"] for r in scores_by(run)}
    for r in scores_by(work):
        key = (r["checkpoint"], r["chunk"], r["row"])
        assert key not in full or full[key] == r["score"]


def test_cli_prints_a_table_and_skips_plots_without_matplotlib(run, tmp_path, monkeypatch, capsys):
    from llm360.analysis import plots
    from llm360.cli import main

    work = copy_run(run, tmp_path / "run")
    monkeypatch.setattr(plots, "_pyplot", lambda: None)
    assert main(["analyze", "memorization", str(work), "--checkpoints", "last", "--chunks", "0,2",
                 "--samples", "3"]) == 0
    out, err = capsys.readouterr()
    assert "ckpt_001" in out and "unseen chunks" in out
    assert "matplotlib is not installed" in out + err and "llm360[plots]" in out + err
    assert [(r["checkpoint"], r["chunk"], r["n"]) for r in read_summary(work)] == [("ckpt_001", 0, 3), ("ckpt_001", 2, 3)]
    assert not list((work / "analysis").glob("*.png"))
    assert main(["analyze", "memorization", str(work), "--checkpoints", "ckpt_077"]) == 2
    assert "no checkpoint 'ckpt_077'" in capsys.readouterr().err


def test_prompt_longer_than_rows_is_refused(run, tmp_path):
    import yaml

    work = copy_run(run, tmp_path / "run")
    cfg = yaml.safe_load((work / "run.yaml").read_text())
    cfg["analysis"]["memorization"].update(prompt_tokens=40, continuation_tokens=40)
    (work / "run.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(UserError, match="rows have 65"):
        memorization(work, quiet=True)


def test_summary_lines_are_json(run):
    for line in (run / "analysis" / "memorization" / "summary.jsonl").read_text().splitlines():
        rec = json.loads(line)
        assert isinstance(rec["seen"], bool) and isinstance(rec["histogram"], list)


def test_damaged_checkpoint_is_skipped(run, tmp_path, capsys):
    work = copy_run(run, tmp_path / "run")
    with open(work / "checkpoints" / "ckpt_000" / "model.safetensors", "ab") as f:
        f.write(b"\0")
    result = memorization(work, checkpoints="0,1", chunks="0", samples=2, plots=False, train_counts=False)
    assert [r["checkpoint"] for r in result] == ["ckpt_001"]
    assert "skipping checkpoint ckpt_000" in capsys.readouterr().err


def test_rows_of_skipped_batches_are_not_seen(tiny_run):
    """A batch the spike guard skipped was never trained on: its rows are not `seen`."""
    from llm360.analysis.memorization import memorization, read_scores
    from llm360.train.trainer import apply_train_overrides, run_training

    run_training(tiny_run, apply_train_overrides(tiny_run, ["--train.fault_injection.nan_at_steps=[4]",
                                                            "--train.spike.action=skip"]))
    with torch_threads(1):
        memorization(tiny_run, checkpoints="ckpt_002", chunks="1", samples=12, plots=False, train_counts=False,
                     quiet=True)
    rows = read_scores(tiny_run).to_pylist()
    assert len(rows) == 12  # every row of chunk 1: steps 3, 4, 5 of 4 rows each
    for r in rows:
        assert r["row_step"] == 3 + r["row"] // 4
        assert r["seen"] == (r["row_step"] != 4), r
