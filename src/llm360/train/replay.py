"""`llm360 replay RUN --checkpoint c`: prove a checkpoint by retraining it from its predecessor.

Starts from `ckpt_{c-1}` (from `init` for c = 0), trains chunk c by the step rule, skipping
exactly the batches that the original run's spike guard skipped (they are listed in `ckpt_c`'s
trainer state), and compares the result with `ckpt_c`: bitwise equality on CPU in deterministic
mode, else the largest absolute difference per tensor.
"""

from __future__ import annotations

from pathlib import Path

import torch

from llm360.config import TrainConfig, load_run_config
from llm360.data.store import RunData
from llm360.errors import UserError
from llm360.model.hf import load_state_dict
from llm360.rundir import (EVENTS_LOG, CheckpointName, RunDir, TrainerState, checkpoint_problems, chunk_checkpoint_name,
                           read_trainer_state)
from llm360.train.trainer import Trainer
from llm360.utils import read_jsonl


def chunk_number(text: str, n_chunks: int) -> int:
    """'3', 'ckpt_003' -> 3: replay proves chunk checkpoints."""
    text = str(text).strip()
    parsed = CheckpointName.parse(text if not text.isdigit() else f"ckpt_{text}")
    if parsed is None or parsed.kind != "ckpt" or not 0 <= parsed.number < n_chunks:
        raise UserError(f"--checkpoint {text!r}: give a chunk checkpoint number 0..{n_chunks - 1} or a name like "
                        f"{chunk_checkpoint_name(0, n_chunks)}")
    return parsed.number


def settings_in_force(run_dir: Path, state: TrainerState, first_step: int, last_step: int,
                      recorded: TrainConfig) -> TrainConfig:
    """The train.* settings that trained steps first_step..last_step: those the checkpoint after
    them recorded (run.yaml's, for a checkpoint written before settings were recorded). A change
    of settings inside that range cannot be replayed as one piece: one sentence says so."""
    for event in read_jsonl(RunDir(run_dir).path(EVENTS_LOG)):
        if event.get("kind") == "config_change" and first_step < event.get("step", -1) <= last_step:
            raise UserError(f"the settings changed at step {event['step']}, inside the steps {first_step}..{last_step} "
                            "that replay would retrain at once; replay the checkpoints around that step instead")
    if not state.settings:
        return recorded
    return TrainConfig.model_validate(state.settings)


def replay(run_dir: str | Path, checkpoint: str | int) -> dict:
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    data = RunData(run_dir)
    c = chunk_number(str(checkpoint), data.n_chunks)
    rule = data.rule
    first, end = rule.first_step(c), rule.end(c)  # chunk c: steps first..end - 1
    target_name = chunk_checkpoint_name(c, data.n_chunks)
    start_name = "init" if c == 0 else chunk_checkpoint_name(c - 1, data.n_chunks)
    infos = {i.name: i for i in data.run.checkpoints(rule)}
    for name in (start_name, target_name):
        if name not in infos:
            raise UserError(f"{run_dir}/checkpoints/{name} does not exist; replay needs {start_name} and {target_name}")
        found = checkpoint_problems(infos[name])
        if found:
            raise UserError(f"checkpoint {name} fails its checksums ({found[0]}); it cannot be replayed")
    target_state = read_trainer_state(infos[target_name])
    skipped = [s for s in target_state.skipped_steps if first <= s < end]
    settings = settings_in_force(run_dir, target_state, first, end - 1, cfg.train)
    trainer = Trainer(run_dir, settings, cfg.model, cfg.seed, replay=True)
    replayed = trainer.replay(infos[start_name], end, skipped)
    original = load_state_dict(infos[target_name].path)
    if set(replayed) != set(original):
        raise UserError(f"{target_name} holds tensors {sorted(set(original) ^ set(replayed))[:5]} that the model does not")
    diffs = {}
    for name, tensor in original.items():
        ours = replayed[name].to(tensor.dtype)
        diffs[name] = 0.0 if torch.equal(ours, tensor) else float((ours.double() - tensor.double()).abs().max())
    return {"checkpoint": target_name, "from": start_name, "steps": [first, end - 1],
            "skipped_steps": skipped, "bitwise_equal": all(d == 0.0 for d in diffs.values()),
            "max_abs_diff": max(diffs.values()), "per_tensor": diffs, "deterministic": settings.deterministic}


def cli_replay(args) -> int:
    from rich.console import Console
    from rich.table import Table

    result = replay(args.run, args.checkpoint)
    console = Console()
    steps = result["steps"]
    head = f"replayed {result['checkpoint']} from {result['from']} (steps {steps[0]}..{steps[1]}"
    head += f", skipping {result['skipped_steps']})" if result["skipped_steps"] else ")"
    console.print(head)
    if result["bitwise_equal"]:
        console.print(f"[bold green]bitwise equal[/]: all {len(result['per_tensor'])} tensors are identical")
        return 0
    table = Table("tensor", "max |diff|")
    for name, d in sorted(result["per_tensor"].items(), key=lambda kv: -kv[1])[:20]:
        table.add_row(name, f"{d:.3e}")
    console.print(table)
    verdict = "[yellow]not bitwise equal[/]" + ("" if result["deterministic"] else " (train.deterministic is off)")
    console.print(f"{verdict}: largest absolute difference {result['max_abs_diff']:.3e}")
    return 1 if result["deterministic"] else 0
