"""Multiple-choice evaluation speed: llm360's scorer against lm-evaluation-harness's `hf` backend,
on the same checkpoint folder and the same questions, in one process, with identical accuracies.

Two measurements per task, each a median over interleaved rounds after a warmup:

  task    evaluating a task file end to end, model already loaded: llm360 (read the file, score,
          acc / acc_norm) against lm_eval.simple_evaluate(model=<HFLM>, tasks=[local task]) on
          the task YAML llm360 writes for it (llm360.eval.harness)
  score   the scorer alone on the same (context, continuation) requests: llm360's
          score_questions against HFLM.loglikelihood

questions/s = questions / seconds. Per question, llm360's and lm-eval's choices (acc and
acc_norm) must be the same and the log-likelihoods within 1e-4 (1e-6 relative on long rows);
the script stops otherwise.

    python benchmarks/eval_throughput.py                               # demo-sized model, CPU
    python benchmarks/eval_throughput.py --checkpoint runs/demo/checkpoints/ckpt_003 --questions 200
    python benchmarks/eval_throughput.py --threads 1 --json benchmarks/out/eval_throughput.json

On a shared CPU, --threads 1 gives steadier figures: two torch threads spin against the other
processes and single rounds then vary several-fold (for both harnesses alike).

Without --checkpoint it makes one: a byte-level BPE of 4096 tokens trained on WikiText-2 (the
shared corpus) as prepare trains them, and the `demo` model preset with seeded weights.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def make_checkpoint(folder: Path, vocab: int, max_seq_len: int) -> Path:
    from llm360.data.tokenizer import EOS_TOKEN, train_bpe, write_tokenizer_dir
    from llm360.model.hf import save_hf
    from llm360.model.llama import Llama, model_args

    text = (SHARED / "corpora" / "wikitext-2" / "valid.txt").read_text(encoding="utf-8")
    articles = [a for a in text.split("\n = ") if a.strip()]
    tok = train_bpe(articles, vocab)
    tok.save(str(folder / "tokenizer.json"))
    write_tokenizer_dir(folder / "tokenizer.json", folder / "tokenizer", EOS_TOKEN, max_seq_len)
    args = model_args("demo", vocab_size=tok.get_vocab_size(), max_seq_len=max_seq_len)
    torch.manual_seed(0)
    model = Llama(args)
    model.init_weights(0)
    eos = tok.token_to_id(EOS_TOKEN)
    save_hf(model, args, folder / "ckpt", tokenizer_dir=folder / "tokenizer", eos_id=eos)
    return folder / "ckpt"


def interleaved(fns: dict, rounds: int, warmup: int) -> dict[str, list[float]]:
    times = {name: [] for name in fns}
    names = list(fns)
    for r in range(warmup + rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            t = time.perf_counter()
            fns[name]()
            if r >= warmup:
                times[name].append(time.perf_counter() - t)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="checkpoint folder (default: make a demo-sized one)")
    p.add_argument("--tasks", default="arc_easy,hellaswag", help="task names (shared benchmarks) or JSONL paths")
    p.add_argument("--questions", type=int, default=100, help="questions per task (seeded sample)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--vocab", type=int, default=4096, help="tokenizer size of the made checkpoint")
    p.add_argument("--max-seq-len", type=int, default=1024, help="context of the made checkpoint")
    p.add_argument("--json", help="also write the results here")
    a = p.parse_args()

    os.environ["HF_DATASETS_OFFLINE"] = "1"
    if a.threads:
        torch.set_num_threads(a.threads)
    from lm_eval import simple_evaluate
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from llm360.eval import scoring
    from llm360.eval.harness import write_local_task
    from llm360.eval.tasks import LmEvalTask, load_questions, load_spec
    from llm360.model.generate import load_tokenizer
    from llm360.model.hf import load_hf

    tmp = tempfile.TemporaryDirectory(prefix="llm360-eval-bench-")
    root = Path(tmp.name)
    if a.checkpoint:
        folder = Path(a.checkpoint)
    else:
        t = time.perf_counter()
        folder = make_checkpoint(root, a.vocab, a.max_seq_len)
        print(f"made a demo-sized checkpoint in {time.perf_counter() - t:.1f} s: {folder}", file=sys.stderr)

    t = time.perf_counter()
    model, margs = load_hf(folder)
    tokenizer = load_tokenizer(folder)
    load_llm360 = time.perf_counter() - t
    t = time.perf_counter()
    lm = HFLM(pretrained=str(folder), device="cpu", dtype="float32", batch_size=a.batch_size)
    load_lm_eval = time.perf_counter() - t
    tasks_dir = root / "tasks"
    tasks_dir.mkdir()

    results = {
        "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.processor() or platform.platform()}",
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "checkpoint": str(folder),
        "model": {"dim": margs.dim, "n_layers": margs.n_layers, "vocab_size": margs.vocab_size,
                  "max_seq_len": margs.max_seq_len},
        "batch_size": a.batch_size, "rounds": a.rounds, "load_s": {"llm360": load_llm360, "lm-eval": load_lm_eval},
        "tasks": {},
    }
    for name in a.tasks.split(","):
        spec = load_spec(name)
        lm_task = write_local_task(LmEvalTask(spec.name, spec=spec), tasks_dir, a.questions)
        manager = TaskManager(include_path=str(tasks_dir), include_defaults=False)
        questions = load_questions(spec, a.questions)
        n = len(questions)
        requests = [r for q in questions for r in q.requests]
        tokens = [scoring.encode_requests(tokenizer, [r])[0] for r in requests]
        out: dict = {}

        def ours_task(spec=spec, out=out):
            qs = load_questions(spec, a.questions)
            out["ours"] = scoring.score_questions(model, tokenizer, qs, a.batch_size)
            out["ours_metrics"] = scoring.mc_metrics(out["ours"])

        def theirs_task(lm_task=lm_task, manager=manager, out=out):
            out["theirs"] = simple_evaluate(model=lm, tasks=[lm_task], task_manager=manager, log_samples=True,
                                            bootstrap_iters=0, verbosity="ERROR")

        def ours_score(questions=questions):
            scoring.score_questions(model, tokenizer, questions, a.batch_size)

        def theirs_score(requests=requests):
            lm.loglikelihood([Instance("loglikelihood", {}, r, i) for i, r in enumerate(requests)],
                             disable_tqdm=True)

        task_times = interleaved({"llm360": ours_task, "lm-eval": theirs_task}, a.rounds, a.warmup)
        score_times = interleaved({"llm360": ours_score, "lm-eval": theirs_score}, a.rounds, a.warmup)

        # the same answers, question by question
        samples = sorted(out["theirs"]["samples"][lm_task], key=lambda s: s["doc_id"])
        worst = 0.0
        for q, mine, s in zip(questions, out["ours"], samples, strict=True):
            lls = np.array([float(r[0]) for r in s["filtered_resps"]])
            diff = np.abs(np.array(mine["lls"]) - lls)
            # fp32 sums over ~1000-token rows: 1e-4 absolute, or 1e-6 of the value for long ones
            assert (diff <= 1e-4 + 1e-6 * np.abs(lls)).all(), f"{name} {q.id}: log-likelihoods differ by {diff.max()}"
            assert (mine["acc"], mine["acc_norm"]) == (s["acc"], s["acc_norm"]), f"{name} {q.id}: answers differ"
            worst = max(worst, float(diff.max()))
        theirs_metrics = out["theirs"]["results"][lm_task]
        accs = {}
        for metric in ("acc", "acc_norm"):
            mine, theirs = out["ours_metrics"][metric]["value"], theirs_metrics[f"{metric},none"]
            assert abs(mine - theirs) < 1e-12, f"{name} {metric}: llm360 {mine} != lm-eval {theirs}"
            accs[metric] = mine

        ctx_tokens = [len(c) + len(x) for c, x in tokens]
        row = {"questions": n, "requests": len(requests), "mean_tokens_per_request": statistics.mean(ctx_tokens),
               "acc": accs["acc"], "acc_norm": accs["acc_norm"], "max_abs_ll_diff": worst}
        for kind, times in (("task", task_times), ("score", score_times)):
            med = {k: statistics.median(v) for k, v in times.items()}
            row[kind] = {"seconds": med, "questions_per_s": {k: n / s for k, s in med.items()},
                         "speedup": med["lm-eval"] / med["llm360"], "rounds_s": times}
        results["tasks"][name] = row
        print(f"{name}: {n} questions, {len(requests)} requests, ~{row['mean_tokens_per_request']:.0f} tokens each; "
              f"acc {accs['acc']:.4f} acc_norm {accs['acc_norm']:.4f} (identical in both, max |dll| {worst:.1e})")
        for kind in ("task", "score"):
            q = row[kind]["questions_per_s"]
            print(f"  {kind:5s}  llm360 {q['llm360']:8.2f} q/s   lm-eval {q['lm-eval']:8.2f} q/s   "
                  f"speedup {row[kind]['speedup']:.2f}x")
    print(f"load: llm360 {load_llm360:.2f} s, lm-eval HFLM {load_lm_eval:.2f} s; torch threads {torch.get_num_threads()}")
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(results, indent=2) + "\n")
    tmp.cleanup()


if __name__ == "__main__":
    main()
