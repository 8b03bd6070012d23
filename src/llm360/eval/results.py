"""RUN/metrics/eval.jsonl and its TensorBoard mirror (docs/run-directory.md §1 and §6).

One line per (checkpoint, task, metric):

    {"checkpoint": "ckpt_002", "step": 9, "tokens": 1152, "task": "arc_easy",
     "task_sha256": "9f2c...", "metric": "acc", "value": 0.27, "stderr": 0.044, "n": 100}

step and tokens are the checkpoint's optimizer steps done and trained tokens (its
trainer_state/state.json). task_sha256 is the task's content key (`llm360.eval.tasks.task_sha256`;
null for held-out data and lm-eval's own tasks). A (checkpoint, task) is on record when it has
lines with the same task_sha256, or lines without the key (written before it existed); lines of
another content under the same task name stay in the file, told apart by their task_sha256, and
readers that show one value per (checkpoint, task, metric) take the latest line. The lines of
one (checkpoint, task) are written with one write, so a crash leaves all of them or (after the
torn-line repair below) none; a pair on record is not evaluated again unless forced, and then
its old lines (same content or no key) are replaced, never duplicated. A damaged line is
skipped with a warning naming it; the other lines still count.
"""

from __future__ import annotations

import sys
from pathlib import Path

from llm360.rundir import EVAL_LOG
from llm360.utils import append_jsonl, atomic_write_text, json_line, read_jsonl_report

KEYS = ("checkpoint", "step", "tokens", "task", "task_sha256", "metric", "value", "stderr", "n")


def same_task(record: dict, task_sha256: str | None) -> bool:
    """Whether a line is of this task content (a line without the key, or no key asked, counts)."""
    return task_sha256 is None or record.get("task_sha256") in (None, task_sha256)


class EvalLog:
    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / EVAL_LOG
        self._warned: set[int] = set()  # damaged lines already named on stderr

    def read(self) -> list[dict]:
        records, bad = read_jsonl_report(self.path)
        for number in bad:
            if number not in self._warned:
                self._warned.add(number)
                print(f"warning: {self.path}:{number} is not a JSON record (a torn or damaged line); skipped",
                      file=sys.stderr)
        return records

    def done(self, checkpoint: str, task: str, metrics: tuple[str, ...] = (), task_sha256: str | None = None) -> bool:
        """Whether (checkpoint, task) of this content is on record, with all of `metrics` when given."""
        found = {r.get("metric") for r in self.records(checkpoint, task, task_sha256)}
        return bool(found) and set(metrics) <= found

    def records(self, checkpoint: str, task: str | None = None, task_sha256: str | None = None) -> list[dict]:
        return [r for r in self.read() if r.get("checkpoint") == checkpoint
                and (task is None or r.get("task") == task) and same_task(r, task_sha256)]

    def write(self, records: list[dict], replace: bool = False) -> None:
        """Append the lines of one (checkpoint, task); with replace, drop its old lines first."""
        if not records:
            return
        lines = [{k: r.get(k) for k in KEYS} for r in records]  # strict JSON (json_line): NaN as null
        keys = {(r["checkpoint"], r["task"]): r.get("task_sha256") for r in records}
        if replace and self.path.exists():
            kept = [r for r in self.read() if (r.get("checkpoint"), r.get("task")) not in keys
                    or not same_task(r, keys[r.get("checkpoint"), r.get("task")])]
            atomic_write_text(self.path, "".join(json_line(r) for r in kept + lines))
            return
        append_jsonl(self.path, *lines)


class TensorBoard:
    """eval/TASK/METRIC scalars at the checkpoint's step, in RUN/metrics/tb (when installed)."""

    def __init__(self, run_dir: str | Path):
        self.writer = None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is an extra; eval.jsonl is the record
            return
        self.writer = SummaryWriter(str(Path(run_dir) / "metrics" / "tb"))

    def write(self, records: list[dict]) -> None:
        if self.writer is None:
            return
        for r in records:
            if isinstance(r.get("value"), (int, float)):
                self.writer.add_scalar(f"eval/{r['task']}/{r['metric']}", r["value"], r["step"])
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
