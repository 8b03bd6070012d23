"""Trainer throughput and overhead against a bare training loop, in the same process.

For each model preset, on the same prepared data and the same batches:
  bare     model forward/backward + AdamW step + LR update in a plain Python loop, nothing else
  trainer  llm360's Trainer over the same steps: step rule, records (train.jsonl, TensorBoard,
           events), spike guard, and the chunk checkpoints
Each global step runs once in the bare loop and once in the trainer, one after the other, so the
noise of a shared machine hits both alike. The overhead is reported between checkpoints (mean
trainer step time / mean bare step time - 1) and with the checkpoint writes included.

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
from llm360.data.store import RunData
from llm360.model.llama import Llama
from llm360.train.schedule import lr_at
from llm360.train.trainer import Trainer, apply_train_overrides, build_model_args, group_specs, param_groups

LARGER = {"dim": 384, "n_layers": 6, "n_heads": 6, "n_kv_heads": 6, "ffn_dim": 1024}


def prepare(root: Path, steps: int) -> Path:
    run = root / "run"
    overrides = [f"--train.steps_per_chunk={steps // 2}", "--data.stages=[{name: s, chunks: 2, mix: {python-docs: 1.0}}]",
                 "--data.sources=[{name: python-docs, kind: python-docs}]", "--eval.every_checkpoint=false",
                 "--train.extra_checkpoint_steps=[]"]
    assert llm360_main(["prepare", "demo", "--out", str(run), *overrides]) == 0
    return run


class BareLoop:
    """The plainest possible training loop over the same batches: no records, no guard."""

    def __init__(self, run: Path, cfg):
        self.data = RunData(run)
        args = build_model_args(cfg.model, self.data.vocab_size, self.data.seq_len)
        self.model = Llama(args)
        self.model.init_weights(cfg.seed)
        self.t = cfg.train
        self.opt = torch.optim.AdamW(param_groups(group_specs(self.model, self.t), self.t.weight_decay), lr=self.t.lr, betas=tuple(self.t.betas), eps=self.t.eps,
                                     fused=True)  # as the trainer: the overhead measured is the rest
        self.n_targets = self.data.global_batch_rows * self.data.seq_len

    def step(self, step: int) -> None:
        t, data = self.t, self.data
        for g in self.opt.param_groups:
            g["lr"] = lr_at(step, lr=t.lr, min_lr=t.min_lr, warmup_steps=t.warmup_steps, total_steps=data.total_steps)
        rows = torch.from_numpy(data.rows_at(step).astype("int64"))
        for i in range(0, rows.shape[0], t.micro_batch_rows):
            mb = rows[i:i + t.micro_batch_rows]
            logits = self.model(mb[:, :-1])
            loss = F.cross_entropy(logits.flatten(0, 1), mb[:, 1:].flatten(), reduction="sum") / self.n_targets
            loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)


def measure(run: Path, model_overrides: list[str]) -> dict:
    """Interleave one bare step and one trainer step over the same global steps, so that the
    machine's noise hits both alike. The trainer's steps include its records, the spike guard
    and, after each chunk's last step, the checkpoint write (timed apart)."""
    for sub in ("checkpoints", "metrics"):
        shutil.rmtree(run / sub, ignore_errors=True)
    cfg = apply_train_overrides(run, model_overrides)
    bare = BareLoop(run, cfg)
    trainer = Trainer(run, cfg.train, cfg.model, cfg.seed)
    trainer._build()
    trainer._write_init()
    trainer.restore(trainer.agreed_checkpoint())
    spc = trainer.data.steps_per_chunk
    bare_times, trainer_times, ckpt_steps = [], [], []
    for step in range(trainer.data.total_steps):
        t0 = time.perf_counter()
        bare.step(step)
        t1 = time.perf_counter()
        trainer._loop(trainer.position.steps_done + 1, drain=False)
        t2 = time.perf_counter()
        bare_times.append(t1 - t0)
        trainer_times.append(t2 - t1)
        (ckpt_steps if (step + 1) % spc == 0 else []).append(step)
    trainer.records.close()
    skip_first = 2  # warm-up: allocator and first-call costs
    between = [i for i in range(skip_first, len(bare_times)) if i not in ckpt_steps]
    b = sum(bare_times[i] for i in between) / len(between)
    t = sum(trainer_times[i] for i in between) / len(between)
    all_steps = range(skip_first, len(bare_times))
    b_all = sum(bare_times[i] for i in all_steps) / len(all_steps)
    t_all = sum(trainer_times[i] for i in all_steps) / len(all_steps)
    tokens = trainer.data.global_batch_rows * trainer.data.seq_len
    return {"bare_tokens_per_s": tokens / b, "trainer_tokens_per_s": tokens / t,
            "overhead_between_checkpoints": t / b - 1, "overhead_with_checkpoints": t_all / b_all - 1,
            "steps": len(bare_times), "threads": torch.get_num_threads()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", default="demo,larger", help="comma list of: demo, larger")
    p.add_argument("--steps", type=int, default=24, help="steps per run (two chunks)")
    p.add_argument("--repeats", type=int, default=1)
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
            runs = [measure(run, overrides) for _ in range(a.repeats)]
            results[preset] = min(runs, key=lambda r: r["overhead_between_checkpoints"])
    print(f"{'preset':10} {'bare tok/s':>12} {'trainer tok/s':>14} {'overhead (between ckpts)':>26} {'overhead (all)':>15}")
    for preset, r in results.items():
        print(f"{preset:10} {r['bare_tokens_per_s']:12,.0f} {r['trainer_tokens_per_s']:14,.0f} "
              f"{r['overhead_between_checkpoints']:25.1%} {r['overhead_with_checkpoints']:15.1%}")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
