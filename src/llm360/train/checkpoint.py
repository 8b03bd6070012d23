"""Checkpoints: a Hugging Face folder plus `trainer_state/`, written atomically (docs/run-directory.md §1-5).

    checkpoints/ckpt_003/
      config.json generation_config.json model.safetensors tokenizer.json ...   (llm360.model.hf)
      trainer_state/optimizer.safetensors   AdamW moments and step per parameter, by name
      trainer_state/rng.safetensors         torch RNG states
      trainer_state/state.json              progress: steps done, tokens, skipped steps, spike
                                            history, data fingerprint, world size
      CHECKSUMS.sha256                      written last

Everything is saved *full* (gathered from FSDP shards) and keyed by parameter name, so a
checkpoint reloads with any number of processes. A checkpoint is written into a hidden
temporary folder, fsynced, its checksums written, then renamed into place: a crash leaves either
the old state or the new one, never half of one.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from llm360.model.hf import load_state_dict as load_hf_state_dict
from llm360.model.hf import save_hf
from llm360.rundir import (OPTIMIZER_FILE, RNG_FILE, STATE_DIR, STATE_FILE, RunDir, TrainerState, read_trainer_state,
                           write_checksums)
from llm360.errors import naming_a_full_disk
from llm360.utils import atomic_write_json, fsync_tree, replace_dir

def _is_rank0() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def save_checkpoint(run_dir: Path, name: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                    state: TrainerState, model_args, tokenizer_dir: Path, kill_during_write: bool = False,
                    collective: bool = True) -> Path:
    """Gather the full model and optimizer state (all ranks call this) and write it on rank 0.
    `collective=False`: only this process calls it, with an unsharded model."""
    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights = get_model_state_dict(model, options=opts)
    optim = get_optimizer_state_dict(model, optimizer, options=opts) if optimizer is not None else None
    run = RunDir(run_dir)
    final = run.checkpoint_dir(name)
    if not collective or _is_rank0():
        tmp = run.checkpoint_temporary(name, os.getpid())
        if tmp.exists():
            shutil.rmtree(tmp)
        try:
            with naming_a_full_disk(final):
                tmp.mkdir(parents=True)
                save_hf({k: v.contiguous() for k, v in weights.items()}, model_args, tmp, tokenizer_dir=tokenizer_dir)
                if kill_during_write:  # fault injection: a real kill -9 in the middle of the write
                    os.kill(os.getpid(), signal.SIGKILL)
                _save_trainer_state(tmp, optim, state)
                fsync_tree(tmp)
                write_checksums(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)  # half a checkpoint is nothing to keep (and frees the disk)
            raise
        replace_dir(tmp, final)
    if collective and dist.is_initialized():
        dist.barrier()
    return final


def _save_trainer_state(folder: Path, optim: dict | None, state: TrainerState) -> None:
    """trainer_state/ inside checkpoint `folder`."""
    (folder / STATE_DIR).mkdir(parents=True, exist_ok=True)
    tensors, groups = {}, []
    if optim is not None:
        for fqn, per_param in optim["state"].items():
            for key, value in per_param.items():
                tensors[f"{fqn}::{key}"] = value.detach().cpu().contiguous()
        for group in optim["param_groups"]:
            groups.append({k: (list(v) if isinstance(v, tuple) else v) for k, v in group.items()})
    save_file(tensors, folder / OPTIMIZER_FILE)
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = torch.cuda.get_rng_state()
    save_file(rng, folder / RNG_FILE)
    state = replace(state, param_groups=groups, saved_at=time.time())
    atomic_write_json(folder / STATE_FILE, state.to_json())


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> TrainerState:
    """Load weights (and optimizer state, when present) into a possibly sharded model; all
    ranks call this. Returns the saved progress (state.json)."""
    state = read_trainer_state(path)
    # sharded (FSDP2) over several ranks: only rank 0 reads the files and the others receive
    # their shards, instead of every rank holding the whole model and optimizer in host memory
    sharded = any(hasattr(p, "device_mesh") for p in model.parameters())
    from_rank0 = sharded and dist.is_initialized() and dist.get_world_size() > 1
    reads = not from_rank0 or dist.get_rank() == 0
    weights = load_hf_state_dict(path) if reads else {}
    set_model_state_dict(model, weights, options=StateDictOptions(full_state_dict=True, strict=True,
                                                                  broadcast_from_rank0=from_rank0))
    del weights
    if optimizer is not None and state.param_groups:
        per_param: dict[str, dict] = {}
        if reads:
            for key, value in load_file(path / OPTIMIZER_FILE).items():
                fqn, _, name = key.rpartition("::")
                per_param.setdefault(fqn, {})[name] = value
        groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in state.param_groups]
        set_optimizer_state_dict(model, optimizer, {"state": per_param, "param_groups": groups},
                                 options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=from_rank0))
    rng = load_file(path / RNG_FILE)
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])
    return state
