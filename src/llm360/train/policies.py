"""What the training loop delegates: the spike guard's actions, console output, fault injection,
and the hooks called after each checkpoint. The loop (trainer.Trainer._loop) decides *when*;
these decide *what*.
"""

from __future__ import annotations

import contextlib
import os
from typing import Callable

from llm360.config import FaultInjectionConfig, SpikeConfig

# called after each chunk checkpoint with (checkpoint name, steps done), on rank 0
CheckpointHook = Callable[[str, int], None]
EXIT_CODE_FAULT = 17


class StopTraining(Exception):
    """Training ends here, on purpose, with a record (the spike guard's `stop`, too many
    rollbacks, weights that are no longer finite)."""


class Output:
    """The console and the progress bar: rank 0 only."""

    def __init__(self, enabled: bool, console=None):
        self.enabled = enabled
        self.console = console
        self.bar = None

    def say(self, text: str) -> None:
        if self.enabled:
            from rich.console import Console

            (self.console or Console(stderr=True)).print(text)

    @contextlib.contextmanager
    def progress(self, total: int, done: int):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        bar = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                       TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[tps]:,.0f} tok/s"),
                       TimeRemainingColumn(), disable=not self.enabled, transient=False, console=self.console)
        with bar:
            self.bar = (bar, bar.add_task("train", total=total, completed=done, loss=float("nan"), tps=0.0))
            try:
                yield
            finally:
                self.bar = None

    def step(self, record: dict) -> None:
        if self.bar is not None:
            bar, task = self.bar
            bar.update(task, completed=record["step"] + 1, loss=record.get("loss") or float("nan"),
                       tps=record.get("tokens_per_s") or 0.0)


class FaultInjection:
    """Faults on purpose (train.fault_injection), for tests and drills."""

    def __init__(self, cfg: FaultInjectionConfig):
        self.cfg = cfg

    def poisons(self, step: int) -> bool:
        """The loss of this step becomes NaN."""
        return step in self.cfg.nan_at_steps

    def kills_during(self, checkpoint: str) -> bool:
        """A real SIGKILL in the middle of writing this checkpoint."""
        return checkpoint in self.cfg.kill_in_checkpoint

    def after_checkpoint(self, steps_done: int, records) -> None:
        """The process dies right after the checkpoint written at these step counts."""
        if steps_done in self.cfg.exit_after_steps:
            records.close()
            os._exit(EXIT_CODE_FAULT)


class CheckpointHooks:
    """The caller's hooks after each chunk checkpoint (evaluation, say). A hook that fails is an
    `eval_failed` event and a warning, never the end of a training run; StopTraining does end it."""

    def __init__(self, hooks: list[CheckpointHook], records, output: Output):
        self.hooks = hooks
        self.records = records
        self.output = output

    def __call__(self, name: str, steps_done: int) -> None:
        for hook in self.hooks:
            try:
                hook(name, steps_done)
            except StopTraining:
                raise
            except Exception as e:
                error = f"{type(e).__name__}: {e}"
                self.records.event("eval_failed", steps_done - 1, checkpoint=name, error=error)
                self.output.say(f"[yellow]warning:[/] evaluating {name} failed ({error}); training goes on, "
                                f"and `llm360 eval RUN --checkpoints {name}` can redo it")


class SpikeResponse:
    """What to do with a step the spike guard judged bad (train.spike.action). The device has
    already withheld the step's update; this decides the record and where training goes on."""

    def __init__(self, cfg: SpikeConfig, trainer):  # the Trainer whose position it moves
        self.cfg = cfg
        self.trainer = trainer

    @property
    def withholds(self) -> bool:
        """`log` records a bad step and applies its update anyway; every other action withholds it."""
        return self.cfg.action != "log"

    def __call__(self, record: dict, kind: str, reason: str) -> dict | None:
        """The record to write for a bad step, or None when training rolled back."""
        t, step, action = self.trainer, record["step"], self.cfg.action
        t.records.event(kind, step, chunk=record["chunk"], reason=reason, loss=record["loss"],
                        grad_norm=record["grad_norm"], action=action)
        t.output.say(f"[yellow]{kind} at step {step}:[/] {reason} -> {action}")
        if action == "stop":
            t.position.steps_done = step
            raise StopTraining(f"{kind} at step {step}: {reason}")
        if action == "skip":
            t.position.skipped_steps.append(step)
            t.records.event("skip_batch", step, reason=kind, skipped=[t.rows_of(step)])
            return {**record, "skipped": True}
        self._roll_back(step, kind)
        return None

    def _roll_back(self, step: int, kind: str) -> None:
        """Back to the newest valid checkpoint before the spike, then skip its batches."""
        t = self.trainer
        if t.position.rollbacks >= self.cfg.max_rollbacks:
            t.position.steps_done = step
            raise StopTraining(f"{kind} at step {step} after {t.position.rollbacks} rollbacks "
                               f"(train.spike.max_rollbacks)")
        target = t.agreed_checkpoint(before_step=step)
        if target is None:
            t.position.steps_done = step
            raise StopTraining(f"{kind} at step {step}: no valid checkpoint to roll back to")
        skipped = list(range(step, min(step + self.cfg.skip_batches, t.data.total_steps)))
        memory = sorted(set(t.position.skipped_steps) | set(skipped))
        rollbacks = t.position.rollbacks + 1
        t.restore(target)
        t.position.skipped_steps = memory
        t.position.rollbacks = rollbacks
        rows = [t.rows_of(s) for s in skipped]
        t.records.event("rollback", step, to_checkpoint=target.name, to_step=target.steps_done, reason=kind,
                        skipped=rows)
        t.records.event("skip_batch", step, reason=kind, skipped=rows)
        t.records.truncate_steps(target.steps_done)
