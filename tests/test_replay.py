"""`llm360 replay`: retraining a checkpoint from its predecessor reproduces it bit for bit."""

from __future__ import annotations

import pytest
from safetensors.torch import load_file, save_file

from llm360.cli import main
from llm360.errors import UserError
from llm360.train.replay import replay
from llm360.train.trainer import apply_train_overrides, run_training
from llm360.rundir import write_checksums


def train(run, *overrides):
    return run_training(run, apply_train_overrides(run, list(overrides)))


def test_replay_is_bitwise_equal(tiny_run, capsys):
    train(tiny_run)
    for c in ("0", "ckpt_001", "2"):
        result = replay(tiny_run, c)
        assert result["bitwise_equal"], result["max_abs_diff"]
    assert main(["replay", str(tiny_run), "--checkpoint", "1"]) == 0
    assert "bitwise equal" in capsys.readouterr().out


def test_replay_through_a_rollback(tiny_run):
    train(tiny_run, "--train.fault_injection.nan_at_steps=[4]", "--train.spike.action=rollback",
          "--train.spike.skip_batches=2")
    result = replay(tiny_run, 1)
    assert result["skipped_steps"] == [4, 5]
    assert result["bitwise_equal"]


def test_replay_of_bf16_weights_repeats_the_stochastic_rounding(tiny_run):
    train(tiny_run, "--train.precision=bf16-weights")
    result = replay(tiny_run, 1)
    assert result["bitwise_equal"], result["max_abs_diff"]


def test_replay_finds_a_doctored_checkpoint(tiny_run, capsys):
    train(tiny_run)
    folder = tiny_run / "checkpoints" / "ckpt_001"
    weights = load_file(folder / "model.safetensors")
    name = sorted(weights)[0]
    weights[name] = weights[name].clone()
    weights[name].view(-1)[0] += 0.5
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    # with its checksums fixed up, only retraining can tell
    write_checksums(folder)
    result = replay(tiny_run, 1)
    assert not result["bitwise_equal"]
    assert result["max_abs_diff"] == pytest.approx(0.5, rel=1e-3)
    assert main(["replay", str(tiny_run), "--checkpoint", "1"]) == 1
    assert "not bitwise equal" in capsys.readouterr().out


def test_replay_refuses_damaged_or_missing_checkpoints(tiny_run):
    train(tiny_run)
    with pytest.raises(UserError, match="ckpt_009"):
        replay(tiny_run, "ckpt_009")
    (tiny_run / "checkpoints" / "ckpt_000" / "config.json").write_text("{}")
    with pytest.raises(UserError, match="ckpt_000 fails its checksums"):
        replay(tiny_run, 1)
