"""Frozen releases: consecutive checkpoints whose weights did not move as training says they did.

An open model suite has published "intermediate" checkpoints whose weights were copies of the
previous ones; checksums cannot see it (every file matches what was written). So verify compares
the weights of each pair of consecutive checkpoints (ordered by their state.json steps_done),
tensor by tensor and in blocks of rows, so that memory stays bounded whatever the model size.

The steps between checkpoints A and B are A's steps_done .. B's steps_done - 1, less the steps that
B's state.json lists as skipped (their update was withheld). A step *moves* the weights when it
is not skipped and train.jsonl records an lr > 0 for it (a step without a record counts as moving;
with a record, its last line counts, as after a rollback). The rule:

- identical: B's weights equal A's bit for bit although a moving step lies between them;
- stalled: ||w_B - w_A||_2 < UPDATE_FLOOR * sqrt(N * sum of lr_t^2 over the moving steps),
  N the number of weights. Why this bound: AdamW moves every weight by lr_t * m/(sqrt(v) + eps)
  (plus lr_t * wd * w), and the normalised step m/(sqrt(v) + eps) has magnitude about 1 per weight
  (exactly 1 on a first step, which is sign descent); over steps whose directions are independent
  the moves add up like a random walk, to about sqrt(N * sum lr_t^2), and more when they agree.
  UPDATE_FLOOR = 1e-3 leaves three orders of magnitude for weights no gradient reaches (unseen
  token rows), µP's smaller hidden learning rates (train.jsonl records the base lr) and normalised
  steps below 1: only an update that all but did not happen falls under it.

Each is a finding of kind "frozen" on checkpoints/B. Only the top-level *.safetensors files of a
checkpoint (model.safetensors or its shards) are read; a file that cannot be read as safetensors
is left to the checksum findings.
"""

from __future__ import annotations

import math
from pathlib import Path

from llm360.rundir import CHECKPOINTS_DIR, STATE_FILE, TRAIN_LOG, is_checkpoint_name

UPDATE_FLOOR = 1e-3
BLOCK_ELEMENTS = 1 << 22  # weights compared at a time (two float64 blocks: 64 MiB)


def frozen_findings(run_dir: Path, files: set[str], read_json) -> list[tuple[str, str]]:
    """(checkpoints/B, message) for every consecutive pair whose weights did not move (see the
    module docstring). `files`: the run's regular files (relative paths); `read_json(rel)`: a
    JSON object or None, read as the hostile reader reads it."""
    found = []
    order = _checkpoints(files, read_json)
    lrs = _recorded_lrs(run_dir / TRAIN_LOG) if TRAIN_LOG in files else {}
    for (a, a_steps, _, a_files), (b, b_steps, skipped, b_files) in zip(order, order[1:]):
        moving = [t for t in range(a_steps, b_steps) if t not in skipped and lrs.get(t, 1.0) > 0]
        if not moving or not a_files or not b_files:
            continue
        distance = update_norm([run_dir / f for f in a_files], [run_dir / f for f in b_files])
        if distance is None:
            continue
        norm, n = distance
        if norm == 0:
            found.append((f"{CHECKPOINTS_DIR}/{b}", f"weights identical to {a}'s, although {len(moving)} optimizer "
                                                    f"step(s) with lr > 0 lie between them (a frozen checkpoint)"))
            continue
        floor = UPDATE_FLOOR * math.sqrt(n * sum(lrs[t] ** 2 for t in moving if t in lrs))
        if norm < floor:
            found.append((f"{CHECKPOINTS_DIR}/{b}", f"weights moved by {norm:.3g} since {a} (L2), under the "
                                                    f"{floor:.3g} that {len(moving)} AdamW step(s) with the recorded "
                                                    f"lr give at the least ({UPDATE_FLOOR:g} * sqrt(N * sum lr^2))"))
    return found


def _checkpoints(files: set[str], read_json) -> list[tuple[str, int, set[int], list[str]]]:
    """(name, steps_done, skipped steps, weight files) of each checkpoint with a readable state,
    in steps order; two checkpoints at the same step (a stage end) keep the first."""
    names = {rel.split("/")[1] for rel in files
             if rel.startswith(CHECKPOINTS_DIR + "/") and rel.count("/") >= 2 and is_checkpoint_name(rel.split("/")[1])}
    out = {}
    for name in sorted(names):
        state = read_json(f"{CHECKPOINTS_DIR}/{name}/{STATE_FILE}")
        steps = state.get("steps_done") if isinstance(state, dict) else None
        skipped = state.get("skipped_steps", []) if isinstance(state, dict) else None
        if not isinstance(steps, int) or isinstance(steps, bool) or not isinstance(skipped, list):
            continue
        weights = sorted(rel for rel in files if rel.startswith(f"{CHECKPOINTS_DIR}/{name}/")
                         and rel.count("/") == 2 and rel.endswith(".safetensors"))
        out.setdefault(steps, (name, steps, {s for s in skipped if isinstance(s, int)}, weights))
    return [out[s] for s in sorted(out)]


def _recorded_lrs(path: Path) -> dict[int, float]:
    """step -> lr of the last train.jsonl line of each step; skipped steps and damaged lines are
    left out (a damaged line is a finding of its own)."""
    from llm360.utils import read_jsonl_report

    lrs: dict[int, float] = {}
    records, _ = read_jsonl_report(path)
    for r in records:
        step, lr = r.get("step"), r.get("lr")
        if isinstance(step, int) and isinstance(lr, (int, float)) and math.isfinite(lr):
            if r.get("skipped"):
                lrs.pop(step, None)
            else:
                lrs[step] = float(lr)
    return lrs


def update_norm(a_files: list[Path], b_files: list[Path]) -> tuple[float, int] | None:
    """(||w_b - w_a||_2, number of weights) over the tensors of two checkpoints, read a block of
    rows at a time; None when they cannot be read or do not hold the same tensors and shapes."""
    from safetensors import SafetensorError

    try:
        a, b = _tensor_files(a_files), _tensor_files(b_files)
        if set(a) != set(b):
            return None
        total, n = 0.0, 0
        for name in sorted(a):
            part = _tensor_distance(a[name], b[name], name)
            if part is None:
                return None
            total, n = total + part[0], n + part[1]
        return math.sqrt(total), n
    except (OSError, SafetensorError, ValueError, RuntimeError):
        return None


def _tensor_files(files: list[Path]) -> dict[str, Path]:
    from safetensors import safe_open

    where = {}
    for path in files:
        with safe_open(path, framework="pt") as f:
            where.update({name: path for name in f.keys()})
    return where


def _tensor_distance(a_path: Path, b_path: Path, name: str) -> tuple[float, int] | None:
    """(sum of squared differences, elements) of one tensor, BLOCK_ELEMENTS at a time."""
    import torch
    from safetensors import safe_open

    with safe_open(a_path, framework="pt") as fa, safe_open(b_path, framework="pt") as fb:
        sa, sb = fa.get_slice(name), fb.get_slice(name)
        shape = sa.get_shape()
        if shape != sb.get_shape():
            return None
        if not shape:  # a scalar
            return float((fb.get_tensor(name).double() - fa.get_tensor(name).double()) ** 2), 1
        per_row = math.prod(shape[1:])
        rows = max(1, BLOCK_ELEMENTS // max(1, per_row))
        total = 0.0
        for start in range(0, shape[0], rows):
            x, y = sa[start:start + rows], sb[start:start + rows]
            total += float(torch.sum((y.double() - x.double()) ** 2))
        return total, math.prod(shape)
