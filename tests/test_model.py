"""The Llama itself: sizes, presets, seeded init, meta construction, KV cache and padding."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import llm360
from helpers_model import tiny_model
from llm360.errors import UserError
from llm360.model.llama import PRESETS, Block, Llama, flops_per_token, model_args, num_params


def meta_count(preset: str) -> int:
    with torch.device("meta"):
        model = Llama(model_args(preset))
    return sum(p.numel() for p in model.parameters())


def test_amber_7b_has_llama_7b_parameter_count():
    assert meta_count("amber-7b") == 6_738_415_616
    assert num_params(model_args("amber-7b")) == 6_738_415_616
    a = PRESETS["amber-7b"]
    shape = (a.n_layers, a.dim, a.n_heads, a.n_kv_heads, a.ffn_dim, a.norm_eps, a.tie_embeddings)
    assert shape == (32, 4096, 32, 32, 11008, 1e-6, False)


def test_1b_count_and_flops():
    n = num_params(model_args("1b"))
    assert n == meta_count("1b") == 1_100_048_384  # TinyLlama-1.1B
    args = model_args("1b")
    n_no_emb = n - 32000 * 2048
    assert num_params(args, exclude_embedding=True) == n_no_emb
    assert flops_per_token(args, 2048) == 6 * n_no_emb + 12 * 22 * 32 * 64 * 2048


def test_presets_and_overrides():
    assert set(PRESETS) >= {"tiny", "demo", "1b", "amber-7b", "crystal-7b", "crystal-tiny"}
    args = model_args("tiny", vocab_size=123)
    assert args.vocab_size == 123 and PRESETS["tiny"].vocab_size != 123  # presets stay untouched
    assert args.head_dim == args.dim // args.n_heads
    with pytest.raises(UserError, match="unknown model preset 'huge'.*tiny, demo"):
        model_args("huge")
    with pytest.raises(UserError, match="unknown model field 'hidden'"):
        model_args("tiny", hidden=3)
    with pytest.raises(UserError, match="not divisible"):
        model_args("tiny", n_kv_heads=3)


def test_model_args_import_no_torch():
    """The config checks a model at load time (and `llm360 --help` stays fast): no torch for that."""
    code = ("import sys, llm360.model.args, llm360.model; assert 'torch' not in sys.modules, 'torch imported'; "
            "from llm360.model import PRESETS, ModelArgs, flops_per_token, model_args, num_params")
    env = {**os.environ, "PYTHONPATH": str(Path(llm360.__file__).parents[1])}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_llama_reexports_the_args():
    from llm360.model import args, llama

    for name in ("ModelArgs", "PRESETS", "model_args", "num_params", "flops_per_token"):
        assert getattr(llama, name) is getattr(args, name)


@pytest.mark.parametrize("overrides, words", [
    ({"n_heads": 0}, "model.n_heads must be at least 1"),
    ({"dim": 62}, "model.dim 62 is not divisible by model.n_heads 4"),
    ({"n_kv_heads": 3}, "model.n_heads 4 is not divisible by model.n_kv_heads 3"),
    ({"dim": 20}, "head_dim 5 .* must be even"),
    ({"rope_theta": 0.0}, "model.rope_theta"),
])
def test_impossible_shapes_name_the_key(overrides, words):
    with pytest.raises(UserError, match=words):
        model_args("tiny", **overrides)


def test_layers_are_separate_blocks():
    model, _ = tiny_model()
    assert isinstance(model.layers, torch.nn.ModuleList)
    assert all(isinstance(b, Block) for b in model.layers)


def test_init_is_seeded_and_scaled():
    a, args = tiny_model(seed=7, tie_embeddings=False)
    b, _ = tiny_model(seed=7, tie_embeddings=False)
    c, _ = tiny_model(seed=8, tie_embeddings=False)
    for (name, pa), pb, pc in zip(a.named_parameters(), b.parameters(), c.parameters()):
        assert torch.equal(pa, pb), name
        if "norm" in name:
            assert torch.all(pa == 1)
        else:
            assert not torch.equal(pa, pc), name
    std = a.layers[0].feed_forward.w1.weight.std().item()
    out_std = a.layers[0].feed_forward.w2.weight.std().item()
    assert abs(std - 0.02) < 0.002
    assert abs(out_std - 0.02 / math.sqrt(2 * args.n_layers)) < 0.002


def test_meta_construction_equals_direct_init():
    direct, args = tiny_model(seed=3)
    with torch.device("meta"):
        model = Llama(args)
    assert model.tok_embeddings.weight.is_meta
    model.to_empty(device="cpu")
    model.init_weights(3)
    for (name, p), q in zip(direct.state_dict().items(), model.state_dict().values()):
        assert torch.equal(p, q), name
    x = torch.randint(0, args.vocab_size, (2, 20))
    with torch.no_grad():
        assert torch.equal(direct(x), model(x))  # rotary tables rebuilt too


@pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")
def test_init_of_fsdp2_sharded_model_equals_direct_init(tmp_path):
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    direct, args = tiny_model(seed=5)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        with torch.device("meta"):
            model = Llama(args)
        for block in model.layers:
            fully_shard(block)
        fully_shard(model)
        model.to_empty(device="cpu")
        model.init_weights(5)
        for name, p in direct.state_dict().items():
            assert torch.equal(model.state_dict()[name].full_tensor(), p), name
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("preset", ["tiny", "crystal-tiny"])
def test_kv_cache_decoding_equals_full_forward(preset):
    torch.manual_seed(0)
    model, args = tiny_model(seed=1, preset=preset, init_std=0.3)
    x = torch.randint(0, args.vocab_size, (3, 24))
    with torch.no_grad():
        full = model(x)  # (B, T, V)
        cache = model.new_cache(3, 32)
        parts = [model(x[:, :10], cache=cache, start_pos=0)]
        parts.append(model(x[:, 10:14], cache=cache, start_pos=10))  # several tokens after a prefix
        for t in range(14, 24):
            parts.append(model(x[:, t:t + 1], cache=cache, start_pos=t))
        last = model(x[:, :24], last_only=True)
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(last, full[:, -1:], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("preset", ["tiny", "crystal-tiny"])
def test_left_padding_with_mask_equals_unpadded_rows(preset):
    torch.manual_seed(0)
    model, args = tiny_model(seed=2, preset=preset, init_std=0.3)
    rows = [torch.randint(1, args.vocab_size, (n,)) for n in (12, 7, 3)]
    T = 12
    pad = torch.tensor([T - len(r) for r in rows])
    x = torch.zeros(3, T, dtype=torch.long)
    for i, r in enumerate(rows):
        x[i, T - len(r):] = r
    key_mask = torch.arange(T)[None] >= pad[:, None]
    positions = (torch.arange(T)[None] - pad[:, None]).clamp(min=0)
    with torch.no_grad():
        padded = model(x, positions=positions, key_mask=key_mask)
        assert torch.isfinite(padded).all()  # padding queries must not produce NaN
        for i, r in enumerate(rows):
            alone = model(r[None])
            torch.testing.assert_close(padded[i, T - len(r):], alone[0], atol=1e-4, rtol=1e-4)


def test_too_long_input_is_a_user_error():
    model, args = tiny_model()
    with pytest.raises(UserError, match="exceeds the model context"):
        model(torch.zeros(1, args.max_seq_len + 1, dtype=torch.long))


# µP's scaled-down logits want a larger base learning rate at this width
@pytest.mark.parametrize("preset, lr", [("tiny", 3e-3), ("crystal-tiny", 1e-2)])
def test_training_step_reduces_loss(preset, lr):
    torch.manual_seed(0)
    model, args = tiny_model(seed=0, preset=preset)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    x = torch.randint(0, args.vocab_size, (4, 33))
    losses = []
    for _ in range(20):
        logits = model(x[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, args.vocab_size), x[:, 1:].reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 1.0
