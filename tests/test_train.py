"""The trainer: step rule, checkpoints, exact resume, spike guard, records, bad configs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from llm360.errors import UserError
from llm360.train.parallel import free_port
from llm360.train.schedule import lr_at
from llm360.train.spike import SpikeGuard
from llm360.train.trainer import apply_train_overrides, run_training
from llm360.utils import read_jsonl

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def train(run: Path, *overrides: str) -> dict:
    cfg = apply_train_overrides(run, list(overrides))
    return run_training(run, cfg)


def train_subprocess(run: Path, *overrides: str, nproc: int = 1, script: str | None = None) -> subprocess.CompletedProcess:
    target = [str(Path(__file__).parent / script)] if script else ["-m", "llm360.cli", "train"]
    if nproc == 1:
        cmd = [sys.executable, *target, str(run), *overrides]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
               "--master-port", str(free_port()), *target, str(run), *overrides]
    env = {**ENV, "OMP_NUM_THREADS": "1"}
    # a session of its own: on a timeout the workers go too, not only torchrun
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)



def weights(run: Path, name: str) -> dict[str, torch.Tensor]:
    return load_file(run / "checkpoints" / name / "model.safetensors")


def assert_bitwise_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def flip_bits(path: Path, offset: int, mask: int) -> None:
    """Damage a file in place: XOR one byte with `mask`."""
    data = bytearray(path.read_bytes())
    data[offset] ^= mask
    path.write_bytes(bytes(data))


def events(run: Path) -> list[dict]:
    return read_jsonl(run / "metrics" / "events.jsonl")


# -- schedule and guard (pure functions) ----------------------------------------------------


def test_lr_schedule_warmup_cosine_and_rewarm():
    kw = dict(lr=1.0, min_lr=0.1, warmup_steps=4, total_steps=20)
    assert lr_at(0, **kw) == pytest.approx(0.25)
    assert lr_at(3, **kw) == pytest.approx(1.0)
    assert lr_at(19, **kw) == pytest.approx(0.1, abs=0.02)
    values = [lr_at(s, **kw) for s in range(4, 20)]
    assert all(a >= b for a, b in zip(values, values[1:]))  # monotone decay after warmup
    # re-warm at step 12 over 2 steps: back up to the peak, then decay again to the end
    rewarmed = [lr_at(s, **kw, rewarms=[(12, 2)]) for s in range(12, 20)]
    assert rewarmed[0] < rewarmed[1] == pytest.approx(1.0)
    assert rewarmed[-1] < rewarmed[1]
    assert lr_at(11, **kw, rewarms=[(12, 2)]) == lr_at(11, **kw)


def test_spike_guard():
    guard = SpikeGuard(zscore=3.0, window=8)
    for x in [2.0, 2.1, 1.9, 2.0, 2.05, 1.95]:
        assert guard.check(x, 1.0) is None
        guard.accept(x)
    assert guard.check(float("nan"), 1.0)[0] == "nonfinite"
    assert guard.check(2.0, float("inf"))[0] == "nonfinite"
    assert guard.check(9.0, 1.0)[0] == "spike"
    assert guard.check(2.1, 1.0) is None
    state = guard.state_dict()
    other = SpikeGuard(3.0, 8)
    other.load_state_dict(state)
    assert other.check(9.0, 1.0) == guard.check(9.0, 1.0)


# -- a full tiny run --------------------------------------------------------------------------


def test_train_writes_checkpoints_and_records(tiny_run):
    result = train(tiny_run, "--train.extra_checkpoint_steps=[1,2]")
    assert result["finished"]
    names = sorted(p.name for p in (tiny_run / "checkpoints").iterdir())
    assert names == ["ckpt_000", "ckpt_001", "ckpt_002", "init", "step_0000001", "step_0000002"]
    ckpt = tiny_run / "checkpoints" / "ckpt_001"
    for f in ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
              "trainer_state/shard-00000-of-00001.safetensors", "trainer_state/rng.safetensors",
              "trainer_state/state.json", "CHECKSUMS.sha256"]:
        assert (ckpt / f).exists(), f
    state = json.loads((ckpt / "trainer_state" / "state.json").read_text())
    assert state["files"] == ["trainer_state/shard-00000-of-00001.safetensors", "trainer_state/rng.safetensors"]
    assert state["weights_dtype"] == "float32" and not state["master_weights"]
    assert state["steps_done"] == 6 and state["tokens"] == 6 * 4 * 32
    lines = read_jsonl(tiny_run / "metrics" / "train.jsonl")
    assert [r["step"] for r in lines] == list(range(9))
    for r in lines:
        for key in ["step", "chunk", "tokens", "loss", "lr", "grad_norm", "tokens_per_s", "mfu", "time"]:
            assert key in r
        assert r["chunk"] == r["step"] // 3
    assert lines[-1]["loss"] < lines[0]["loss"]
    kinds = [e["kind"] for e in events(tiny_run)]
    assert kinds[0] == "start" and kinds[-1] == "end"
    assert kinds.count("checkpoint") == 5 and kinds.count("stage_start") == 2
    assert (tiny_run / "env.json").exists()
    env = json.loads((tiny_run / "env.json").read_text())
    assert env["world_size"] == 1 and env["torch"] == torch.__version__
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:
        pass
    else:  # TensorBoard holds the same numbers as train.jsonl
        acc = EventAccumulator(str(tiny_run / "metrics" / "tb"))
        acc.Reload()
        tb_loss = [e.value for e in acc.Scalars("train/loss")]
        assert np.allclose(tb_loss, [r["loss"] for r in lines], rtol=1e-6)
    # a finished run does nothing the second time
    assert train(tiny_run)["did_nothing"]


def test_checkpoint_loads_in_transformers(tiny_run):
    transformers = pytest.importorskip("transformers")
    train(tiny_run)
    from llm360.model.hf import load_hf

    folder = tiny_run / "checkpoints" / "ckpt_002"
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    ours, _ = load_hf(folder)
    tokens = torch.from_numpy(np.load(tiny_run / "data" / "chunks" / "chunk_002.npy")[:2, :-1].astype(np.int64))
    with torch.no_grad():
        assert (hf(tokens).logits - ours(tokens)).abs().max() < 1e-4


def test_micro_batches_do_not_change_the_math(tiny_run, tmp_path):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(tiny_run, other)
    train(tiny_run, "--train.micro_batch_rows=4")
    train(other, "--train.micro_batch_rows=1")
    a = [r["loss"] for r in read_jsonl(tiny_run / "metrics" / "train.jsonl")]
    b = [r["loss"] for r in read_jsonl(other / "metrics" / "train.jsonl")]
    assert np.allclose(a, b, rtol=1e-5)
    for key, value in weights(tiny_run, "ckpt_002").items():
        assert torch.allclose(value, weights(other, "ckpt_002")[key], atol=1e-5)


# -- exact resume -----------------------------------------------------------------------------


@pytest.fixture
def reference_weights(prepared_template, tmp_path_factory):
    """Final weights of an uninterrupted run (same data as every copy of the template)."""
    import shutil

    run = tmp_path_factory.mktemp("ref") / "run"
    shutil.copytree(prepared_template, run)
    train(run)
    return weights(run, "ckpt_002"), run


def test_resume_after_exit_is_bitwise_identical(tiny_run, reference_weights):
    out = train_subprocess(tiny_run, "--train.fault_injection.exit_after_steps=[3]")
    assert out.returncode == 17, out.stderr
    assert not (tiny_run / "checkpoints" / "ckpt_001").exists()
    out = train_subprocess(tiny_run)
    assert out.returncode == 0, out.stderr
    assert_bitwise_equal(weights(tiny_run, "ckpt_002"), reference_weights[0])
    assert "resume" in [e["kind"] for e in events(tiny_run)]
    steps = [r["step"] for r in read_jsonl(tiny_run / "metrics" / "train.jsonl")]
    assert steps == list(range(9))  # every step recorded exactly once


def test_kill_during_checkpoint_write_then_resume(tiny_run, reference_weights):
    out = train_subprocess(tiny_run, "--train.fault_injection.kill_in_checkpoint=[ckpt_001]")
    assert out.returncode == -9, out.stderr
    leftovers = [p.name for p in (tiny_run / "checkpoints").iterdir()]
    assert "ckpt_001" not in leftovers and any(n.startswith(".ckpt_001.tmp") for n in leftovers)
    out = train_subprocess(tiny_run, "--train.fault_injection.kill_in_checkpoint=[]")
    assert out.returncode == 0, out.stderr
    assert "removed an interrupted checkpoint write" in out.stderr
    assert not any(p.name.startswith(".") for p in (tiny_run / "checkpoints").iterdir())
    assert_bitwise_equal(weights(tiny_run, "ckpt_002"), reference_weights[0])


def test_damaged_checkpoint_is_skipped(tiny_run, reference_weights):
    out = train_subprocess(tiny_run, "--train.fault_injection.exit_after_steps=[6]")
    assert out.returncode == 17
    flip_bits(tiny_run / "checkpoints" / "ckpt_001" / "model.safetensors", -1, 0xFF)
    out = train_subprocess(tiny_run, "--train.fault_injection.exit_after_steps=[]")
    assert out.returncode == 0, out.stderr
    assert "ckpt_001 is damaged" in out.stderr
    corrupt = [e for e in events(tiny_run) if e["kind"] == "corrupt_checkpoint"]
    assert corrupt and corrupt[0]["checkpoint"] == "ckpt_001"
    resumed = [e for e in events(tiny_run) if e["kind"] == "resume"]
    assert resumed[-1]["checkpoint"] == "ckpt_000"
    assert_bitwise_equal(weights(tiny_run, "ckpt_002"), reference_weights[0])


def test_tampered_chunk_stops_training(tiny_run):
    flip_bits(tiny_run / "data" / "chunks" / "chunk_001.npy", -3, 0x01)
    with pytest.raises(UserError, match="chunk 1"):
        train(tiny_run)
    # it trained chunk 0 (valid) and stopped before touching chunk 1
    assert (tiny_run / "checkpoints" / "ckpt_000").exists()
    assert not (tiny_run / "checkpoints" / "ckpt_001").exists()


def test_resume_uses_the_optimizer_settings_of_run_yaml(tiny_run):
    out = train_subprocess(tiny_run, "--train.fault_injection.exit_after_steps=[3]")
    assert out.returncode == 17, out.stderr[-2000:]
    out = train_subprocess(tiny_run, "--train.fault_injection.exit_after_steps=[]", "--train.weight_decay=0.02",
                           "--train.betas=[0.8, 0.9]")
    assert out.returncode == 0, out.stderr[-2000:]
    state = json.loads((tiny_run / "checkpoints" / "ckpt_002" / "trainer_state" / "state.json").read_text())
    assert [g["weight_decay"] for g in state["param_groups"]] == [0.02, 0.0]
    assert all(list(g["betas"]) == [0.8, 0.9] for g in state["param_groups"])


def test_a_resume_in_the_middle_of_a_chunk_checks_that_chunk(tiny_run):
    out = train_subprocess(tiny_run, "--train.extra_checkpoint_steps=[2]", "--train.fault_injection.exit_after_steps=[2]")
    assert out.returncode == 17 and (tiny_run / "checkpoints" / "step_0000002").exists(), out.stderr[-2000:]
    flip_bits(tiny_run / "data" / "chunks" / "chunk_000.npy", -3, 0x01)
    with pytest.raises(UserError, match="chunk 0"):
        train(tiny_run, "--train.fault_injection.exit_after_steps=[]")


def test_gradient_clipping_matches_torch_and_sums_bf16_norms_in_fp32():
    from llm360.train.trainer import clip_gradients

    gen = torch.Generator().manual_seed(0)
    ours = [torch.nn.Parameter(torch.zeros(s)) for s in [(30, 20), (20,), (7, 3)]]
    ref = [torch.nn.Parameter(torch.zeros(s)) for s in [(30, 20), (20,), (7, 3)]]
    for a, b in zip(ours, ref):
        a.grad = torch.randn(a.shape, generator=gen)
        b.grad = a.grad.clone()
    assert torch.allclose(clip_gradients(ours, 1.0), torch.nn.utils.clip_grad_norm_(ref, 1.0))
    assert all(torch.allclose(a.grad, b.grad) for a, b in zip(ours, ref))
    low = [torch.nn.Parameter(torch.zeros(3000, dtype=torch.bfloat16))]
    low[0].grad = torch.ones(3000, dtype=torch.bfloat16)
    exact = 3000 ** 0.5  # 54.772...; the nearest bf16 is 54.75
    assert abs(clip_gradients(low, float("inf")).item() - exact) < 1e-5 * exact
    assert abs(torch.nn.utils.clip_grad_norm_(low, float("inf")).item() - exact) > 1e-4 * exact  # torch's: bf16


def test_a_failing_evaluation_does_not_end_training(tiny_run):
    from llm360.train.trainer import run_training

    def broken(name, steps_done):
        raise RuntimeError("the evaluation broke")

    result = run_training(tiny_run, apply_train_overrides(tiny_run, []), on_checkpoint=broken)
    assert result["finished"]
    failed = [e for e in events(tiny_run) if e["kind"] == "eval_failed"]
    assert [e["checkpoint"] for e in failed] == ["ckpt_000", "ckpt_001", "ckpt_002"]
    assert "the evaluation broke" in failed[0]["error"]


# -- spike guard actions -------------------------------------------------------------------------


@pytest.mark.parametrize("action", ["skip", "rollback"])
def test_nan_recovery_is_recorded_and_reproducible(tiny_run, tmp_path, action):
    import shutil

    twin = tmp_path / "twin"
    shutil.copytree(tiny_run, twin)
    overrides = ["--train.fault_injection.nan_at_steps=[4]", f"--train.spike.action={action}",
                 "--train.spike.skip_batches=2", "--train.extra_checkpoint_steps=[2]"]
    for run in (tiny_run, twin):
        assert train(run, *overrides)["finished"]
    final = weights(tiny_run, "ckpt_002")
    assert all(torch.isfinite(t).all() for t in final.values())
    assert_bitwise_equal(final, weights(twin, "ckpt_002"))
    ev = events(tiny_run)
    assert any(e["kind"] == "nonfinite" and e["step"] == 4 for e in ev)
    skips = [e for e in ev if e["kind"] == "skip_batch"]
    assert skips
    skipped_steps = [s["step"] for e in skips for s in e["skipped"]]
    expected = [4] if action == "skip" else [4, 5]
    assert skipped_steps == expected
    assert skips[0]["skipped"][0]["chunk"] == 1 and skips[0]["skipped"][0]["rows"] == [4, 8]
    if action == "rollback":
        rb = [e for e in ev if e["kind"] == "rollback"][0]
        assert rb["to_checkpoint"] == "ckpt_000" and rb["to_step"] == 3
    state = json.loads((tiny_run / "checkpoints" / "ckpt_002" / "trainer_state" / "state.json").read_text())
    assert state["skipped_steps"] == expected
    lines = read_jsonl(tiny_run / "metrics" / "train.jsonl")
    assert [r["step"] for r in lines] == list(range(9))
    assert [r["step"] for r in lines if r.get("skipped")] == expected


def test_rollback_to_init_starts_from_fresh_optimizer_state(tiny_run, tmp_path):
    import shutil

    twin = tmp_path / "twin"
    shutil.copytree(tiny_run, twin)
    # rollback: back to init, step 0 again, step 1 skipped; skip: step 1 computed, not applied.
    # Either way the updates applied are those of steps 0, 2, 3, ... from the same state.
    train(tiny_run, "--train.fault_injection.nan_at_steps=[1]", "--train.spike.action=rollback",
          "--train.spike.skip_batches=1")
    train(twin, "--train.fault_injection.nan_at_steps=[1]", "--train.spike.action=skip")
    assert [e for e in events(tiny_run) if e["kind"] == "rollback"][0]["to_checkpoint"] == "init"
    assert_bitwise_equal(weights(tiny_run, "ckpt_002"), weights(twin, "ckpt_002"))


def test_nan_with_stop_action(tiny_run):
    result = train(tiny_run, "--train.fault_injection.nan_at_steps=[4]", "--train.spike.action=stop")
    assert not result["finished"] and result["steps"] == 4
    ev = events(tiny_run)
    assert ev[-1]["kind"] == "end" and not ev[-1]["finished"]
    assert all(torch.isfinite(t).all() for t in weights(tiny_run, "ckpt_000").values())


def host_guard_verdicts(losses: list[float], zscore: float, window: int) -> list[bool]:
    """The spike rule of SPEC/config, written plainly on the host: the oracle for the device guard."""
    history, bad = [], []
    for loss in losses:
        n = len(history)
        is_bad = False
        if n >= max(window // 2, 2):
            mean = sum(history) / n
            std = (sum((x - mean) ** 2 for x in history) / n) ** 0.5
            is_bad = std > 0 and (loss - mean) / std > zscore
        bad.append(is_bad)
        if not is_bad:
            history = (history + [loss])[-window:]
    return bad


@pytest.mark.parametrize("action", ["skip", "log"])
def test_real_loss_spikes_are_judged_on_the_device_as_on_the_host(tiny_run, action):
    # a learning rate 30 times too high makes the loss jump up and down: real spikes, which
    # the guard on the device, read one step late, must judge exactly as the plain host rule
    assert train(tiny_run, "--train.lr=0.1", "--train.spike.zscore=0.5", "--train.spike.window=4",
                 f"--train.spike.action={action}")["finished"]
    lines = read_jsonl(tiny_run / "metrics" / "train.jsonl")
    assert [r["step"] for r in lines] == list(range(9))
    expected = host_guard_verdicts([r["loss"] for r in lines], 0.5, 4) if action == "skip" else None
    judged = [e["step"] for e in events(tiny_run) if e["kind"] == "spike"]
    skipped = [r["step"] for r in lines if r.get("skipped")]
    if action == "skip":
        assert judged == [i for i, b in enumerate(expected) if b] and judged, judged
        assert skipped == judged
    else:
        # nothing withheld, every loss joins the history
        history = []
        flagged = []
        for r in lines:
            n = len(history)
            if n >= 2:
                mean = sum(history) / n
                std = (sum((x - mean) ** 2 for x in history) / n) ** 0.5
                if std > 0 and (r["loss"] - mean) / std > 0.5:
                    flagged.append(r["step"])
            history = (history + [r["loss"]])[-4:]
        assert judged == flagged and judged and skipped == []


def test_a_training_step_reads_nothing_back_from_the_device(tiny_run, monkeypatch):
    """No host synchronisation inside a step: queueing step t never reads a device value (the
    loss, gradient norm and verdict of step t are read while step t + 1 runs)."""
    from llm360.train.trainer import Trainer

    cfg = apply_train_overrides(tiny_run, [])
    trainer = Trainer(tiny_run, cfg.train, cfg.model, cfg.seed)
    trainer._build()
    trainer._write_init()
    trainer.restore(trainer.agreed_checkpoint())

    def refuse(self, *args, **kwargs):
        raise AssertionError("a device value was read on the host inside a training step")

    with monkeypatch.context() as m:
        for name in ("item", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__", "cpu"):
            m.setattr(torch.Tensor, name, refuse)
        flights = [trainer._train_step(step) for step in range(3)]
    records = [f.record | dict(zip(["loss", "grad_norm", "bad"], f.read())) for f in flights]
    assert [r["step"] for r in records] == [0, 1, 2]
    assert all(np.isfinite(r["loss"]) and r["bad"] == 0 for r in records)
    trainer.batches.close()


def test_prefetched_rows_are_the_rows_of_the_step(tiny_run):
    from llm360.data.store import RunData
    from llm360.train.prefetch import Prefetcher

    data = RunData(tiny_run)
    fetch = Prefetcher(data, rank=1, world=2, device=torch.device("cpu"))
    for step in [0, 1, 2, 5, 3, 4, 8, 0]:  # in order, then jumps as after a rollback or a skip
        assert np.array_equal(fetch.get(step).numpy(), data.rows_at(step, 1, 2))
    assert fetch.ahead[0] == 1
    fetch.close()


# -- configs that cannot work -------------------------------------------------------------------


@pytest.mark.parametrize("override, words", [
    ("--train.micro_batch_rows=3", ["global_batch_rows", "micro_batch_rows"]),
    ("--train.global_batch_rows=8", ["train.global_batch_rows cannot change", "prepare a new run"]),
    ("--model.max_seq_len=16", ["data.seq_len", "model.max_seq_len"]),
    ("--data.seq_len=64", ["data.seq_len cannot change"]),
    ("--seed=5", ["seed cannot change"]),
])
def test_impossible_configs_fail_before_work(tiny_run, override, words):
    recorded = (tiny_run / "run.yaml").read_bytes()
    with pytest.raises(UserError) as e:
        train(tiny_run, override)
    for word in words:
        assert word in str(e.value)
    assert not (tiny_run / "checkpoints").exists()
    assert (tiny_run / "run.yaml").read_bytes() == recorded  # a rejected override changes no record


# -- several processes (gloo on CPU) ---------------------------------------------------------------


def test_bf16_weights_compiled(tiny_run, reference_weights):
    """Blocks, loss and the bf16-weights AdamW update all compiled: the same learning curve."""
    pytest.importorskip("torch._inductor")
    assert train(tiny_run, "--train.precision=bf16-weights", "--train.compile=true")["finished"]
    ours = [r["loss"] for r in read_jsonl(tiny_run / "metrics" / "train.jsonl")]
    ref = [r["loss"] for r in read_jsonl(reference_weights[1] / "metrics" / "train.jsonl")]
    assert np.allclose(ours, ref, rtol=0.02)
    assert all(t.dtype == torch.bfloat16 for t in weights(tiny_run, "ckpt_002").values())


def test_fsdp_in_a_single_process_without_torchrun(tiny_run, reference_weights):
    """FSDP2 on one device (the way amber-7b is tried on one GPU) starts its own process group."""
    assert train(tiny_run, "--train.strategy=fsdp")["finished"]
    for key, value in weights(tiny_run, "ckpt_002").items():
        assert torch.allclose(value, reference_weights[0][key], atol=1e-5), key


def test_rounding_seeds_fit_a_generator_for_any_run_seed():
    from llm360.train.trainer import rounding_seed

    seeds = {rounding_seed(seed, step, shard) for seed in (0, 7, 20240610, 2**70) for step in (0, 1, 10**9)
             for shard in (0, 1)}
    assert len(seeds) == 24
    for value in seeds:
        torch.Generator().manual_seed(value)  # raised for seeds past 2**64 before


def test_ddp_replicas_with_bf16_weights_stay_identical(tiny_run):
    """DDP keeps a full copy per rank: the stochastic rounding must be the same on every rank."""
    out = train_subprocess(tiny_run, "--train.strategy=ddp", "--train.precision=bf16-weights",
                           "--train.micro_batch_rows=1", nproc=2, script="helpers_replicas.py")
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert "differing between ranks: 0" in out.stdout


def test_a_slow_rank_agrees_on_the_checkpoint_to_start_from(tiny_run):
    """Rank 1 lists the checkpoints only after rank 0 wrote `init`: both must still load the
    same one (this deadlocked when each rank decided alone whether to write `init`)."""
    out = train_subprocess(tiny_run, "--train.strategy=ddp", "--train.micro_batch_rows=1", nproc=2,
                           script="helpers_slow_rank.py")
    assert out.returncode == 0, out.stderr[-3000:]
    assert [r["step"] for r in read_jsonl(tiny_run / "metrics" / "train.jsonl")] == list(range(9))


def test_fsdp_with_bf16_weights_over_two_processes(tiny_run, reference_weights):
    out = train_subprocess(tiny_run, "--train.strategy=fsdp", "--train.precision=bf16-weights",
                           "--train.micro_batch_rows=1", nproc=2)
    assert out.returncode == 0, out.stderr[-3000:]
    final = weights(tiny_run, "ckpt_002")
    assert final.keys() == reference_weights[0].keys() and all(t.dtype == torch.bfloat16 for t in final.values())
    ours = [r["loss"] for r in read_jsonl(tiny_run / "metrics" / "train.jsonl")]
    ref = [r["loss"] for r in read_jsonl(reference_weights[1] / "metrics" / "train.jsonl")]
    assert np.allclose(ours, ref, rtol=0.02)


def test_the_gpu_composition_over_two_processes(tiny_run, reference_weights):
    """Activation checkpointing, then torch.compile per block, then FSDP2: the stack a GPU run
    uses, here over gloo, keeps the math of the plain single-process run."""
    pytest.importorskip("torch._inductor")
    out = train_subprocess(tiny_run, "--train.strategy=fsdp", "--train.compile=true",
                           "--train.activation_checkpointing=ops", "--train.micro_batch_rows=1", nproc=2)
    assert out.returncode == 0, out.stderr[-3000:]
    ours = [r["loss"] for r in read_jsonl(tiny_run / "metrics" / "train.jsonl")]
    ref = [r["loss"] for r in read_jsonl(reference_weights[1] / "metrics" / "train.jsonl")]
    assert np.allclose(ours, ref, rtol=1e-4)
    final = weights(tiny_run, "ckpt_002")
    assert final.keys() == reference_weights[0].keys()
    for key, value in final.items():
        assert torch.allclose(value, reference_weights[0][key], atol=1e-4), key


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_match_one_and_resume_on_one(tiny_run, reference_weights, strategy):
    ref_run = reference_weights[1]
    out = train_subprocess(tiny_run, f"--train.strategy={strategy}", "--train.micro_batch_rows=1",
                           "--train.fault_injection.exit_after_steps=[6]", nproc=2)
    assert out.returncode != 0 and (tiny_run / "checkpoints" / "ckpt_001").exists(), out.stderr[-3000:]
    state = json.loads((tiny_run / "checkpoints" / "ckpt_001" / "trainer_state" / "state.json").read_text())
    assert state["world_size"] == 2
    if strategy == "fsdp":  # resumed by two processes first: rank 0 reads, the other receives its shards
        out = train_subprocess(tiny_run, "--train.fault_injection.exit_after_steps=[]", "--train.extra_checkpoint_steps=[7]",
                               "--train.fault_injection.kill_in_checkpoint=[ckpt_002]", nproc=2)
        assert (tiny_run / "checkpoints" / "step_0000007").exists(), out.stderr[-3000:]
    out = train_subprocess(tiny_run, "--train.strategy=single", "--train.micro_batch_rows=2",
                           "--train.fault_injection.kill_in_checkpoint=[]")
    assert out.returncode == 0, out.stderr[-3000:]
    ours = read_jsonl(tiny_run / "metrics" / "train.jsonl")
    ref = read_jsonl(ref_run / "metrics" / "train.jsonl")
    assert [r["step"] for r in ours] == list(range(9))
    assert np.allclose([r["loss"] for r in ours], [r["loss"] for r in ref], rtol=1e-5, atol=0)
    for key, value in weights(tiny_run, "ckpt_002").items():
        assert torch.allclose(value, reference_weights[0][key], atol=1e-4), key



# -- sharded checkpoints ------------------------------------------------------------------------


def test_bf16_published_weights_resume_exactly_from_fp32_master_weights(tiny_run, reference_weights):
    out = train_subprocess(tiny_run, "--train.checkpoint_dtype=bf16", "--train.fault_injection.exit_after_steps=[3]")
    assert out.returncode == 17, out.stderr[-3000:]
    ckpt = tiny_run / "checkpoints" / "ckpt_000"
    assert json.loads((ckpt / "config.json").read_text())["torch_dtype"] == "bfloat16"
    state = json.loads((ckpt / "trainer_state" / "state.json").read_text())
    assert state["weights_dtype"] == "bfloat16" and state["master_weights"]
    out = train_subprocess(tiny_run)
    assert out.returncode == 0, out.stderr[-3000:]
    final = weights(tiny_run, "ckpt_002")  # the uninterrupted fp32 run, rounded once at the end
    assert_bitwise_equal(final, {k: v.to(torch.bfloat16) for k, v in reference_weights[0].items()})


def test_a_checkpoint_missing_a_shard_of_another_world_size_is_passed_over(tiny_run, reference_weights):
    out = train_subprocess(tiny_run, "--train.fault_injection.exit_after_steps=[6]")
    assert out.returncode == 17
    # ckpt_001 as two processes would have left it with rank 1's file lost (and never listed)
    ckpt = tiny_run / "checkpoints" / "ckpt_001"
    (ckpt / "trainer_state" / "shard-00000-of-00001.safetensors").rename(
        ckpt / "trainer_state" / "shard-00000-of-00002.safetensors")
    state = json.loads((ckpt / "trainer_state" / "state.json").read_text())
    state.update(world_size=2, files=["trainer_state/shard-00000-of-00002.safetensors",
                                      "trainer_state/shard-00001-of-00002.safetensors", "trainer_state/rng.safetensors"])
    (ckpt / "trainer_state" / "state.json").write_text(json.dumps(state))
    from llm360.rundir import write_checksums

    write_checksums(ckpt)  # its checksums are sound: only the listing says what is missing
    out = train_subprocess(tiny_run, "--train.fault_injection.exit_after_steps=[]")
    assert out.returncode == 0, out.stderr[-3000:]
    said = " ".join(out.stderr.split())
    assert "ckpt_001 lacks trainer_state/shard-00001-of-00002.safetensors" in said
    corrupt = [e for e in events(tiny_run) if e["kind"] == "corrupt_checkpoint"]
    assert corrupt[-1]["checkpoint"] == "ckpt_001" and "shard-00001-of-00002" in corrupt[-1]["problems"][0]
    assert [e for e in events(tiny_run) if e["kind"] == "resume"][-1]["checkpoint"] == "ckpt_000"
    assert_bitwise_equal(weights(tiny_run, "ckpt_002"), reference_weights[0])


def test_kill_9_of_one_of_two_processes_mid_write_leaves_the_old_checkpoint(tiny_run, reference_weights):
    """Rank 1 dies by SIGKILL after writing its shard, before the barrier: ckpt_001 must not
    exist, only its hidden temporary folder (with rank 0's files in it), which resume removes."""
    out = train_subprocess(tiny_run, "--train.strategy=fsdp", "--train.micro_batch_rows=1",
                           "--train.fault_injection.kill_in_checkpoint=[ckpt_001]", nproc=2)
    assert out.returncode != 0
    checkpoints = tiny_run / "checkpoints"
    assert not (checkpoints / "ckpt_001").exists() and (checkpoints / "ckpt_000" / "CHECKSUMS.sha256").exists()
    half, = [p for p in checkpoints.iterdir() if p.name.startswith(".ckpt_001.tmp-")]
    assert (half / "trainer_state" / "shard-00000-of-00002.safetensors").exists()
    assert not (half / "CHECKSUMS.sha256").exists()
    out = train_subprocess(tiny_run, "--train.strategy=fsdp", "--train.micro_batch_rows=1",
                           "--train.fault_injection.kill_in_checkpoint=[]", nproc=2)
    assert out.returncode == 0, out.stderr[-3000:]
    assert not half.exists()
    assert [e for e in events(tiny_run) if e["kind"] == "resume"][-1]["checkpoint"] == "ckpt_000"
    state = json.loads((checkpoints / "ckpt_002" / "trainer_state" / "state.json").read_text())
    assert state["files"][:2] == ["trainer_state/shard-00000-of-00002.safetensors",
                                  "trainer_state/shard-00001-of-00002.safetensors"]
    for key, value in weights(tiny_run, "ckpt_002").items():
        assert torch.allclose(value, reference_weights[0][key], atol=1e-4), key

# -- bf16 weights with fp32 optimizer state --------------------------------------------------------


def test_bf16_weights_train_resume_exactly_and_keep_fp32_moments(tiny_run, tmp_path, reference_weights):
    import shutil

    twin = tmp_path / "twin"
    shutil.copytree(tiny_run, twin)
    out = train_subprocess(tiny_run, "--train.precision=bf16-weights", "--train.fault_injection.exit_after_steps=[3]")
    assert out.returncode == 17, out.stderr[-3000:]
    out = train_subprocess(tiny_run, "--train.fault_injection.exit_after_steps=[]")
    assert out.returncode == 0, out.stderr[-3000:]
    assert train(twin, "--train.precision=bf16-weights")["finished"]
    final = weights(tiny_run, "ckpt_002")
    assert all(t.dtype == torch.bfloat16 for t in final.values())
    assert_bitwise_equal(final, weights(twin, "ckpt_002"))  # the stochastic rounding resumed exactly
    moments = load_file(tiny_run / "checkpoints" / "ckpt_002" / "trainer_state" / "shard-00000-of-00001.safetensors")
    assert moments and all(t.dtype == torch.float32 for t in moments.values())
    ours = [r["loss"] for r in read_jsonl(tiny_run / "metrics" / "train.jsonl")]
    ref = [r["loss"] for r in read_jsonl(reference_weights[1] / "metrics" / "train.jsonl")]
    assert ours[-1] < ours[0] - 0.5
    assert np.allclose(ours, ref, rtol=0.02)  # bf16 compute, the same learning curve


# -- applied from outside: activation checkpointing and torch.compile ------------------------------


@pytest.mark.parametrize("override", ["--train.activation_checkpointing=full",
                                      "--train.activation_checkpointing=selective",
                                      "--train.activation_checkpointing=ops", "--train.compile=true"])
def test_outside_wrappers_keep_the_math_and_the_names(tiny_run, reference_weights, override):
    if "compile" in override:
        pytest.importorskip("torch._inductor")
    train(tiny_run, override)
    ours = read_jsonl(tiny_run / "metrics" / "train.jsonl")
    ref = read_jsonl(reference_weights[1] / "metrics" / "train.jsonl")
    assert np.allclose([r["loss"] for r in ours], [r["loss"] for r in ref], rtol=1e-4)
    final = weights(tiny_run, "ckpt_002")
    assert final.keys() == reference_weights[0].keys()  # no _orig_mod. or wrapper prefixes
    for key, value in final.items():
        assert torch.allclose(value, reference_weights[0][key], atol=1e-4), key


@pytest.mark.parametrize("mode, recomputes_matmuls, recomputes_silu", [
    ("none", False, False), ("full", True, True), ("ops", False, True)])
def test_what_activation_checkpointing_recomputes(mode, recomputes_matmuls, recomputes_silu):
    """Counted in the backward pass: `ops` redoes the elementwise work (SwiGLU's silu) but keeps
    the matmul outputs; `full` redoes both; `none` neither."""
    from collections import Counter

    from torch.utils._python_dispatch import TorchDispatchMode

    from llm360.model.llama import Llama, model_args
    from llm360.train.parallel import apply_activation_checkpointing

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops[func.overloadpacket.__name__] += 1
            return func(*args, **(kwargs or {}))

    def backward_ops(mode):
        torch.manual_seed(0)
        model = Llama(model_args("tiny", vocab_size=64))
        model.init_weights(0)
        apply_activation_checkpointing(model, mode)
        loss = model(torch.randint(0, 64, (2, 16))).logsumexp(-1).mean()
        with Count() as counter:
            loss.backward()
        return counter.ops

    base, ops = backward_ops("none"), backward_ops(mode)
    assert (ops["mm"] > base["mm"]) == recomputes_matmuls, (ops["mm"], base["mm"])
    assert (ops["silu"] > 0) == recomputes_silu


def test_fsdp_reduces_every_micro_batch_instead_of_holding_unsharded_gradients():
    """Between micro-batches FSDP2 would otherwise keep every gradient unsharded (in fp32 under
    bf16-weights): 4 bytes per parameter of the whole model on every rank."""
    import torch.distributed as dist

    from llm360.model.llama import Llama, model_args
    from llm360.train.parallel import gradient_sync, init_distributed, parallelize

    info = init_distributed("cpu", "fsdp")
    try:
        with torch.device("meta"):
            model = Llama(model_args("tiny", vocab_size=64))
        model = parallelize(model, strategy="fsdp", precision="fp32", compile=False, activation_checkpointing="none",
                            device=info.device)
        model.to_empty(device=info.device)
        model.init_weights(0)
        with gradient_sync(model, False):  # not the last micro-batch of a step
            model(torch.randint(0, 64, (2, 8))).sum().backward()
        assert all(p.grad is not None and hasattr(p.grad, "device_mesh") for p in model.parameters())
    finally:
        dist.destroy_process_group()
