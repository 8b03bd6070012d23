"""Checkpoints: a Hugging Face folder plus `trainer_state/`, written atomically (docs/run-directory.md §5.4).

    checkpoints/ckpt_003/
      config.json generation_config.json tokenizer.json ...        (llm360.model.hf)
      model.safetensors  or  model-0000i-of-0000N.safetensors + model.safetensors.index.json
      trainer_state/shard-0000r-of-0000W.safetensors   rank r's rows of the AdamW moments (and of
                                            the fp32 master weights when the weights are published
                                            in a lower dtype), written by rank r (train/shards.py)
      trainer_state/rng.safetensors         torch RNG states
      trainer_state/state.json              progress, and the list of the files above
      CHECKSUMS.sha256                      written last

Sharded (the default): every rank writes and hashes its own rows of the trainer state, in
parallel, and the weights are gathered one parameter at a time, each weights file written by one
rank (file i of N by rank i*W//N), so no host ever holds the optimizer state of the whole model,
nor even the whole model. All ranks write into one hidden temporary folder; after a barrier rank
0 merges the hashes into CHECKSUMS.sha256 and renames the folder into place: a crash leaves
either the old state or the new one, never half of one. Any number of processes reads it back.
`layout="gathered"` is the earlier way (everything gathered on rank 0 and written there), kept
for the benchmark and read back as before.
"""

from __future__ import annotations

import math
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

from llm360.errors import UserError, naming_a_full_disk
from llm360.model.args import checkpoint_format
from llm360.model.hf import FORMATS, _meta_state, clean_name, name_map, to_hf_state_dict
from llm360.model.hf import load_state_dict as load_hf_state_dict
from llm360.model.hf import save_hf
from llm360.rundir import (OPTIMIZER_FILE, RNG_FILE, STATE_DIR, STATE_FILE, RunDir, TrainerState, read_trainer_state,
                           state_shard_file, trainer_state_files, write_checksums)
from llm360.train.parallel import unwrap
from llm360.train.shards import RowShards, SafetensorsStream, chunk_rows, write_rows_file
from llm360.utils import atomic_write_json, fsync_tree, replace_dir

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
MAX_SHARD_BYTES = 2 * 1024**3  # per weights file, as transformers' save_pretrained cuts them


def _is_rank0() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def save_checkpoint(run_dir: Path, name: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                    state: TrainerState, model_args, tokenizer_dir: Path, kill_during_write: bool = False,
                    collective: bool = True, dtype: str = "auto", layout: str = "sharded",
                    max_shard_bytes: int = MAX_SHARD_BYTES) -> Path:
    """Write checkpoint `name`: all ranks call this (`collective=False`: only this process,
    with an unsharded model). `dtype` of the published weights: `auto` (the training weights'),
    `fp32` or `bf16`; the trainer state keeps fp32 master weights when it is lower than theirs."""
    if layout == "gathered":
        return _save_gathered(run_dir, name, model, optimizer, state, model_args, tokenizer_dir,
                              kill_during_write, collective)
    rank, world = (dist.get_rank(), dist.get_world_size()) if collective and dist.is_initialized() else (0, 1)
    run = RunDir(run_dir)
    final = run.checkpoint_dir(name)
    tmp = _shared_temporary(run, name, rank, collective)
    trained = next(unwrap(model).parameters()).dtype
    published = trained if dtype == "auto" else DTYPES[dtype]
    master = published.itemsize < trained.itemsize
    try:
        with naming_a_full_disk(final):
            hashes = _write_weights(model, model_args, tmp, published, rank, world, max_shard_bytes)
            shard_hashes, groups = _write_state_shard(tmp, model, optimizer, master, rank, world)
            hashes |= shard_hashes
            if kill_during_write and rank == world - 1:  # fault injection: a real kill -9 of one process mid-write
                os.kill(os.getpid(), signal.SIGKILL)
    except BaseException:
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)  # half a checkpoint is nothing to keep (and frees the disk)
        raise
    if world > 1:
        every = [None] * world
        dist.all_gather_object(every, hashes)  # also the barrier: every rank has written its files
        hashes = {rel: digest for part in every for rel, digest in part.items()}
    if rank == 0:
        with naming_a_full_disk(final):
            save_hf(None, model_args, tmp, tokenizer_dir=tokenizer_dir, dtype=published)
            save_file(_rng_states(), tmp / RNG_FILE)
            files = [state_shard_file(r, world) for r in range(world)] + [RNG_FILE]
            state = replace(state, param_groups=groups, saved_at=time.time(), files=files,
                            weights_dtype=str(published).removeprefix("torch."), master_weights=master)
            atomic_write_json(tmp / STATE_FILE, state.to_json())
            fsync_tree(tmp)  # the large files are fsynced already; this is the small ones and the folders
            write_checksums(tmp, hashes)  # hashes only the small files the ranks did not hash
        replace_dir(tmp, final)
    if collective and dist.is_initialized():
        dist.barrier()
    return final


def _shared_temporary(run: RunDir, name: str, rank: int, collective: bool) -> Path:
    """The one hidden folder all ranks write into: rank 0 makes it and tells the others."""
    box = [None]
    if rank == 0:
        tmp = run.checkpoint_temporary(name, os.getpid())
        if tmp.exists():
            shutil.rmtree(tmp)
        with naming_a_full_disk(run.checkpoint_dir(name)):
            (tmp / STATE_DIR).mkdir(parents=True)
        box = [tmp.name]
    if collective and dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast_object_list(box, src=0)
    return run.checkpoints_dir / box[0]


def _weight_files(args, dtype: torch.dtype, max_shard_bytes: int) -> list[tuple[str, list[tuple[str, tuple]]]]:
    """The weights files of the folder, each with its (HF name, shape) in order, cut as save_hf cuts them."""
    expected = FORMATS[checkpoint_format(args)].to_hf(_meta_state(args), args)
    files: list[list[tuple[str, tuple]]] = [[]]
    size = 0
    for hf, t in expected.items():
        nbytes = t.numel() * dtype.itemsize
        if files[-1] and size + nbytes > max_shard_bytes:
            files.append([])
            size = 0
        files[-1].append((hf, tuple(t.shape)))
        size += nbytes
    if len(files) == 1:
        return [("model.safetensors", files[0])]
    return [(f"model-{i + 1:05d}-of-{len(files):05d}.safetensors", entries) for i, entries in enumerate(files)]


def _hf_tensors(model: torch.nn.Module, args):
    """(HF name, full tensor), in the order of the weights files. LLaMA-format tensors are one
    parameter each, gathered one at a time (every rank takes part in each gather); CrystalCoder
    fuses and transposes, so its weights are gathered whole first."""
    state = {clean_name(k): v for k, v in unwrap(model).state_dict().items()}
    if checkpoint_format(args) != "llama":
        yield from to_hf_state_dict(state, args).items()
        return
    for ours, hf in name_map(args).items():
        t = state[ours]
        yield hf, (t.full_tensor() if hasattr(t, "full_tensor") else t)


def _write_weights(model: torch.nn.Module, args, folder: Path, dtype: torch.dtype, rank: int, world: int,
                   max_shard_bytes: int) -> dict[str, str]:
    """Stream the weights into their files, file i of N written by rank i*W//N; {file: sha256} of this rank's."""
    files = _weight_files(args, dtype, max_shard_bytes)
    file_of = {hf: i for i, (_, entries) in enumerate(files) for hf, _ in entries}
    hashes, stream, written = {}, None, 0
    for hf, tensor in _hf_tensors(model, args):
        i = file_of[hf]
        if i * world // len(files) != rank:  # spread over the ranks (and so over the nodes)
            continue
        if stream is None:
            stream = SafetensorsStream(folder / files[i][0], [(n, dtype, shape) for n, shape in files[i][1]],
                                       {"format": "pt"})  # transformers wants format=pt
        stream.write(hf, tensor.to(dtype))
        written += 1
        if written == len(files[i][1]):
            hashes[files[i][0]] = stream.close()
            stream, written = None, 0
    if rank == 0 and len(files) > 1:
        total = sum(math.prod(shape) * dtype.itemsize for _, entries in files for _, shape in entries)
        index = {"metadata": {"total_size": total}, "weight_map": {hf: file for file, entries in files for hf, _ in entries}}
        atomic_write_json(folder / "model.safetensors.index.json", index)
    return hashes


def _write_state_shard(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                       master: bool, rank: int, world: int) -> tuple[dict[str, str], list[dict]]:
    """This rank's rows of the optimizer state (and of the master weights): ({file: sha256},
    the optimizer's parameter groups)."""
    tensors: dict[str, tuple[torch.Tensor, int, tuple]] = {}

    def add(key: str, value: torch.Tensor) -> None:
        if value.dim() == 0:  # a step count: the same on every rank
            if rank == 0:
                tensors[key] = (value.detach(), 0, ())
            return
        start, end = chunk_rows(value.shape[0], world, rank)
        if hasattr(value, "to_local"):  # FSDP2: exactly the rows this rank holds
            rows = value.to_local()
            if rows.shape[0] != end - start:
                raise RuntimeError(f"{key}: this rank holds {rows.shape[0]} rows, torch.chunk's cut gives {end - start}")
        else:
            rows = value[start:end]
        if end > start:
            tensors[key] = (rows.detach(), start, tuple(value.shape))

    groups = []
    if optimizer is not None:
        optim = get_optimizer_state_dict(model, optimizer)  # sharded as the model is: nothing gathered
        for fqn, per_param in optim["state"].items():
            for key, value in per_param.items():
                add(f"{clean_name(fqn)}::{key}", value)
        groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in optim["param_groups"]]
    if master:
        for name, param in unwrap(model).named_parameters():
            add(f"{clean_name(name)}::master", param)
    rel = state_shard_file(rank, world)
    return {rel: write_rows_file(folder / rel, tensors, rank, world)}, groups


def _rng_states() -> dict[str, torch.Tensor]:
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = torch.cuda.get_rng_state()
    return rng


def _save_gathered(run_dir: Path, name: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                   state: TrainerState, model_args, tokenizer_dir: Path, kill_during_write: bool = False,
                   collective: bool = True) -> Path:
    """The earlier way: gather the full model and optimizer state (all ranks call this) and
    write it on rank 0. `collective=False`: only this process calls it, with an unsharded model."""
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
                save_hf({k: v.contiguous() for k, v in weights.items()}, model_args, tmp, tokenizer_dir=tokenizer_dir,
                        max_shard_bytes=MAX_SHARD_BYTES)
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
    save_file(_rng_states(), folder / RNG_FILE)
    state = replace(state, param_groups=groups, saved_at=time.time())
    atomic_write_json(folder / STATE_FILE, state.to_json())


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> TrainerState:
    """Load weights (and optimizer state, when present) into a possibly sharded model; all
    ranks call this, however many wrote the checkpoint. Returns the saved progress (state.json)."""
    path = Path(path)
    state = read_trainer_state(path)
    if not state.files:
        return _load_gathered(path, model, optimizer, state)
    missing = [rel for rel in trainer_state_files(state) if not (path / rel).is_file()]
    if missing:
        raise UserError(f"checkpoint {path.name} lacks {missing[0]} of the trainer state its {state.world_size} "
                        "process(es) wrote, so it cannot be resumed from")
    with RowShards(path, [rel for rel in state.files if rel != RNG_FILE]) as shards:
        if state.master_weights:  # the exact fp32 weights: each rank reads its own rows
            _load_rows_into_params(shards, model)
        else:
            _load_hf_weights(path, model)
        if optimizer is not None and state.param_groups:
            _load_optimizer_rows(shards, model, optimizer, state.param_groups)
    _load_rng(path)
    return state


def _rows_held(param: torch.Tensor) -> tuple[int, int]:
    """The rows of `param` this rank holds: its FSDP2 shard, or all of them."""
    if hasattr(param, "device_mesh"):
        return chunk_rows(param.shape[0], param.device_mesh.size(), param.device_mesh.get_local_rank())
    return 0, param.shape[0]


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {clean_name(name): p for name, p in unwrap(model).named_parameters()}


@torch.no_grad()
def _load_rows_into_params(shards: RowShards, model: torch.nn.Module) -> None:
    for name, param in _params(model).items():
        local = param.to_local() if hasattr(param, "to_local") else param
        local.copy_(shards.rows(f"{name}::master", *_rows_held(param)))


def _load_optimizer_rows(shards: RowShards, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                         param_groups: list[dict]) -> None:
    """The optimizer state, each rank reading only the rows of its own parameter shards."""
    from torch.distributed.tensor import DTensor

    params = _params(model)
    per_param: dict[str, dict] = {}
    for key in shards.names():
        fqn, _, what = key.rpartition("::")
        if what == "master":
            continue
        param = params[fqn]
        if not shards.shapes[key]:
            value = shards.rows(key)
        elif hasattr(param, "device_mesh"):
            local = shards.rows(key, *_rows_held(param)).to(param.to_local().device)
            value = DTensor.from_local(local, param.device_mesh, param.placements, shape=param.shape,
                                       stride=param.stride())
        else:
            value = shards.rows(key).to(param.device)
        per_param.setdefault(fqn, {})[what] = value
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in param_groups]
    set_optimizer_state_dict(model, optimizer, {"state": per_param, "param_groups": groups},
                             options=StateDictOptions(full_state_dict=False))


def _load_gathered(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                   state: TrainerState) -> TrainerState:
    """A checkpoint of the earlier layout (optimizer.safetensors holds the whole optimizer state)."""
    from_rank0, reads = _load_hf_weights(path, model)
    if optimizer is not None and state.param_groups:
        per_param: dict[str, dict] = {}
        if reads:
            for key, value in load_file(path / OPTIMIZER_FILE).items():
                fqn, _, name = key.rpartition("::")
                per_param.setdefault(fqn, {})[name] = value
        groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in state.param_groups]
        set_optimizer_state_dict(model, optimizer, {"state": per_param, "param_groups": groups},
                                 options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=from_rank0))
    _load_rng(path)
    return state


def _load_hf_weights(path: Path, model: torch.nn.Module) -> tuple[bool, bool]:
    """The weights of the Hugging Face folder into the model. Sharded (FSDP2) over several
    ranks, only rank 0 reads the files and the others receive their shards. Returns (whether
    rank 0 broadcasts, whether this rank read the files)."""
    sharded = any(hasattr(p, "device_mesh") for p in model.parameters())
    from_rank0 = sharded and dist.is_initialized() and dist.get_world_size() > 1
    reads = not from_rank0 or dist.get_rank() == 0
    weights = load_hf_state_dict(path) if reads else {}
    set_model_state_dict(model, weights, options=StateDictOptions(full_state_dict=True, strict=True,
                                                                  broadcast_from_rank0=from_rank0))
    return from_rank0, reads


def _load_rng(path: Path) -> None:
    rng = load_file(path / RNG_FILE)
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])
