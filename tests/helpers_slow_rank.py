"""Run by torchrun in test_train: rank 1 looks at the checkpoints folder late (as a slow node
would), after rank 0 may already have written `init`. Training must still agree and finish."""

import sys
import time
from pathlib import Path

import torch.distributed as dist

from llm360.train import trainer as trainer_module
from llm360.train.trainer import apply_train_overrides, run_training

original = trainer_module.Trainer.agreed_checkpoint


def late(self, *args, **kwargs):
    if dist.is_initialized() and dist.get_rank() == 1 and not getattr(self, "_was_late", False):
        self._was_late = True
        time.sleep(3.0)
    return original(self, *args, **kwargs)


trainer_module.Trainer.agreed_checkpoint = late
run = Path(sys.argv[1])
result = run_training(run, apply_train_overrides(run, sys.argv[2:]))
sys.exit(0 if result["finished"] else 1)
