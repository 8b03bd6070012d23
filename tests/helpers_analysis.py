"""Shared pieces of the analysis tests: brute-force search and a tiny run with planted passages.

The planted run has three sources: `a` and `b` are one English sentence each, repeated as 40
documents (dedup off), `random` is 150 documents of random letters. Stage one (chunks 0 and 1)
mixes a and random 3:1, stage two (chunk 2) b and random 3:1. The tiny model trains 20 steps
per chunk at a constant learning rate and is stopped after ckpt_001 (with an extra checkpoint at
step 30): by then it recites `a` (every 64-token window of a's rows is k-extractable), has
never seen `b`, and has not learned the random rows it saw once or twice.
"""

from __future__ import annotations

import contextlib
import random
import shutil
from pathlib import Path

import numpy as np

PLANTED_A = ("Quartz lanterns hum beneath violet harbors while seventeen copper owls recite forgotten "
             "tide tables.")
PLANTED_B = ("Nine velvet glaciers whisper to amber comets as the orchard of brass clocks slowly counts "
             "eleven moons.")
STEPS_PER_CHUNK = 20
SAMPLES = 16
_BUILT: dict[str, Path] = {}


def brute_force(rows: np.ndarray, query) -> list[tuple[int, int]]:
    """(row, offset) of every occurrence of `query` inside the rows of a 2-D array."""
    q = np.asarray(query)
    if q.size > rows.shape[1]:
        return []
    windows = np.lib.stride_tricks.sliding_window_view(np.asarray(rows), q.size, axis=1)
    return [(int(r), int(o)) for r, o in np.argwhere((windows == q).all(-1))]


def random_words(rng: random.Random, n: int) -> str:
    letters = "abcdefghijklmnopqrstuvwxyz"
    return " ".join("".join(rng.choice(letters) for _ in range(rng.randint(3, 8))) for _ in range(n))


def planted_config(root: Path) -> Path:
    from conftest import tiny_config  # tests/ is on sys.path under pytest

    rng = random.Random(0)
    corpora = {"a": [PLANTED_A] * 40, "b": [PLANTED_B] * 40,
               "random": [random_words(rng, 40) + "." for _ in range(150)]}
    for name, texts in corpora.items():
        folder = root / "corpus" / name
        folder.mkdir(parents=True, exist_ok=True)
        for i, text in enumerate(texts):
            (folder / f"doc_{i:04d}.txt").write_text(text + "\n", encoding="utf-8")
    sources = [{"name": n, "kind": "text", "paths": [str(root / "corpus" / n / "*.txt")], "license": "CC0"}
               for n in corpora]
    return tiny_config(
        root,
        data={"seq_len": 64, "workers": 1, "heldout_rows": 2, "tokenizer": {"vocab_size": 320, "sample_chars": 200_000},
              "sources": sources, "filters": {"min_chars": 10, "dedup": False},
              "stages": [{"name": "one", "chunks": 2, "mix": {"a": 3.0, "random": 1.0}},
                         {"name": "two", "chunks": 1, "mix": {"b": 3.0, "random": 1.0}}]},
        train={"global_batch_rows": 8, "micro_batch_rows": 8, "steps_per_chunk": STEPS_PER_CHUNK, "lr": 1e-2,
               "min_lr": 1e-2, "warmup_steps": 2, "deterministic": True, "extra_checkpoint_steps": [30]},
        analysis={"memorization": {"samples_per_chunk": SAMPLES, "batch_size": 64}},
    )


@contextlib.contextmanager
def torch_threads(n: int = 1):
    """Tiny models run fastest on one thread, and much faster when other jobs share the cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def planted_run(tmp_path_factory) -> Path:
    """The planted run, prepared, trained to ckpt_001 and analysed once per test session.
    Tests that change it work on a copy (`copy_run`)."""
    if "run" in _BUILT:
        return _BUILT["run"]
    from llm360.analysis.memorization import memorization
    from llm360.cli import main
    from llm360.config import load_run_config
    from llm360.train.trainer import StopTraining, run_training

    root = tmp_path_factory.mktemp("planted")
    config = planted_config(root)
    run = root / "run"
    assert main(["prepare", str(config), "--out", str(run)]) == 0

    def stop_after_ckpt_001(name: str, steps_done: int) -> None:
        if name == "ckpt_001":
            raise StopTraining("the tests need chunk 2 unseen")

    with torch_threads(1):
        result = run_training(run, load_run_config(run), on_checkpoint=stop_after_ckpt_001)
        assert result["steps"] == 2 * STEPS_PER_CHUNK
        memorization(run, quiet=True)
    _BUILT["run"] = run
    return run


def copy_run(run: Path, dest: Path, analysis: bool = False) -> Path:
    """A copy of the run (with or without its analysis folder)."""
    shutil.copytree(run, dest, ignore=None if analysis else shutil.ignore_patterns("analysis"))
    return dest


def row_sources(run: Path, chunk: int) -> list[str]:
    from llm360.data.store import RunData

    return RunData(run).row_sources(chunk)
