"""What a run directory survives: two writers, a full disk, weights that stop being finite,
settings changed between restarts; and the golden losses that pin the numerics."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from llm360.cli import main
from llm360.errors import DiskFull
from llm360.lock import holder, lock_path, run_lock
from llm360.train.trainer import apply_train_overrides, run_training
from llm360.utils import read_jsonl

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
GOLDEN = Path(__file__).parent / "golden" / "tiny_losses.json"


def events(run: Path, kind: str) -> list[dict]:
    return [e for e in read_jsonl(run / "metrics" / "events.jsonl") if e["kind"] == kind]


def weights(run: Path, name: str) -> dict:
    return load_file(run / "checkpoints" / name / "model.safetensors")


# -- one writer per run -----------------------------------------------------------------------------


def hold_lock(run: Path) -> subprocess.Popen:
    """Another process that holds the run's lock, as a running `llm360 train` does."""
    code = ("import sys, time; from llm360.lock import run_lock\n"
            "with run_lock(sys.argv[1], 'train'):\n    print('locked', flush=True); time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(run)], stdout=subprocess.PIPE, text=True, env=ENV)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_writer_is_refused_and_a_killed_holder_leaves_no_lock(tiny_run, capsys):
    before = (tiny_run / "run.yaml").read_bytes()
    other = hold_lock(tiny_run)
    try:
        info = holder(tiny_run)
        assert info["pid"] == other.pid and info["host"] == socket.gethostname()
        for argv in (["train", str(tiny_run), "--train.lr=3e-3"], ["eval", str(tiny_run)],
                     ["release", str(tiny_run)], ["index", str(tiny_run)],
                     ["analyze", "memorization", str(tiny_run)]):
            assert main(argv) == 2, argv
            err = capsys.readouterr().err.strip()
            assert len(err.splitlines()) == 1 and f"pid {other.pid} on host {socket.gethostname()}" in err, err
        # readers need no lock
        assert main(["data", "batch", str(tiny_run), "--step", "0", "--json"]) == 0
        capsys.readouterr()
    finally:
        other.send_signal(signal.SIGKILL)
        other.wait()
    assert holder(tiny_run) is None  # the kernel let go of a killed holder's lock
    assert not (tiny_run / "checkpoints").exists() and (tiny_run / "run.yaml").read_bytes() == before
    assert main(["train", str(tiny_run)]) == 0
    assert lock_path(tiny_run).parent == tiny_run.parent  # beside the run: never part of a release


def test_two_real_trainers_never_both_write(tiny_run):
    """Two `llm360 train` processes at once: one trains, the other is refused in one line."""
    cmd = [sys.executable, "-m", "llm360.cli", "train", str(tiny_run)]
    procs = [subprocess.Popen(cmd + extra, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
             for extra in ([], ["--train.lr=2e-3"])]
    outs = [p.communicate(timeout=300) for p in procs]
    codes = sorted(p.returncode for p in procs)
    if codes == [0, 0]:  # the first finished before the second started: then they ran one after the other
        assert len(events(tiny_run, "start")) == 1
        pytest.skip("the two trainers did not overlap on this machine")
    assert codes == [0, 2], outs
    refused = outs[[p.returncode for p in procs].index(2)][1]
    assert "is being written by another process" in refused and "Traceback" not in refused


def test_lock_is_reentrant_in_one_process_and_skipped_by_follower_ranks(tmp_path, monkeypatch):
    run = tmp_path / "run"
    with run_lock(run, "run"):
        with run_lock(run, "prepare"):  # `llm360 run` calls prepare, train... under its own lock
            assert holder(run)["command"] == "llm360 run"
        assert holder(run) is not None
        monkeypatch.setenv("RANK", "1")  # ranks of the holder's torchrun job share its lock
        with run_lock(tmp_path / "other", "train"):
            assert holder(tmp_path / "other") is None
    assert holder(run) is None


# -- a full disk --------------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 64 MiB tmpfs, when this process may mount one (root in a container that allows it)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here to fill it: {done.stderr.decode().strip()[:100]}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def fill(disk: Path) -> Path:
    filler = disk / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * (1 << 20))
                f.flush()
        except OSError:
            pass
    return filler


def test_a_full_disk_is_one_sentence_and_resume_loses_nothing(tiny_run, small_disk):
    reference = tiny_run.parent / "reference"
    shutil.copytree(tiny_run, reference)
    assert run_training(reference, apply_train_overrides(reference, []))["finished"]

    run = small_disk / "run"
    shutil.copytree(tiny_run, run)

    def fill_after_first(name: str, steps_done: int) -> None:
        if name == "ckpt_000":
            fill(small_disk)

    with pytest.raises(DiskFull) as e:
        run_training(run, apply_train_overrides(run, []), on_checkpoint=fill_after_first)
    message = str(e.value)
    assert "the disk is full" in message and str(run) in message and "nothing already written was lost" in message.lower()
    assert "\n" not in message
    assert not list((run / "checkpoints").glob(".*tmp*"))  # no half checkpoint left taking space
    (small_disk / "filler").unlink()
    assert run_training(run, apply_train_overrides(run, []))["finished"]
    for name in ("ckpt_000", "ckpt_001", "ckpt_002"):
        ours, theirs = weights(run, name), weights(reference, name)
        assert all((ours[k] == theirs[k]).all() for k in theirs), name
    steps = [r["step"] for r in read_jsonl(run / "metrics" / "train.jsonl")]
    assert steps == list(range(9))


def test_the_cli_names_the_full_disk_without_a_traceback(tiny_run, monkeypatch, capsys):
    from llm360.train import checkpoint

    def no_space(*args, **kwargs):
        raise RuntimeError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, '
                           'message: "No space left on device" })')  # what safetensors raises

    monkeypatch.setattr(checkpoint, "save_hf", no_space)
    assert main(["train", str(tiny_run)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("llm360 train: error: the disk is full:") and "checkpoints/init" in err
    assert len(err.splitlines()) == 1


# -- weights that stop being finite --------------------------------------------------------------------


def test_log_action_never_finishes_with_nonfinite_weights(tiny_run):
    cfg = apply_train_overrides(tiny_run, ["--train.spike.action=log", "--train.fault_injection.nan_at_steps=[4]"])
    result = run_training(tiny_run, cfg)
    assert not result["finished"] and "no longer finite" in result["stopped"]
    assert [e["checkpoint"] for e in events(tiny_run, "nonfinite_weights")] == ["ckpt_001"]
    assert not (tiny_run / "checkpoints" / "ckpt_001").exists()  # nothing NaN is published
    assert events(tiny_run, "end")[-1]["finished"] is False
    for path in (tiny_run / "metrics").glob("*.jsonl"):  # strict JSON everywhere: no bare NaN
        for line in path.read_text().splitlines():
            json.loads(line, parse_constant=lambda c: pytest.fail(f"{path.name} holds {c}"))
    record = next(r for r in read_jsonl(tiny_run / "metrics" / "train.jsonl") if r["step"] == 4)
    assert record["loss"] is None and "loss" in record["nonfinite"]
    assert main(["train", str(tiny_run), "--train.spike.action=log"]) == 1  # and never exit 0


# -- settings changed between restarts ---------------------------------------------------------------------


def test_an_accepted_override_is_an_event_and_replay_uses_the_settings_in_force(tiny_run):
    cfg = apply_train_overrides(tiny_run, ["--train.fault_injection.exit_after_steps=[3]"])
    code = subprocess.run([sys.executable, "-m", "llm360.cli", "train", str(tiny_run),
                           "--train.fault_injection.exit_after_steps=[3]"], env=ENV, capture_output=True).returncode
    assert code == 17 and cfg  # died after ckpt_000, as told
    assert main(["train", str(tiny_run), "--train.lr=1e-3", "--train.fault_injection.exit_after_steps=[]"]) == 0
    change = events(tiny_run, "config_change")[-1]
    assert change["step"] == 3 and change["changes"]["train.lr"] == [3e-3, 1e-3]
    assert "lr: 0.001" in (tiny_run / "run.yaml").read_text()
    from llm360.train.replay import replay

    # chunk 0 was trained at lr 3e-3, chunks 1 and 2 at 1e-3: each replays bitwise
    for c in (0, 1):
        assert replay(tiny_run, c)["bitwise_equal"], c


# -- golden losses -------------------------------------------------------------------------------------------


def test_golden_losses_of_the_tiny_preset(tiny_run):
    """The first losses of the tiny run on CPU, checked in. A numerics change fails here; when it
    is on purpose, regenerate with LLM360_REGENERATE_GOLDEN=1 and say why in the commit."""
    assert run_training(tiny_run, apply_train_overrides(tiny_run, []))["finished"]
    losses = [round(r["loss"], 6) for r in read_jsonl(tiny_run / "metrics" / "train.jsonl")]
    if os.environ.get("LLM360_REGENERATE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps({"run": "tests/conftest.py tiny_config, torch CPU fp32, 1 thread",
                                      "losses": losses}, indent=1) + "\n")
    golden = json.loads(GOLDEN.read_text())["losses"]
    assert len(losses) == len(golden) == 9
    assert losses == pytest.approx(golden, rel=2e-4, abs=1e-5)


def test_appends_cut_a_torn_last_line_first(tmp_path):
    from llm360.utils import append_jsonl, repair_torn_tail

    path = tmp_path / "events.jsonl"
    path.write_text('{"a": 1}\n{"b": 2, "c')  # a crash mid-append
    append_jsonl(path, {"d": 3})
    assert path.read_text() == '{"a": 1}\n{"d": 3}\n'
    assert not repair_torn_tail(path) and not repair_torn_tail(tmp_path / "missing.jsonl")
    path.write_text('{"only": "torn')
    assert repair_torn_tail(path) and path.read_text() == ""


def test_an_override_on_a_finished_run_changes_no_record(tiny_run, capsys):
    assert main(["train", str(tiny_run)]) == 0
    before = (tiny_run / "run.yaml").read_bytes()
    capsys.readouterr()
    assert main(["train", str(tiny_run), "--train.lr=2e-3"]) == 0
    assert "were not used" in capsys.readouterr().err
    assert (tiny_run / "run.yaml").read_bytes() == before and not events(tiny_run, "config_change")
