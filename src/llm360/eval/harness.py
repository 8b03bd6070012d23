"""The harnesses that score a checkpoint folder on tasks: llm360's own and lm-evaluation-harness.

Each harness is one class registered by name (`HARNESSES`), which `llm360 eval --harness`
offers and `evaluate_checkpoint` looks up: adding a harness is adding a class here.

    @register
    class MyHarness(Harness):
        name = "mine"
        def run(self, run_dir, folder, tasks, eval_cfg, console): ...  # yield (task, metrics)

llm360's harness scores held-out data and task files with `llm360.eval.scoring`. lm-eval (the
optional `lm-eval` extra) is run on the folder as follows. A checkpoint folder is a Hugging Face folder, so lm-eval's `hf` model reads it as it is
(`pretrained=FOLDER`, float32). Tasks are either lm-eval's own definitions (`arc_challenge`,
`hellaswag`, `mmlu`, `truthfulqa_mc2`, ...: their data sets come from the Hugging Face Hub, or
its local cache) or local task files, for which a task YAML is written into a temporary folder
and given to lm-eval's TaskManager as an include path, with the data read offline:

    task: llm360_arc_easy
    dataset_path: json
    dataset_kwargs: {data_files: {test: arc_easy.jsonl, train: arc_easy.fewshot.jsonl}}
    output_type: multiple_choice
    doc_to_text: "{{requests[0][0]}}"             # question format: the template, in Jinja
    doc_to_choice: "{{requests | map(attribute=1) | list}}"          # question format: choices
    doc_to_target: label                                             # question format: gold
    target_delimiter: ""                          # the continuations start with their space

A benchmarks-format file whose choices differ in the context (WinoGrande's shape: one context per
choice, one shared continuation) is written as lm-eval's `multiple_input` task instead: each
question as {"id", "label", "contexts", "continuation"}, with doc_to_text: label (an integer: the
gold index), doc_to_choice: contexts, doc_to_target: continuation. A question of such a file
whose choices differ in the continuation too cannot be written for lm-eval and is refused by line.

The questions given to lm-eval are the same seeded sample llm360 scores (`eval.max_questions`);
for lm-eval's own tasks the sample is lm-eval's `limit` (the first N documents).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar
from urllib.parse import urlparse

import yaml

from llm360.config import EvalConfig
from llm360.errors import UserError
from llm360.eval.tasks import (
    HeldoutTask,
    LmEvalTask,
    Task,
    TaskSpec,
    load_questions,
    load_spec,
    read_task_file,
    resolve_tasks,
    sample_indices,
    split_shots,
)

LOCAL_PREFIX = "llm360_"  # local tasks are registered as llm360_NAME, apart from lm-eval's names
INSTALL = "pip install 'llm360[lm-eval]' (the lm-eval and accelerate packages)"

Metrics = dict[str, dict]  # {metric: {"value", "stderr", "n"}}


# ---------------------------------------------------------------------------------------------
# the registry


class Harness:
    """One way of scoring a checkpoint folder on tasks."""

    name: ClassVar[str]
    scores_heldout: ClassVar[bool] = False  # whether `eval.heldout` means something to it

    def config_task(self, name: str, heldout_sources: list[str]) -> Task:
        """The task that an entry of `eval.tasks` names for this harness."""
        return resolve_tasks([name], self.name, heldout_sources)[0]

    def run(self, run_dir: Path, folder: Path, tasks: list[Task], eval_cfg: EvalConfig,
            console) -> Iterator[tuple[Task, Metrics]]:
        """Yield (task, metrics) for each task, scored on the checkpoint folder."""
        raise NotImplementedError


HARNESSES: dict[str, type[Harness]] = {}


def register(cls: type[Harness]) -> type[Harness]:
    HARNESSES[cls.name] = cls
    return cls


def get_harness(name: str) -> Harness:
    if name not in HARNESSES:
        raise UserError(f"unknown harness {name!r}; choose one of {', '.join(HARNESSES)}")
    return HARNESSES[name]()


@register
class Llm360Harness(Harness):
    """llm360's own scoring: held-out loss / ppl / bpb and multiple-choice task files."""

    name = "llm360"
    scores_heldout = True

    def run(self, run_dir, folder, tasks, eval_cfg, console):
        from llm360.eval import scoring
        from llm360.model.generate import load_tokenizer
        from llm360.model.hf import load_hf

        model, _ = load_hf(folder, device=_device())
        tokenizer = load_tokenizer(folder)
        data = None
        with _progress(console) as bar:
            for task in tasks:
                if isinstance(task, HeldoutTask):
                    if data is None:
                        from llm360.data.store import RunData

                        data = RunData(run_dir)
                    rows = data.heldout(task.source)
                    job = bar.add_task(f"{folder.name} {task.label}", total=len(rows))
                    losses = scoring.row_losses(model, rows, eval_cfg.batch_size, lambda n, job=job: bar.advance(job, n))
                    metrics = scoring.heldout_metrics(losses, rows.shape[1] - 1, scoring.target_bytes(tokenizer, rows))
                else:
                    assert isinstance(task, TaskSpec)
                    questions = load_questions(task, eval_cfg.max_questions)
                    job = bar.add_task(f"{folder.name} {task.label}", total=sum(len(q.requests) for q in questions))
                    scored = scoring.score_questions(model, tokenizer, questions, eval_cfg.batch_size,
                                                     lambda n, job=job: bar.advance(job, n))
                    metrics = scoring.mc_metrics(scored)
                bar.remove_task(job)
                yield task, metrics


@register
class LmEvalHarness(Harness):
    """lm-evaluation-harness on the checkpoint's Hugging Face folder (`run_lm_eval` below)."""

    name = "lm-eval"

    def config_task(self, name, heldout_sources):
        # names in eval.tasks always mean local task files, never lm-eval's own tasks
        spec = load_spec(*split_shots(name))
        return LmEvalTask(spec.name, spec.num_fewshot, spec=spec)

    def run(self, run_dir, folder, tasks, eval_cfg, console):
        assert all(isinstance(t, LmEvalTask) for t in tasks)
        t0 = time.perf_counter()
        with console.status(f"lm-eval on {folder.name}: {', '.join(t.label for t in tasks)}"):
            results = run_lm_eval(folder, tasks, batch_size=eval_cfg.batch_size, max_questions=eval_cfg.max_questions)
        console.print(f"lm-eval on {folder.name}: {time.perf_counter() - t0:.1f} s")
        for task in tasks:
            yield task, results[task.label]["metrics"]


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _progress(console):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("[bold]eval[/] {task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeRemainingColumn(), console=console, transient=True)


def require_lm_eval():
    try:
        import lm_eval
    except ImportError:
        raise UserError(f"--harness lm-eval needs lm-evaluation-harness: {INSTALL}") from None
    try:
        import accelerate  # noqa: F401  (lm-eval's hf model imports it)
    except ImportError:
        raise UserError(f"lm-eval's hf model needs the accelerate package: {INSTALL}") from None
    return lm_eval


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face Hub's host name resolves and answers (lm-eval's data sets)."""
    if os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------
# local task files -> lm-eval task YAML


def write_local_task(task: LmEvalTask, folder: Path, max_questions: int | None = None) -> str:
    """Write the sampled questions and a task YAML for a local task file; return its task name."""
    spec = task.spec
    questions = read_task_file(spec.data, spec)
    questions = [questions[i] for i in sample_indices(len(questions), max_questions, spec.name)]
    formats = {"requests" in q.doc for q in questions}
    if len(formats) > 1:
        raise UserError(f"{spec.data}: lm-eval needs one format per task file; this one mixes the "
                        "benchmarks format (requests) and the question format (question, choices)")
    benchmarks = formats == {True}
    multiple_input = benchmarks and any(len({c for c, _ in q.requests}) > 1 for q in questions)
    name = LOCAL_PREFIX + spec.name
    files = {"test": _write_docs(folder / f"{name}.jsonl", spec.data, questions, multiple_input)}
    if spec.fewshot is not None and spec.num_fewshot:
        pool = read_task_file(spec.fewshot, spec)
        files["train"] = _write_docs(folder / f"{name}.fewshot.jsonl", spec.fewshot, pool, multiple_input)
    config = {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": files, "cache_dir": str(folder / "datasets")},
        "test_split": "test",
        "output_type": "multiple_choice",
        "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in ("acc", "acc_norm")],
        "metadata": {"version": 1.0},
        "fewshot_delimiter": spec.fewshot_delimiter,
    }
    if "train" in files:
        config["fewshot_split"] = "train"
    if multiple_input:  # lm-eval's multiple_input: doc_to_text gives the gold index, the choices are contexts
        config.update(doc_to_text="label", doc_to_choice="contexts", doc_to_target="continuation",
                      target_delimiter="")
    elif benchmarks:
        config.update(doc_to_text="{{requests[0][0]}}", doc_to_choice="{{requests | map(attribute=1) | list}}",
                      doc_to_target="label", target_delimiter="")
    else:
        config.update(doc_to_text=spec.template.replace("{question}", "{{question}}"), doc_to_choice="choices",
                      doc_to_target="gold", target_delimiter=spec.target_delimiter)
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return name


def _write_docs(path: Path, source: Path, questions: list, multiple_input: bool) -> str:
    """The questions as lm-eval reads them: as written, or for a task whose choices differ in
    the context, {"id", "label", "contexts", "continuation"} (one continuation per question)."""
    if multiple_input:
        docs = []
        for q in questions:
            if len({x for _, x in q.requests}) > 1:
                raise UserError(f"{source}:{q.line}: lm-eval needs one context or one continuation per question; "
                                "this file has questions whose choices differ in the context, and this one's "
                                "differ in the continuation too")
            docs.append({"id": q.id, "label": q.label, "contexts": [c for c, _ in q.requests],
                         "continuation": q.requests[0][1]})
    else:
        docs = [q.doc for q in questions]
    path.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs), encoding="utf-8")
    return str(path)


# ---------------------------------------------------------------------------------------------
# running


def run_lm_eval(checkpoint: str | Path, tasks: list[LmEvalTask], *, batch_size: int = 32,
                max_questions: int | None = None, device: str | None = None,
                log_samples: bool = False, quiet: bool = True) -> dict[str, dict]:
    """Evaluate one checkpoint folder with lm-eval.

    Returns {task label: {"metrics": {metric: {value, stderr, n}}, "samples": [...]}}; samples
    (with log_samples) are lm-eval's per-document records: doc_id, target, and `lls`, the
    log-likelihood of each choice.
    """
    lm_eval = require_lm_eval()
    import torch
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    own = [t for t in tasks if t.spec is None]
    # local files never need the network; lm-eval's own data sets come from the Hub, or from
    # its cache when the Hub cannot be reached (then a data set not cached fails at once)
    with _offline(not own or not hub_reachable()), tempfile.TemporaryDirectory(prefix="llm360-lm-eval-") as tmp:
        names = {t.label: write_local_task(t, Path(tmp), max_questions) if t.spec else t.task for t in tasks}
        with _quiet(quiet):
            manager = TaskManager(include_path=tmp, include_defaults=bool(own))
            unknown = [t.task for t in own if t.task not in manager.all_tasks]
            if unknown:
                raise UserError(f"lm-eval has no task named {', '.join(map(repr, unknown))}; see "
                                "`lm-eval ls tasks` for its tasks, or give a path to a local NAME.jsonl task file")
            model = HFLM(pretrained=str(checkpoint), device=device, dtype="float32", batch_size=batch_size)
            out: dict[str, dict] = {}
            by_shots: dict[int | None, list[LmEvalTask]] = {}
            for t in tasks:
                by_shots.setdefault(t.num_fewshot, []).append(t)
            for shots, group in by_shots.items():
                wanted = [names[t.label] for t in group]
                try:
                    result = lm_eval.simple_evaluate(
                        model=model, tasks=wanted, num_fewshot=shots, task_manager=manager,
                        limit=max_questions if all(t.spec is None for t in group) else None,
                        log_samples=log_samples, bootstrap_iters=1000, verbosity="ERROR")
                except (ConnectionError, OSError) as e:
                    raise UserError(
                        f"lm-eval could not load the data of {', '.join(wanted)} ({str(e).splitlines()[0][:200]}). "
                        "lm-eval's own tasks download their data sets from the Hugging Face Hub, which cannot "
                        "be reached from here and is not in the local cache: run where the Hub is reachable "
                        "(or copy a filled ~/.cache/huggingface), or evaluate local task files instead "
                        "(--tasks path/to/NAME.jsonl)") from None
                for t in group:
                    out[t.label] = _collect(result, names[t.label], log_samples)
    return out


def _collect(result: dict, name: str, log_samples: bool) -> dict:
    results = result["results"]
    if name not in results:
        raise UserError(f"lm-eval returned no results for task {name!r}")
    metrics = {}
    n = _sample_count(result, name)
    entry = results[name]
    for key, value in entry.items():
        if "," not in key or "_stderr," in key:
            continue
        metric, filt = key.split(",", 1)
        stderr = entry.get(f"{metric}_stderr,{filt}")
        label = metric if filt == "none" else f"{metric}/{filt}"
        metrics[label] = {"value": _number(value), "stderr": _number(stderr), "n": n}
    samples = []
    if log_samples:
        for s in result.get("samples", {}).get(name, []):
            samples.append({"doc_id": s["doc_id"], "target": s["target"],
                            "lls": [float(r[0]) for r in s["filtered_resps"]],
                            "acc": s.get("acc"), "acc_norm": s.get("acc_norm")})
    return {"metrics": metrics, "samples": samples}


def _sample_count(result: dict, name: str) -> int | None:
    counts = result.get("n-samples", {})
    if name in counts:
        return int(counts[name]["effective"])
    if isinstance(result["results"][name].get("sample_len"), int):
        return result["results"][name]["sample_len"]
    subtasks = result.get("group_subtasks", {}).get(name)
    if subtasks:
        parts = [_sample_count(result, s) for s in subtasks if s in result["results"]]
        return sum(p for p in parts if p is not None) or None
    return None


def _number(value) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None  # lm-eval writes "N/A" where it has no standard error
    return None if math.isnan(x) else x


@contextlib.contextmanager
def _offline(enabled: bool):
    """HF_DATASETS_OFFLINE / HF_HUB_OFFLINE for the duration, also where those libraries already
    read the environment at import."""
    if not enabled:
        yield
        return
    keys = ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")
    old_env = {k: os.environ.get(k) for k in keys}
    patched = []
    for module, attr in (("datasets.config", "HF_DATASETS_OFFLINE"), ("datasets.config", "HF_HUB_OFFLINE"),
                         ("huggingface_hub.constants", "HF_HUB_OFFLINE")):
        mod = sys.modules.get(module)
        if mod is not None and hasattr(mod, attr):
            patched.append((mod, attr, getattr(mod, attr)))
            setattr(mod, attr, True)
    os.environ.update({k: "1" for k in keys})
    try:
        yield
    finally:
        for mod, attr, value in patched:
            setattr(mod, attr, value)
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _quiet(enabled: bool):
    """lm-eval, datasets and transformers log a lot at INFO level: keep them to errors. Their
    progress bars (tqdm: loading weights, tokenizing, requests) write to sys.stderr directly: keep
    them off it too (logging's handlers keep their own stream, so errors still show)."""
    if not enabled:
        yield
        return
    loggers = [logging.getLogger(n) for n in ("lm-eval", "lm_eval", "datasets", "transformers", "accelerate")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
