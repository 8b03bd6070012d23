"""How fast is `llm360 prepare` next to the tokenizer alone, and does its memory stay flat?

    python benchmarks/prepare_throughput.py [--workers 2] [--repeat 2] [--out benchmarks/out]

On the same text — Python's own docs and code (the demo's built-in sources) plus
../shared/corpora/wikitext-2 when present — it measures, in one run:

- raw: HF `tokenizers` encode_batch (and encode_batch_fast) over the cleaned documents, already
  in memory, split over the same number of processes, with the same tokenizer;
- prepare, end to end (reading, cleaning, dedup, training the tokenizer, tokenizing, rows,
  stages, chunks, hashes), on the built-in sources as the demo reads them (ast-parsing the
  standard library for docstrings) and on the same documents as a JSONL corpus;
- peak RSS (ru_maxrss) of prepare's main process and of its largest worker, on the JSONL corpus
  and on the corpus doubled (every document twice, the copy marked so dedup keeps it).

Each timing is the best of --repeat runs (the machine may be shared). CPU seconds (user + sys of
the whole process tree) are reported too: they are steadier than wall time on a busy machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CORPORA = ROOT.parent / "shared" / "corpora"


def sources(with_wiki: bool) -> list[dict]:
    out = [
        {"name": "python-docs", "kind": "python-docs"},
        {"name": "python-code", "kind": "python-code"},
    ]
    if with_wiki:
        out.append({"name": "wikitext", "kind": "text", "paths": [str(p) for p in sorted((CORPORA / "wikitext-2").glob("*.txt"))]})
    return out


def tree(srcs: list[dict], workers: int, tokenizer_path: str | None = None) -> dict:
    return {
        "name": "bench",
        "seed": 1234,
        "data": {
            "seq_len": 128, "workers": workers, "heldout_rows": 16,
            "tokenizer": {"vocab_size": 4096, "sample_chars": 4_000_000, "path": tokenizer_path},
            "sources": srcs,
            "filters": {"min_chars": 64, "max_chars": 2_000_000, "dedup": True},
            "stages": [{"name": "all", "chunks": 8, "mix": {s["name"]: 1.0 for s in srcs}}],
        },
        "train": {"global_batch_rows": 16, "micro_batch_rows": 16, "steps_per_chunk": 16},
    }


CHILD = r"""
import json, resource, sys, time
from llm360.config import load_config
from llm360.data.prepare import prepare
cfg = load_config(sys.argv[1])
t = time.perf_counter()
prepare(cfg, sys.argv[2], progress=False, summary=False)
wall = time.perf_counter() - t
me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"wall": wall, "cpu": me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime,
                  "rss_main_mb": me.ru_maxrss / 1024, "rss_worker_mb": kids.ru_maxrss / 1024}))
"""


def run_prepare(config: Path, out: Path) -> dict:
    """prepare in a fresh process (so ru_maxrss is this run's alone)."""
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    res = subprocess.run([sys.executable, "-c", CHILD, str(config), str(out)], capture_output=True, text=True, cwd=ROOT)
    if res.returncode:
        raise SystemExit(f"prepare failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


RAW = r"""
import json, os, resource, sys, time
os.environ["TOKENIZERS_PARALLELISM"] = "false"
import multiprocessing as mp
from tokenizers import Tokenizer
texts = [json.loads(l)["text"] for l in open(sys.argv[1], encoding="utf-8")]
tok_path, workers, method = sys.argv[2], int(sys.argv[3]), sys.argv[4]
BATCH = 1 << 20

def work(k):
    tok = Tokenizer.from_file(tok_path)
    encode = getattr(tok, method)
    n, batch, chars = 0, [], 0
    for t in texts[k::workers]:
        batch.append(t); chars += len(t)
        if chars >= BATCH:
            n += sum(len(e.ids) for e in encode(batch, add_special_tokens=False)); batch, chars = [], 0
    if batch:
        n += sum(len(e.ids) for e in encode(batch, add_special_tokens=False))
    return n

t = time.perf_counter()
with mp.get_context("fork").Pool(workers) as pool:
    tokens = sum(pool.map(work, range(workers)))
wall = time.perf_counter() - t
me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"wall": wall, "tokens": tokens, "cpu": kids.ru_utime + kids.ru_stime}))
"""


def run_raw(texts_file: Path, tokenizer: Path, workers: int, method: str) -> dict:
    res = subprocess.run([sys.executable, "-c", RAW, str(texts_file), str(tokenizer), str(workers), method],
                         capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"raw tokenizer run failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def cleaned_documents(config: Path) -> list[tuple[str, str]]:
    """(source, cleaned text) of every document prepare tokenizes (passes the filters)."""
    from llm360.config import load_config
    from llm360.data.sources import plan_sources, read_unit

    cfg = load_config(config)
    plan = plan_sources(cfg.data, cfg.base_dir)
    f = cfg.data.filters
    return [(plan.sources[u.source].name, r.text) for u in plan.units
            for r in read_unit(u, f.min_chars, f.max_chars) if r.text is not None]


def best(results: list[dict]) -> dict:
    return min(results, key=lambda r: r["wall"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "out"))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with_wiki = (CORPORA / "wikitext-2").exists()
    w = args.workers
    with tempfile.TemporaryDirectory(prefix="llm360-bench-") as tmp:
        tmp = Path(tmp)
        cfg_builtin = tmp / "builtin.yaml"
        cfg_builtin.write_text(yaml.safe_dump(tree(sources(with_wiki), w)))

        print("reading the documents once for the raw baseline ...", flush=True)
        docs = cleaned_documents(cfg_builtin)
        text_mb = sum(len(t.encode("utf-8")) for _, t in docs) / 1e6
        corpus1, corpus2, texts = tmp / "corpus1.jsonl", tmp / "corpus2.jsonl", tmp / "texts.jsonl"
        with open(corpus1, "w", encoding="utf-8") as f1, open(corpus2, "w", encoding="utf-8") as f2, \
                open(texts, "w", encoding="utf-8") as ft:
            for _, t in docs:
                line = json.dumps({"text": t}, ensure_ascii=False) + "\n"
                f1.write(line)
                f2.write(line)
                ft.write(line)
            for _, t in docs:
                f2.write(json.dumps({"text": "[copy 2] " + t}, ensure_ascii=False) + "\n")
        jsonl = lambda p: [{"name": "corpus", "kind": "jsonl", "paths": [str(p)]}]
        cfg1, cfg2 = tmp / "jsonl1.yaml", tmp / "jsonl2.yaml"
        cfg1.write_text(yaml.safe_dump(tree(jsonl(corpus1), w)))
        cfg2.write_text(yaml.safe_dump(tree(jsonl(corpus2), w)))

        results: dict = {}
        print(f"prepare, built-in sources ({text_mb:.1f} MB of documents, {w} workers) ...", flush=True)
        results["prepare_builtin"] = best([run_prepare(cfg_builtin, tmp / "run_builtin") for _ in range(args.repeat)])
        tok = tmp / "run_builtin" / "data" / "tokenizer" / "tokenizer.json"
        manifest = json.loads((tmp / "run_builtin" / "data" / "manifest.json").read_text())

        print("raw tokenizers on the same documents ...", flush=True)
        results["raw_encode_batch"] = best([run_raw(texts, tok, w, "encode_batch") for _ in range(args.repeat)])
        results["raw_encode_batch_fast"] = best([run_raw(texts, tok, w, "encode_batch_fast") for _ in range(args.repeat)])

        print("prepare, the same documents as JSONL (x1, x1 with the tokenizer given, x2) ...", flush=True)
        results["prepare_jsonl"] = best([run_prepare(cfg1, tmp / "run_j1") for _ in range(args.repeat)])
        cfg_given = tmp / "jsonl1_given.yaml"
        cfg_given.write_text(yaml.safe_dump(tree(jsonl(corpus1), w, tokenizer_path=str(tok))))
        results["prepare_jsonl_tokenizer_given"] = best([run_prepare(cfg_given, tmp / "run_jg") for _ in range(args.repeat)])
        results["prepare_jsonl_x2"] = best([run_prepare(cfg2, tmp / "run_j2") for _ in range(args.repeat)])

    tokens = results["raw_encode_batch"]["tokens"]
    raw = results["raw_encode_batch"]
    rows = []
    for name in ("raw_encode_batch", "raw_encode_batch_fast", "prepare_builtin", "prepare_jsonl",
                 "prepare_jsonl_tokenizer_given", "prepare_jsonl_x2"):
        r = results[name]
        mb = text_mb * (2 if name.endswith("x2") else 1)
        r["mb_per_s"] = mb / r["wall"]
        r["tokens_per_s"] = tokens * (2 if name.endswith("x2") else 1) / r["wall"]
        r["vs_raw_wall"] = raw["wall"] * (2 if name.endswith("x2") else 1) / r["wall"]
        r["vs_raw_cpu"] = raw["cpu"] * (2 if name.endswith("x2") else 1) / r["cpu"]
        rows.append((name, r))
    report = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, python {platform.python_version()}",
        "load_average_at_end": os.getloadavg(),
        "workers": w, "documents": len(docs), "text_mb": round(text_mb, 2), "tokens": tokens,
        "demo_like_tokens_in_manifest": sum(s["tokens"] for s in manifest["sources"]),
        "results": results,
    }
    (out / "prepare_throughput.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n{len(docs)} documents, {text_mb:.1f} MB, {tokens:,} tokens; {w} processes; {report['machine']}; "
          f"load average {report['load_average_at_end'][0]:.1f}")
    print(f"{'':32} {'wall s':>8} {'cpu s':>8} {'MB/s':>7} {'tokens/s':>10} {'vs raw (wall)':>14} {'vs raw (cpu)':>13} {'peak RSS main/worker MB':>24}")
    for name, r in rows:
        rss = f"{r['rss_main_mb']:.0f} / {r['rss_worker_mb']:.0f}" if "rss_main_mb" in r else ""
        print(f"{name:32} {r['wall']:8.2f} {r['cpu']:8.2f} {r['mb_per_s']:7.2f} {r['tokens_per_s']:10,.0f} "
              f"{r['vs_raw_wall']:13.0%} {r['vs_raw_cpu']:13.0%} {rss:>24}")
    print(f"\nwritten to {out / 'prepare_throughput.json'}")


if __name__ == "__main__":
    main()
