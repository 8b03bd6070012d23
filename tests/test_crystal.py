"""CrystalCoder: its shape and µP pieces, its init, its parameter roles, its Hugging Face folder
(parity with the shipped modeling code, a bitwise round trip), and generation and scoring with it."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from helpers_model import tiny_model
from llm360.errors import UserError
from llm360.model.args import checkpoint_format
from llm360.model.generate import generate, score_tokens
from llm360.model.hf import load_args, load_hf, save_hf
from llm360.model.llama import Llama, Rotary, model_args, num_params, param_roles

transformers = pytest.importorskip("transformers")


def crystal_model(seed: int = 0, **overrides) -> tuple[Llama, object]:
    """crystal-tiny with weights lively enough that every part shows in the logits: larger
    matrices than the published init, and norms and biases away from 1 and 0."""
    model, args = tiny_model(seed, preset="crystal-tiny", init_std=0.3, embedding_init_std=0.5, **overrides)
    gen = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for name, role in param_roles(model).items():
            if role in ("norm", "bias"):
                p = model.get_parameter(name)
                p.add_(torch.randn(p.shape, generator=gen) * 0.2)
    return model, args


def hf_crystal(folder):
    return transformers.AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True,
                                                             dtype=torch.float32).eval()


def test_crystal_7b_parameter_count_from_the_published_shape():
    V, D, L, F_, S = 32032, 4096, 32, 10922, 2048
    per_layer = (D * 3 * D + 3 * D) + (D * D + D) + 2 * (D * F_ + F_) + (F_ * D + D) + 2 * 2 * D
    expected = V * D + L * per_layer + 2 * D  # tied head, final LayerNorm
    args = model_args("crystal-7b")
    with torch.device("meta"):
        model = Llama(args)
    assert sum(p.numel() for p in model.parameters()) == expected == num_params(args)
    assert (args.vocab_size, args.dim, args.n_layers, args.n_heads, args.ffn_dim, args.max_seq_len) == (V, D, L, 32, F_, S)
    assert args.rope_dim == 32 and args.head_dim == 128 and args.output_scale == pytest.approx(0.13875)


def test_amber_init_has_no_depth_scaling():
    model, args = tiny_model(seed=0, preset="tiny", init="normal", dim=128, n_heads=4, n_kv_heads=4)
    wo = model.layers[0].attention.wo.weight.std().item()
    assert abs(wo - 0.02) < 0.002 and model_args("amber-7b").init == "normal"


def test_crystal_init_is_truncated_with_three_stds():
    model, args = tiny_model(seed=1, preset="crystal-tiny", dim=128, n_heads=4, n_kv_heads=4, rotary_dim=8)
    trunc = 0.8796  # std of a normal truncated at 2 std, over its std
    emb, wq = model.tok_embeddings.weight, model.layers[0].attention.wq.weight
    w2 = model.layers[1].feed_forward.w2.weight
    # the published output std, 0.00228125, is 0.01825 / sqrt(2 * 32 layers)
    out_std = 0.01825 / (2 * args.n_layers) ** 0.5
    with torch.device("meta"):
        assert Llama(model_args("crystal-7b"))._init_std("layers.0.attention.wo.weight", "hidden") == 0.00228125
    for w, std in ((emb, 0.073), (wq, 0.01825), (w2, out_std)):
        assert abs(w.std().item() - std * trunc) < 0.08 * std
        assert w.abs().max().item() <= 2 * std
    assert torch.all(model.layers[0].attention.wq.bias == 0) and torch.all(model.norm.bias == 0)
    assert torch.all(model.norm.weight == 1)


def test_param_roles():
    model, args = tiny_model(preset="crystal-tiny")
    roles = param_roles(model)
    counts = {r: list(roles.values()).count(r) for r in set(roles.values())}
    L = args.n_layers
    assert counts == {"embedding": 1, "norm": 2 * (2 * L + 1), "bias": 7 * L, "hidden": 7 * L}
    assert roles["layers.0.feed_forward.w2.weight"] == "hidden" and roles["layers.0.attention.wq.bias"] == "bias"
    llama, _ = tiny_model(tie_embeddings=False)
    compiled = torch.compile(llama, backend="eager")  # wrapper prefixes keep their roles
    roles = param_roles(compiled)
    assert roles["_orig_mod.output.weight"] == "output" and roles["_orig_mod.norm.weight"] == "norm"
    assert "bias" not in roles.values()


def test_rotary_turns_only_the_first_dims_in_interleaved_pairs():
    args = model_args("crystal-tiny")
    rotary = Rotary(args)
    cos, sin = rotary.tables()
    x = torch.randn(1, args.max_seq_len, 1, args.head_dim)
    y = rotary(x, cos[None, :, None], sin[None, :, None])
    assert torch.equal(y[..., args.rope_dim:], x[..., args.rope_dim:])
    torch.testing.assert_close(y[:, 0], x[:, 0])  # position 0 does not turn
    pairs = lambda t: t[..., :args.rope_dim].unflatten(-1, (-1, 2)).norm(dim=-1)  # noqa: E731
    torch.testing.assert_close(pairs(y), pairs(x))  # a rotation of each (2i, 2i+1) pair
    # pair 0 turns by the position's angle: complex multiplication by e^{i t}
    t = 5
    z = torch.complex(x[0, t, 0, 0], x[0, t, 0, 1]) * torch.exp(torch.tensor(1j * t))
    torch.testing.assert_close(torch.stack((z.real, z.imag)), y[0, t, 0, :2])


@pytest.mark.parametrize("overrides, words", [
    ({"rotary_dim": 5}, "model.rotary_dim 5 must be even"),
    ({"rotary_dim": 32}, "model.rotary_dim 32 must be even and at most head_dim 16"),
    ({"norm": "batchnorm"}, "model.norm must be one of rmsnorm, layernorm"),
    ({"attention_scale": "1/2"}, "model.attention_scale"),
    ({"embedding_scale": 0.0}, "model.embedding_scale must be > 0"),
])
def test_impossible_crystal_settings_name_the_key(overrides, words):
    with pytest.raises(UserError, match=words):
        model_args("crystal-tiny", **overrides)


@pytest.mark.parametrize("preset, overrides, words", [
    ("crystal-tiny", {"n_kv_heads": 2}, "model.n_kv_heads .* crystalcoder checkpoint format has no grouped-query"),
    ("crystal-tiny", {"rope_pairing": "half"}, "model.rope_pairing must be 'interleaved'"),
    ("tiny", {"bias": True}, "model.bias must be False with model.norm=rmsnorm: the llama checkpoint format"),
    ("tiny", {"rotary_dim": 8}, "model.rotary_dim must be None"),
    ("tiny", {"embedding_scale": 2.0}, "model.embedding_scale"),
])
def test_a_format_refuses_what_it_cannot_hold_before_writing(tmp_path, preset, overrides, words):
    args = model_args(preset, **overrides)
    with pytest.raises(UserError, match=words):
        checkpoint_format(args)
    model = Llama(args)
    with pytest.raises(UserError, match=words):
        save_hf(model, args, tmp_path / "ck")
    assert not (tmp_path / "ck").exists()


def test_folder_is_the_published_crystalcoder_layout(tmp_path):
    model, args = crystal_model()
    save_hf(model, args, tmp_path)
    assert {"configuration_crystalcoder.py", "modeling_crystalcoder.py"} <= {p.name for p in tmp_path.iterdir()}
    c = json.loads((tmp_path / "config.json").read_text())
    assert c["model_type"] == "crystalcoder" and c["activation_function"] == "swiglu"
    assert (c["n_embd"], c["n_inner"], c["n_layer"], c["n_head"], c["rotary_dim"]) == (64, 176, 2, 4, 4)
    assert c["mup_embeddings_scale"] == 14.6 and c["mup_width_scale"] == 0.0625 and c["mup_output_alpha"] == 2.22
    assert c["mup_scale_qk_dot_by_d"] is True and c["position_embedding_type"] == "rotary"
    assert c["auto_map"]["AutoModelForCausalLM"] == "modeling_crystalcoder.CrystalCoderLMHeadModel"
    w = load_file(tmp_path / "model.safetensors")
    D = args.dim
    assert w["transformer.h.0.attn.c_attn.weight"].shape == (D, 3 * D)
    assert w["transformer.h.1.mlp.c_fc2.weight"].shape == (D, args.ffn_dim)  # Conv1D: (in, out)
    assert torch.equal(w["transformer.h.1.mlp.c_fc2.weight"], model.layers[1].feed_forward.w1.weight.T)
    assert torch.equal(w["transformer.h.0.attn.c_attn.weight"][:, D:2 * D], model.layers[0].attention.wk.weight.T)
    assert "lm_head.weight" not in w and "transformer.ln_f.bias" in w


@pytest.mark.parametrize("tied", [True, False])
def test_logits_match_the_shipped_modeling_code(tmp_path, tied):
    model, args = crystal_model(seed=3, tie_embeddings=tied)
    save_hf(model, args, tmp_path)
    hf = hf_crystal(tmp_path)
    assert sum(p.numel() for p in hf.parameters()) == sum(p.numel() for p in model.parameters())
    x = torch.randint(0, args.vocab_size, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, theirs = model(x), hf(x).logits
    assert ours.std() > 0.2  # the logits are not flat: every part of the model shows in them
    assert (ours - theirs).abs().max().item() <= 1e-4


def test_roundtrip_is_bitwise(tmp_path):
    model, args = crystal_model(seed=4, tie_embeddings=False)
    save_hf(model, args, tmp_path)
    loaded, loaded_args = load_hf(tmp_path)
    assert loaded_args == args == load_args(tmp_path)
    for name, p in model.state_dict().items():
        assert torch.equal(p, loaded.state_dict()[name]), name
    x = torch.randint(0, args.vocab_size, (2, 16))
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    save_hf(loaded, loaded_args, tmp_path / "again")  # and back to the same bytes
    assert (tmp_path / "again" / "model.safetensors").read_bytes() == (tmp_path / "model.safetensors").read_bytes()


def test_greedy_generation_and_scoring_agree_with_transformers(tmp_path):
    model, args = crystal_model(seed=5)
    save_hf(model, args, tmp_path)
    hf = hf_crystal(tmp_path)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, args.vocab_size, (n,), generator=g).tolist() for n in (9, 4)]
    ours = generate(model, prompts, 8)
    for prompt, row in zip(prompts, ours):
        theirs = hf.generate(torch.tensor([prompt]), max_new_tokens=8, min_new_tokens=8, do_sample=False,
                             pad_token_id=0)
        assert row == theirs[0, len(prompt):].tolist()
    pairs = [(p, torch.randint(0, args.vocab_size, (3,), generator=g).tolist()) for p in prompts]
    for (ctx, cont), (logprob, _) in zip(pairs, score_tokens(model, pairs)):
        with torch.no_grad():
            lp = F.log_softmax(hf(torch.tensor([ctx + cont[:-1]])).logits[0], dim=-1)
        expected = lp[len(ctx) - 1:].gather(-1, torch.tensor(cont)[:, None]).sum().item()
        assert abs(logprob - expected) < 1e-4
