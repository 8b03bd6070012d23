"""`llm360 analyze contamination`: benchmark items planted in training documents of the tiny
planted run are found at the right step, source and document; clean items stay clean; the
contaminated items, longest spans and first steps equal a brute-force n-gram scan of the chunks;
accuracy on clean vs contaminated items comes from per-question logs written here by hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helpers_analysis import PLANTED_A, PLANTED_B, STEPS_PER_CHUNK, brute_force, copy_run, planted_run, torch_threads
from llm360.analysis import search as search_mod
from llm360.analysis.contamination import contamination, scan
from llm360.analysis.search import build_index
from llm360.cli import main
from llm360.data.store import RunData

pytestmark = pytest.mark.skipif(not search_mod.available_backends(), reason=search_mod.EXTRA_HINT)
BATCH = 8  # global_batch_rows of the planted run


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    with torch_threads(1):
        return planted_run(tmp_path_factory)


def heldout_only_text(data: RunData, chunk_rows: np.ndarray) -> str:
    """Text of a held-out row of `random` none of whose 13-grams is in a chunk (never trained on)."""
    tok = data.tokenizer()
    for row in np.asarray(data.heldout("random")):
        text = tok.decode(row[8:48].tolist())
        ids = tok.encode(text, add_special_tokens=False).ids
        if all(not brute_force(chunk_rows, ids[i:i + 13]) for i in range(len(ids) - 12)):
            return text
    raise AssertionError("no held-out-only passage in the planted run")


def write_tasks(folder: Path, data: RunData, chunk_rows: np.ndarray) -> tuple[Path, Path]:
    """A question-format task: A (chunks 0-1), B (chunk 2, after the last checkpoint), a held-out
    passage, two clean items, a short item; and a benchmarks-format task around A."""
    a_words, b_words = PLANTED_A.split(" "), PLANTED_B.split(" ")
    qa = [
        {"id": "a", "question": " ".join(a_words[:9]), "choices": ["zebra", " ".join(a_words[9:])], "gold": 1},
        {"id": "clean1", "question": "Which planet hums?", "choices": ["Mars", "Saturn"], "gold": 0},
        {"id": "b", "question": "Recall: " + " ".join(b_words[:8]), "choices": [" ".join(b_words[8:])], "gold": 0},
        {"id": "held", "question": heldout_only_text(data, chunk_rows), "choices": ["yes", "no"], "gold": 1},
        {"id": "short", "question": " owls", "choices": ["recite"], "gold": 0},
        {"id": "clean2", "question": "Purple giraffes juggle quietly?", "choices": ["never", "often"], "gold": 1},
    ]
    bench = [{"id": "x", "requests": [["Lorem ipsum", " dolor"], ["Tide tables:" + PLANTED_A[:60], PLANTED_A[60:]]],
              "label": 1},
             {"id": "y", "requests": [["Plain", " text"], ["Other", " words"]], "label": 0}]
    paths = folder / "qa.jsonl", folder / "bench.jsonl"
    for path, rows in zip(paths, (qa, bench)):
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return paths


class Oracle:
    """Brute force over the chunk rows: sets of every k-gram of every row."""

    def __init__(self, chunk_rows: np.ndarray, row_chunk: list[tuple[int, int]]):
        self.rows, self.row_chunk, self.sets = chunk_rows, row_chunk, {}

    def grams(self, k: int) -> set:
        if k not in self.sets:
            w = np.lib.stride_tricks.sliding_window_view(self.rows, k, axis=1).reshape(-1, k)
            self.sets[k] = set(map(tuple, w.tolist()))
        return self.sets[k]

    def has(self, tokens: list[int], k: int) -> list[int]:
        return [i for i in range(len(tokens) - k + 1) if tuple(tokens[i:i + k]) in self.grams(k)]

    def __call__(self, tokens: list[int], n: int):
        """contaminated, longest span, matching n-grams, first (chunk, row, offset)."""
        n = min(n, len(tokens))
        matched = self.has(tokens, n)
        longest = 0
        while longest < len(tokens) and self.has(tokens, longest + 1):  # a span of k holds one of k - 1
            longest += 1
        first = None
        if matched:
            r, o = min(min(brute_force(self.rows, tokens[i:i + n])) for i in matched)
            first = (*self.row_chunk[r], o)
        return bool(matched), longest, len(matched), first


def test_contamination_equals_brute_force_and_finds_the_step(run, tmp_path):
    work = copy_run(run, tmp_path / "run", analysis=True)
    data = RunData(work)
    blocks = [np.asarray(data.chunk(c)) for c in range(data.n_chunks)]
    chunk_rows = np.concatenate(blocks)
    row_chunk = [(c, r) for c, b in enumerate(blocks) for r in range(len(b))]
    qa, bench = write_tasks(tmp_path, data, chunk_rows)
    records = scan(work, [str(qa), str(bench)], 13)
    oracle = Oracle(chunk_rows, row_chunk)
    by_id = {r["id"]: r for r in records}
    tok = data.tokenizer()
    uris = dict(zip(data.documents().column("doc_id").to_pylist(), data.documents().column("uri").to_pylist()))
    for r in records:
        path = qa if r["task"] == "qa" else bench
        line = [json.loads(x) for x in path.read_text().splitlines()][r["question"]]
        text = (line["question"] + " " + line["choices"][line["gold"]] if "question" in line
                else "".join(line["requests"][line["label"]]))
        ids = tok.encode(text, add_special_tokens=False).ids
        dirty, longest, matched, first = oracle(ids, 13)
        assert (r["contaminated"], r["longest_span"], r["matched_ngrams"], r["tokens"]) == (dirty, longest, matched, len(ids)), r["id"]
        if first is None:
            assert r["first_step"] is None and r["uri"] is None
            continue
        c, row, offset = first
        assert (r["chunk"], r["row"], r["offset"]) == (c, row, offset)
        assert r["first_step"] == c * STEPS_PER_CHUNK + row // BATCH  # the step rule
        spans = data.spans(c).to_pydict()
        doc = next(d for k, d in enumerate(spans["doc_id"]) if spans["row"][k] == row
                   and spans["offset"][k] <= offset < spans["offset"][k] + spans["length"][k])
        assert r["doc_id"] == doc and r["uri"] == uris[doc]
    assert by_id["a"]["contaminated"] and by_id["a"]["source"] == "a" and by_id["a"]["uri"].startswith("doc_")
    assert by_id["a"]["first_step"] < 40 and by_id["a"]["first_checkpoint"] in ("step_0000030", "ckpt_000", "ckpt_001")
    assert by_id["a"]["first_checkpoint"] == ("ckpt_000" if by_id["a"]["first_step"] < 20 else "step_0000030"
                                              if by_id["a"]["first_step"] < 30 else "ckpt_001")
    assert by_id["b"]["contaminated"] and by_id["b"]["source"] == "b" and by_id["b"]["chunk"] == 2
    assert by_id["b"]["first_checkpoint"] is None  # chunk 2 was never trained (the run stops at ckpt_001)
    assert by_id["x"]["contaminated"] and by_id["x"]["source"] == "a"
    assert by_id["short"]["tokens"] < 13 and by_id["short"]["contaminated"]  # the whole short item occurs
    for clean in ("clean1", "clean2", "held", "y"):  # held-out rows are not training data
        assert not by_id[clean]["contaminated"] and by_id[clean]["first_step"] is None, clean
    assert by_id["held"]["longest_span"] < 13
    with search_mod.RunIndex(work) as index:  # the held-out passage is in the index: only not as training data
        held = tok.encode(json.loads(qa.read_text().splitlines()[3])["question"], add_special_tokens=False).ids
        assert any(index.count_split(held[i:i + 13]) == (0, 1) for i in range(len(held) - 12))

    # the same answers through an index in two shards
    sharded = copy_run(run, tmp_path / "sharded")
    for i in range(2):
        build_index(sharded, shard=(i, 2), quiet=True)
    assert scan(sharded, [str(qa), str(bench)], 13) == records


def question_log(run: Path, checkpoint: str, step: int, task: str, correct: dict[int, bool]) -> None:
    folder = run / "metrics" / "questions" / checkpoint
    folder.mkdir(parents=True, exist_ok=True)
    qs = sorted(correct)
    pq.write_table(pa.table({"checkpoint": [checkpoint] * len(qs), "step": [step] * len(qs), "task": [task] * len(qs),
                             "question": qs, "correct": [correct[q] for q in qs],
                             "correct_norm": [not correct[q] for q in qs]}), folder / f"{task}.parquet")


def test_accuracy_on_clean_and_contaminated_items(run, tmp_path, capsys):
    work = copy_run(run, tmp_path / "run", analysis=True)
    data = RunData(work)
    chunk_rows = np.concatenate([np.asarray(data.chunk(c)) for c in range(data.n_chunks)])
    qa, bench = write_tasks(tmp_path, data, chunk_rows)
    assert main(["analyze", "contamination", str(work), "--tasks", f"{qa},{bench}"]) == 0
    out = capsys.readouterr().out
    assert "no per-question evaluation logs" in out and "qa, bench" in out
    summary = json.loads((work / "analysis" / "contamination" / "summary.json").read_text())
    assert summary["ngram"] == 13 and summary["tasks"]["qa"]["accuracy"] is None
    items = pq.read_table(work / "analysis" / "contamination" / "items.parquet").to_pylist()
    dirty = {r["question"]: r["contaminated"] for r in items if r["task"] == "qa"}
    assert summary["tasks"]["qa"]["contaminated_frac"] == pytest.approx(sum(dirty.values()) / len(dirty))

    # ckpt_001 gets every contaminated item right and two of the clean ones wrong; ckpt_000 all wrong
    right = {q: d or q == 3 for q, d in dirty.items()}
    question_log(work, "ckpt_001", 40, "qa", right)
    question_log(work, "ckpt_000", 20, "qa", {q: False for q in dirty})
    assert main(["analyze", "contamination", str(work), "--tasks", str(qa)]) == 0
    summary = json.loads((work / "analysis" / "contamination" / "summary.json").read_text())
    curves = summary["tasks"]["qa"]["accuracy"]
    assert [p["checkpoint"] for p in curves] == ["ckpt_000", "ckpt_001"] and curves[1]["step"] == 40
    clean = [q for q, d in dirty.items() if not d]
    assert curves[1]["contaminated_acc"] == 1.0 and curves[1]["contaminated_n"] == sum(dirty.values())
    assert curves[1]["clean_acc"] == pytest.approx(sum(right[q] for q in clean) / len(clean))
    assert curves[1]["clean_acc_norm"] == pytest.approx(1 - curves[1]["clean_acc"])
    assert curves[0]["clean_acc"] == curves[0]["contaminated_acc"] == 0.0
    assert main(["analyze", "contamination", str(work), "--tasks", "heldout"]) == 2
    assert "held-out data, not a task file" in capsys.readouterr().err

    # the report's section: the table per task and a clean-vs-contaminated chart where logs exist
    from llm360.release.facts import gather
    from llm360.release.report import payload, render

    facts = gather(work)
    html = render(facts)
    assert '<section id="contamination">' in html and 'id="chart-contam-0"' in html
    curve = payload(facts)["contamination"][0]
    assert curve["task"] == "qa" and [p["contaminated"] for p in curve["points"]] == [0.0, 1.0]
