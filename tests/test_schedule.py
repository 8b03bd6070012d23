"""Learning-rate schedules and parameter groups: Crystal's linear phases, Amber's first update
at lr 0, re-warms, and µP's learning rates by parameter role."""

from __future__ import annotations

import math

import pytest

from llm360.config import TrainConfig, load_config
from llm360.errors import UserError
from llm360.model.llama import Llama, model_args
from llm360.train.schedule import build_schedule, lr_at
from llm360.model.llama import param_roles
from llm360.train.trainer import apply_train_overrides, group_specs, run_training
from llm360.utils import read_jsonl

# LLM360 Crystal's published phases: (first step, warmup, peak, end, horizon)
CRYSTAL = [(0, 86, 0.012, 1.2408e-4, 294_337), (79_721, 86, 0.0087825, 1.3679e-4, 214_301),
           (79_721 + 214_387, 276, 0.002, 0.0002, 27_452)]


def crystal_by_hand(step: int) -> float:
    first, warm, peak, end, horizon = [p for p in CRYSTAL if p[0] <= step][-1]
    t = step - first
    if t < warm:
        return peak * (t + 1) / warm
    return peak + (end - peak) * min((t - warm) / horizon, 1.0)


def test_crystal_phases_are_linear_and_stop_before_their_horizon():
    train = TrainConfig(decay="linear", stage_schedules={
        name: {"lr": peak, "end_lr": end, "warmup_steps": warm, "decay_steps": horizon}
        for name, (_, warm, peak, end, horizon) in zip(("p1", "p2", "p3"), CRYSTAL)})
    lengths = (79_721, 214_387, 27_728)
    stages = [("p1", 0, lengths[0], 0), ("p2", lengths[0], lengths[1], 0), ("p3", sum(lengths[:2]), lengths[2], 0)]
    schedule = build_schedule(train, stages, sum(lengths))
    for step in (0, 1, 85, 86, 50_000, 79_720, 79_721, 79_806, 200_000, 294_107, 294_108, 294_383, 321_835):
        assert schedule.at(step) == pytest.approx(crystal_by_hand(step), rel=1e-12), step
    # phase 1 stopped well before its horizon: its last rate is far above its end value
    assert schedule.at(79_720) > 0.008


def test_amber_warmup_starts_at_zero_and_a_stage_without_a_phase_continues():
    train = TrainConfig(lr=3e-4, min_lr=3e-5, warmup_steps=2000, warmup_from_zero=True)
    schedule = build_schedule(train, [("all", 0, 10_000, 0)], 10_000)
    assert schedule.at(0) == 0.0 and schedule.at(1000) == pytest.approx(1.5e-4) and schedule.at(2000) == 3e-4
    ours = TrainConfig(lr=1.0, min_lr=0.1, warmup_steps=4, stage_schedules={"b": {"lr": 0.5, "end_lr": 0.0}})
    s = build_schedule(ours, [("a", 0, 10, 0), ("b", 10, 10, 0), ("c", 20, 10, 0)], 30)
    assert [s.at(t) for t in (9, 10)] == [lr_at(9, lr=1.0, min_lr=0.1, warmup_steps=4, total_steps=30), 0.5]
    assert s.at(19) == pytest.approx(0.25 * (1 + math.cos(0.9 * math.pi)))  # b decays over its own 10 steps
    assert s.at(20) == s.at(25) == 0.0  # stage c has no phase of its own: b's goes on, past its horizon


def test_stage_schedules_must_name_stages_and_roles_must_exist(tmp_path):
    with pytest.raises(UserError, match="train.stage_schedules names no stage 'nope'"):
        load_config("demo", ["--train.stage_schedules={nope: {lr: 1.0, end_lr: 0.1}}"])
    with pytest.raises(UserError, match="unknown parameter role"):
        load_config("demo", ["--train.lr_scale={hiden: 0.5}"])


def test_parameter_roles_and_groups():
    model = Llama(model_args("tiny", tie_embeddings=False, vocab_size=300))
    roles = param_roles(model)
    assert roles["tok_embeddings.weight"] == "embedding" and roles["output.weight"] == "output"
    assert roles["norm.weight"] == "norm" and roles["layers.0.attention.wq.weight"] == "hidden"
    assert set(roles.values()) == {"embedding", "output", "norm", "hidden"} and len(roles) == len(list(model.parameters()))
    plain = group_specs(model, TrainConfig())
    assert [(s.decay, s.lr_scale) for s, _ in plain] == [(True, 1.0), (False, 1.0)]  # as checkpoints always held
    mup = group_specs(model, TrainConfig(lr_scale={"hidden": 0.0625}, no_decay=[]))
    sizes = {(s.decay, s.lr_scale): len(ps) for s, ps in mup}
    assert sizes[(True, 0.0625)] == sum(r == "hidden" for r in roles.values()) and (False, 1.0) in sizes


def test_hidden_matrices_move_at_their_scaled_rate(tiny_run):
    """Adam's first update is lr * g / (|g| + eps): without weight decay every weight moves by
    (almost exactly) its group's learning rate, so the scale shows in the weights themselves."""
    from safetensors.torch import load_file

    cfg = apply_train_overrides(tiny_run, ["--train.lr_scale={hidden: 0.0625}", "--train.weight_decay=0",
                                           "--train.extra_checkpoint_steps=[1]", "--train.warmup_steps=0"])
    run_training(tiny_run, cfg)
    lr0 = read_jsonl(tiny_run / "metrics" / "train.jsonl")[0]["lr"]
    before = load_file(tiny_run / "checkpoints" / "init" / "model.safetensors")
    after = load_file(tiny_run / "checkpoints" / "step_0000001" / "model.safetensors")
    hidden = (after["model.layers.0.self_attn.q_proj.weight"] - before["model.layers.0.self_attn.q_proj.weight"]).abs()
    embed = (after["model.embed_tokens.weight"] - before["model.embed_tokens.weight"]).abs()
    assert hidden.max().item() == pytest.approx(lr0 * 0.0625, rel=1e-3)
    assert embed.max().item() == pytest.approx(lr0, rel=1e-3)


def test_a_warmup_longer_than_its_stage_is_refused():
    with pytest.raises(UserError, match=r"stage_schedules.main.warmup_steps \(999\) is longer than the stage"):
        load_config("demo", ["--train.stage_schedules={main: {lr: 1.0, end_lr: 0.1, warmup_steps: 999}}",
                             "--data.stages=[{name: main, chunks: 2, mix: {python-docs: 1.0}}]"])
