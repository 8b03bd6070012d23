"""The files of sharded checkpoints: streamed safetensors hashed while written, and trainer-state
rows written by W ranks read back by any number of processes."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from safetensors.torch import load_file

from llm360.errors import UserError
from llm360.rundir import Checkpoint, has_trainer_state, missing_trainer_state, resume_problems, state_shard_file
from llm360.train.shards import RowShards, SafetensorsStream, chunk_rows, write_rows_file
from llm360.utils import atomic_write_json


def test_a_streamed_file_is_plain_safetensors_and_its_hash_is_that_of_its_bytes(tmp_path):
    tensors = {"b": torch.randn(5, 3).to(torch.bfloat16), "a": torch.arange(7, dtype=torch.int64),
               "s": torch.tensor(3.0)}
    path = tmp_path / "x.safetensors"
    stream = SafetensorsStream(path, [(n, t.dtype, tuple(t.shape)) for n, t in tensors.items()], {"format": "pt"})
    for name, t in tensors.items():
        stream.write(name, t)
    digest = stream.close()
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    back = load_file(path)  # the safetensors library is the oracle of the format
    assert back.keys() == tensors.keys() and all(torch.equal(back[n], t) for n, t in tensors.items())


def test_a_stream_refuses_tensors_out_of_order_or_missing(tmp_path):
    stream = SafetensorsStream(tmp_path / "x.safetensors", [("a", torch.float32, (2,)), ("b", torch.float32, (2,))], {})
    with pytest.raises(ValueError):
        stream.write("b", torch.zeros(2))
    stream.write("a", torch.zeros(2))
    with pytest.raises(ValueError):
        stream.close()


def test_rows_are_torch_chunks_cut():
    for n in (0, 1, 5, 64, 67):
        for world in (1, 2, 3, 4, 8):
            ours = [chunk_rows(n, world, r) for r in range(world)]
            theirs = [len(c) for c in torch.arange(n).chunk(world)] if n else []
            assert [e - s for s, e in ours if e > s] == theirs
            assert ours[0][0] == 0 and ours[-1][1] == n


@pytest.mark.parametrize("written_by", [1, 3, 4])
def test_rows_written_by_any_number_of_ranks_read_back_for_any_other(tmp_path, written_by):
    full = {"w::exp_avg": torch.randn(10, 4), "n::exp_avg_sq": torch.randn(3), "w::step": torch.tensor(7.0)}
    files = []
    for rank in range(written_by):
        part = {}
        for name, t in full.items():
            if t.dim() == 0:
                if rank == 0:
                    part[name] = (t, 0, ())
                continue
            start, end = chunk_rows(t.shape[0], written_by, rank)
            if end > start:
                part[name] = (t[start:end], start, tuple(t.shape))
        rel = state_shard_file(rank, written_by)
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        write_rows_file(tmp_path / rel, part, rank, written_by)
        files.append(rel)
    with RowShards(tmp_path, files) as shards:
        assert torch.equal(shards.rows("w::step"), full["w::step"])
        for readers in (1, 2, 4):
            for rank in range(readers):
                for name in ("w::exp_avg", "n::exp_avg_sq"):
                    start, end = chunk_rows(full[name].shape[0], readers, rank)
                    assert torch.equal(shards.rows(name, start, end), full[name][start:end])
    if written_by > 1:  # a file left out: the rows it held are named, never made up
        gap = f"rows 0..{chunk_rows(10, written_by, 0)[1] - 1} of w::exp_avg"
        with RowShards(tmp_path, files[1:]) as shards, pytest.raises(UserError, match=gap):
            shards.rows("w::exp_avg")


def test_what_makes_up_the_trainer_state_is_read_from_state_json_alone(tmp_path):
    ckpt = Checkpoint("ckpt_003", tmp_path / "ckpt_003", 12)
    files = [state_shard_file(r, 2) for r in range(2)] + ["trainer_state/rng.safetensors"]
    atomic_write_json(ckpt.path / "trainer_state" / "state.json", {"steps_done": 12, "world_size": 2, "files": files})
    for rel in files:
        (ckpt.path / rel).write_bytes(b"x")
    assert has_trainer_state(ckpt) and missing_trainer_state(ckpt) == []
    (ckpt.path / files[1]).unlink()
    assert missing_trainer_state(ckpt) == [files[1]] and not has_trainer_state(ckpt)
    problem, = resume_problems(ckpt)
    assert "ckpt_003" in problem and "shard-00001-of-00002" in problem and "2 process(es)" in problem
    # a checkpoint of the earlier layout: its two files
    state = json.loads((ckpt.path / "trainer_state" / "state.json").read_text())
    atomic_write_json(ckpt.path / "trainer_state" / "state.json", {k: v for k, v in state.items() if k != "files"})
    assert missing_trainer_state(ckpt) == ["trainer_state/optimizer.safetensors"]
