"""Shared pieces of the evaluation tests: runs with hand-made checkpoints and small task files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from helpers_model import tiny_model, train_tokenizer

from llm360.config import load_config, save_config
from llm360.model.hf import save_hf
from llm360.rundir import write_checksums
from llm360.utils import atomic_write_json

SHARED_BENCHMARKS = Path(__file__).resolve().parents[2] / "shared" / "benchmarks"


def handmade_run(root: Path, names=("init", "ckpt_000"), steps_per_chunk: int = 3, rows: int = 4,
                 seq_len: int = 32) -> Path:
    """A run directory with run.yaml and seeded tiny checkpoints, made without data or trainer:
    `init` and `ckpt_c` hold different seeds, state.json says steps and tokens as the trainer would."""
    run = root / "run"
    tok = train_tokenizer(root / "tokenizer")
    cfg = load_config(None, [f"--train.steps_per_chunk={steps_per_chunk}", f"--train.global_batch_rows={rows}",
                             f"--train.micro_batch_rows={rows}", f"--data.seq_len={seq_len}",
                             "--model.preset=tiny", "--eval.heldout=false", "--eval.tasks=[]"])
    save_config(cfg, run / "run.yaml")
    for seed, name in enumerate(names):
        model, args = tiny_model(seed, "tiny", vocab_size=400)
        folder = run / "checkpoints" / name
        save_hf(model, args, folder, tokenizer_dir=tok, bos_id=0, eos_id=0)
        steps = 0 if name == "init" else (int(name[5:]) + 1) * steps_per_chunk
        atomic_write_json(folder / "trainer_state" / "state.json",
                          {"steps_done": steps, "tokens": steps * rows * seq_len})
        write_checksums(folder)
    return run


def arc_sample(n: int = 20) -> list[dict]:
    """The first n questions of the shared ARC-Easy file (benchmarks format)."""
    lines = (SHARED_BENCHMARKS / "arc_easy.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines[:n]]


def as_question_format(doc: dict) -> dict:
    """A benchmarks-format ARC item as {"question", "choices", "gold"} (same prompt when rendered
    with the default template)."""
    context = doc["requests"][0][0]
    question = context.removeprefix("Question: ").removesuffix("\nAnswer:")
    return {"id": doc["id"], "question": question, "choices": [c[1:] for _, c in doc["requests"]],
            "gold": doc["label"]}


def write_jsonl(path: Path, docs: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    return path


def small_benchmarks(folder: Path, n: int = 12) -> Path:
    """A benchmarks folder (for $LLM360_BENCHMARKS) with small arc_easy and arc_qa tasks."""
    docs = arc_sample(2 * n)
    write_jsonl(folder / "arc_easy.jsonl", docs[:n])
    write_jsonl(folder / "arc_qa.jsonl", [as_question_format(d) for d in docs[:n]])
    write_jsonl(folder / "arc_qa.fewshot.jsonl", [as_question_format(d) for d in docs[n:]])
    return folder


def copy_run(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest)
    return dest
