"""The CrystalCoder family through every stage: prepare with FIM and stages of their own lengths,
train with µP learning rates and linear phases, bitwise resume, two processes (DDP, FSDP2),
replay, evaluation, generation, memorization, release and verify."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny_config
from llm360.cli import main
from llm360.train.parallel import free_port
from llm360.train.trainer import apply_train_overrides, run_training
from llm360.utils import read_jsonl

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
STAGES = [{"name": "one", "chunks": 2, "mix": {"prose": 1.0}},
          {"name": "two", "chunks": 1, "steps_per_chunk": 4, "mix": {"prose": 1.0},
           "fim": {"prose": {"rate": 0.9, "spm_ratio": 0.5}}}]
TRAIN = {"global_batch_rows": 4, "micro_batch_rows": 2, "steps_per_chunk": 3, "lr": 3e-3, "min_lr": 3e-4,
         "warmup_steps": 2, "decay": "linear", "deterministic": True,
         "stage_schedules": {"two": {"lr": 2e-3, "end_lr": 2e-4, "warmup_steps": 1}}}


@pytest.fixture(scope="module")
def crystal_template(tmp_path_factory):
    root = tmp_path_factory.mktemp("crystal")
    config = tiny_config(root, data={"stages": STAGES}, model={"preset": "crystal-tiny"}, train=TRAIN,
                         eval={"every_checkpoint": False, "tasks": []})
    run = root / "run"
    assert main(["prepare", str(config), "--out", str(run)]) == 0
    reference = root / "reference"
    shutil.copytree(run, reference)
    assert run_training(reference, apply_train_overrides(reference, []))["finished"]
    return run, reference


def trainer_process(run: Path, *overrides: str, nproc: int = 1) -> subprocess.CompletedProcess:
    cmd = ([sys.executable, "-m", "llm360.cli", "train"] if nproc == 1 else
           [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-port",
            str(free_port()), "-m", "llm360.cli", "train"])
    return subprocess.run(cmd + [str(run), *overrides], env=ENV, capture_output=True, text=True, timeout=300)


def weights(run: Path, name: str) -> dict:
    return load_file(run / "checkpoints" / name / "model.safetensors")


def test_a_crystal_run_is_a_crystalcoder_checkpoint_with_mup_rates(crystal_template):
    _, reference = crystal_template
    config = json.loads((reference / "checkpoints" / "ckpt_002" / "config.json").read_text())
    assert config["model_type"] == "crystalcoder" and config["mup_width_scale"] == 0.0625
    names = set(weights(reference, "ckpt_002"))
    assert "transformer.h.0.attn.c_attn.weight" in names and "transformer.h.0.ln_1.bias" in names
    records = read_jsonl(reference / "metrics" / "train.jsonl")
    assert [r["chunk"] for r in records] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 2]
    assert records[6]["lr"] == pytest.approx(2e-3)  # stage two's own linear phase from its first step
    from llm360.model.llama import Llama, model_args
    from llm360.config import load_run_config
    from llm360.train.trainer import group_specs

    cfg = load_run_config(reference)
    model = Llama(model_args("crystal-tiny", vocab_size=320))
    scales = {spec.lr_scale for spec, params in group_specs(model, cfg.train, 0.0625) if params}
    assert scales == {1.0, 0.0625}  # hidden matrices at the µP width scale, the rest at the base rate


def test_resume_and_replay_are_bitwise(crystal_template, tmp_path):
    template, reference = crystal_template
    run = tmp_path / "run"
    shutil.copytree(template, run)
    out = trainer_process(run, "--train.fault_injection.exit_after_steps=[3]")
    assert out.returncode == 17, out.stderr[-2000:]
    out = trainer_process(run, "--train.fault_injection.exit_after_steps=[]")
    assert out.returncode == 0, out.stderr[-2000:]
    for name in ("ckpt_000", "ckpt_001", "ckpt_002"):
        ours, theirs = weights(run, name), weights(reference, name)
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs), name
    from llm360.train.replay import replay

    result = replay(run, 2)  # the FIM stage, 4 steps
    assert result["bitwise_equal"] and result["steps"] == [6, 9]


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_match_one(crystal_template, tmp_path, strategy):
    template, reference = crystal_template
    run = tmp_path / "run"
    shutil.copytree(template, run)
    out = trainer_process(run, f"--train.strategy={strategy}", "--train.micro_batch_rows=1", nproc=2)
    assert out.returncode == 0, out.stderr[-3000:]
    ours = [r["loss"] for r in read_jsonl(run / "metrics" / "train.jsonl")]
    ref = [r["loss"] for r in read_jsonl(reference / "metrics" / "train.jsonl")]
    assert ours == pytest.approx(ref, rel=1e-5)
    final, expected = weights(run, "ckpt_002"), weights(reference, "ckpt_002")
    assert all(torch.allclose(final[k], expected[k], atol=1e-4) for k in expected)


def test_eval_generate_memorization_release_verify(crystal_template, tmp_path, capsys):
    _, reference = crystal_template
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    assert main(["eval", str(run), "--tasks", "heldout"]) == 0
    evals = read_jsonl(run / "metrics" / "eval.jsonl")
    assert {r["checkpoint"] for r in evals} >= {"init", "ckpt_000", "ckpt_002"} and all(r["value"] is not None for r in evals)
    assert main(["generate", str(run / "checkpoints" / "ckpt_002"), "--prompt", "The model", "--max-new-tokens", "4",
                 "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out.strip().splitlines()[-1])["tokens"]) <= 4
    assert main(["analyze", "memorization", str(run), "--samples", "2"]) == 0
    assert main(["release", str(run)]) == 0 and main(["verify", str(run)]) == 0
    card = (run / "MODEL_CARD.md").read_text()
    assert "crystal" in card.lower()
