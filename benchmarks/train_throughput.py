"""Trainer throughput and overhead against a bare training loop, in the same process.

For each model preset, on the same prepared data and the same batches:
  bare     model forward/backward + AdamW step + LR update in a plain Python loop, nothing else
  trainer  llm360's Trainer over the same steps: step rule, records (train.jsonl, TensorBoard,
           events), spike guard, progress bar, and the chunk checkpoints
The overhead is reported between checkpoints (trainer step time / bare step time - 1) and with
the checkpoint writes included. Runs are interleaved (bare, trainer, bare, trainer) and the best
of each kept, since the machine is shared and noisy.

    python benchmarks/train_throughput.py                  # demo and a larger preset, CPU
    python benchmarks/train_throughput.py --presets demo --steps 32 --json out.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from llm360.cli import main as llm360_main
from llm360.config import load_run_config
from llm360.data.store import RunData
from llm360.model.llama import Llama
from llm360.train.schedule import lr_at
from llm360.train.trainer import Trainer, apply_train_overrides, build_model_args, param_groups
from llm360.utils import read_jsonl

LARGER = {"dim": 384, "n_layers": 6, "n_heads": 6, "n_kv_heads": 6, "ffn_dim": 1024}


def prepare(root: Path, steps: int) -> Path:
    run = root / "run"
    overrides = [f"--train.steps_per_chunk={steps // 2}", "--data.stages=[{name: s, chunks: 2, mix: {python-docs: 1.0}}]",
                 "--data.sources=[{name: python-docs, kind: python-docs}]", "--eval.every_checkpoint=false",
                 "--train.extra_checkpoint_steps=[]"]
    assert llm360_main(["prepare", "demo", "--out", str(run), *overrides]) == 0
    return run


def bare_loop(run: Path, model_overrides: list[str]) -> float:
    """Seconds per step of the plainest possible loop over the same batches."""
    cfg = apply_train_overrides(run, model_overrides)
    data = RunData(run)
    args = build_model_args(cfg.model, data.vocab_size, data.seq_len)
    model = Llama(args)
    model.init_weights(cfg.seed)
    t = cfg.train
    opt = torch.optim.AdamW(param_groups(model, t), lr=t.lr, betas=tuple(t.betas), eps=t.eps)
    n_targets = data.global_batch_rows * data.seq_len
    start = time.perf_counter()
    for step in range(data.total_steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, lr=t.lr, min_lr=t.min_lr, warmup_steps=t.warmup_steps, total_steps=data.total_steps)
        rows = torch.from_numpy(data.rows_at(step))
        for i in range(0, rows.shape[0], t.micro_batch_rows):
            mb = rows[i:i + t.micro_batch_rows]
            logits = model(mb[:, :-1])
            loss = F.cross_entropy(logits.flatten(0, 1), mb[:, 1:].flatten(), reduction="sum") / n_targets
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return (time.perf_counter() - start) / data.total_steps


def trainer_run(run: Path, model_overrides: list[str]) -> dict:
    """Seconds per step of the real trainer, between checkpoints and overall."""
    for sub in ("checkpoints", "metrics"):
        shutil.rmtree(run / sub, ignore_errors=True)
    cfg = apply_train_overrides(run, model_overrides)
    trainer = Trainer(run, cfg.train, cfg.model, cfg.seed)
    # init is written before the loop starts; time only the loop (steps + chunk checkpoints)
    trainer._build()
    trainer._write_init()
    info = trainer._newest_valid()
    trainer._restore(info)
    start = time.perf_counter()
    trainer._loop(trainer.data.total_steps)
    total = time.perf_counter() - start
    trainer.records.close()
    events = read_jsonl(run / "metrics" / "events.jsonl")
    steps = read_jsonl(run / "metrics" / "train.jsonl")
    # time between checkpoints: the loop's wall time minus the checkpoint writes, which are
    # the gaps between a chunk's last step record and the checkpoint event that follows it
    ckpt_time = 0.0
    for e in events:
        if e["kind"] == "checkpoint":
            last = max(r["time"] for r in steps if r["step"] <= e["step"])
            ckpt_time += e["time"] - last
    n = trainer.data.total_steps
    return {"per_step_all": total / n, "per_step_between_ckpts": (total - ckpt_time) / n,
            "tokens_per_step": trainer.data.global_batch_rows * trainer.data.seq_len}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", default="demo,larger", help="comma list of: demo, larger")
    p.add_argument("--steps", type=int, default=24, help="steps per run (two chunks)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--json", help="write results here")
    a = p.parse_args()
    torch.manual_seed(0)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        run = prepare(Path(tmp), a.steps)
        for preset in a.presets.split(","):
            overrides = ["--model.preset=demo"]
            if preset == "larger":
                overrides += [f"--model.{k}={v}" for k, v in LARGER.items()]
            bare, trainer = [], []
            for _ in range(a.repeats):
                bare.append(bare_loop(run, overrides))
                trainer.append(trainer_run(run, overrides))
            b = min(bare)
            t_between = min(r["per_step_between_ckpts"] for r in trainer)
            t_all = min(r["per_step_all"] for r in trainer)
            tokens = trainer[0]["tokens_per_step"]
            results[preset] = {
                "bare_tokens_per_s": tokens / b, "trainer_tokens_per_s": tokens / t_all,
                "overhead_between_checkpoints": t_between / b - 1, "overhead_with_checkpoints": t_all / b - 1,
                "steps": a.steps, "threads": torch.get_num_threads(),
            }
    print(f"{'preset':10} {'bare tok/s':>12} {'trainer tok/s':>14} {'overhead (between ckpts)':>26} {'overhead (all)':>15}")
    for preset, r in results.items():
        print(f"{preset:10} {r['bare_tokens_per_s']:12,.0f} {r['trainer_tokens_per_s']:14,.0f} "
              f"{r['overhead_between_checkpoints']:25.1%} {r['overhead_with_checkpoints']:15.1%}")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
