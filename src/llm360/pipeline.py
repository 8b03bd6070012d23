"""`llm360 run` and `llm360 train`: the only module that imports every stage.

    prepare -> train (evaluating each checkpoint) -> memorization -> release -> verify

Each stage knows on its own whether its work is done (prepare: a complete data/ with the same
config; train: the last chunk checkpoint; eval and memorization: the (checkpoint, task/chunk)
pairs on record), so running the command again continues, and on a finished run does nothing.
Stages never import each other sideways: the trainer evaluates its checkpoints through the hook
this module hands it.
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console

from llm360.analysis.memorization import memorization
from llm360.config import EvalConfig, differences, load_config, load_run_config, to_dict
from llm360.data.prepare import prepare
from llm360.errors import UserError
from llm360.eval.runner import evaluate_checkpoint, evaluate_run
from llm360.lock import run_lock
from llm360.release.release import make_release
from llm360.release.verify import verify
from llm360.rundir import RELEASE_FILE, REPORT_FILE, RunDir
from llm360.train.trainer import CheckpointHook, apply_train_overrides, run_training

console = Console(stderr=True)


def eval_hook(run_dir: Path, eval_cfg: EvalConfig) -> CheckpointHook | None:
    """After each chunk checkpoint: evaluate it, when `eval.every_checkpoint` is on."""
    if not eval_cfg.every_checkpoint:
        return None

    def run(name: str, steps_done: int) -> None:
        evaluate_checkpoint(run_dir, name, eval_cfg)

    return run


def run_pipeline(config: str | None, out: str | None, overrides: list[str]) -> dict:
    cfg = load_config(config, overrides)
    run_dir = Path(out) if out else Path("runs") / cfg.name
    with run_lock(run_dir, "run"):
        return _run_stages(cfg, run_dir)


def _run_stages(cfg, run_dir: Path) -> dict:
    started = time.perf_counter()
    summary: dict = {"run": str(run_dir)}
    run = RunDir(run_dir)
    console.rule(f"[bold]llm360 run[/] {cfg.name} -> {run_dir}")
    if run.config_path.exists():
        recorded = load_run_config(run_dir)
        changed = differences(to_dict(recorded), to_dict(cfg))
        if changed:
            console.print(f"[yellow]note:[/] {run.config_path} is the record of this run and is kept; "
                          f"the config given now differs in {', '.join(changed[:8])}")
        if run.path(RELEASE_FILE).exists() and not verify(run_dir):
            console.print(f"{run_dir} is complete and its release verifies: nothing to do")
            summary.update(seconds=round(time.perf_counter() - started, 1), did_nothing=True,
                           report=str(run.path(REPORT_FILE)))
            return summary
    console.print("[bold]1. prepare[/]")
    prepare(cfg, run_dir)
    cfg = load_run_config(run_dir)

    console.print("[bold]2. train[/] (a checkpoint per chunk, each evaluated)")
    result = run_training(run_dir, cfg, on_checkpoint=eval_hook(run_dir, cfg.eval))
    summary["train"] = result
    if not result["finished"]:
        raise UserError(f"training stopped before the end ({result.get('stopped')}); see {run_dir}/metrics/events.jsonl")

    if cfg.eval.every_checkpoint:
        console.print("[bold]3. evaluate[/] (checkpoints not evaluated yet)")
        evaluate_run(run_dir, cfg.eval)

    console.print("[bold]4. memorization[/] (Analysis360)")
    memorization(run_dir)

    console.print("[bold]5. release[/] (cards, report, release.json) and verify")
    make_release(run_dir)
    findings = verify(run_dir)
    if findings:
        raise UserError(f"the release of {run_dir} does not verify: " + "; ".join(findings[:5]))
    summary["report"] = str(run.path(REPORT_FILE))
    summary["seconds"] = round(time.perf_counter() - started, 1)
    return summary


def cli_run(args) -> int:
    summary = run_pipeline(args.config, args.out, args.overrides)
    console.rule("[bold green]done")
    console.print(f"run directory: {summary['run']}  ({summary['seconds']} s)")
    if "report" in summary:
        console.print(f"report: {summary['report']}")
    return 0


def cli_train(args) -> int:
    """`llm360 train RUN [--train.key=value ...]`: train (or resume), evaluating each checkpoint."""
    run_dir = Path(args.run)  # the CLI holds the run's lock around this (llm360.cli._lock)
    cfg = apply_train_overrides(run_dir, args.overrides)
    result = run_training(run_dir, cfg, on_checkpoint=eval_hook(run_dir, cfg.eval))
    return 0 if result["finished"] else 1
