"""Checkpoints: a Hugging Face folder plus `trainer_state/`, written atomically (SPEC.md 1, 5).

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

import json
import os
import shutil
import signal
import time
from dataclasses import dataclass
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
from llm360.utils import (atomic_write_json, check_checksums, fsync_dir, fsync_tree, natural_index, pad_width,
                          write_checksums)

STATE_DIR = "trainer_state"


@dataclass
class CheckpointInfo:
    name: str
    path: Path
    steps_done: int  # optimizer steps the weights have seen (ckpt_c: (c + 1) * steps_per_chunk)


def chunk_checkpoint_name(chunk: int, n_chunks: int) -> str:
    return f"ckpt_{chunk:0{pad_width(n_chunks)}d}"


def step_checkpoint_name(steps_done: int) -> str:
    return f"step_{steps_done:07d}"


def steps_done_of(name: str, steps_per_chunk: int) -> int | None:
    if name == "init":
        return 0
    if (c := natural_index(name, "ckpt_")) is not None:
        return (c + 1) * steps_per_chunk
    if (k := natural_index(name, "step_")) is not None:
        return k
    return None


def list_checkpoints(run_dir: Path, steps_per_chunk: int) -> list[CheckpointInfo]:
    """Every checkpoint folder of the run (valid or not), oldest first."""
    root = Path(run_dir) / "checkpoints"
    found = []
    if root.exists():
        for path in root.iterdir():
            steps = steps_done_of(path.name, steps_per_chunk)
            if path.is_dir() and steps is not None:
                found.append(CheckpointInfo(path.name, path, steps))
    # at equal steps prefer the chunk checkpoint (ckpt_) over step_/init: same weights
    order = {"ckpt": 0, "step": 1, "init": 2}
    return sorted(found, key=lambda c: (c.steps_done, -order[c.name.split("_")[0]]))


def problems(info: CheckpointInfo) -> list[str]:
    found = check_checksums(info.path)
    if not found and not (info.path / STATE_DIR / "state.json").exists():
        found = [f"{info.name}: no {STATE_DIR}/state.json"]
    return found


def clean_temporaries(run_dir: Path) -> list[str]:
    """Remove folders left by a checkpoint write that was interrupted; return their names."""
    root = Path(run_dir) / "checkpoints"
    removed = []
    if root.exists():
        for path in root.glob(".*.tmp*"):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path.name)
    return removed


def _is_rank0() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def save_checkpoint(run_dir: Path, name: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                    state: dict, model_args, tokenizer_dir: Path, kill_during_write: bool = False,
                    collective: bool = True) -> Path:
    """Gather the full model and optimizer state (all ranks call this) and write it on rank 0.
    `collective=False`: only this process calls it, with an unsharded model."""
    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights = get_model_state_dict(model, options=opts)
    optim = get_optimizer_state_dict(model, optimizer, options=opts) if optimizer is not None else None
    final = Path(run_dir) / "checkpoints" / name
    if not collective or _is_rank0():
        tmp = final.with_name(f".{name}.tmp-{os.getpid()}")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        save_hf({k: v.contiguous() for k, v in weights.items()}, model_args, tmp, tokenizer_dir=tokenizer_dir)
        if kill_during_write:  # fault injection: a real kill -9 in the middle of the write
            os.kill(os.getpid(), signal.SIGKILL)
        _save_trainer_state(tmp / STATE_DIR, optim, state)
        fsync_tree(tmp)
        write_checksums(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(final.parent)
    if collective and dist.is_initialized():
        dist.barrier()
    return final


def _save_trainer_state(folder: Path, optim: dict | None, state: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tensors, groups = {}, []
    if optim is not None:
        for fqn, per_param in optim["state"].items():
            for key, value in per_param.items():
                tensors[f"{fqn}::{key}"] = value.detach().cpu().contiguous()
        for group in optim["param_groups"]:
            groups.append({k: (list(v) if isinstance(v, tuple) else v) for k, v in group.items()})
    save_file(tensors, folder / "optimizer.safetensors")
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = torch.cuda.get_rng_state()
    save_file(rng, folder / "rng.safetensors")
    atomic_write_json(folder / "state.json", {**state, "param_groups": groups, "saved_at": time.time()})


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> dict:
    """Load weights (and optimizer state, when present) into a possibly sharded model; all
    ranks call this. Returns the saved progress (state.json)."""
    state = json.loads((path / STATE_DIR / "state.json").read_text())
    # sharded (FSDP2) over several ranks: only rank 0 reads the files and the others receive
    # their shards, instead of every rank holding the whole model and optimizer in host memory
    sharded = any(hasattr(p, "device_mesh") for p in model.parameters())
    from_rank0 = sharded and dist.is_initialized() and dist.get_world_size() > 1
    reads = not from_rank0 or dist.get_rank() == 0
    weights = load_hf_state_dict(path) if reads else {}
    set_model_state_dict(model, weights, options=StateDictOptions(full_state_dict=True, strict=True,
                                                                  broadcast_from_rank0=from_rank0))
    del weights
    if optimizer is not None and state.get("param_groups"):
        per_param: dict[str, dict] = {}
        if reads:
            for key, value in load_file(path / STATE_DIR / "optimizer.safetensors").items():
                fqn, _, name = key.rpartition("::")
                per_param.setdefault(fqn, {})[name] = value
        groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in state["param_groups"]]
        set_optimizer_state_dict(model, optimizer, {"state": per_param, "param_groups": groups},
                                 options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=from_rank0))
    rng = load_file(path / STATE_DIR / "rng.safetensors")
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])
    return state
