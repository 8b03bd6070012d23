"""What can be evaluated: held-out perplexity, multiple-choice task files, lm-eval tasks.

A task is named on the command line (`--tasks`) or in `eval.tasks` by one of:

    heldout                      held-out loss / ppl / bpb of every source of the run
    heldout/SOURCE               the same for one source
    NAME                         NAME.jsonl in the benchmarks folder (below)
    path/to/NAME.jsonl           a task file; the task is called NAME
    path/to/NAME.yaml            a task spec (template, few-shot file, shots; see TaskSpec)
    amber                        the LLM360 Amber suite (lm-eval only, see SUITES)
    ANY_OF_THE_ABOVE:K           with K few-shot examples (e.g. `arc_easy:5`, `qa.jsonl:3`)

The benchmarks folder is $LLM360_BENCHMARKS, else `../shared/benchmarks` beside the llm360
checkout. Under `--harness lm-eval` a bare NAME on the command line is one of lm-eval's own tasks
(`arc_challenge`, `mmlu`, ...); write NAME.jsonl (or a path) to run lm-eval on a local file
instead. Names in `eval.tasks` always mean local files (the benchmarks folder or paths). A task
of `eval.tasks` that cannot be found is skipped with a warning (training never stops for it);
one named with --tasks is an error that lists the known tasks.

In eval.jsonl a task is recorded under its label: `heldout/SOURCE`, `NAME` (`NAME_Kshot` with
K > 0 examples), and for lm-eval `lm-eval/TASK[_Kshot]` or `lm-eval/local/NAME[_Kshot]`.

Task files are JSONL, one question per line, in either of two formats:

    {"id": "q1", "requests": [[context, continuation], ...], "label": 2}        (benchmarks)
    {"id": "q1", "question": "...", "choices": ["...", ...], "gold": 2}         (question)

The first is the format of ../shared/benchmarks: one (context, continuation) pair per choice,
scored as they are. The second is rendered with a template (default "Question: {question}\\nAnswer:")
and each choice is the continuation target_delimiter + choice (default " "), as lm-eval does.

Few-shot: K examples are drawn from a separate file, NAME.fewshot.jsonl beside the task file (or
the spec's `fewshot:`), by a seeded draw per question (seed FEWSHOT_SEED and the question's id),
so a question gets the same examples at every checkpoint and in any subset. Each example is its
context followed by its gold continuation; examples and the question are joined by
fewshot_delimiter (default a blank line), as lm-eval renders few-shot prompts.

acc_norm divides each choice's log-likelihood by its length in characters: the continuation as
written for the benchmarks format, the choice text (without target_delimiter) for the question
format, exactly what lm-eval's multiple_choice tasks divide by. A benchmarks-format question whose
choices differ in the context and share the continuation (WinoGrande's partial evaluation: the
blank filled by each option, then the rest of the sentence) divides by the length of each choice's
context instead (without the few-shot prompt): lm-eval's choices are then the contexts
(`multiple_input`), and acc_norm divides by the length of the choices.

A task's results are keyed by its content, not its name: `task_sha256` is the sha256 of the
questions as scored (see `task_sha256`), so another file called the same, another sample
(eval.max_questions) or other shots is another task on record.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from llm360.errors import UserError

BENCHMARKS_ENV = "LLM360_BENCHMARKS"
SAMPLE_SEED = 1234  # the seeded draw of eval.max_questions questions
FEWSHOT_SEED = 1234  # the seeded draw of few-shot examples (lm-eval's default seed, by name)
DEFAULT_TEMPLATE = "Question: {question}\nAnswer:"

# LLM360 / Open LLM Leaderboard suite (ANCHORS.md): lm-eval task, shots, headline metric
SUITES: dict[str, list[tuple[str, int, str]]] = {
    "amber": [
        ("arc_challenge", 25, "acc_norm"),
        ("hellaswag", 10, "acc_norm"),
        ("mmlu", 5, "acc"),
        ("truthfulqa_mc2", 0, "acc"),  # lm-eval reports the mc2 score as `acc`
    ],
}


def benchmarks_dir() -> Path:
    """$LLM360_BENCHMARKS, else ../shared/benchmarks beside the llm360 checkout."""
    env = os.environ.get(BENCHMARKS_ENV)
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[3]  # src/llm360/eval/tasks.py -> the checkout
    return repo.parent / "shared" / "benchmarks"


def known_benchmarks() -> list[str]:
    folder = benchmarks_dir()
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob("*.jsonl") if not p.stem.endswith(".fewshot"))


# ---------------------------------------------------------------------------------------------
# what the runner evaluates


@dataclass(frozen=True)
class HeldoutTask:
    source: str

    @property
    def label(self) -> str:
        return f"heldout/{self.source}"

    metrics = ("loss", "ppl", "bpb")


@dataclass(frozen=True)
class TaskSpec:
    """A multiple-choice task on a local file (benchmarks or question format).

    A spec file (`NAME.yaml`) may set: name, data (required), fewshot, num_fewshot, template,
    target_delimiter, fewshot_delimiter; paths are relative to the spec file.
    """

    name: str
    data: Path
    num_fewshot: int = 0
    fewshot: Path | None = None
    template: str = DEFAULT_TEMPLATE
    target_delimiter: str = " "
    fewshot_delimiter: str = "\n\n"

    @property
    def label(self) -> str:
        return self.name if self.num_fewshot == 0 else f"{self.name}_{self.num_fewshot}shot"

    metrics = ("acc", "acc_norm")


@dataclass(frozen=True)
class LmEvalTask:
    """A task that lm-evaluation-harness runs: one of its own (`task`) or a local file (`spec`)."""

    task: str  # lm-eval's task (or group) name; for a local file, the file's task name
    num_fewshot: int | None = None  # None: the task's default
    spec: TaskSpec | None = None
    headline: str | None = None  # the metric a suite reports for it

    @property
    def label(self) -> str:
        base = f"lm-eval/local/{self.spec.name}" if self.spec else f"lm-eval/{self.task}"
        return base if not self.num_fewshot else f"{base}_{self.num_fewshot}shot"

    metrics = ()  # whatever lm-eval reports


Task = HeldoutTask | TaskSpec | LmEvalTask


def split_shots(name: str) -> tuple[str, int | None]:
    """`arc_easy:5` -> ("arc_easy", 5); `arc_easy` -> ("arc_easy", None)."""
    m = re.fullmatch(r"(.+):(\d+)", name)
    if m:
        return m.group(1), int(m.group(2))
    return name, None


def resolve_tasks(names: list[str], harness: str = "llm360", heldout_sources: list[str] | None = None) -> list[Task]:
    """Turn task names into tasks (see the module docstring); unknown names list the known ones."""
    tasks: list[Task] = []
    for raw in names:
        raw = raw.strip()
        if not raw:
            continue
        name, shots = split_shots(raw)
        if name in SUITES:
            if harness != "lm-eval":
                raise UserError(f"the {name!r} suite runs lm-eval's task definitions ("
                                + ", ".join(f"{t} {k}-shot" for t, k, _ in SUITES[name])
                                + "): use --harness lm-eval")
            tasks += [LmEvalTask(t, k, headline=m) for t, k, m in SUITES[name]]
            continue
        if name == "heldout" or name.startswith("heldout/"):
            if harness != "llm360":
                raise UserError("held-out perplexity is computed by llm360's own harness; drop it from "
                                "--tasks or use --harness llm360")
            tasks += _heldout(name, heldout_sources)
            continue
        if harness == "lm-eval" and not _looks_like_path(name):
            tasks.append(LmEvalTask(name, shots))
            continue
        spec = load_spec(name, shots)
        tasks.append(LmEvalTask(spec.name, spec.num_fewshot, spec=spec) if harness == "lm-eval" else spec)
    labels = [t.label for t in tasks]
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        raise UserError(f"task(s) named twice: {', '.join(dupes)}")
    return tasks


def _looks_like_path(name: str) -> bool:
    return "/" in name or os.sep in name or name.endswith((".jsonl", ".yaml", ".yml"))


def _heldout(name: str, sources: list[str] | None) -> list[HeldoutTask]:
    sources = sources or []
    if name == "heldout":
        return [HeldoutTask(s) for s in sources]
    source = name.split("/", 1)[1]
    if source not in sources:
        raise UserError(f"no held-out data for source {source!r}; held-out sources of this run: "
                        f"{', '.join(sources) or '(none)'}")
    return [HeldoutTask(source)]


def load_spec(name: str, shots: int | None = None) -> TaskSpec:
    """A TaskSpec from a task name, a .jsonl path or a .yaml spec path."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise UserError(f"task spec {path} does not exist")
        return _read_spec_file(path, shots)
    if path.suffix == ".jsonl":
        if not path.is_file() and len(path.parts) == 1 and (benchmarks_dir() / path).is_file():
            path = benchmarks_dir() / path
        if not path.is_file():
            raise UserError(f"task file {path} does not exist")
    else:
        path = benchmarks_dir() / f"{name}.jsonl"
        if "/" in name or not path.is_file():
            known = known_benchmarks()
            where = f"{benchmarks_dir()} (set ${BENCHMARKS_ENV} to use another folder)"
            raise UserError(
                f"unknown task {name!r}; known tasks: heldout, heldout/SOURCE"
                + (", " + ", ".join(known) if known else "")
                + f", the suite(s) {', '.join(SUITES)} (with --harness lm-eval), or a path to a "
                f"NAME.jsonl / NAME.yaml task file. Named tasks are read from {where}"
                + ("" if known else ", which has none")
            )
    stem = path.name.removesuffix(".jsonl")
    fewshot = path.with_name(f"{stem}.fewshot.jsonl")
    return _checked(TaskSpec(name=stem, data=path, num_fewshot=shots or 0,
                             fewshot=fewshot if fewshot.is_file() else None), source=str(path))


SPEC_KEYS = {"name", "data", "fewshot", "num_fewshot", "template", "target_delimiter", "fewshot_delimiter"}


def _read_spec_file(path: Path, shots: int | None) -> TaskSpec:
    import yaml

    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(tree, dict):
        raise UserError(f"{path}: a task spec is a mapping with keys {', '.join(sorted(SPEC_KEYS))}")
    unknown = sorted(set(tree) - SPEC_KEYS)
    if unknown:
        raise UserError(f"{path}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(SPEC_KEYS))}")
    if "data" not in tree:
        raise UserError(f"{path}: the key `data` (the task's JSONL file) is required")
    base = path.parent
    fewshot = tree.get("fewshot")
    k = shots if shots is not None else tree.get("num_fewshot", 0)
    if not isinstance(k, int) or k < 0:
        raise UserError(f"{path}: num_fewshot must be an integer >= 0, got {k!r}")
    for key in ("template", "target_delimiter", "fewshot_delimiter", "name"):
        if key in tree and not isinstance(tree[key], str):
            raise UserError(f"{path}: {key} must be a string, got {tree[key]!r}")
    spec = TaskSpec(
        name=tree.get("name") or path.stem,
        data=base / str(tree["data"]),
        num_fewshot=k,
        fewshot=base / str(fewshot) if fewshot else None,
        template=tree.get("template", DEFAULT_TEMPLATE),
        target_delimiter=tree.get("target_delimiter", " "),
        fewshot_delimiter=tree.get("fewshot_delimiter", "\n\n"),
    )
    for p in (spec.data, spec.fewshot):
        if p is not None and not p.is_file():
            raise UserError(f"{path}: file {p} does not exist")
    return _checked(spec, source=str(path))


def _checked(spec: TaskSpec, source: str) -> TaskSpec:
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", spec.name):
        raise UserError(f"{source}: task name {spec.name!r} may only use letters, digits, _ . -")
    if spec.num_fewshot and spec.fewshot is None:
        raise UserError(f"{spec.name}: {spec.num_fewshot}-shot needs examples from a separate file: "
                        f"put them in {spec.data.with_name(spec.name + '.fewshot.jsonl')} (same format), "
                        "or name one with `fewshot:` in a task spec")
    if set(re.findall(r"{(\w*)}", spec.template)) - {"question"}:
        raise UserError(f"{source}: the template may use only the field {{question}}, got {spec.template!r}")
    return spec


# ---------------------------------------------------------------------------------------------
# questions


@dataclass
class Question:
    """One multiple-choice item, ready to score: a (context, continuation) pair per choice."""

    id: str
    requests: list[tuple[str, str]]
    label: int
    norm_lengths: list[int]  # what acc_norm divides each log-likelihood by (characters)
    line: int = 0  # 1-based line in its task file
    doc: dict = field(default_factory=dict, repr=False)


def read_task_file(path: Path, spec: TaskSpec | None = None) -> list[Question]:
    """Every question of a JSONL task file, checked; a bad line is named as PATH:LINE."""
    spec = spec or TaskSpec(name=path.stem, data=path)
    questions = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                doc = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
            questions.append(_question(doc, spec, where, lineno))
    if not questions:
        raise UserError(f"{path}: no questions (the file is empty)")
    ids = [q.id for q in questions]
    if len(set(ids)) != len(ids):
        dupe = next(i for i in ids if ids.count(i) > 1)
        raise UserError(f"{path}: question id {dupe!r} appears more than once")
    return questions


def _question(doc, spec: TaskSpec, where: str, lineno: int) -> Question:
    if not isinstance(doc, dict):
        raise UserError(f"{where}: a question must be a JSON object, got {type(doc).__name__}")
    qid = str(doc.get("id", f"line{lineno}"))
    if "requests" in doc:
        reqs = doc["requests"]
        if (not isinstance(reqs, list) or not reqs
                or not all(isinstance(r, list) and len(r) == 2 and all(isinstance(s, str) for s in r) for r in reqs)):
            raise UserError(f"{where}: `requests` must be a non-empty list of [context, continuation] string pairs")
        requests = [(c, x) for c, x in reqs]
        label = _label(doc, "label", len(requests), where)
        return Question(qid, requests, label, norm_lengths(requests), lineno, doc)
    if "question" in doc:
        q, choices = doc["question"], doc.get("choices")
        if not isinstance(q, str):
            raise UserError(f"{where}: `question` must be a string")
        if not isinstance(choices, list) or not choices or not all(isinstance(c, str) for c in choices):
            raise UserError(f"{where}: `choices` must be a non-empty list of strings")
        label = _label(doc, "gold", len(choices), where)
        context = spec.template.replace("{question}", q)
        requests = [(context, spec.target_delimiter + c) for c in choices]
        return Question(qid, requests, label, [len(c) for c in choices], lineno, doc)
    raise UserError(f"{where}: a question needs either `requests` and `label` (benchmarks format) or "
                    "`question`, `choices` and `gold`")


def shares_continuation(requests: list[tuple[str, str]]) -> bool:
    """Whether the choices differ in the context and share the continuation (WinoGrande's shape)."""
    return len({c for c, _ in requests}) > 1 and len({x for _, x in requests}) == 1


def norm_lengths(requests: list[tuple[str, str]]) -> list[int]:
    """What acc_norm divides by: each continuation's length, or each context's where the choices
    share the continuation (lm-eval's multiple_input tasks divide by their choices, the contexts)."""
    if shares_continuation(requests):
        return [len(c) for c, _ in requests]
    return [len(x) for _, x in requests]


def _label(doc: dict, key: str, n: int, where: str) -> int:
    label = doc.get(key)
    if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < n:
        raise UserError(f"{where}: `{key}` must be an integer choice index in 0..{n - 1}, got {label!r}")
    return label


def sample_indices(n: int, k: int | None, task: str) -> list[int]:
    """A seeded sample of k of n question indices (all when k is None or >= n), in file order."""
    if k is None or k >= n:
        return list(range(n))
    return sorted(random.Random(f"{SAMPLE_SEED}/{task}").sample(range(n), k))


def load_questions(spec: TaskSpec, max_questions: int | None = None) -> list[Question]:
    """The task's questions (a seeded sample of max_questions of them), with few-shot prompts."""
    questions = read_task_file(spec.data, spec)
    questions = [questions[i] for i in sample_indices(len(questions), max_questions, spec.name)]
    if spec.num_fewshot:
        pool = read_task_file(spec.fewshot, spec)
        for q in questions:
            q.requests = [(fewshot_prefix(spec, pool, q) + c, x) for c, x in q.requests]
    return questions


def fewshot_prefix(spec: TaskSpec, pool: list[Question], question: Question) -> str:
    """K examples drawn for this question (seeded by its id), each context + gold continuation."""
    candidates = [p for p in pool if p.id != question.id]
    if len(candidates) < spec.num_fewshot:
        raise UserError(f"{spec.fewshot}: {spec.num_fewshot}-shot needs at least {spec.num_fewshot} "
                        f"examples, the file has {len(candidates)}")
    rng = random.Random(f"{FEWSHOT_SEED}/{spec.name}/{question.id}")
    shots = rng.sample(candidates, spec.num_fewshot)
    return "".join(s.requests[s.label][0] + s.requests[s.label][1] + spec.fewshot_delimiter for s in shots)


def task_sha256(task: Task, max_questions: int | None = None) -> str | None:
    """The key of a task file's results in eval.jsonl: sha256 of the sampled questions as scored
    (id, (context, continuation) pairs with their few-shot prompts, label, acc_norm lengths, one
    JSON line each), so it changes with the file's content, the sample and the shots, not with
    the file's name or folder. None for held-out data and lm-eval's own tasks (named by lm-eval)."""
    spec = task if isinstance(task, TaskSpec) else getattr(task, "spec", None)
    if spec is None:
        return None
    digest = hashlib.sha256()
    for q in load_questions(spec, max_questions):
        digest.update(json.dumps([q.id, q.requests, q.label, q.norm_lengths], ensure_ascii=False).encode() + b"\n")
    return digest.hexdigest()
