"""Speed of Analysis360 in llm360: memorization throughput and data search.

    python benchmarks/analysis_speed.py                     # both parts, 100M-token index
    python benchmarks/analysis_speed.py --part search --tokens 20e6
    python benchmarks/analysis_speed.py --part memorization --samples 256
    python benchmarks/analysis_speed.py --part contamination --tokens 100e6 --items 1000 --shards 8

memorization: sequences scored per second by llm360 (batched greedy decoding with the KV cache)
against transformers' `generate(do_sample=False)` on the same checkpoint and the same rows of a
small run made here (the `demo` model preset), and whether both give the same scores.

search: an index over at least --tokens tokens of real text (Python's own library source and
wikitext-2 when ../shared has it, tokenized with a BPE trained here, rows of 2049 tokens,
repeated with the rows shuffled until big enough), built with each installed backend in a
child process (time and peak memory of the process tree, per 100M tokens), then the median
latency of counting 1- to 10-token queries drawn from the data.

contamination: the same kind of token rows (each repeat of the text with its token ids permuted,
so a passage occurs about once), written as chunk files and indexed directly (no run: one index
over every chunk, and N shards of contiguous chunk ranges, each built in its own process, time
and peak RSS by getrusage); items of 40 tokens, half windows of the data and half random; the
13-gram scan of llm360 (longest matches over every shard, earliest occurrence) against a numpy
set of 64-bit hashes of every 13-gram of every row, answers asserted equal; count latency over
one index and over N shards.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ROW = 2049


# --------------------------------------------------------------------------------------------
# search


def corpus_texts() -> list[str]:
    import sysconfig

    texts = []
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(stdlib.rglob("*.py")):
        if "site-packages" in path.parts or "test" in path.parts or "tests" in path.parts:
            continue
        try:
            texts.append(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, OSError):
            pass
    wiki = ROOT.parent / "shared" / "corpora" / "wikitext-2"
    for name in ("valid.txt", "test.txt", "train.txt"):
        if (wiki / name).is_file():
            texts.extend(p for p in (wiki / name).read_text(encoding="utf-8").split("\n \n") if p.strip())
    return texts


def make_token_rows(n_tokens: int, work: Path, vocab: int = 8192, distinct: bool = False,
                    rows_per_chunk: int = 4096) -> tuple[list[Path], dict]:
    """Chunk files of rows [n, 2049] (uint16) holding at least n_tokens tokens. Each repeat of
    the text is shuffled by rows; with `distinct` its token ids are also permuted (a repeat is
    then new text with the same statistics, as when a corpus is that big)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    t0 = time.perf_counter()
    texts = corpus_texts()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<|endoftext|>"],
                                                       show_progress=False))
    eos = tok.token_to_id("<|endoftext|>")
    ids = [np.array(e.ids + [eos], dtype=np.uint16) for e in tok.encode_batch(texts)]
    stream = np.concatenate(ids)
    rows = stream[: len(stream) // ROW * ROW].reshape(-1, ROW)
    base = rows.size
    rng = np.random.default_rng(0)
    files, total = [], 0
    block = []
    while total < n_tokens:
        copy = rows[rng.permutation(len(rows))]
        if distinct and block:
            copy = rng.permutation(vocab).astype(np.uint16)[copy]
        block.append(copy)
        total += rows.size
    allrows = np.concatenate(block)
    for c, start in enumerate(range(0, len(allrows), rows_per_chunk)):
        path = work / f"chunk_{c:03d}.npy"
        np.save(path, allrows[start:start + rows_per_chunk])
        files.append(path)
    return files, {"unique_tokens": int(base), "tokens": int(allrows.size), "texts": len(texts),
                   "vocab": vocab, "prepare_s": round(time.perf_counter() - t0, 1)}


def _build_child(files: list[str], out: str, backend: str) -> None:
    from llm360.analysis.search import build_token_index

    blocks = ((({"kind": "chunk", "chunk": c}), np.load(f, mmap_mode="r")) for c, f in enumerate(files))
    info = build_token_index(out, blocks, 8192, backend=backend)
    print(json.dumps({"build_seconds": info["build_seconds"], "tokens": info["tokens"]}))


def peak_rss_of_tree(proc: subprocess.Popen, every: float = 0.05) -> tuple[list[int], threading.Thread]:
    """Sample the summed RSS of a process and its children until it ends; peak in box[0]."""
    import psutil

    box = [0]

    def watch():
        try:
            root = psutil.Process(proc.pid)
        except psutil.NoSuchProcess:
            return
        while proc.poll() is None:
            total = 0
            try:
                for p in [root, *root.children(recursive=True)]:
                    try:
                        total += p.memory_info().rss
                    except psutil.NoSuchProcess:
                        pass
            except psutil.NoSuchProcess:
                break
            box[0] = max(box[0], total)
            time.sleep(every)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return box, thread


def bench_search(n_tokens: int, backends: list[str] | None, queries: int, distinct: bool = False) -> dict:
    from llm360.analysis.search import TokenIndex, available_backends

    backends = backends or available_backends()
    result: dict = {"backends": {}}
    with tempfile.TemporaryDirectory(prefix="llm360-bench-") as tmp:
        work = Path(tmp)
        files, info = make_token_rows(n_tokens, work, distinct=distinct)
        info["repeats"] = "token ids permuted per repeat" if distinct else "rows shuffled per repeat"
        result["corpus"] = info
        print(f"corpus: {info['tokens']:,} tokens ({info['unique_tokens']:,} tokens of text, {info['repeats']}, "
              f"{info['texts']} texts, prepared in {info['prepare_s']} s)", flush=True)
        for backend in backends:
            out = work / f"index-{backend}"
            cmd = [sys.executable, __file__, "--build-child", backend, str(out), *map(str, files)]
            env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
            t0 = time.perf_counter()
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
            box, thread = peak_rss_of_tree(proc)
            stdout, stderr = proc.communicate()
            thread.join()
            wall = time.perf_counter() - t0
            if proc.returncode:
                print(f"{backend}: build failed: {stderr[-1000:]}")
                result["backends"][backend] = {"error": stderr[-1000:]}
                continue
            built = json.loads(stdout.strip().splitlines()[-1])
            size = sum(f.stat().st_size for f in out.iterdir())
            per = 1e8 / built["tokens"]
            entry = {"build_s": built["build_seconds"], "process_s": round(wall, 1), "peak_rss_mb": round(box[0] / 2**20),
                     "index_mb": round(size / 2**20), "build_s_per_100M": round(built["build_seconds"] * per, 1),
                     "peak_rss_mb_per_100M": round(box[0] / 2**20 * per)}
            print(f"{backend}: built in {entry['build_s']} s, peak RSS {entry['peak_rss_mb']} MiB, "
                  f"index {entry['index_mb']} MiB", flush=True)
            with TokenIndex(out) as index:
                rng = np.random.default_rng(1)
                data = np.load(files[0], mmap_mode="r")
                lat = {}
                for length in range(1, 11):
                    times, counts = [], []
                    for _ in range(queries):
                        r, o = rng.integers(len(data)), rng.integers(ROW - length)
                        q = data[r, o:o + length].tolist()
                        t = time.perf_counter()
                        counts.append(index.count(q))
                        times.append(time.perf_counter() - t)
                    lat[length] = {"median_ms": round(statistics.median(times) * 1e3, 4),
                                   "p99_ms": round(float(np.percentile(times, 99)) * 1e3, 4),
                                   "median_count": int(statistics.median(counts))}
                t = time.perf_counter()
                for _ in range(200):
                    index.positions(data[rng.integers(len(data)), 100:108].tolist())
                entry["positions_8_tokens_ms"] = round((time.perf_counter() - t) / 200 * 1e3, 3)
            entry["count_latency"] = lat
            print("  count latency (median ms by query length): "
                  + ", ".join(f"{k}: {v['median_ms']:.3f}" for k, v in lat.items()), flush=True)
            result["backends"][backend] = entry
            for f in out.iterdir():
                f.unlink()
    return result


# --------------------------------------------------------------------------------------------
# contamination and the sharded index


def _build_shard_child(files: list[str], out: str, first_chunk: int) -> None:
    """Build one index of `files` in this process and print its time and this process's peak
    RSS: VmHWM of /proc/self/status (the suffix sort runs in this process, with no children;
    getrusage's maxrss would also count the parent's memory at the fork)."""
    from llm360.analysis.search import build_token_index

    blocks = (({"kind": "chunk", "chunk": first_chunk + c}, np.load(f, mmap_mode="r")) for c, f in enumerate(files))
    info = build_token_index(out, blocks, 8192, backend="pydivsufsort")
    with open("/proc/self/status") as f:
        peak = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    print(json.dumps({"build_seconds": info["build_seconds"], "tokens": info["tokens"], "peak_rss": peak}))


def build_in_child(files: list[Path], out: Path, first_chunk: int) -> dict:
    cmd = [sys.executable, __file__, "--shard-child", str(out), str(first_chunk), *map(str, files)]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode:
        raise RuntimeError(f"index build failed: {done.stderr[-2000:]}")
    built = json.loads(done.stdout.strip().splitlines()[-1])
    built["index_bytes"] = sum(f.stat().st_size for f in out.iterdir())
    return built


def brute_force_ngrams(files: list[Path], items: list[list[int]], n: int) -> tuple[list[bool], float, float]:
    """The baseline: a numpy set (sorted array) of a 64-bit hash of every n-gram of every row, then
    a lookup of each item's n-grams. Returns (contaminated per item, build s, lookup s)."""
    mult = np.uint64(0x9E3779B97F4A7C15)

    def hashes(rows: np.ndarray) -> np.ndarray:  # rows [R, W] -> hashes of the [R, W - n + 1] windows
        rows = rows.astype(np.uint64)
        h = np.zeros((rows.shape[0], rows.shape[1] - n + 1), np.uint64)
        for k in range(n):
            h = h * mult + rows[:, k:k + h.shape[1]] + np.uint64(1)
        return h.ravel()

    t0 = time.perf_counter()
    with np.errstate(over="ignore"):
        table = np.unique(np.concatenate([hashes(np.load(f)) for f in files]))
        built = time.perf_counter() - t0
        t0 = time.perf_counter()
        found = []
        for item in items:
            q = hashes(np.asarray(item)[None, :]) if len(item) >= n else None
            if q is None:
                found.append(False)
                continue
            at = np.minimum(np.searchsorted(table, q), len(table) - 1)
            found.append(bool((table[at] == q).any()))
    return found, built, time.perf_counter() - t0


def scan_items(shards, items: list[list[int]], n: int) -> tuple[list[bool], list, float]:
    """llm360's scan (the path of `llm360 analyze contamination` without the provenance lookup
    of spans and documents): longest matches over every shard, then the earliest training
    occurrence of a matching n-gram. Returns (contaminated, first (shard, row) per item, s)."""
    t0 = time.perf_counter()
    flags, firsts = [], []
    for item in items:
        longest = np.max([s.longest_matches(item) for s in shards], axis=0)
        starts = [i for i in range(len(item) - n + 1) if longest[i] >= n]
        first = None
        for i in starts:
            for k, s in enumerate(shards):
                hit = s.first_train_row(item[i:i + n])
                if hit is not None:
                    first = min(first or (k, *hit), (k, *hit))
                    break
        flags.append(bool(starts))
        firsts.append(first)
    return flags, firsts, time.perf_counter() - t0


def bench_contamination(n_tokens: int, n_items: int, n_shards: int, queries: int) -> dict:
    """Contamination scan items/s against the brute-force n-gram set, and the sharded build."""
    from llm360.analysis.search import TokenIndex, shard_chunks

    result: dict = {}
    with tempfile.TemporaryDirectory(prefix="llm360-bench-") as tmp:
        work = Path(tmp)
        per_chunk = max(1, n_tokens // ROW // 64)  # 64 chunks, as a run has many
        files, info = make_token_rows(n_tokens, work, distinct=True, rows_per_chunk=per_chunk)
        info["repeats"] = "token ids permuted per repeat"
        result["corpus"] = info
        print(f"corpus: {info['tokens']:,} tokens in {len(files)} chunk files of {per_chunk} rows x {ROW} "
              f"(prepared in {info['prepare_s']} s)", flush=True)
        one = build_in_child(files, work / "one", 0)
        result["one_index"] = {"build_s": one["build_seconds"], "peak_rss_mb": round(one["peak_rss"] / 2**20),
                               "index_mb": round(one["index_bytes"] / 2**20)}
        print(f"one index: {one['build_seconds']} s, peak RSS {result['one_index']['peak_rss_mb']} MiB, "
              f"{result['one_index']['index_mb']} MiB on disk", flush=True)
        per_shard = []
        for i in range(n_shards):
            a, b = shard_chunks(len(files), i, n_shards)
            built = build_in_child(files[a:b], work / f"shard-{i}", a)
            per_shard.append({"chunks": [a, b], "tokens": built["tokens"], "build_s": built["build_seconds"],
                              "peak_rss_mb": round(built["peak_rss"] / 2**20),
                              "index_mb": round(built["index_bytes"] / 2**20)})
            print(f"shard {i}/{n_shards}: chunks {a}-{b - 1}, {built['tokens']:,} tokens, {built['build_seconds']} s, "
                  f"peak RSS {per_shard[-1]['peak_rss_mb']} MiB, {per_shard[-1]['index_mb']} MiB", flush=True)
        result["shards"] = per_shard

        rng = np.random.default_rng(7)
        items = []
        for k in range(n_items):  # half are 40-token windows of the data, half random tokens
            if k % 2 == 0:
                rows = np.load(files[rng.integers(len(files))], mmap_mode="r")
                r, o = rng.integers(len(rows)), rng.integers(ROW - 40)
                items.append(np.asarray(rows[r, o:o + 40]).astype(int).tolist())
            else:
                items.append(rng.integers(0, 8192, 40).tolist())
        n = 13
        truth, set_build_s, set_lookup_s = brute_force_ngrams(files, items, n)
        one_index = [TokenIndex(work / "one")]
        shards = [TokenIndex(work / f"shard-{i}") for i in range(n_shards)]
        flags1, first1, scan1_s = scan_items(one_index, items, n)
        flagsN, firstN, scanN_s = scan_items(shards, items, n)
        assert flags1 == truth == flagsN, "the index and the brute-force n-gram set disagree"
        assert [f is None for f in first1] == [f is None for f in firstN]
        result["scan"] = {"items": n_items, "item_tokens": 40, "ngram": n, "contaminated": sum(truth),
                          "same_answers": True,
                          "llm360_one_index_items_per_s": round(n_items / scan1_s, 1),
                          f"llm360_{n_shards}_shards_items_per_s": round(n_items / scanN_s, 1),
                          "brute_force_set_build_s": round(set_build_s, 2),
                          "brute_force_lookup_items_per_s": round(n_items / set_lookup_s, 1),
                          "brute_force_items_per_s_with_build": round(n_items / (set_build_s + set_lookup_s), 1),
                          "index_vs_brute_force_with_build": round((set_build_s + set_lookup_s) / scan1_s, 2),
                          "index_vs_brute_force_lookup_only": round(set_lookup_s / scan1_s, 3)}
        print(json.dumps(result["scan"]), flush=True)

        lat = {}
        for name, group in (("one", one_index), (f"{n_shards}_shards", shards)):
            times = []
            for _ in range(queries):
                q = items[2 * rng.integers(n_items // 2)][:rng.integers(1, 11)]
                t = time.perf_counter()
                sum(s.count(q) for s in group)
                times.append(time.perf_counter() - t)
            lat[name] = {"median_ms": round(statistics.median(times) * 1e3, 4),
                         "p99_ms": round(float(np.percentile(times, 99)) * 1e3, 4)}
        result["count_latency_1_to_10_tokens"] = lat
        print("count latency: " + json.dumps(lat), flush=True)
        for index in one_index + shards:
            index.close()
    return result


# --------------------------------------------------------------------------------------------
# memorization


def make_run(work: Path) -> Path:
    import yaml

    from llm360.config import load_run_config
    from llm360.cli import main
    from llm360.train.trainer import run_training

    corpus = work / "corpus"
    corpus.mkdir()
    for i, text in enumerate(corpus_texts()[:400]):
        (corpus / f"doc_{i:04d}.txt").write_text(text, encoding="utf-8")
    tree = {
        "name": "bench", "seed": 3,
        "data": {"seq_len": 128, "heldout_rows": 4, "tokenizer": {"vocab_size": 4096, "sample_chars": 2_000_000},
                 "sources": [{"name": "code", "kind": "text", "paths": [str(corpus / "*.txt")]}],
                 "stages": [{"name": "one", "chunks": 2, "mix": {"code": 1.0}}]},
        "model": {"preset": "demo"},
        "train": {"global_batch_rows": 16, "micro_batch_rows": 16, "steps_per_chunk": 16, "warmup_steps": 1},
        "eval": {"every_checkpoint": False},
    }
    config = work / "bench.yaml"
    config.write_text(yaml.safe_dump(tree))
    run = work / "run"
    assert main(["prepare", str(config), "--out", str(run)]) == 0
    run_training(run, load_run_config(run))
    return run


def bench_memorization(samples: int, batch: int) -> dict:
    import torch

    from llm360.analysis.memorization import memorization, read_scores, sample_rows
    from llm360.config import load_run_config
    from llm360.data.store import RunData

    with tempfile.TemporaryDirectory(prefix="llm360-bench-") as tmp:
        run = make_run(Path(tmp))
        data, cfg = RunData(run), load_run_config(run)
        n = min(samples, data.rows_in_chunk(0))
        t0 = time.perf_counter()
        memorization(run, checkpoints="last", chunks="0", samples=n, batch_size=batch, plots=False,
                     train_counts=False, quiet=True)
        ours = time.perf_counter() - t0
        scores = read_scores(run).to_pydict()
        last = scores["checkpoint"][0]
        result = {"checkpoint": last, "sequences": n, "batch_size": batch, "model": "demo preset (fp32)",
                  "threads": torch.get_num_threads(), "llm360_s": round(ours, 2),
                  "llm360_seq_per_s": round(n / ours, 1)}
        try:
            from transformers import AutoModelForCausalLM
        except ImportError:
            result["transformers"] = "not installed"
            return result
        rows = np.stack([data.chunk(0)[r, :64] for r in sample_rows(cfg.seed, 0, data.rows_in_chunk(0), n)]).astype(np.int64)
        from llm360.model.generate import generate
        from llm360.model.hf import load_hf

        ours_model, _ = load_hf(run / "checkpoints" / last)
        t0 = time.perf_counter()
        generate(ours_model, rows[:, :32].tolist(), 32, batch_size=batch)
        result["llm360_generate_only_seq_per_s"] = round(n / (time.perf_counter() - t0), 1)
        model = AutoModelForCausalLM.from_pretrained(run / "checkpoints" / last).eval()
        model.generation_config.eos_token_id = None
        model.generation_config.pad_token_id = 0
        t0 = time.perf_counter()
        matched = []
        with torch.inference_mode():
            for b in range(0, n, batch):
                prompt = torch.from_numpy(rows[b:b + batch, :32])
                out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=32,
                                     do_sample=False)
                matched.extend((out[:, 32:].numpy() == rows[b:b + batch, 32:]).sum(1).tolist())
        hf = time.perf_counter() - t0
        result.update({"transformers_s": round(hf, 2), "transformers_seq_per_s": round(n / hf, 1),
                       "speedup": round(hf / ours, 2),
                       "same_scores": [m / 32 for m in matched] == scores["score"]})
        return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=["all", "search", "memorization", "contamination"], default="all")
    p.add_argument("--items", type=int, default=1000, help="contamination: task items scanned")
    p.add_argument("--shards", type=int, default=8, help="contamination: index shards")
    p.add_argument("--tokens", type=float, default=100e6, help="index at least this many tokens")
    p.add_argument("--backend", action="append", help="index backend(s) (default: every installed one)")
    p.add_argument("--queries", type=int, default=200, help="queries per length")
    p.add_argument("--distinct", action="store_true", help="permute token ids in each repeat of the text")
    p.add_argument("--samples", type=int, default=256, help="rows scored for memorization")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads for memorization (default: torch's; on a shared machine 1 is far faster)")
    p.add_argument("--json", help="also write the results to this file")
    p.add_argument("--build-child", nargs="+", help=argparse.SUPPRESS)
    p.add_argument("--shard-child", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.build_child:
        backend, out, *files = args.build_child
        _build_child(files, out, backend)
        return 0
    if args.shard_child:
        out, first, *files = args.shard_child
        _build_shard_child(files, out, int(first))
        return 0
    results = {"machine": f"{os.cpu_count()} CPU cores", "python": sys.version.split()[0]}
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.part in ("all", "memorization"):
        results["memorization"] = bench_memorization(args.samples, args.batch)
        print(json.dumps(results["memorization"]), flush=True)
    if args.part in ("all", "search"):
        results["search"] = bench_search(int(args.tokens), args.backend, args.queries, args.distinct)
    if args.part in ("all", "contamination"):
        results["contamination"] = bench_contamination(int(args.tokens), args.items, args.shards, args.queries)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
