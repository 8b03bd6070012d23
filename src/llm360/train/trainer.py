"""The trainer: the step rule, a checkpoint per chunk, exact resume, and the spike guard.

Global step t trains on the rows that `RunData.rows_at(t)` names (docs/run-directory.md §4), whatever
the number of processes or micro-batches; `ckpt_c` is written after the last step of chunk c.
The loop itself is short: everything else (checkpoints, records, spike guard, evaluation)
hangs off it as named pieces.

    llm360 train RUN                       # resumes from the newest valid checkpoint
    torchrun --nproc-per-node 8 -m llm360.cli train RUN --train.strategy=fsdp
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F

from llm360.config import (ModelConfig, RunConfig, TrainConfig, apply_override, differences, load_run_config,
                           save_config, to_dict, validate)
from llm360.data.store import RunData
from llm360.errors import UserError
from llm360.model.llama import Llama, ModelArgs, flops_per_token, model_args, param_roles
from llm360.rundir import (Checkpoint, CheckpointName, RunDir, TrainerState, checkpoint_problems, chunk_checkpoint_name, compute_fingerprint, frozen_changes,
                           step_checkpoint_name)
from llm360.train import checkpoint as ckpt
from llm360.train.parallel import (
    autocast,
    gradient_sync,
    init_distributed,
    parallelize,
    resolve_precision,
    resolve_strategy,
    unwrap,
)
from llm360.train.records import Records, environment, peak_flops, write_env
from llm360.train.schedule import build_schedule
from llm360.train.optim import AdamWLowPrecision
from llm360.train.prefetch import Prefetcher
from llm360.train.policies import (CheckpointHook, CheckpointHooks, FaultInjection, Output, SpikeResponse,
                                   StopTraining)
from llm360.train.spike import KINDS, NONFINITE, SpikeGuard, reason

__all__ = ["Trainer", "StopTraining", "CheckpointHook", "run_training", "apply_train_overrides"]


def build_model_args(model_cfg: ModelConfig, vocab_size: int, seq_len: int) -> ModelArgs:
    overrides = model_cfg.overrides()
    overrides.setdefault("vocab_size", vocab_size)
    args = model_args(model_cfg.preset, **overrides)
    if seq_len > args.max_seq_len:
        raise UserError(f"data.seq_len ({seq_len}) is beyond the model's context model.max_seq_len "
                        f"({args.max_seq_len}, preset {model_cfg.preset!r})")
    if args.vocab_size < vocab_size:
        raise UserError(f"model.vocab_size ({args.vocab_size}) is smaller than the tokenizer's ({vocab_size})")
    return args


def cross_entropy_sum(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed next-token loss in fp32. Compiled with the blocks (train.compile), the log-softmax
    is fused into it instead of being written out as a second (rows, T, vocab) fp32 tensor."""
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="sum")


def clip_gradients(params, max_norm: float) -> torch.Tensor:
    """torch's clip_grad_norm_, but with the norm summed in fp32 whatever the gradients' dtype
    (bf16 gradients under `bf16-weights` would give a 3-digit norm). Returns the norm before
    clipping, a plain tensor also under FSDP2."""
    grads = [p.grad for p in params if p.grad is not None]
    total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads, 2.0, dtype=torch.float32)), 2.0)
    torch._foreach_mul_(grads, torch.clamp(max_norm / (total + 1e-6), max=1.0))
    return total.full_tensor() if hasattr(total, "full_tensor") else total


def rounding_seed(seed: int, step: int, shard: int) -> int:
    """A 63-bit generator seed for (run seed, step, shard), for any size of run seed."""
    digest = hashlib.sha256(f"llm360-rounding/{seed}/{step}/{shard}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@dataclass(frozen=True)
class GroupSpec:
    decay: bool
    lr_scale: float


def group_specs(model: torch.nn.Module, cfg: TrainConfig, hidden_lr_scale: float = 1.0) -> list[tuple[GroupSpec, list]]:
    """The optimizer's parameter groups: weight decay on every parameter but those whose name
    contains a `no_decay` pattern, and the learning rate scaled by role: the model's µP width
    scale for hidden matrices (model.hidden_lr_scale: Crystal's 0.0625), times `train.lr_scale`.
    Without scales these are the two groups (decay, no decay) that checkpoints have always held."""
    roles = param_roles(model)
    groups: dict[GroupSpec, list] = {GroupSpec(True, 1.0): [], GroupSpec(False, 1.0): []}
    for name, p in model.named_parameters():
        role = roles[name]
        scale = cfg.lr_scale.get(role, 1.0) * (hidden_lr_scale if role == "hidden" else 1.0)
        spec = GroupSpec(not any(pat in name for pat in cfg.no_decay), float(scale))
        groups.setdefault(spec, []).append(p)
    return list(groups.items())


def param_groups(specs: list[tuple[GroupSpec, list]], weight_decay: float) -> list[dict]:
    """The optimizer's groups of `group_specs`."""
    return [{"params": params, "weight_decay": weight_decay if spec.decay else 0.0, "lr_scale": spec.lr_scale}
            for spec, params in specs]


@dataclass
class Position:
    """Where training stands: what a checkpoint must carry to continue exactly (besides weights,
    optimizer moments and RNG states)."""
    steps_done: int = 0
    tokens: int = 0
    skipped_steps: list[int] = field(default_factory=list)
    rollbacks: int = 0


@dataclass
class InFlight:
    """A step queued on the device. Its loss, gradient norm and verdict come back to pinned host
    memory asynchronously and are read one step later, while the device works on the next."""
    record: dict
    t0: float
    start: torch.cuda.Event | None = None  # the step's time on the device's own clock
    end: torch.cuda.Event | None = None
    t1: float = 0.0
    values: torch.Tensor | None = None

    @classmethod
    def begin(cls, device: torch.device) -> InFlight:
        flight = cls(record={}, t0=time.perf_counter())
        if device.type == "cuda":
            flight.start = torch.cuda.Event(enable_timing=True)
            flight.start.record()
        return flight

    def finish(self, values: torch.Tensor) -> None:
        if values.device.type == "cuda":
            self.values = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
            self.values.copy_(values, non_blocking=True)
            self.end = torch.cuda.Event(enable_timing=True)
            self.end.record()
        else:
            self.values = values
        self.t1 = time.perf_counter()

    def read(self) -> list[float]:
        if self.end is not None:
            self.end.synchronize()
        return self.values.tolist()

    def seconds(self, previous_end: torch.cuda.Event | None) -> float:
        """From the end of the step before (when it ran back to back) to the end of this one."""
        if self.end is None:
            return self.t1 - self.t0
        return (previous_end or self.start).elapsed_time(self.end) / 1e3


class Trainer:
    def __init__(self, run_dir: Path, train: TrainConfig, model: ModelConfig, seed: int,
                 hooks: list[CheckpointHook] = (), console=None, replay: bool = False):
        self.run_dir = Path(run_dir)
        self.cfg = train
        self.seed = seed
        self.data = RunData(self.run_dir)
        self.dist = init_distributed(train.device, train.strategy, train.collective_timeout_minutes)
        self.strategy = resolve_strategy(train.strategy, self.dist.world)
        self.precision = resolve_precision(train.precision, self.dist.device)
        self._check_shapes()
        self.args = build_model_args(model, self.data.vocab_size, self.data.seq_len)
        self.replaying = replay  # retrain without writing anything into the run
        self.records = Records(self.run_dir, enabled=self.dist.is_main and not replay)
        self.output = Output(self.dist.is_main, console)
        self.faults = FaultInjection(train.fault_injection)
        self.on_spike = SpikeResponse(train.spike, self)
        self.after_checkpoint = CheckpointHooks(list(hooks), self.records, self.output)
        self.guard = SpikeGuard(train.spike.zscore, train.spike.window, device=self.dist.device)
        self.batches = Prefetcher(self.data, self.dist.rank, self.dist.world, self.dist.device)
        self.in_flight: InFlight | None = None
        self.last_end = None  # the device event that ended the step before, when back to back
        self.position = Position()
        self.tokens_per_step = self.data.global_batch_rows * self.data.seq_len
        self.flops_per_token = flops_per_token(self.args, self.data.seq_len)
        self.peak = peak_flops(self.dist.device)
        self.verified_chunks: set[int] = set()
        self.schedule = build_schedule(train, self.data.manifest.stage_steps(), self.data.total_steps)
        if train.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            # strict on CUDA: only then does flash attention's backward take its deterministic
            # path (with warn_only it warns and stays nondeterministic); an op with no
            # deterministic version then stops training with a clear message (see fit)
            torch.use_deterministic_algorithms(True, warn_only=self.dist.device.type != "cuda")
        else:
            torch.use_deterministic_algorithms(False)

    # -- the loop ---------------------------------------------------------------------------

    def fit(self, changes: dict | None = None, accept: Callable[[], None] | None = None) -> dict:
        """Train from the newest valid checkpoint to the end. `changes`: settings that differ
        from the run's record ({key: [old, new]}); when training goes on with them, `accept()`
        makes them the record and they are an event at the step where they take effect."""
        total = self.data.total_steps
        start = self._start()
        if self.position.steps_done >= total:
            unused = f"; the settings given now ({', '.join(changes)}) were not used" if changes else ""
            self.output.say(f"training already finished: {total} steps, newest checkpoint {start.name}{unused}")
            return {"finished": True, "steps": total, "resumed_from": start.name, "did_nothing": True}
        if changes and accept is not None:
            accept()
        kind = "start" if start.name == "init" else "resume"
        self.records.event(kind, self.position.steps_done, checkpoint=start.name, world_size=self.dist.world,
                           strategy=self.strategy, precision=self.precision, fingerprint=self.data.fingerprint)
        if changes:
            self.records.event("config_change", self.position.steps_done, changes=changes)
        self.records.truncate_steps(self.position.steps_done)
        self.output.say(f"{kind} at step {self.position.steps_done}/{total} from {start.name} "
                        f"({self.dist.world} process(es), {self.strategy}, {self.precision}, {self.dist.device})")
        try:
            self.train_until(total)
        except RuntimeError as e:
            if "deterministic" not in str(e):
                raise
            raise UserError(f"train.deterministic is on, but {str(e).splitlines()[0]}; "
                            "train with --train.deterministic=false on this device") from e
        except StopTraining as e:
            self.records.event("end", self.position.steps_done, reason=str(e), finished=False)
            self.output.say(f"[red]training stopped:[/] {e}")
            return {"finished": False, "steps": self.position.steps_done, "stopped": str(e)}
        finally:
            self.batches.close()
            self.records.close()
        self.records.event("end", total, finished=True, tokens=self.position.tokens)
        return {"finished": True, "steps": total, "resumed_from": start.name}

    def train_until(self, total: int) -> None:
        with self.output.progress(total, self.position.steps_done):
            self._loop(total)

    def _loop(self, total: int, drain: bool = True) -> None:
        """Each step's life, top to bottom: enter its chunk; queue it on the device (a batch
        skipped earlier is passed over); record the step before it, which the device finished
        meanwhile, and act on the guard's verdict (a rollback moves the position back and drops
        the step just queued); checkpoint when due. The host never waits for the step it has
        just queued (`drain=False` leaves the last one in flight: benchmarks step one at a time)."""
        while self.position.steps_done < total or (drain and self.in_flight is not None):
            step = self.position.steps_done
            if step == total:  # nothing left to queue: the last step in flight is recorded
                self._settle()
                continue
            self._enter_chunk(step)
            queued = None if step in self.position.skipped_steps else self._train_step(step)
            if not self._settle():
                continue  # rolled back
            if queued is None:
                self._record(self._skipped_record(step))
            self.in_flight = queued
            self.position.steps_done, self.position.tokens = step + 1, self.position.tokens + self.tokens_per_step
            name = self._checkpoint_due(step + 1)
            if name is not None and self._settle():
                self._checkpoint(name, step + 1)

    def _checkpoint_due(self, steps_done: int) -> str | None:
        if self.data.rule.is_chunk_end(steps_done):
            return chunk_checkpoint_name(self.data.rule.chunks_seen(steps_done) - 1, self.data.n_chunks)
        if steps_done in self.cfg.extra_checkpoint_steps:
            return step_checkpoint_name(steps_done)
        return None

    def _enter_chunk(self, step: int) -> None:
        """Check the chunk's hash the first time it is trained on (a resume may land mid-chunk);
        a stage starts at its first step."""
        chunk, first = self.data.rule.locate(step)
        if chunk not in self.verified_chunks:
            found = self.data.verify_chunks([chunk])
            if found:
                raise UserError(f"data chunk {chunk} does not match the manifest ({'; '.join(found)}); "
                                "it was changed after prepare: training refuses to go on")
            self.verified_chunks.add(chunk)
        stage = self.data.stage_of_chunk(chunk)
        if stage.first_chunk == chunk and first == 0:
            self.records.event("stage_start", step, stage=stage.name, chunk=chunk, rewarm_steps=stage.rewarm_steps)

    def _train_step(self, step: int) -> InFlight:
        """Queue step `step` on the device: forward and backward over its micro-batches, the
        gradient clip, the guard's verdict and the AdamW update, which the verdict gates on the
        device. Nothing here reads a device value on the host."""
        cfg, data, world = self.cfg, self.data, self.dist.world
        flight = InFlight.begin(self.dist.device)
        lr = self._lr(step)
        for group, scale in zip(self.optimizer.param_groups, self.lr_scales):
            group["lr"] = lr * scale
        rows = self.batches.get(step).to(self.dist.device, non_blocking=True)
        n_targets = data.global_batch_rows * data.seq_len
        micro = cfg.micro_batch_rows
        n_micro = rows.shape[0] // micro
        loss_sum = torch.zeros((), device=self.dist.device, dtype=torch.float32)
        poisoned = self.faults.poisons(step)
        self.model.train()
        for i in range(n_micro):
            batch = rows[i * micro:(i + 1) * micro]
            inputs, targets = batch[:, :-1], batch[:, 1:]
            with gradient_sync(self.model, i == n_micro - 1), autocast(self.precision, self.dist.device):
                logits = self.model(inputs)  # (micro, T, V)
                ce = self.loss_fn(logits, targets)
                if poisoned:
                    ce = ce * float("nan")
                # DDP and FSDP average gradients over ranks, hence the factor `world`: the
                # gradient is that of the mean loss over all targets of the global batch
                (ce * (world / n_targets)).backward()
            loss_sum += ce.detach()
        if dist.is_initialized():
            dist.all_reduce(loss_sum)
        loss = loss_sum / n_targets
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        grad_norm = clip_gradients(self.model.parameters(), max_norm)
        verdict = self.guard.judge(loss, grad_norm)
        if self.on_spike.withholds:
            drop, take = verdict.bad, ~verdict.bad
        else:  # judged and recorded, never withheld; the history stays finite
            drop, take = torch.zeros_like(verdict.bad), verdict.kind != NONFINITE
        # `found_inf` is the hook of torch's fused AdamW for AMP's grad scaler: when it is 1 the
        # kernel leaves weights, moments and step count as they were, decided on the device
        # (test_train.py::test_found_inf_withholds_the_update pins this behaviour of torch)
        self.optimizer.found_inf = drop.float()
        if isinstance(self.optimizer, AdamWLowPrecision):  # rounding that a resume or replay repeats
            # FSDP: each rank rounds its own shard; replicas (DDP) must round alike or they drift apart
            shard = self.dist.rank if self.strategy == "fsdp" else 0
            self.optimizer.rounding_seed = rounding_seed(self.seed, step, shard)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.guard.accept(loss, take)
        flight.record.update(step=step, chunk=data.rule.chunk_of(step), lr=lr,
                             tokens=self.position.tokens + self.tokens_per_step)
        flight.finish(torch.cat([torch.stack([loss.double(), grad_norm.double()]), verdict.stacked()]))
        return flight

    def _settle(self) -> bool:
        """Read the step in flight (waiting for the device if it is not done), record it and act
        on the guard's verdict. False when that verdict rolled training back."""
        flight, self.in_flight = self.in_flight, None
        if flight is None:
            return True
        loss, grad_norm, bad, kind, mean, std, n = flight.read()
        record = flight.record | {"loss": loss, "grad_norm": grad_norm, "time": time.time()}
        dt = flight.seconds(self.last_end)
        self.last_end = flight.end
        if kind:
            why = reason(int(kind), loss, grad_norm, mean, std, int(n))
            if bad and self.on_spike.withholds:
                record = self.on_spike(record, KINDS[int(kind)], why)
                if record is None:
                    return False
            else:
                self.records.event(KINDS[int(kind)], record["step"], chunk=record["chunk"], action="log", reason=why)
        record["step_time"] = dt
        if not record.get("skipped"):
            tps = self.tokens_per_step / dt
            record.update(tokens_per_s=tps, mfu=tps * self.flops_per_token / self.peak if self.peak else None)
        self._record(record)
        return True

    def _record(self, record: dict) -> None:
        self.records.step(record)
        self.output.step(record)

    # -- setup --------------------------------------------------------------------------------

    def _start(self) -> Checkpoint:
        """Build the model and load the newest valid checkpoint (writing `init` first in a new run)."""
        if self.dist.is_main:
            for path in self.data.run.checkpoint_temporaries():
                shutil.rmtree(path, ignore_errors=True)
                self.output.say(f"removed an interrupted checkpoint write: {path.name}")
            write_env(self.run_dir, environment(self.dist.world, self.dist.device))
        if dist.is_initialized():
            dist.barrier()
        self._build()
        start = self.agreed_checkpoint()
        if start is None:
            self._write_init()
            start = self.agreed_checkpoint()
        self.restore(start)
        return start

    def _check_shapes(self) -> None:
        cfg, data, world = self.cfg, self.data, self.dist.world
        if cfg.global_batch_rows != data.global_batch_rows:
            raise UserError(f"train.global_batch_rows ({cfg.global_batch_rows}) differs from the prepared "
                            f"data's ({data.global_batch_rows}); chunks are cut for the latter: prepare again")
        if cfg.steps_per_chunk != data.steps_per_chunk:
            raise UserError(f"train.steps_per_chunk ({cfg.steps_per_chunk}) differs from the prepared "
                            f"data's ({data.steps_per_chunk}); prepare again")
        if cfg.global_batch_rows % (world * cfg.micro_batch_rows):
            raise UserError(f"train.global_batch_rows ({cfg.global_batch_rows}) must be divisible by "
                            f"world size ({world}) x train.micro_batch_rows ({cfg.micro_batch_rows})")
        if compute_fingerprint(data.manifest) != data.fingerprint:
            raise UserError(f"{self.run_dir}/data/manifest.json: the data fingerprint does not match the "
                            "chunk hashes it lists; the manifest was changed")

    def _build(self) -> None:
        torch.manual_seed(self.seed)
        # built empty: the weights always come from a checkpoint (`init` first of all); FSDP
        # shards before allocating, the others allocate first (DDP cannot wrap meta tensors)
        with torch.device("meta"):
            model = Llama(self.args)
        if self.precision == "bf16-weights":
            model.to(torch.bfloat16)
        if self.strategy != "fsdp":
            model.to_empty(device=self.dist.device)
        model = parallelize(model, strategy=self.strategy, precision=self.precision, compile=self.cfg.compile,
                            activation_checkpointing=self.cfg.activation_checkpointing, device=self.dist.device)
        if self.strategy == "fsdp":
            model.to_empty(device=self.dist.device)
        unwrap(model).init_rope(self.dist.device)  # to_empty left the rotary tables garbage
        self.model = model
        self.loss_fn = torch.compile(cross_entropy_sum) if self.cfg.compile else cross_entropy_sum
        self.optimizer = self._new_optimizer()

    def _new_optimizer(self) -> torch.optim.Optimizer:
        specs = group_specs(self.model, self.cfg, self.args.hidden_lr_scale)
        self.group_specs = [spec for spec, _ in specs]
        self.lr_scales = [spec.lr_scale for spec in self.group_specs]
        groups = param_groups(specs, self.cfg.weight_decay)
        if self.precision == "bf16-weights":
            return AdamWLowPrecision(groups, lr=self.cfg.lr, betas=tuple(self.cfg.betas), eps=self.cfg.eps,
                                     compile=self.cfg.compile)
        # fused: one kernel for all parameters, and `found_inf` lets the spike guard withhold an
        # update on the device (see _train_step)
        return torch.optim.AdamW(groups, lr=self.cfg.lr, betas=tuple(self.cfg.betas), eps=self.cfg.eps, fused=True)

    def _state(self) -> TrainerState:
        p = self.position
        return TrainerState(steps_done=p.steps_done, tokens=p.tokens, skipped_steps=sorted(p.skipped_steps),
                            rollbacks=p.rollbacks, spike=self.guard.state_dict(), fingerprint=self.data.fingerprint,
                            world_size=self.dist.world, seed=self.seed, settings=self.cfg.model_dump(mode="json"))

    def _write_init(self) -> None:
        """`checkpoints/init`: the seeded initial weights, written once from an unsharded model."""
        if self.dist.is_main:
            torch.manual_seed(self.seed)
            model = Llama(self.args)
            model.init_weights(self.seed)
            ckpt.save_checkpoint(self.run_dir, "init", model, None, self._state(), self.args, self.data.tokenizer_dir,
                                 collective=False)
            del model
        if dist.is_initialized():
            dist.barrier()

    def restore(self, info: Checkpoint) -> None:
        self.in_flight = self.last_end = None
        if info.name == "init":  # no optimizer state yet: start from fresh moments (matters on a rollback)
            self.optimizer = self._new_optimizer()
        state = ckpt.load_checkpoint(info.path, self.model, self.optimizer if info.name != "init" else None)
        if state.fingerprint not in (None, self.data.fingerprint):
            raise UserError(f"checkpoint {info.name} was trained on data with fingerprint {state.fingerprint[:12]}, "
                            f"but RUN/data has {self.data.fingerprint[:12]}: the data was changed")
        # the optimizer settings of run.yaml, not those saved with the moments (`llm360 train RUN
        # --train.weight_decay=...` may change them; lr is set at every step)
        for group, spec in zip(self.optimizer.param_groups, self.group_specs):
            group.update(betas=tuple(self.cfg.betas), eps=self.cfg.eps,
                         weight_decay=self.cfg.weight_decay if spec.decay else 0.0)
        self.position = Position(steps_done=info.steps_done, tokens=state.tokens,
                                 skipped_steps=list(state.skipped_steps), rollbacks=state.rollbacks)
        self.guard.load_state_dict(state.spike)

    def _newest_valid(self, before_step: int | None = None) -> Checkpoint | None:
        for info in reversed(self.data.run.checkpoints(self.data.rule)):
            if before_step is not None and info.steps_done > before_step:
                continue
            found = checkpoint_problems(info)
            if not found:
                return info
            self.output.say(f"[yellow]warning:[/] checkpoint {info.name} is damaged ({found[0]}); skipping it")
            self.records.event("corrupt_checkpoint", info.steps_done, checkpoint=info.name, problems=found[:10])
        return None

    def agreed_checkpoint(self, before_step: int | None = None) -> Checkpoint | None:
        """The newest valid checkpoint (at most `before_step` steps in), as rank 0 sees it, on
        every rank. Only rank 0 reads and hashes the checkpoints; each rank looking for itself
        could see another folder (one that looks while rank 0 writes `init`), and ranks that
        disagree on which checkpoint to load (or whether to write one) wait on each other forever."""
        if not dist.is_initialized():
            return self._newest_valid(before_step)
        box = [None]
        if self.dist.is_main:
            info = self._newest_valid(before_step)
            box = [info.name if info is not None else None]
        dist.broadcast_object_list(box, src=0)
        if box[0] is None:
            return None
        found = [i for i in self.data.run.checkpoints(self.data.rule) if i.name == box[0]]
        if not found:
            raise UserError(f"rank {self.dist.rank} does not see checkpoint {box[0]} that rank 0 chose: "
                            f"is {self.run_dir} on a file system that all processes share?")
        return found[0]

    # -- what a step is ---------------------------------------------------------------------------

    def rows_of(self, step: int) -> dict:
        chunk, first = self.data.step_location(step)
        return {"step": step, "chunk": chunk, "rows": [first, first + self.data.global_batch_rows]}

    def _lr(self, step: int) -> float:
        return self.schedule.at(step)

    def _skipped_record(self, step: int) -> dict:
        self.last_end = None
        return {"step": step, "chunk": self.data.rule.chunk_of(step), "loss": None, "lr": self._lr(step),
                "grad_norm": None, "skipped": True, "tokens": self.position.tokens + self.tokens_per_step,
                "time": time.time(), "step_time": 0.0}

    # -- checkpoints --------------------------------------------------------------------------

    def _checkpoint(self, name: str, steps_done: int) -> None:
        self.last_end = None  # the write is not the next step's time
        if self.replaying:
            return
        self.records.sync()  # the record of every step up to here is durable with the checkpoint
        if not self._weights_finite():
            self.records.event("nonfinite_weights", steps_done - 1, checkpoint=name, action=self.cfg.spike.action)
            raise StopTraining(f"the weights are no longer finite after step {steps_done - 1}, so {name} is not "
                               f"written (train.spike.action is {self.cfg.spike.action!r}); resume from the last "
                               "checkpoint with --train.spike.action=skip or rollback")
        ckpt.save_checkpoint(self.run_dir, name, self.model, self.optimizer, self._state(), self.args,
                             self.data.tokenizer_dir, kill_during_write=self.faults.kills_during(name))
        self.records.event("checkpoint", steps_done - 1, checkpoint=name, steps_done=steps_done,
                           tokens=self.position.tokens)
        self.faults.after_checkpoint(steps_done, self.records)
        if CheckpointName.parse(name).kind == "ckpt" and self.dist.is_main:
            self.after_checkpoint(name, steps_done)
        if dist.is_initialized():
            dist.barrier()

    def _weights_finite(self) -> bool:
        """Whether every weight is finite (each rank checks its own shard)."""
        bad = torch.zeros((), device=self.dist.device)
        for p in self.model.parameters():
            local = p.to_local() if hasattr(p, "to_local") else p
            bad += (~torch.isfinite(local.detach())).sum()
        if dist.is_initialized():
            dist.all_reduce(bad)
        return int(bad) == 0

    def replay(self, start: Checkpoint, until_step: int, skipped_steps: list[int]) -> dict:
        """Train from `start` to `until_step` exactly as recorded (skipping the batches the
        original run skipped) and return the full weights; nothing is written."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        self._build()
        self.restore(start)
        self.position.skipped_steps = sorted(set(self.position.skipped_steps) | set(skipped_steps))
        self.train_until(until_step)
        return get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def run_training(run_dir: Path, cfg: RunConfig, on_checkpoint: CheckpointHook | None = None) -> dict:
    """Train RUN with `cfg`. Settings that differ from RUN/run.yaml are checked against what the
    data and checkpoints fix (one sentence naming the keys), then run.yaml is rewritten, only once
    the trainer has accepted them, and the change is an event at the step it takes effect."""
    run_dir = Path(run_dir)
    recorded = load_run_config(run_dir)
    changes = _changes(run_dir, recorded, cfg)
    trainer = Trainer(run_dir, cfg.train, cfg.model, cfg.seed, hooks=[on_checkpoint] if on_checkpoint else [])

    def accept() -> None:
        if trainer.dist.is_main:
            save_config(cfg, RunDir(run_dir).config_path)

    try:
        return trainer.fit(changes=changes, accept=accept)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _changes(run_dir: Path, recorded: RunConfig, cfg: RunConfig) -> dict:
    old, new = to_dict(recorded), to_dict(cfg)
    keys = differences(old, new)
    has_checkpoints = bool(RunDir(run_dir).checkpoints(1)) if keys else False
    frozen = frozen_changes(keys, has_checkpoints)
    if frozen:
        raise UserError(f"{', '.join(frozen)} cannot change in a prepared run ({run_dir}/run.yaml is kept): the "
                        "data" + (" and the checkpoints" if has_checkpoints else "") + " were made with the recorded "
                        "values; prepare a new run to change them")
    return {k: [_at(old, k), _at(new, k)] for k in keys}


def _at(tree: dict, dotted: str):
    for part in dotted.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


def apply_train_overrides(run_dir: Path, overrides: list[str]) -> RunConfig:
    """RUN/run.yaml with `--key=value` overrides applied and validated; nothing is written (the
    trainer records what it accepts, see run_training)."""
    cfg = load_run_config(run_dir)
    if not overrides:
        return cfg
    tree = to_dict(cfg)
    for item in overrides:
        apply_override(tree, item)
    new = validate(tree, source=f"{run_dir}/run.yaml")
    _changes(run_dir, cfg, new)  # refuse what the run cannot accept before any work
    return new
