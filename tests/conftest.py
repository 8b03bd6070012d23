"""Shared fixtures: a small synthetic corpus and a tiny prepared run, built once per session."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest
import torch
import yaml

# Tiny models gain nothing from threads, and on a shared 2-core machine threads fighting for the
# cores slow them down several times; one thread also keeps every in-process run comparable.
torch.set_num_threads(1)

SHARED = Path(__file__).resolve().parents[2] / "shared"

WORDS = ("the model data token train chunk step loss check point open release verify replay "
         "memory order batch stage source python code text weight layer head norm value key "
         "query attention rotary embed learn rate warm decay cosine spike skip roll back").split()


def write_corpus(root: Path, n_docs: int = 60, seed: int = 0) -> Path:
    """Small English-like documents, one per file, deterministic."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n_docs):
        sentences = []
        for _ in range(rng.randint(4, 12)):
            words = [rng.choice(WORDS) for _ in range(rng.randint(5, 14))]
            sentences.append(" ".join(words).capitalize() + ".")
        (root / f"doc_{i:03d}.txt").write_text(" ".join(sentences) + "\n", encoding="utf-8")
    return root


def tiny_config(tmp_path: Path, **sections) -> Path:
    """A config for the `tiny` model preset: 2 stages, 3 chunks of 3 steps of 4 rows x 32 tokens."""
    corpus = write_corpus(tmp_path / "corpus")
    tree = {
        "name": "tiny",
        "seed": 7,
        "data": {
            "seq_len": 32,
            "workers": 1,
            "heldout_rows": 2,
            "tokenizer": {"vocab_size": 320, "sample_chars": 200_000},
            "sources": [{"name": "prose", "kind": "text", "paths": [str(corpus / "*.txt")], "license": "CC0"}],
            "filters": {"min_chars": 10},
            "stages": [{"name": "one", "chunks": 2, "mix": {"prose": 1.0}},
                       {"name": "two", "chunks": 1, "mix": {"prose": 1.0}, "rewarm_steps": 1}],
        },
        "model": {"preset": "tiny"},
        "train": {"global_batch_rows": 4, "micro_batch_rows": 2, "steps_per_chunk": 3, "lr": 3e-3,
                  "min_lr": 3e-4, "warmup_steps": 2, "deterministic": True},
        "eval": {"every_checkpoint": False, "tasks": []},
        "analysis": {"memorization": {"samples_per_chunk": 4}},
    }
    for section, values in sections.items():
        if isinstance(values, dict) and isinstance(tree.get(section), dict):
            tree[section] = {**tree[section], **values}
        else:
            tree[section] = values
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def prepared_template(tmp_path_factory) -> Path:
    """A prepared tiny run (data only), made once; tests get their own copy."""
    from llm360.cli import main

    root = tmp_path_factory.mktemp("template")
    config = tiny_config(root)
    run = root / "run"
    assert main(["prepare", str(config), "--out", str(run)]) == 0
    return run


@pytest.fixture
def tiny_run(prepared_template, tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(prepared_template, run)
    return run
