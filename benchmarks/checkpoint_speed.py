"""Checkpoint write and resume: gathered on rank 0 (the earlier way) against sharded, same run.

For each number of processes (gloo on CPU), one FSDP2 model with its AdamW moments is written
both ways, one after the other in the same processes, then read back. Per layout:
  write_s      wall time of save_checkpoint (slowest rank; includes hashing and fsync)
  extra_mb     peak host memory a rank added during the write (RSS sampled every 2 ms, above
               its RSS before the write), rank 0 and the largest of the other ranks
  state_mb     the rank's own share of the training state (weights + moments), for comparison
  disk_mb      bytes of the checkpoint folder
  resume_s     wall time of load_checkpoint into the same sharded model and optimizer

    python benchmarks/checkpoint_speed.py                       # ~190M parameters, 1, 2, 4 processes
    python benchmarks/checkpoint_speed.py --worlds 1,2 --dim 512 --layers 4 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from llm360.model.llama import Llama, model_args
from llm360.rundir import TrainerState
from llm360.train import checkpoint as ckpt
from llm360.train.parallel import apply_fsdp, free_port

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class PeakRSS:
    """The highest RSS seen while the block runs."""

    def __enter__(self):
        self.base = self.peak = rss()
        self.running = True
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()
        return self

    def _watch(self):
        while self.running:
            self.peak = max(self.peak, rss())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, rss())

    @property
    def extra_mb(self) -> float:
        return (self.peak - self.base) / 2**20


def build(args) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    with torch.device("meta"):
        model = Llama(args)
    apply_fsdp(model, "fp32", torch.device("cpu"))
    model.to_empty(device="cpu")
    with torch.no_grad():
        for p in model.parameters():
            p.to_local().normal_(0, 0.02)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    for p in model.parameters():  # one update, so the moments exist
        p.grad = torch.distributed.tensor.DTensor.from_local(torch.full_like(p.to_local(), 1e-3), p.device_mesh,
                                                             p.placements, shape=p.shape, stride=p.stride())
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return model, optimizer


def worker(rank: int, world: int, port: int, root: str, dims: dict, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    args = model_args("tiny", **dims)
    model, optimizer = build(args)
    own = sum(p.to_local().numel() for p in model.parameters()) * 4 * 3  # weights + two moments, fp32
    run, tokenizer = Path(root) / "run", Path(root) / "tokenizer"
    results = {}
    for layout in ("gathered", "sharded"):
        name = f"ckpt_{layout}"
        dist.barrier()
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            path = ckpt.save_checkpoint(run, name, model, optimizer, TrainerState(world_size=world), args,
                                        tokenizer, layout=layout, max_shard_bytes=256 * 2**20)
            write = time.perf_counter() - t0
        dist.barrier()
        t0 = time.perf_counter()
        ckpt.load_checkpoint(path, model, optimizer)
        dist.barrier()
        resume = time.perf_counter() - t0
        disk = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        results[layout] = {"write_s": write, "extra_mb": mem.extra_mb, "resume_s": resume, "disk_mb": disk / 2**20}
    gathered = [None] * world
    dist.all_gather_object(gathered, {"rank": rank, "state_mb": own / 2**20, **results})
    if rank == 0:
        Path(out).write_text(json.dumps(gathered))
        for layout in ("gathered", "sharded"):
            shutil.rmtree(run / "checkpoints" / f"ckpt_{layout}", ignore_errors=True)
    dist.destroy_process_group()


def measure(world: int, dims: dict) -> dict:
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as root:
        (Path(root) / "run" / "checkpoints").mkdir(parents=True)
        (Path(root) / "tokenizer").mkdir()
        (Path(root) / "tokenizer" / "tokenizer.json").write_text("{}")
        out = Path(root) / "result.json"
        mp.spawn(worker, args=(world, free_port(), root, dims, str(out)), nprocs=world, join=True)
        ranks = json.loads(out.read_text())
    row = {"world": world, "state_mb_per_rank": max(r["state_mb"] for r in ranks)}
    for layout in ("gathered", "sharded"):
        row[layout] = {
            "write_s": max(r[layout]["write_s"] for r in ranks),
            "resume_s": max(r[layout]["resume_s"] for r in ranks),
            "extra_mb_rank0": ranks[0][layout]["extra_mb"],
            "extra_mb_others": max((r[layout]["extra_mb"] for r in ranks[1:]), default=None),
            "disk_mb": ranks[0][layout]["disk_mb"],
        }
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worlds", default="1,2,4")
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=10)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    dims = {"dim": a.dim, "n_layers": a.layers, "n_heads": a.dim // 64, "n_kv_heads": a.dim // 64,
            "ffn_dim": int(a.dim * 2.75) // 64 * 64, "vocab_size": a.vocab, "max_seq_len": 2048}
    from llm360.model.llama import num_params

    params = num_params(model_args("tiny", **dims))
    print(f"model: {params / 1e6:.0f}M parameters ({dims}); fp32 weights {params * 4 / 2**20:,.0f} MiB, "
          f"weights + AdamW moments {params * 12 / 2**20:,.0f} MiB")
    rows = []
    for world in (int(w) for w in a.worlds.split(",")):
        row = measure(world, dims)
        rows.append(row)
        g, s = row["gathered"], row["sharded"]
        print(f"{world} process(es): own state {row['state_mb_per_rank']:,.0f} MiB/rank")
        for layout, r in (("gathered", g), ("sharded", s)):
            others = "-" if r["extra_mb_others"] is None else f"{r['extra_mb_others']:,.0f}"
            print(f"  {layout:8s} write {r['write_s']:6.2f} s  resume {r['resume_s']:6.2f} s  peak extra MiB "
                  f"rank0 {r['extra_mb_rank0']:7,.0f}  others {others:>7s}  disk {r['disk_mb']:7,.0f} MiB")
        print(f"  ratios gathered/sharded: write {g['write_s'] / s['write_s']:.2f}x, resume "
              f"{g['resume_s'] / s['resume_s']:.2f}x, rank-0 peak extra memory "
              f"{g['extra_mb_rank0'] / max(s['extra_mb_rank0'], 1):.1f}x")
    if a.json:
        a.json.write_text(json.dumps({"parameters": params, "dims": dims, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
