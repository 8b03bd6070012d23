"""Run by torchrun in test_train: train, then check that every rank holds the same weights
(replicas that drift apart would each continue a different model)."""

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from llm360.train.parallel import unwrap
from llm360.train.trainer import Trainer, apply_train_overrides

run = Path(sys.argv[1])
cfg = apply_train_overrides(run, sys.argv[2:])
trainer = Trainer(run, cfg.train, cfg.model, cfg.seed)
assert trainer.fit()["finished"]
flat = torch.cat([(p.full_tensor() if hasattr(p, "full_tensor") else p).detach().float().flatten()
                  for p in unwrap(trainer.model).parameters()])
gathered = [torch.zeros_like(flat) for _ in range(dist.get_world_size())]
dist.all_gather(gathered, flat)
differ = int((gathered[0] != gathered[1]).sum())
dist.destroy_process_group()
print(f"weights differing between ranks: {differ}")
sys.exit(1 if differ else 0)
