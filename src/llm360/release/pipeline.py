"""`llm360 run`: every stage into one run directory, resuming wherever an earlier attempt stopped.

prepare -> train (evaluating each checkpoint) -> memorization -> release -> verify. Each stage
knows on its own whether its work is done (prepare: a complete data/ with the same config;
train: the last chunk checkpoint; eval and memorization: the (checkpoint, task/chunk) pairs on
record), so running the command again continues, and on a finished run does nothing.
"""

from __future__ import annotations

import importlib
import time
from pathlib import Path

from rich.console import Console

from llm360.config import differences, load_config, load_run_config, to_dict
from llm360.errors import UserError

console = Console(stderr=True)


def _optional(module: str):
    """A later stage's module, or None while it is not part of this version."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name == module:
            return None
        raise


def _release_verifies(run_dir: Path) -> bool:
    verify = _optional("llm360.release.verify")
    return verify is not None and not verify.verify(run_dir)


def run_pipeline(config: str | None, out: str | None, overrides: list[str]) -> dict:
    from llm360.data.prepare import prepare

    cfg = load_config(config, overrides)
    run_dir = Path(out) if out else Path("runs") / cfg.name
    started = time.perf_counter()
    summary: dict = {"run": str(run_dir)}

    console.rule(f"[bold]llm360 run[/] {cfg.name} -> {run_dir}")
    if (run_dir / "run.yaml").exists():
        recorded = load_run_config(run_dir)
        changed = differences(to_dict(recorded), to_dict(cfg))
        if changed:
            console.print(f"[yellow]note:[/] {run_dir}/run.yaml is the record of this run and is kept; "
                          f"the config given now differs in {', '.join(changed[:8])}")
        if (run_dir / "release.json").exists() and _release_verifies(run_dir):
            console.print(f"{run_dir} is complete and its release verifies: nothing to do")
            summary.update(seconds=round(time.perf_counter() - started, 1), did_nothing=True,
                           report=str(run_dir / "report" / "index.html"))
            return summary
    console.print("[bold]1. prepare[/]")
    prepare(cfg, run_dir)
    cfg = load_run_config(run_dir)

    console.print("[bold]2. train[/] (a checkpoint per chunk, each evaluated)")
    from llm360.train.trainer import eval_hook, run_training

    result = run_training(run_dir, cfg, on_checkpoint=eval_hook(run_dir, cfg))
    summary["train"] = result
    if not result["finished"]:
        raise UserError(f"training stopped before the end ({result.get('stopped')}); see {run_dir}/metrics/events.jsonl")

    evaluation = _optional("llm360.eval.runner")
    if evaluation is not None and cfg.eval.every_checkpoint:
        console.print("[bold]3. evaluate[/] (checkpoints not evaluated yet)")
        evaluation.evaluate_run(run_dir, cfg.eval)

    memorization = _optional("llm360.analysis.memorization")
    if memorization is not None:
        console.print("[bold]4. memorization[/] (Analysis360)")
        memorization.memorization(run_dir)

    release = _optional("llm360.release.release")
    if release is not None:
        console.print("[bold]5. release[/] (cards, report, release.json) and verify")
        release.make_release(run_dir)
        from llm360.release.verify import verify

        findings = verify(run_dir)
        if findings:
            raise UserError(f"the release of {run_dir} does not verify: " + "; ".join(findings[:5]))
        summary["report"] = str(run_dir / "report" / "index.html")
    summary["seconds"] = round(time.perf_counter() - started, 1)
    return summary


def cli_run(args) -> int:
    summary = run_pipeline(args.config, args.out, args.overrides)
    console.rule("[bold green]done")
    console.print(f"run directory: {summary['run']}  ({summary['seconds']} s)")
    if "report" in summary:
        console.print(f"report: {summary['report']}")
    return 0
