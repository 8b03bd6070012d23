"""`llm360 replay RUN --checkpoint c`: prove a checkpoint by retraining it from its predecessor.

Starts from `ckpt_{c-1}` (from `init` for c = 0), trains chunk c by the step rule, skipping
exactly the batches that the original run's spike guard skipped (they are listed in `ckpt_c`'s
trainer state), and compares the result with `ckpt_c`: bitwise equality on CPU in deterministic
mode, else the largest absolute difference per tensor.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from llm360.config import load_run_config
from llm360.errors import UserError
from llm360.model.hf import load_state_dict
from llm360.train import checkpoint as ckpt
from llm360.train.trainer import Trainer
from llm360.utils import natural_index, pad_width


def parse_checkpoint(run_dir: Path, text: str, n_chunks: int) -> int:
    """'3', 'ckpt_003' -> 3."""
    text = str(text).strip()
    index = int(text) if text.isdigit() else natural_index(text, "ckpt_")
    if index is None or not 0 <= index < n_chunks:
        raise UserError(f"--checkpoint {text!r}: give a chunk checkpoint number 0..{n_chunks - 1} or a name like "
                        f"ckpt_{0:0{pad_width(n_chunks)}d}")
    return index


def replay(run_dir: str | Path, checkpoint: str | int) -> dict:
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    trainer = Trainer(run_dir, cfg.train, cfg.model, cfg.seed, replay=True)
    data = trainer.data
    c = parse_checkpoint(run_dir, str(checkpoint), data.n_chunks)
    spc = data.steps_per_chunk
    target_name = ckpt.chunk_checkpoint_name(c, data.n_chunks)
    start_name = "init" if c == 0 else ckpt.chunk_checkpoint_name(c - 1, data.n_chunks)
    infos = {i.name: i for i in ckpt.list_checkpoints(run_dir, spc)}
    for name in (start_name, target_name):
        if name not in infos:
            raise UserError(f"{run_dir}/checkpoints/{name} does not exist; replay needs {start_name} and {target_name}")
        found = ckpt.problems(infos[name])
        if found:
            raise UserError(f"checkpoint {name} fails its checksums ({found[0]}); it cannot be replayed")
    target_state = json.loads((infos[target_name].path / ckpt.STATE_DIR / "state.json").read_text())
    skipped = [s for s in target_state.get("skipped_steps", []) if c * spc <= s < (c + 1) * spc]
    replayed = trainer.replay(infos[start_name], (c + 1) * spc, skipped)
    original = load_state_dict(infos[target_name].path)
    if set(replayed) != set(original):
        raise UserError(f"{target_name} holds tensors {sorted(set(original) ^ set(replayed))[:5]} that the model does not")
    diffs = {}
    for name, tensor in original.items():
        ours = replayed[name].to(tensor.dtype)
        diffs[name] = 0.0 if torch.equal(ours, tensor) else float((ours.double() - tensor.double()).abs().max())
    return {"checkpoint": target_name, "from": start_name, "steps": [c * spc, (c + 1) * spc - 1],
            "skipped_steps": skipped, "bitwise_equal": all(d == 0.0 for d in diffs.values()),
            "max_abs_diff": max(diffs.values()), "per_tensor": diffs, "deterministic": cfg.train.deterministic}


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
