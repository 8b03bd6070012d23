"""Everything the model file leaves out, applied from outside in torchtitan's order:
activation checkpointing, then torch.compile (per block), then FSDP2 or DDP.

Processes are started by `torchrun`; this module only reads its environment variables.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.checkpoint import checkpoint

from llm360.errors import UserError


@dataclass
class DistInfo:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_pref: str = "auto", strategy: str = "auto", timeout_minutes: float = 60) -> DistInfo:
    """Read torchrun's RANK/WORLD_SIZE; start the process group when there is more than one
    process, or when FSDP2 or DDP is asked for in a single one (FSDP2 on one GPU shards nothing,
    but its mixed precision and memory behaviour are those of a larger run)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device_pref == "auto" else device_pref == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise UserError("train.device is 'cuda' but no CUDA device is available")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if (world > 1 or strategy in ("ddp", "fsdp")) and not dist.is_initialized():
        backend = "nccl" if use_cuda else "gloo"
        # the ranks wait for rank 0 while it writes a checkpoint (80 GB for a 7B model with its
        # AdamW state) or evaluates one: longer than NCCL's default 10 minutes
        timeout = datetime.timedelta(minutes=timeout_minutes)
        if "MASTER_ADDR" in os.environ:  # started by torchrun
            dist.init_process_group(backend=backend, timeout=timeout)
        else:  # plain `python`/`llm360` with one process
            dist.init_process_group(backend=backend, init_method=f"tcp://127.0.0.1:{free_port()}", rank=0,
                                    world_size=1, timeout=timeout)
    return DistInfo(rank, world, local_rank, device)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def resolve_strategy(strategy: str, world: int) -> str:
    if strategy == "auto":
        return "single" if world == 1 else "fsdp"
    if strategy == "single" and world > 1:
        raise UserError(f"train.strategy is 'single' but {world} processes were started; use ddp or fsdp")
    return strategy


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


def autocast(precision: str, device: torch.device):
    """bf16 autocast over fp32 master weights; nothing for fp32, nor for bf16 weights (all bf16)."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _kept_ops() -> set:
    """The outputs that `ops` checkpointing keeps: matmuls and attention, the expensive ops."""
    aten = torch.ops.aten
    names = ["mm", "addmm", "bmm", "_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
             "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_flash_attention_for_cpu"]
    return {getattr(aten, n).default for n in names if hasattr(aten, n)}


def _keep_expensive_ops():
    from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

    kept = _kept_ops()

    def policy(ctx, op, *args, **kwargs):
        return CheckpointPolicy.MUST_SAVE if op in kept else CheckpointPolicy.PREFER_RECOMPUTE

    return create_selective_checkpoint_contexts(policy)


def _checkpointed(forward, ops_only: bool = False):
    extra = {"context_fn": _keep_expensive_ops} if ops_only else {}

    @functools.wraps(forward)
    def run(*args, **kwargs):
        return checkpoint(forward, *args, use_reentrant=False, **extra, **kwargs)

    return run


def apply_activation_checkpointing(model: torch.nn.Module, mode) -> None:
    """Recompute block activations in the backward pass. `full`: every block; `selective`:
    every other block (half the memory saving for half the recompute); `ops`: every block, but
    the outputs of matmuls and attention are kept, so only elementwise work (norms, rotary,
    SwiGLU) is recomputed. Patches `forward` in place, so no wrapper prefix ever reaches a
    parameter name."""
    if mode in (False, "none", None):
        return
    for i, block in enumerate(model.layers):
        if mode in (True, "full", "ops") or (mode == "selective" and i % 2 == 0):
            block.forward = _checkpointed(block.forward, ops_only=mode == "ops")


def apply_compile(model: torch.nn.Module) -> None:
    """Compile each transformer block (in place: `Module.compile` keeps parameter names clean)."""
    for block in model.layers:
        block.compile()


def apply_fsdp(model: torch.nn.Module, precision: str, device: torch.device) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    mp = None
    if precision == "bf16":
        # bf16 compute and all-gathers, fp32 gradient reduction and fp32 master weights
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    elif precision == "bf16-weights":  # the weights are bf16 already; reduce gradients in fp32
        mp = MixedPrecisionPolicy(reduce_dtype=torch.float32)
    kwargs = {"mesh": mesh} | ({"mp_policy": mp} if mp else {})
    for block in model.layers:
        fully_shard(block, **kwargs)
    fully_shard(model, **kwargs)


def parallelize(model: torch.nn.Module, *, strategy: str, precision: str, compile: bool,
                activation_checkpointing, device: torch.device) -> torch.nn.Module:
    apply_activation_checkpointing(model, activation_checkpointing)
    if compile:
        apply_compile(model)
    if strategy == "fsdp":
        apply_fsdp(model, precision, device)
    elif strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return model


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") and not hasattr(model, "layers") else model


@contextlib.contextmanager
def gradient_sync(model: torch.nn.Module, enabled: bool):
    """DDP: skip the gradient all-reduce on all but the last micro-batch of a step. FSDP2 always
    reduce-scatters: without it, each rank would hold every parameter's gradient unsharded (and in
    the fp32 reduce dtype) between micro-batches, 4 bytes per parameter of the whole model, which
    is more than sharding saves (a 7B model on one 80 GB GPU runs out of memory)."""
    if enabled or not hasattr(model, "no_sync"):
        yield
    else:
        with model.no_sync():
            yield
