"""Evaluation: llm360's scores against lm-eval's, held-out perplexity, eval.jsonl, bad input."""

from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers_eval import (
    SHARED_BENCHMARKS,
    arc_sample,
    as_question_format,
    copy_run,
    handmade_run,
    small_benchmarks,
    write_jsonl,
)

from llm360.cli import main
from llm360.config import load_run_config
from llm360.errors import UserError
from llm360.eval import scoring
from llm360.eval.results import KEYS
from llm360.eval.runner import evaluate_checkpoint, evaluate_run
from llm360.eval.tasks import load_questions, read_task_file, resolve_tasks, sample_indices
from llm360.model.generate import load_tokenizer, score_tokens
from llm360.model.hf import load_hf
from llm360.utils import read_jsonl

needs_benchmarks = pytest.mark.skipif(not (SHARED_BENCHMARKS / "arc_easy.jsonl").is_file(),
                                      reason=f"the shared benchmark files are not there ({SHARED_BENCHMARKS})")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from more threads, and on a shared 2-core machine two threads
    spin against each other (10x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def handmade(tmp_path_factory) -> Path:
    """init and ckpt_000 made directly (no data stage, no trainer)."""
    return handmade_run(tmp_path_factory.mktemp("handmade"))


@pytest.fixture(scope="module")
def trained(prepared_template, tmp_path_factory) -> Path:
    """The tiny run of conftest, trained once: init, ckpt_000..ckpt_002 and held-out rows."""
    from llm360.train.trainer import run_training

    run = tmp_path_factory.mktemp("trained") / "run"
    shutil.copytree(prepared_template, run)
    run_training(run, load_run_config(run))
    return run


@pytest.fixture
def bench(tmp_path, monkeypatch) -> Path:
    """$LLM360_BENCHMARKS -> a small folder with arc_easy (12 questions) and arc_qa (+ few-shot)."""
    if not (SHARED_BENCHMARKS / "arc_easy.jsonl").is_file():
        pytest.skip(f"the shared benchmark files are not there ({SHARED_BENCHMARKS})")
    folder = small_benchmarks(tmp_path / "bench")
    monkeypatch.setenv("LLM360_BENCHMARKS", str(folder))
    return folder


def cfg_of(run: Path, **eval_keys):
    cfg = load_run_config(run).eval
    return cfg.model_copy(update=eval_keys)


# -- scoring --------------------------------------------------------------------------------


def test_shared_context_scoring_equals_score_tokens():
    from helpers_model import tiny_model

    model, _ = tiny_model(3, "tiny", vocab_size=300, max_seq_len=48)
    rng = random.Random(0)
    pairs = []
    for _ in range(30):  # some contexts + continuations beyond the context: lm-eval truncates them
        ctx = [rng.randrange(300) for _ in range(rng.randint(1, 55))]
        pairs += [(ctx, [rng.randrange(300) for _ in range(rng.randint(0, 7))]) for _ in range(rng.randint(1, 5))]
    want = score_tokens(model, pairs, batch_size=8)
    for batch_size in (1, 5, 64):
        got = scoring.loglikelihoods(model, pairs, batch_size)
        assert [g for _, g in got] == [g for _, g in want]
        np.testing.assert_allclose([s for s, _ in got], [s for s, _ in want], atol=1e-4, rtol=0)


@needs_benchmarks
@pytest.mark.parametrize("which", ["handmade", "trained"])
def test_acc_equals_lm_eval_question_by_question(which, request, tmp_path):
    """20 ARC-Easy questions, as the shared file and in the question format: each choice's
    log-likelihood within 1e-4 of lm-eval's, the same answers, the same acc and acc_norm."""
    pytest.importorskip("lm_eval")
    pytest.importorskip("accelerate")
    from llm360.eval.harness import run_lm_eval
    from llm360.eval.tasks import LmEvalTask, load_spec

    run = request.getfixturevalue(which)
    folder = run / "checkpoints" / ("ckpt_000" if which == "handmade" else "ckpt_002")
    docs = arc_sample(40)
    qa = write_jsonl(tmp_path / "arc_qa.jsonl", [as_question_format(d) for d in docs])
    specs = [load_spec(str(SHARED_BENCHMARKS / "arc_easy.jsonl")), load_spec(str(qa))]
    # max_questions=20: the same seeded sample of each file for both harnesses
    theirs = run_lm_eval(folder, [LmEvalTask(s.name, spec=s) for s in specs], batch_size=16,
                         max_questions=20, device="cpu", log_samples=True)
    model, _ = load_hf(folder)
    tokenizer = load_tokenizer(folder)
    for spec in specs:
        questions = load_questions(spec, max_questions=20)
        ours = scoring.score_questions(model, tokenizer, questions, batch_size=16)
        result = theirs[f"lm-eval/local/{spec.name}"]
        samples = sorted(result["samples"], key=lambda s: s["doc_id"])
        assert len(samples) == len(ours) == 20
        for q, mine, s in zip(questions, ours, samples):
            assert s["target"] == q.label
            np.testing.assert_allclose(mine["lls"], s["lls"], atol=1e-4, rtol=0, err_msg=q.id)
            assert (mine["acc"], mine["acc_norm"]) == (s["acc"], s["acc_norm"]), q.id
        for metric, value in scoring.mc_metrics(ours).items():
            assert result["metrics"][metric]["n"] == value["n"] == 20
            assert result["metrics"][metric]["value"] == pytest.approx(value["value"], abs=1e-12)
            assert result["metrics"][metric]["stderr"] == pytest.approx(value["stderr"], abs=1e-9)


def winogrande_docs(n: int = 24, seed: int = 0) -> list[dict]:
    """WinoGrande-shaped items (sentence with a blank, two options of different lengths, answer "1"/"2")."""
    rng = random.Random(seed)
    names = ["Ann", "Bartholomew", "Cy", "Dorothea", "Ed", "Maximilian", "Jo", "Evangeline"]
    verbs = ["thanked", "helped", "called", "visited", "followed"]
    rests = ["was tired.", "had left early.", "liked the garden.", "could not sleep.", "won the game."]
    docs = []
    for i in range(n):
        a, b = rng.sample(names, 2)
        docs.append({"id": f"w{i}", "sentence": f"{a} {rng.choice(verbs)} {b} because _ {rng.choice(rests)}",
                     "option1": a, "option2": b, "answer": rng.choice("12")})
    return docs


def as_requests(doc: dict) -> dict:
    """A WinoGrande item in the benchmarks format, split as lm-eval's winogrande task splits it:
    the choice is the sentence up to the blank with the option, the continuation the rest."""
    cut = doc["sentence"].index("_")
    rest = " " + doc["sentence"][cut + 1:].strip()
    return {"id": doc["id"], "requests": [[doc["sentence"][:cut] + o, rest] for o in (doc["option1"], doc["option2"])],
            "label": int(doc["answer"]) - 1}


def lm_eval_winogrande(folder: Path, docs: list[dict], tmp: Path) -> list[dict]:
    """lm-eval's own winogrande task definition (its preprocess functions, acc and acc_norm) on
    these items, offline: each item's sample record (lls, acc, acc_norm) in item order."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from llm360.eval.harness import _offline

    here = tmp / "wino_task"
    here.mkdir()
    shutil.copy(Path(lm_eval.__file__).parent / "tasks" / "winogrande" / "preprocess_winogrande.py", here)
    data = write_jsonl(here / "wino.jsonl", docs)
    (here / "wino_oracle.yaml").write_text(f"""task: wino_oracle
dataset_path: json
dataset_kwargs: {{data_files: {{test: {data}}}, cache_dir: {tmp / 'cache'}}}
test_split: test
output_type: multiple_choice
doc_to_text: !function preprocess_winogrande.doc_to_text
doc_to_target: !function preprocess_winogrande.doc_to_target
doc_to_choice: !function preprocess_winogrande.doc_to_choice
metric_list:
  - {{metric: acc, aggregation: mean, higher_is_better: true}}
  - {{metric: acc_norm, aggregation: mean, higher_is_better: true}}
metadata: {{version: 1.0}}
""")
    with _offline(True):
        manager = TaskManager(include_path=str(here), include_defaults=False)
        model = HFLM(pretrained=str(folder), device="cpu", dtype="float32", batch_size=16)
        result = lm_eval.simple_evaluate(model=model, tasks=["wino_oracle"], task_manager=manager, num_fewshot=0,
                                         log_samples=True, verbosity="ERROR")
    return sorted(result["samples"]["wino_oracle"], key=lambda s: s["doc_id"])


def test_acc_norm_of_shared_continuation_choices_equals_lm_eval_winogrande(handmade, tmp_path):
    """Choices that differ in the context and share the continuation (WinoGrande's partial
    evaluation): acc_norm divides by the context's length as lm-eval's winogrande task does, so
    acc and acc_norm equal lm-eval's question by question, and acc_norm is not acc."""
    pytest.importorskip("lm_eval")
    pytest.importorskip("accelerate")
    folder = handmade / "checkpoints" / "ckpt_000"
    docs = winogrande_docs()
    theirs = lm_eval_winogrande(folder, docs, tmp_path)
    path = write_jsonl(tmp_path / "wino.jsonl", [as_requests(d) for d in docs])
    questions = read_task_file(path)
    model, _ = load_hf(folder)
    ours = scoring.score_questions(model, load_tokenizer(folder), questions, batch_size=16)
    assert len(theirs) == len(ours) == len(docs)
    for q, mine, s in zip(questions, ours, theirs):
        assert s["doc"]["answer"] == str(q.label + 1)
        np.testing.assert_allclose(mine["lls"], [float(r[0]) for r in s["filtered_resps"]], atol=1e-4, rtol=0)
        assert (mine["acc"], mine["acc_norm"]) == (s["acc"], s["acc_norm"]), q.id
    assert any(m["pred"] != m["pred_norm"] for m in ours)  # the normalisation matters on these items


def test_lm_eval_harness_scores_one_context_per_choice_files_like_llm360(handmade, tmp_path, capfd):
    """A task file whose choices differ in the context runs under --harness lm-eval (as lm-eval's
    multiple_input task) and both harnesses agree question by question; lm-eval's progress bars
    stay off stderr."""
    pytest.importorskip("lm_eval")
    pytest.importorskip("accelerate")
    from llm360.eval.harness import run_lm_eval
    from llm360.eval.tasks import LmEvalTask, load_spec

    folder = handmade / "checkpoints" / "ckpt_000"
    spec = load_spec(str(write_jsonl(tmp_path / "wino.jsonl", [as_requests(d) for d in winogrande_docs()])))
    theirs = run_lm_eval(folder, [LmEvalTask(spec.name, spec=spec)], batch_size=16, max_questions=16,
                         device="cpu", log_samples=True)["lm-eval/local/wino"]
    err = capfd.readouterr().err
    assert "it/s]" not in err and "%|" not in err, err
    questions = load_questions(spec, max_questions=16)
    model, _ = load_hf(folder)
    ours = scoring.score_questions(model, load_tokenizer(folder), questions, batch_size=16)
    samples = sorted(theirs["samples"], key=lambda s: s["doc_id"])
    assert len(samples) == len(ours) == 16
    for q, mine, s in zip(questions, ours, samples):
        np.testing.assert_allclose(mine["lls"], s["lls"], atol=1e-4, rtol=0, err_msg=q.id)
        assert (mine["acc"], mine["acc_norm"]) == (s["acc"], s["acc_norm"]), q.id
    for metric, value in scoring.mc_metrics(ours).items():
        assert theirs["metrics"][metric]["value"] == pytest.approx(value["value"], abs=1e-12)

    both = write_jsonl(tmp_path / "both.jsonl", [as_requests(winogrande_docs(1)[0]),
                                                 {"id": "x", "requests": [["A", " b"], ["C", " d"]], "label": 0}])
    with pytest.raises(UserError, match=rf"{both}:2: lm-eval needs one context or one continuation per question"):
        run_lm_eval(folder, [LmEvalTask("both", spec=load_spec(str(both)))], device="cpu")


def test_lm_eval_harness_writes_eval_jsonl_like_llm360(trained, bench, tmp_path):
    pytest.importorskip("lm_eval")
    pytest.importorskip("accelerate")
    run = copy_run(trained, tmp_path / "run")
    cfg = cfg_of(run, max_questions=8)
    mine = evaluate_checkpoint(run, "ckpt_001", cfg, tasks=["arc_easy"])
    theirs = evaluate_checkpoint(run, "ckpt_001", cfg, tasks=["arc_easy.jsonl"], harness="lm-eval")
    assert [r["task"] for r in theirs] == ["lm-eval/local/arc_easy"] * 2
    for a, b in zip(mine, theirs):
        assert (a["metric"], a["n"], a["step"], a["tokens"]) == (b["metric"], b["n"], b["step"], b["tokens"])
        assert a["value"] == pytest.approx(b["value"], abs=1e-12)
    assert len(read_jsonl(run / "metrics" / "eval.jsonl")) == 4


def test_lm_eval_own_task_without_network_is_a_clear_error(monkeypatch, tmp_path):
    """lm-eval's own tasks fetch their data from the Hub: offline, the cache is used and a data set
    that is not there ends in one sentence saying what to do (lm-eval itself is faked here)."""
    pytest.importorskip("lm_eval")
    pytest.importorskip("accelerate")
    import os

    import lm_eval
    import lm_eval.models.huggingface
    import lm_eval.tasks

    from llm360.eval import harness

    class Manager:
        all_tasks = ("arc_challenge",)

        def __init__(self, include_path=None, include_defaults=True):
            assert include_defaults

    def offline_evaluate(**kw):
        assert os.environ.get("HF_DATASETS_OFFLINE") == "1" and kw["num_fewshot"] == 25
        raise ConnectionError("Couldn't reach 'allenai/ai2_arc' on the Hub (OfflineModeIsEnabled)")

    before = os.environ.get("HF_DATASETS_OFFLINE")
    monkeypatch.setattr(harness, "hub_reachable", lambda timeout=3.0: False)
    monkeypatch.setattr(lm_eval.tasks, "TaskManager", Manager)
    monkeypatch.setattr(lm_eval.models.huggingface, "HFLM", lambda **kw: object())
    monkeypatch.setattr(lm_eval, "simple_evaluate", offline_evaluate)
    with pytest.raises(UserError, match=r"could not load the data of arc_challenge .*allenai/ai2_arc.*local task files"):
        harness.run_lm_eval(tmp_path, resolve_tasks(["amber"], harness="lm-eval")[:1])
    assert os.environ.get("HF_DATASETS_OFFLINE") == before
    with pytest.raises(UserError, match="lm-eval has no task named 'arc_hard'"):
        harness.run_lm_eval(tmp_path, resolve_tasks(["arc_hard"], harness="lm-eval"))


# -- held-out data --------------------------------------------------------------------------


def test_heldout_loss_ppl_bpb_equal_a_direct_computation(trained, tmp_path):
    from llm360.data.store import RunData

    run = copy_run(trained, tmp_path / "run")
    records = evaluate_checkpoint(run, "ckpt_001", cfg_of(run), tasks=["heldout"])
    got = {r["metric"]: r for r in records}
    assert {r["task"] for r in records} == {"heldout/prose"}

    data = RunData(run)
    rows = torch.from_numpy(np.asarray(data.heldout("prose"), dtype=np.int64))
    model, _ = load_hf(run / "checkpoints" / "ckpt_001")
    with torch.no_grad():
        logits = model(rows[:, :-1])
    nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), rows[:, 1:].reshape(-1),
                                            reduction="sum").item()
    tokens = rows[:, 1:].numel()
    text_bytes = sum(len(data.tokenizer().decode(r[1:].tolist()).encode("utf-8")) for r in rows)
    assert got["loss"]["value"] == pytest.approx(nll / tokens, rel=1e-5)
    assert got["ppl"]["value"] == pytest.approx(math.exp(nll / tokens), rel=1e-5)
    assert got["bpb"]["value"] == pytest.approx(nll / math.log(2) / text_bytes, rel=1e-5)
    assert got["loss"]["n"] == rows.shape[0]
    assert got["loss"]["step"] == 6 and got["loss"]["tokens"] == 6 * 4 * 32


# -- records: eval.jsonl, skip, --force -----------------------------------------------------


def test_eval_jsonl_keys_skip_and_force(handmade, bench, tmp_path, monkeypatch):
    run = copy_run(handmade, tmp_path / "run")
    cfg = cfg_of(run, max_questions=5)
    first = evaluate_run(run, cfg, tasks=["arc_easy", "arc_qa:2"])
    lines = read_jsonl(run / "metrics" / "eval.jsonl")
    assert lines == first and len(lines) == 2 * 2 * 2  # checkpoints x tasks x metrics
    for line in lines:
        assert tuple(line) == KEYS
        assert line["n"] == 5 and line["stderr"] is not None
    assert {(r["checkpoint"], r["step"], r["tokens"]) for r in lines} == {("init", 0, 0), ("ckpt_000", 3, 3 * 4 * 32)}
    assert {r["task"] for r in lines} == {"arc_easy", "arc_qa_2shot"}
    assert list((run / "metrics" / "tb").iterdir())

    # done pairs are not redone: the model is not even loaded
    from llm360.model import hf

    with monkeypatch.context() as m:
        m.setattr(hf, "load_hf", lambda *a, **k: pytest.fail("evaluated again"))
        assert evaluate_run(run, cfg, tasks=["arc_easy", "arc_qa:2"]) == first
    assert read_jsonl(run / "metrics" / "eval.jsonl") == lines

    # a new task is added, --force replaces the old lines of the pairs it redoes
    evaluate_run(run, cfg, checkpoints="last", tasks=["arc_easy"], force=True)
    again = read_jsonl(run / "metrics" / "eval.jsonl")
    assert len(again) == len(lines)
    key = lambda r: (r["checkpoint"], r["task"], r["metric"])
    assert sorted(map(key, again)) == sorted(map(key, lines))
    assert {json.dumps(r, sort_keys=True) for r in again} == {json.dumps(r, sort_keys=True) for r in lines}


def test_results_are_keyed_by_task_content_not_file_name(handmade, bench, tmp_path, monkeypatch):
    """Another copa.jsonl in another folder is another task: it is evaluated, and both sets of
    lines stay in eval.jsonl, told apart by task_sha256; so is another sample of the same file.
    Lines written before task_sha256 existed still count as on record."""
    from llm360.model import hf

    run = copy_run(handmade, tmp_path / "run")
    docs = arc_sample(12)
    first = write_jsonl(tmp_path / "a" / "copa.jsonl", docs[:6])
    second = write_jsonl(tmp_path / "b" / "copa.jsonl", docs[6:])
    cfg = cfg_of(run)
    a = evaluate_checkpoint(run, "ckpt_000", cfg, tasks=[str(first)])
    b = evaluate_checkpoint(run, "ckpt_000", cfg, tasks=[str(second)])
    assert {r["task"] for r in a + b} == {"copa"}
    assert len({r["task_sha256"] for r in a}) == len({r["task_sha256"] for r in b}) == 1
    assert a[0]["task_sha256"] != b[0]["task_sha256"]
    lines = read_jsonl(run / "metrics" / "eval.jsonl")
    assert len(lines) == 4 and lines[:2] == a and lines[2:] == b

    with monkeypatch.context() as m:  # the same content again, from a copy elsewhere: on record
        m.setattr(hf, "load_hf", lambda *a, **k: pytest.fail("evaluated again"))
        copy = write_jsonl(tmp_path / "c" / "copa.jsonl", docs[:6])
        assert evaluate_checkpoint(run, "ckpt_000", cfg, tasks=[str(copy)]) == a
    smaller = evaluate_checkpoint(run, "ckpt_000", cfg_of(run, max_questions=3), tasks=[str(first)])
    assert smaller[0]["n"] == 3 and smaller[0]["task_sha256"] not in {a[0]["task_sha256"], b[0]["task_sha256"]}

    # --force replaces only the lines of its own content
    evaluate_checkpoint(run, "ckpt_000", cfg, tasks=[str(second)], force=True)
    assert sorted(r["task_sha256"] for r in read_jsonl(run / "metrics" / "eval.jsonl")) == sorted(
        r["task_sha256"] for r in a + smaller + b)

    # an eval.jsonl from before task_sha256: its lines read, and count as on record
    old = [{k: v for k, v in r.items() if k != "task_sha256"} for r in a]
    write_jsonl(run / "metrics" / "eval.jsonl", old)
    with monkeypatch.context() as m:
        m.setattr(hf, "load_hf", lambda *a, **k: pytest.fail("evaluated again"))
        assert evaluate_checkpoint(run, "ckpt_000", cfg, tasks=[str(first)]) == old


def test_cli_eval_json_and_checkpoint_selection(handmade, bench, tmp_path, capsys):
    run = copy_run(handmade, tmp_path / "run")
    assert main(["eval", str(run), "--checkpoints", "0", "--tasks", "arc_easy", "--json",
                 "--eval.max_questions=4"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {(r["checkpoint"], r["metric"], r["n"]) for r in out} == {("ckpt_000", "acc", 4), ("ckpt_000", "acc_norm", 4)}
    assert main(["eval", str(run), "--checkpoints", "ckpt_009", "--tasks", "arc_easy"]) == 2
    assert "no checkpoint 'ckpt_009'" in capsys.readouterr().err


def test_in_loop_evaluation_after_every_chunk_checkpoint(tiny_run, bench):
    from llm360.pipeline import eval_hook
    from llm360.train.trainer import apply_train_overrides, run_training

    cfg = apply_train_overrides(tiny_run, ["--eval.every_checkpoint=true", "--eval.tasks=[arc_easy,no_such_task]",
                                           "--eval.max_questions=3"])
    run_training(tiny_run, cfg, on_checkpoint=eval_hook(tiny_run, cfg.eval))  # a missing task is skipped
    lines = read_jsonl(tiny_run / "metrics" / "eval.jsonl")
    assert {(r["checkpoint"], r["task"]) for r in lines} == {
        (c, t) for c in ("ckpt_000", "ckpt_001", "ckpt_002") for t in ("heldout/prose", "arc_easy")}
    assert [r["step"] for r in lines if r["metric"] == "acc"] == [3, 6, 9]


# -- task files -------------------------------------------------------------------------------


def test_question_format_and_seeded_fewshot(bench):
    spec = resolve_tasks(["arc_qa:3"])[0]
    assert spec.label == "arc_qa_3shot" and spec.fewshot == bench / "arc_qa.fewshot.jsonl"
    questions = load_questions(spec)
    pool = {d["question"] for d in read_jsonl(bench / "arc_qa.fewshot.jsonl")}
    for q in questions:
        context, cont = q.requests[q.label]
        shots, _, prompt = context.rpartition("\n\n")
        assert prompt.startswith("Question: ") and prompt.endswith("\nAnswer:") and cont.startswith(" ")
        assert len(shots.split("\n\n")) == 3 and all(s.split("\nAnswer: ")[0][10:] in pool for s in shots.split("\n\n"))
        assert q.norm_lengths == [len(c) - 1 for _, c in q.requests]  # the choice, without its space
    again = load_questions(spec, max_questions=4)  # same examples for a question in any subset
    by_id = {q.id: q.requests for q in questions}
    assert all(by_id[q.id] == q.requests for q in again)
    assert sample_indices(100, 10, "x") == sample_indices(100, 10, "x") != sample_indices(100, 10, "y")


def test_malformed_task_line_names_file_and_line(tmp_path):
    good = {"id": "a", "requests": [["Q:", " x"], ["Q:", " y"]], "label": 1}
    cases = {
        '{"id": "b", "requests": [["Q:", " x"]], "label": ': "not valid JSON",
        json.dumps({**good, "id": "b", "label": 2}): "`label` must be an integer choice index in 0..1",
        json.dumps({"id": "b", "question": "Q", "choices": "xy", "gold": 0}): "`choices` must be a non-empty list",
        json.dumps({"id": "b", "text": "?"}): "needs either `requests`",
    }
    for line, message in cases.items():
        path = tmp_path / "bad.jsonl"
        path.write_text(json.dumps(good) + "\n\n" + line + "\n")
        with pytest.raises(UserError, match=rf"{path}:3: .*{message}"):
            read_task_file(path)
        with pytest.raises(UserError, match=rf"{path}:3"):
            load_questions(resolve_tasks([str(path)])[0])


def test_unknown_task_lists_known_ones(bench):
    with pytest.raises(UserError) as e:
        resolve_tasks(["arc_hard"])
    assert "unknown task 'arc_hard'" in str(e.value) and "arc_easy, arc_qa" in str(e.value)
    with pytest.raises(UserError, match="needs examples from a separate file"):
        resolve_tasks(["arc_easy:5"])
    with pytest.raises(UserError, match="use --harness lm-eval"):
        resolve_tasks(["amber"])


def test_amber_suite_maps_to_lm_eval_tasks():
    tasks = resolve_tasks(["amber"], harness="lm-eval")
    assert [(t.task, t.num_fewshot, t.headline) for t in tasks] == [
        ("arc_challenge", 25, "acc_norm"), ("hellaswag", 10, "acc_norm"), ("mmlu", 5, "acc"), ("truthfulqa_mc2", 0, "acc")]
    assert [t.label for t in tasks] == ["lm-eval/arc_challenge_25shot", "lm-eval/hellaswag_10shot",
                                        "lm-eval/mmlu_5shot", "lm-eval/truthfulqa_mc2"]


# -- harnesses --------------------------------------------------------------------------------


def test_a_harness_is_one_registered_class(trained, tmp_path, monkeypatch, capsys):
    """A new harness is one class: the runner asks it for the tasks and the scores, and the
    command line offers its name."""
    from llm360.eval import harness

    class Counting(harness.Harness):
        name = "counting"
        scores_heldout = True

        def run(self, run_dir, folder, tasks, eval_cfg, console):
            for task in tasks:
                yield task, {"rows": {"value": float(len(task.label)), "stderr": None, "n": 1}}

    monkeypatch.setitem(harness.HARNESSES, "counting", Counting)
    run = copy_run(trained, tmp_path / "run")
    records = evaluate_checkpoint(run, "ckpt_001", cfg_of(run, heldout=True, tasks=[]), harness="counting")
    assert [(r["task"], r["metric"], r["value"]) for r in records] == [("heldout/prose", "rows", 13.0)]
    # the command line's --harness choices come from the registry (argparse refuses others)
    capsys.readouterr()
    assert main(["eval", str(run), "--harness", "counting", "--checkpoints", "ckpt_001", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["metric"] == "rows"
    with pytest.raises(UserError, match="unknown harness 'nosuch'; choose one of llm360, lm-eval, counting"):
        evaluate_checkpoint(run, "ckpt_001", cfg_of(run), harness="nosuch")


# -- refusals ---------------------------------------------------------------------------------


def test_damaged_checkpoint_is_refused_by_name(handmade, bench, tmp_path):
    run = copy_run(handmade, tmp_path / "run")
    weights = run / "checkpoints" / "ckpt_000" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"checkpoint ckpt_000 is damaged.*model.safetensors: sha256 differs"):
        evaluate_run(run, cfg_of(run, max_questions=2), tasks=["arc_easy"])
    assert {r["checkpoint"] for r in read_jsonl(run / "metrics" / "eval.jsonl")} == {"init"}  # the sound one


def test_run_without_checkpoints_says_so(handmade, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(handmade / "run.yaml", run / "run.yaml")
    assert main(["eval", str(run), "--tasks", "heldout"]) == 2
    assert "has no checkpoints" in capsys.readouterr().err
