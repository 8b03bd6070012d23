"""llm360's Llama against transformers' LlamaForCausalLM: same config, same weights, same inputs,
one process, measurements interleaved (llm360, transformers, transformers, llm360, ...) after a
warmup, the best of each kept.

  train     forward + backward + AdamW step on (batch, seq) token batches          tokens/s
  generate  greedy, batch of `gen-batch` prompts of `prompt-len` + `new-tokens`      sequences/s
            (llm360 generate vs transformers generate(do_sample=False))
  score     log-likelihood requests (lm-eval style) : llm360 score_tokens vs a      requests/s
            plain transformers forward + log_softmax per batch

    python benchmarks/model_speed.py                       # demo preset, CPU
    python benchmarks/model_speed.py --device cuda --preset 1b --batch 8 --seq 2048 --json out.json

--families measures instead the training tokens/s of three models of the preset's width and depth
on the same batches, interleaved: the LLaMA of this code, the LLaMA of the previous release
(commit bce3bbb's model file, from `git show`: did the CrystalCoder building blocks slow LLaMA
down?) and a CrystalCoder-shaped model (LayerNorm, biases, rotary on a quarter of each head in
interleaved pairs, µP multipliers: what do they cost?).

    python benchmarks/model_speed.py --families --threads 2 --rounds 6
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import tempfile
import time
import types
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from llm360.model.generate import generate, score_tokens
from llm360.model.hf import save_hf
from llm360.model.args import CRYSTAL
from llm360.model.llama import Llama, flops_per_token, model_args, num_params

PREVIOUS_RELEASE = "bce3bbb"  # the last commit before CrystalCoder's building blocks


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def interleaved(fns: dict, rounds: int, warmup: int, device: str) -> dict[str, float]:
    """Best (minimum) seconds per call of each function, calls interleaved in alternating order:
    on a shared machine the minimum is the run least disturbed by others."""
    times = {name: [] for name in fns}
    names = list(fns)
    for r in range(warmup + rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            sync(device)
            t = time.perf_counter()
            fns[name]()
            sync(device)
            if r >= warmup:
                times[name].append(time.perf_counter() - t)
    return {name: min(ts) for name, ts in times.items()}


def train_step(model, batches, logits_of=lambda m, x: m(x)):
    """One forward + backward + AdamW step per call, cycling through `batches`."""
    optim = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    model.train()
    i = iter(range(10**9))

    def step():
        x = batches[next(i) % len(batches)]
        logits = logits_of(model, x[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), x[:, 1:].reshape(-1))
        loss.backward()
        optim.step()
        optim.zero_grad(set_to_none=True)
    return step


def previous_llama() -> types.ModuleType:
    """The model file of the previous release, as a module of its own."""
    root = Path(__file__).resolve().parents[1]
    source = subprocess.run(["git", "show", f"{PREVIOUS_RELEASE}:src/llm360/model/llama.py"], cwd=root,
                            capture_output=True, text=True, check=True).stdout
    module = types.ModuleType("llama_previous")
    exec(compile(source, f"{PREVIOUS_RELEASE}:llama.py", "exec"), module.__dict__)
    return module


def families(opt, args, dev: str) -> dict:
    crystal_args = replace(args, **{**CRYSTAL, "rotary_dim": args.head_dim // 4, "n_kv_heads": args.n_heads})
    llama = Llama(args)
    llama.init_weights(0)
    before = previous_llama().Llama(args)
    before.load_state_dict(llama.state_dict())
    crystal = Llama(crystal_args)
    crystal.init_weights(0)
    models = {"llama": llama.to(dev), "llama_previous": before.to(dev), "crystal": crystal.to(dev)}
    batches = [torch.randint(0, args.vocab_size, (opt.batch, opt.seq + 1), device=dev) for _ in range(4)]
    with torch.no_grad():  # the same numbers as before, not just the same speed
        same = torch.equal(llama.eval()(batches[0][:, :-1]), before.eval()(batches[0][:, :-1]))
    t = interleaved({name: train_step(m, batches) for name, m in models.items()}, opt.rounds, opt.warmup, dev)
    tokens = opt.batch * opt.seq
    result = {name: tokens / t[name] for name in models}
    print(f"\ntraining tokens/s, {args.n_layers} layers of width {args.dim}, batch {opt.batch} x {opt.seq}:")
    for name, rate in result.items():
        print(f"  {name:<15} {rate:>10.1f}  ({rate / result['llama']:.3f}x llama)")
    print(f"llama logits bitwise equal to {PREVIOUS_RELEASE}'s: {same}; crystal-shaped model "
          f"{num_params(crystal_args) / 1e6:.2f}M parameters against {num_params(args) / 1e6:.2f}M")
    return {"unit": "tokens/s", **result, "llama_same_logits_as_previous": same}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--preset", default="demo")
    p.add_argument("--vocab", type=int, default=4096, help="vocabulary size (the demo tokenizer's is 4096)")
    p.add_argument("--layers", type=int, default=None, help="override the preset's n_layers")
    p.add_argument("--batch", type=int, default=16, help="training rows per step")
    p.add_argument("--seq", type=int, default=128, help="training sequence length")
    p.add_argument("--rounds", type=int, default=8, help="measured calls per side")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--gen-batch", type=int, default=64)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--score-requests", type=int, default=128)
    p.add_argument("--score-batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--skip", default="", help="comma list of parts to skip: train,generate,score")
    p.add_argument("--json", default=None, help="write the results to this path")
    p.add_argument("--families", action="store_true",
                   help="only compare training speed: LLaMA now, LLaMA of the previous release, CrystalCoder-shaped")
    opt = p.parse_args()

    from transformers import AutoModelForCausalLM

    if opt.threads:
        torch.set_num_threads(opt.threads)
    torch.manual_seed(0)
    dev = opt.device
    overrides = {"vocab_size": opt.vocab}
    if opt.layers:
        overrides["n_layers"] = opt.layers
    args = model_args(opt.preset, **overrides)
    if opt.families:
        results = {"families": families(opt, args, dev)}
        if opt.json:
            with open(opt.json, "w") as f:
                json.dump({"args": vars(opt), "threads": torch.get_num_threads(), "results": results}, f, indent=2)
        return
    ours = Llama(args)
    ours.init_weights(0)
    with tempfile.TemporaryDirectory() as folder:
        save_hf(ours, args, folder)
        hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    ours, hf = ours.to(dev), hf.to(dev)
    print(f"model {opt.preset}: {num_params(args) / 1e6:.2f}M parameters, dim {args.dim}, {args.n_layers} layers, "
          f"{args.n_heads} heads ({args.n_kv_heads} kv), vocab {args.vocab_size}; device {dev}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    skip = set(opt.skip.split(",")) - {""}
    results: dict[str, dict] = {}

    if "train" not in skip:
        batches = [torch.randint(0, args.vocab_size, (opt.batch, opt.seq + 1), device=dev) for _ in range(4)]

        t = interleaved({"llm360": train_step(ours, batches),
                         "transformers": train_step(hf, batches, lambda m, x: m(input_ids=x, use_cache=False).logits)},
                        opt.rounds, opt.warmup, dev)
        tokens = opt.batch * opt.seq
        results["train"] = {"unit": "tokens/s", "llm360": tokens / t["llm360"], "transformers": tokens / t["transformers"],
                            "llm360_gflops": tokens / t["llm360"] * flops_per_token(args, opt.seq) / 1e9}
        ours.eval(), hf.eval()

    if "generate" not in skip:
        prompts = torch.randint(0, args.vocab_size, (opt.gen_batch, opt.prompt_len))
        plist = prompts.tolist()
        ids, mask = prompts.to(dev), torch.ones_like(prompts).to(dev)
        out = {}

        def run_ours():
            out["llm360"] = generate(ours, plist, opt.new_tokens, batch_size=opt.gen_batch)

        @torch.inference_mode()
        def run_hf():
            r = hf.generate(ids, attention_mask=mask, max_new_tokens=opt.new_tokens, min_new_tokens=opt.new_tokens,
                            do_sample=False, pad_token_id=0)
            out["transformers"] = r[:, opt.prompt_len:].tolist()

        @torch.inference_mode()
        def run_linears():
            # only the matmuls of the weights, on the same shapes: a floor no implementation beats
            for T in [opt.prompt_len] + [1] * (opt.new_tokens - 1):
                x = torch.randn(opt.gen_batch, T, args.dim, device=dev)
                for layer in ours.layers:
                    a, f = layer.attention, layer.feed_forward
                    a.wq(x), a.wk(x), a.wv(x), a.wo(x)
                    f.w2(F.silu(f.w1(x)) * f.w3(x))
                F.linear(x[:, -1:], ours.tok_embeddings.weight)

        t = interleaved({"llm360": run_ours, "transformers": run_hf, "linears": run_linears},
                        max(2, opt.rounds // 2), 1, dev)
        results["generate"] = {"unit": "sequences/s", "llm360": opt.gen_batch / t["llm360"],
                               "transformers": opt.gen_batch / t["transformers"],
                               "linears_only": opt.gen_batch / t["linears"],
                               "same_tokens": out["llm360"] == out["transformers"]}

    if "score" not in skip:
        g = torch.Generator().manual_seed(1)
        pairs = []
        for _ in range(opt.score_requests):
            n_ctx = int(torch.randint(16, min(120, args.max_seq_len - 24), (1,), generator=g))
            n_cont = int(torch.randint(1, 20, (1,), generator=g))
            pairs.append((torch.randint(0, args.vocab_size, (n_ctx,), generator=g).tolist(),
                          torch.randint(0, args.vocab_size, (n_cont,), generator=g).tolist()))
        out = {}

        def run_ours():
            out["llm360"] = score_tokens(ours, pairs, batch_size=opt.score_batch)

        @torch.inference_mode()
        def run_hf():
            # what a plain loop does (and lm-eval's HF model): longest first, right padding,
            # log_softmax over the batch's logits, pick the continuation's positions
            order = sorted(range(len(pairs)), key=lambda i: -len(pairs[i][0]) - len(pairs[i][1]))
            res = [None] * len(pairs)
            for b in range(0, len(order), opt.score_batch):
                idx = order[b:b + opt.score_batch]
                seqs = [(pairs[i][0] + pairs[i][1])[:-1] for i in idx]
                T = max(map(len, seqs))
                batch = torch.tensor([s + [0] * (T - len(s)) for s in seqs], device=dev)
                logprobs = F.log_softmax(hf(input_ids=batch).logits, dim=-1)
                for r, i in enumerate(idx):
                    n, cont = len(seqs[r]), torch.tensor(pairs[i][1], device=dev)
                    lp = logprobs[r, n - len(cont):n]
                    res[i] = (lp.gather(-1, cont[:, None]).sum().item(), bool((lp.argmax(-1) == cont).all()))
            out["transformers"] = res

        t = interleaved({"llm360": run_ours, "transformers": run_hf}, max(2, opt.rounds // 2), 1, dev)
        diff = max(abs(a[0] - b[0]) for a, b in zip(out["llm360"], out["transformers"]))
        results["score"] = {"unit": "requests/s", "llm360": len(pairs) / t["llm360"],
                            "transformers": len(pairs) / t["transformers"], "max_logprob_diff": diff}

    print(f"\n{'task':<10} {'unit':<12} {'llm360':>12} {'transformers':>13} {'ratio':>7}")
    for name, r in results.items():
        r["ratio"] = r["llm360"] / r["transformers"]
        print(f"{name:<10} {r['unit']:<12} {r['llm360']:>12.1f} {r['transformers']:>13.1f} {r['ratio']:>6.2f}x")
    if "generate" in results:
        g = results["generate"]
        print(f"greedy tokens identical to transformers: {g['same_tokens']}; the weight matmuls alone "
              f"(no attention, norms, cache, sampling) run at {g['linears_only']:.1f} sequences/s")
    if "score" in results:
        print(f"largest log-likelihood difference: {results['score']['max_logprob_diff']:.2e}")
    if opt.json:
        meta = {"device": dev, "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
                "torch": torch.__version__, "preset": opt.preset, "args": vars(opt), "params": num_params(args)}
        with open(opt.json, "w") as f:
            json.dump({"meta": meta, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
