"""`llm360 eval` and the in-loop evaluation: every checkpoint, every task, one record.

    llm360 eval RUN                                    # all checkpoints, eval.heldout + eval.tasks
    llm360 eval RUN --checkpoints last --tasks arc_easy,heldout/prose,my/qa.jsonl:5
    llm360 eval RUN --harness lm-eval --tasks amber    # lm-eval's tasks: ARC-C 25-shot, ...
    llm360 eval RUN --eval.max_questions=200 --force --json

Results go to RUN/metrics/eval.jsonl (one line per checkpoint, task and metric; see
`llm360.eval.results`) and RUN/metrics/tb. A (checkpoint, task) on record is skipped unless
--force. A checkpoint is evaluated only when its CHECKSUMS.sha256 match; a damaged one is
refused by name (the others are still evaluated, and the command then fails).

The trainer calls `evaluate_checkpoint(run_dir, name, eval_cfg)` after each chunk checkpoint
when `eval.every_checkpoint` is on; `llm360 run` calls `evaluate_run` for whatever is left.
Task names and file formats: `llm360.eval.tasks`; who scores them (one class per --harness):
`llm360.eval.harness`; the scores: `llm360.eval.scoring`.
"""

from __future__ import annotations

import json
from pathlib import Path

from llm360.config import EvalConfig, apply_override, load_run_config, to_dict, validate
from llm360.errors import UserError
from llm360.data.store import RunData
from llm360.eval.harness import Harness, get_harness
from llm360.eval.results import EvalLog, TensorBoard
from llm360.eval.tasks import HeldoutTask, Task, resolve_tasks, task_sha256
from llm360.rundir import RunDir, StepRule, checkpoint_problems, read_manifest, read_trainer_state


# ---------------------------------------------------------------------------------------------
# the command


def cli_eval(args) -> int:
    """`llm360 eval RUN [--checkpoints ...] [--tasks ...] [--harness ...] [--force] [--json]`."""
    from rich.console import Console

    run_dir = Path(args.run)
    eval_cfg = load_eval_config(run_dir, getattr(args, "overrides", None) or [])
    tasks = [t for t in args.tasks.split(",") if t.strip()] if getattr(args, "tasks", None) else None
    console = Console(stderr=bool(getattr(args, "json", False)))
    records = evaluate_run(run_dir, eval_cfg, checkpoints=getattr(args, "checkpoints", None) or "all",
                           tasks=tasks, harness=getattr(args, "harness", None) or "llm360",
                           force=bool(getattr(args, "force", False)), console=console, show="all")
    if not records:
        raise UserError("nothing to evaluate: the run has no held-out data and no task of eval.tasks was found; "
                        "name tasks with --tasks")
    if getattr(args, "json", False):
        print(json.dumps(records, indent=1))
    return 0


def load_eval_config(run_dir: Path, overrides: list[str]) -> EvalConfig:
    """The run's `eval` section with `--eval.key=value` overrides for this command only."""
    cfg = load_run_config(run_dir)
    if not overrides:
        return cfg.eval
    tree = to_dict(cfg)
    for item in overrides:
        if not item.lstrip("-").startswith("eval."):
            raise UserError(f"override {item!r}: `llm360 eval` takes only eval.* overrides, e.g. --eval.max_questions=50")
        apply_override(tree, item)
    return validate(tree, source=f"{run_dir}/run.yaml").eval


def _step_rule(run_dir: Path) -> StepRule:
    """The run's step rule; a run with checkpoints but no data (a model brought to be evaluated)
    has equal chunks of train.steps_per_chunk."""
    run = RunDir(run_dir)
    if run.manifest_path.exists():
        return read_manifest(run).step_rule
    return StepRule.uniform(load_run_config(run_dir).train.steps_per_chunk)


class DamagedCheckpoint(UserError):
    """A checkpoint whose files do not match its CHECKSUMS.sha256: never evaluated."""


def evaluate_run(run_dir: str | Path, eval_cfg: EvalConfig, *, checkpoints: str = "all",
                 tasks: list[str] | None = None, harness: str = "llm360", force: bool = False,
                 console=None, show: str = "new") -> list[dict]:
    """Evaluate the chosen checkpoints of a run; the records of every (checkpoint, task) asked for."""
    run_dir = Path(run_dir)
    infos = RunDir(run_dir).select(checkpoints, _step_rule(run_dir))
    records, refused = [], []
    for info in infos:
        try:
            records += evaluate_checkpoint(run_dir, info.name, eval_cfg, tasks=tasks, harness=harness,
                                           force=force, console=console, show=show)
        except DamagedCheckpoint as e:
            refused.append(str(e))
            _console(console).print(f"[red]refused:[/] {e}")
    if refused:
        raise UserError("; ".join(refused))
    return records


# ---------------------------------------------------------------------------------------------
# one checkpoint


def evaluate_checkpoint(run_dir: str | Path, name: str, eval_cfg: EvalConfig, *, tasks: list[str] | None = None,
                        harness: str = "llm360", force: bool = False, console=None, show: str = "new") -> list[dict]:
    """Evaluate checkpoint `name` of the run on the tasks (default: eval.heldout and eval.tasks),
    append the results to eval.jsonl and TensorBoard and print a table (show="new": when something
    was evaluated, "all": always); return its records for those tasks (new and on record)."""
    scorer = get_harness(harness)
    run_dir = Path(run_dir)
    infos = {c.name: c for c in RunDir(run_dir).checkpoints(_step_rule(run_dir))}
    if name not in infos:
        raise UserError(f"no checkpoint {name!r} in {run_dir}; checkpoints: {', '.join(infos) or '(none)'}")
    info = infos[name]
    console = _console(console)
    todo_tasks = _tasks(run_dir, eval_cfg, tasks, scorer, console)
    log = EvalLog(run_dir)
    digests = {t.label: task_sha256(t, eval_cfg.max_questions) for t in todo_tasks}  # results keyed by content
    todo = [t for t in todo_tasks if force or not log.done(name, t.label, t.metrics, digests[t.label])]
    if todo:
        found = checkpoint_problems(info)
        if found:
            raise DamagedCheckpoint(f"checkpoint {name} is damaged, not evaluating it: {'; '.join(found[:3])}")
        state = read_trainer_state(info)
        where = {"checkpoint": name, "step": state.steps_done, "tokens": int(state.tokens)}
        tb = TensorBoard(run_dir)
        try:
            for task, metrics in scorer.run(run_dir, info.path, todo, eval_cfg, console):
                new = [{**where, "task": task.label, "task_sha256": digests[task.label], "metric": m, **v}
                       for m, v in metrics.items()]
                log.write(new, replace=force)
                tb.write(new)
        finally:
            tb.close()
    records = [r for t in todo_tasks for r in log.records(name, t.label, digests[t.label])]
    if todo or show == "all":
        _table(console, name, records, skipped=len(todo_tasks) - len(todo))
    return records


def _tasks(run_dir: Path, eval_cfg: EvalConfig, names: list[str] | None, harness: Harness, console) -> list[Task]:
    sources = _heldout_sources(run_dir)
    if names is not None:
        tasks = resolve_tasks(names, harness.name, sources)
        if not tasks:
            raise UserError("no tasks to evaluate" + (" (this run has no held-out data)" if "heldout" in names else ""))
        return tasks
    # the run's config: held-out data, then eval.tasks (benchmark file names or paths, for either
    # harness). A task that cannot be found is skipped with a warning, so that training (which
    # evaluates every checkpoint) never stops for want of a benchmark file.
    tasks: list[Task] = []
    if eval_cfg.heldout and harness.scores_heldout:
        tasks += [HeldoutTask(s) for s in sources]
    for name in eval_cfg.tasks:
        try:
            tasks.append(harness.config_task(name, sources))
        except UserError as e:
            if name not in _warned:
                _warned.add(name)
                console.print(f"[yellow]warning:[/] eval.tasks: skipping {name!r}: {e}")
    return tasks


_warned: set[str] = set()


def _heldout_sources(run_dir: Path) -> list[str]:
    if not RunDir(run_dir).manifest_path.exists():
        return []

    return RunData(run_dir).heldout_sources


# ---------------------------------------------------------------------------------------------
# output


def _console(console):
    if console is not None:
        return console
    from rich import get_console

    return get_console()  # the console the trainer's progress bar lives on


def _table(console, name: str, records: list[dict], skipped: int = 0) -> None:
    from rich.table import Table

    if not records:
        return
    r0 = records[0]
    title = f"{name}: step {r0['step']:,}, {r0['tokens']:,} tokens"
    if skipped:
        title += f" ({skipped} task(s) already on record; --force redoes them)"
    table = Table(title=title, title_justify="left")
    for col, justify in (("task", "left"), ("metric", "left"), ("value", "right"), ("stderr", "right"), ("n", "right")):
        table.add_column(col, justify=justify)
    for r in records:
        value = "-" if r["value"] is None else f"{r['value']:.4f}"
        stderr = "" if r["stderr"] is None else f"± {r['stderr']:.4f}"
        table.add_row(r["task"], r["metric"], value, stderr, "" if r["n"] is None else str(r["n"]))
    console.print(table)
