"""Training speed on one GPU: llm360's trainer against transformers' compiled LlamaForCausalLM.

In one process, on the same prepared data and the same batches:
  (a) llm360's real trainer step (Trainer._loop one step at a time: bf16 autocast over fp32 master weights,
      fused AdamW, torch.compile per block) on the `1b` preset at sequence 2048, 8 rows a step;
  (b) transformers' LlamaForCausalLM with the identical config under torch.compile, same
      precision, optimizer and batches (the baseline of ../shared/ANCHORS.md: 55.7K tokens/s,
      41% MFU on one H100);
and prints tokens/s, MFU (ANCHORS.md formula) and peak memory for both, with the ratio, and the
host synchronisations counted inside llm360's timed steps (torch.cuda.set_sync_debug_mode). Then,
each in a fresh process: train.deterministic checked (the same 3 steps twice, bitwise), and the
`amber-7b` preset on the one GPU with FSDP2, full activation checkpointing and bf16 weights: it
estimates the memory first and only tries when the estimate fits (or with --force-7b).

    python benchmarks/gpu_train.py --out "$OUT"        # one H100, under 8 minutes
    python benchmarks/gpu_train.py --smoke             # CPU, tiny preset, seconds (CI keeps it working)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from llm360.cli import main as llm360_main
from llm360.data.store import RunData
from llm360.model.hf import hf_config
from llm360.model.llama import flops_per_token, model_args, num_params
from llm360.train.parallel import autocast
from llm360.train.records import peak_flops
from llm360.train.trainer import Trainer, apply_train_overrides, build_model_args
from llm360.utils import read_jsonl

H100_PEAK = 989e12


def prepare(root: Path, *, smoke: bool, steps: int, rows: int, seq: int, vocab: int) -> Path:
    run = root / "run"
    overrides = [
        f"--data.seq_len={seq}", f"--data.tokenizer.vocab_size={vocab}", "--data.heldout_rows=1",
        "--data.sources=[{name: code, kind: python-code}, {name: docs, kind: python-docs}]",
        "--data.stages=[{name: s, chunks: 1, mix: {code: 0.8, docs: 0.2}}]",
        f"--train.global_batch_rows={rows}", f"--train.micro_batch_rows={rows}",
        f"--train.steps_per_chunk={steps + 1}",  # the chunk's checkpoint is never reached
        "--eval.every_checkpoint=false", f"--data.workers={os.cpu_count() or 1}",
    ]
    if smoke:  # prose only: parsing the docstrings is quicker than tokenizing all the code
        overrides += ["--data.tokenizer.sample_chars=300000", "--data.sources=[{name: docs, kind: python-docs}]",
                      "--data.stages=[{name: s, chunks: 1, mix: {docs: 1.0}}]"]
    assert llm360_main(["prepare", "demo", "--out", str(run), *overrides]) == 0
    return run


def time_steps(step_fn, steps: int, warmup: int, device: torch.device) -> float:
    """Seconds per step after `warmup` steps (compilation happens there)."""
    for s in range(warmup):
        step_fn(s)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for s in range(warmup, steps):
        step_fn(s)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / (steps - warmup)


def quick_init(model: torch.nn.Module, std: float = 0.02) -> None:
    """Random weights drawn on the device (speed does not depend on them; llm360's seeded init
    draws on the CPU, which for 7B parameters takes minutes)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            local = p.to_local() if hasattr(p, "to_local") else p
            local.fill_(1.0) if name.endswith("norm.weight") else local.normal_(0.0, std)


def llm360_trainer(run: Path, preset: str, device: torch.device, compile: bool, steps: int, warmup: int,
                   extra: list[str] = ()) -> dict:
    overrides = [f"--model.preset={preset}", f"--train.compile={str(compile).lower()}",
                 f"--train.device={device.type}", "--train.deterministic=false", *extra]
    cfg = apply_train_overrides(run, overrides)
    trainer = Trainer(run, cfg.train, cfg.model, cfg.seed)
    trainer._build()
    quick_init(trainer.model)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def step(s: int) -> None:
        if s == warmup and device.type == "cuda":  # from here on, count what synchronises the host
            torch.cuda.set_sync_debug_mode("warn")
        trainer._loop(trainer.position.steps_done + 1, drain=False)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        per_step = time_steps(step, steps, warmup, device)
        if device.type == "cuda":
            torch.cuda.set_sync_debug_mode(0)
        syncs = [str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message).lower()]
    trainer._settle()
    skipped = len(trainer.position.skipped_steps)
    trainer.batches.close()
    trainer.records.close()
    result = _figures(trainer.args, trainer.data, per_step, device, precision=trainer.precision)
    result.update(host_syncs_per_step=len(syncs) / (steps - warmup), sync_examples=sorted(set(syncs))[:5],
                  strategy=trainer.strategy, activation_checkpointing=cfg.train.activation_checkpointing,
                  micro_batch_rows=cfg.train.micro_batch_rows, skipped_steps=skipped)
    return result


def transformers_baseline(run: Path, preset: str, device: torch.device, compile: bool, steps: int, warmup: int) -> dict:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = apply_train_overrides(run, [f"--model.preset={preset}"])
    data = RunData(run)
    args = build_model_args(cfg.model, data.vocab_size, data.seq_len)
    config = LlamaConfig(**{k: v for k, v in hf_config(args).items() if k not in ("architectures", "model_type", "torch_dtype", "dtype")})
    model = LlamaForCausalLM(config).to(device)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, betas=tuple(cfg.train.betas),
                            eps=cfg.train.eps, weight_decay=cfg.train.weight_decay, fused=device.type == "cuda" or None)
    forward = torch.compile(model) if compile else model
    precision = "bf16" if device.type == "cuda" else "fp32"
    n_targets = data.global_batch_rows * data.seq_len

    def step(s: int) -> None:
        rows = torch.from_numpy(data.rows_at(s)).to(device, non_blocking=True)
        with autocast(precision, device):
            logits = forward(input_ids=rows[:, :-1]).logits
            loss = F.cross_entropy(logits.float().flatten(0, 1), rows[:, 1:].flatten(), reduction="sum") / n_targets
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    per_step = time_steps(step, steps, warmup, device)
    result = _figures(args, data, per_step, device, precision=precision)
    return result


def _figures(args, data: RunData, per_step: float, device: torch.device, precision: str) -> dict:
    tokens = data.global_batch_rows * data.seq_len
    tps = tokens / per_step
    peak = peak_flops(device) or (H100_PEAK if device.type == "cuda" else None)
    return {
        "tokens_per_s": tps, "step_s": per_step, "precision": precision,
        "mfu": tps * flops_per_token(args, data.seq_len) / peak if peak else None,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "parameters": num_params(args),
    }


def amber_7b(run: Path, device: torch.device, force: bool, steps: int, warmup: int, timeout: float,
             smoke: bool = False) -> dict:
    """FSDP2 + full activation checkpointing + bf16 weights on one GPU: does the 7B preset fit,
    and how fast? Run in a fresh process so that nothing of the 1B runs stays in memory.
    With --smoke: the same settings and plumbing on the tiny preset, on the CPU."""
    args = model_args("tiny" if smoke else "amber-7b")
    n = num_params(args)
    # bf16 weights + bf16 gradients + two fp32 AdamW moments = 12 bytes per parameter (16 with
    # fp32 master weights), before activations (checkpointed: a block's worth plus the logits)
    need = 12 * n / 2**30
    have = torch.cuda.get_device_properties(device).total_memory / 2**30 if device.type == "cuda" else float("inf")
    result = {"parameters": n, "estimated_state_gib": need, "device_memory_gib": have, "precision": "bf16-weights"}
    if need > have and not force:
        return {**result, "fits": False, "reason": f"weights, gradients and AdamW state need ~{need:.0f} GiB, "
                                                   f"the GPU has {have:.0f} GiB; use several GPUs (FSDP2 shards them)"}
    env = {**os.environ, "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}
    cmd = [sys.executable, __file__, "--only-7b", str(run), "--steps", str(steps), "--warmup", str(warmup)]
    try:
        out = subprocess.run(cmd + (["--smoke"] if smoke else []), capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {**result, "fits": None, "reason": f"not finished within {timeout:.0f} s (the time left of the budget)"}
    if out.returncode != 0:
        oom = "out of memory" in out.stderr.lower()
        return {**result, "fits": False, "reason": "CUDA out of memory" if oom else out.stderr[-2000:]}
    return {**result, "fits": True, **json.loads(out.stdout.strip().splitlines()[-1])}


def determinism(run: Path, device: torch.device, preset: str, steps: int) -> dict:
    """train.deterministic on this device: the same steps twice from the same weights must give
    bitwise the same weights (what `llm360 replay` relies on). Eager, to keep it short."""
    digests, losses = [], []
    for _ in range(2):
        cfg = apply_train_overrides(run, [f"--model.preset={preset}", "--train.compile=false",
                                          f"--train.device={device.type}", "--train.deterministic=true"])
        trainer = Trainer(run, cfg.train, cfg.model, cfg.seed)
        trainer._build()
        torch.manual_seed(0)
        quick_init(trainer.model)
        for _ in range(steps):
            trainer._loop(trainer.position.steps_done + 1, drain=False)
        trainer._settle()
        digest = hashlib.sha256()
        for p in trainer.model.parameters():
            digest.update(p.detach().float().cpu().numpy().tobytes())
        digests.append(digest.hexdigest())
        losses.append([r["loss"] for r in read_jsonl(run / "metrics" / "train.jsonl")][-steps:])
        trainer.batches.close()
        trainer.records.close()
        del trainer
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return {"bitwise_equal": digests[0] == digests[1], "steps": steps, "losses": losses}


SEVEN_B = ["--train.strategy=fsdp", "--train.activation_checkpointing=full", "--train.precision=bf16-weights",
           "--train.micro_batch_rows=1"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="CPU, tiny preset, a few steps: checks that the script works")
    p.add_argument("--steps", type=int, default=None, help="timed steps + warmup (default 30 on GPU, 4 in --smoke)")
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--out", default=os.environ.get("OUT"), help="folder for gpu_train.json (default: $OUT)")
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--skip-7b", action="store_true")
    p.add_argument("--force-7b", action="store_true", help="try the 7B preset even when the estimate says it won't fit")
    p.add_argument("--precision", default="bf16", choices=["bf16", "bf16-weights"],
                   help="llm360's precision for the 1B run (the baseline is always bf16 autocast)")
    p.add_argument("--budget", type=float, default=470, help="seconds for the whole run (children get what is left)")
    p.add_argument("--only-7b", metavar="RUN", help=argparse.SUPPRESS)  # the child process of the 7B try
    p.add_argument("--only-determinism", metavar="RUN", help=argparse.SUPPRESS)  # the determinism check's child
    a = p.parse_args()
    if a.only_determinism:
        try:
            result = determinism(Path(a.only_determinism), torch.device("cpu" if a.smoke else "cuda"),
                                 "tiny" if a.smoke else "1b", steps=3)
        except Exception as e:  # an op without a deterministic version, say: that is the finding
            result = {"bitwise_equal": False, "error": f"{type(e).__name__}: {e}"[:2000]}
        print(json.dumps(result))
        return 0
    if a.only_7b:
        device = torch.device("cpu" if a.smoke else "cuda")
        result = llm360_trainer(Path(a.only_7b), "tiny" if a.smoke else "amber-7b", device,
                                not (a.no_compile or a.smoke), a.steps or 5, a.warmup if a.warmup is not None else 2,
                                SEVEN_B)
        print(json.dumps(result))
        return 0
    device = torch.device("cpu" if a.smoke or not torch.cuda.is_available() else "cuda")
    if not a.smoke and device.type != "cuda":
        p.error("no CUDA device: run with --smoke on a CPU")
    steps = a.steps or (4 if a.smoke else 30)
    warmup = a.warmup if a.warmup is not None else (1 if a.smoke else 8)
    preset, seq, rows, vocab = ("tiny", 64, 4, 512) if a.smoke else ("1b", 2048, 8, 32000)
    compile = not a.no_compile and not a.smoke
    results: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                     "preset": preset, "seq_len": seq, "rows_per_step": rows, "compile": compile,
                     "torch": torch.__version__}

    def save() -> None:  # after each part: a run cut short by its time limit keeps what it measured
        if a.out:
            Path(a.out).mkdir(parents=True, exist_ok=True)
            (Path(a.out) / "gpu_train.json").write_text(json.dumps(results, indent=2))

    started = time.perf_counter()

    def left(at_least: float) -> float:  # seconds a child may run and the whole still end in --budget
        return max(at_least, a.budget - (time.perf_counter() - started))
    with tempfile.TemporaryDirectory() as tmp:
        run = prepare(Path(tmp), smoke=a.smoke, steps=steps, rows=rows, seq=seq, vocab=vocab)
        results["prepare_s"] = time.perf_counter() - started
        results["llm360"] = llm360_trainer(run, preset, device, compile, steps, warmup,
                                           [f"--train.precision={a.precision}"] if device.type == "cuda" else [])
        save()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        results["transformers"] = transformers_baseline(run, preset, device, compile, steps, warmup)
        results["speedup"] = results["llm360"]["tokens_per_s"] / results["transformers"]["tokens_per_s"]
        save()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        try:
            out = subprocess.run([sys.executable, __file__, "--only-determinism", str(run)] + (["--smoke"] if a.smoke else []),
                                 capture_output=True, text=True, timeout=left(120))
            results["determinism"] = (json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0
                                      else {"bitwise_equal": False, "error": out.stderr[-2000:]})
        except subprocess.TimeoutExpired:
            results["determinism"] = {"bitwise_equal": None, "error": "not finished in the time left"}
        save()
        if not a.skip_7b:
            results["amber_7b"] = amber_7b(run, device, a.force_7b, steps=3 if a.smoke else 5, warmup=1 if a.smoke else 2,
                                           timeout=left(30), smoke=a.smoke)
    print(f"{'':14}{'tokens/s':>12}{'MFU':>8}{'peak GiB':>10}")
    for name in ("llm360", "transformers"):
        r = results[name]
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "-"
        mem = f"{r['peak_memory_gib']:.1f}" if r["peak_memory_gib"] is not None else "-"
        print(f"{name:14}{r['tokens_per_s']:12,.0f}{mfu:>8}{mem:>10}")
    print(f"llm360 / transformers: {results['speedup']:.2f}x")
    d = results["determinism"]
    print(f"train.deterministic, the same 3 steps twice: { {True: 'bitwise equal', False: 'DIFFERENT', None: 'not checked'}[d['bitwise_equal']] }"
          + (f" ({d['error'][:200]})" if d.get("error") else ""))
    if "amber_7b" in results:
        r = results["amber_7b"]
        label = "tiny with the 7B settings (smoke)" if a.smoke else "amber-7b on one GPU"
        if r.get("fits"):
            mfu = f"{r['mfu']:.1%}" if r.get("mfu") is not None else "-"
            print(f"{label}: fits, {r['tokens_per_s']:,.0f} tokens/s, MFU {mfu}, peak {r.get('peak_memory_gib')} GiB")
        else:
            verdict = "not finished" if r.get("fits") is None else "does not fit"
            print(f"{label}: {verdict} ({r.get('reason', '')[:300]})")
    results["total_s"] = time.perf_counter() - started
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
