"""Hugging Face folders: parity with transformers both ways, sharding, clean names, bad input."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from helpers_model import export, hf_model, tiny_model, train_tokenizer
from llm360.errors import UserError
from llm360.model.hf import load_args, load_hf, load_state_dict, save_hf
from llm360.model.llama import Llama

transformers = pytest.importorskip("transformers")

VARIANTS = {
    "tiny": ("tiny", {}),
    "tiny-untied-mha": ("tiny", dict(tie_embeddings=False, n_kv_heads=4)),
    "tiny-gqa-theta": ("tiny", dict(n_heads=8, n_kv_heads=2, rope_theta=500000.0, norm_eps=1e-6)),
    "demo": ("demo", dict(vocab_size=1000)),
    # the 1b shape at one layer and a smaller vocabulary: 22 layers do not fit a CPU test
    "1b-one-layer": ("1b", dict(n_layers=1, vocab_size=2048, max_seq_len=64)),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_logits_match_transformers(tmp_path, variant):
    preset, overrides = VARIANTS[variant]
    torch.manual_seed(0)
    model, args = tiny_model(seed=11, preset=preset, **overrides)
    export(model, args, tmp_path)
    hf = hf_model(tmp_path)
    assert sum(p.numel() for p in hf.parameters()) == sum(p.numel() for p in model.parameters())
    x = torch.randint(0, args.vocab_size, (2, 48))
    with torch.no_grad():
        diff = (model(x) - hf(x).logits).abs().max().item()
    assert diff <= 1e-4


def test_folder_layout_and_config(tmp_path):
    tok = train_tokenizer(tmp_path / "tok")
    model, args = tiny_model()
    save_hf(model, args, tmp_path / "ck", tokenizer_dir=tok, bos_id=0, eos_id=0)
    ck = tmp_path / "ck"
    assert sorted(p.name for p in ck.iterdir()) == ["config.json", "generation_config.json", "model.safetensors",
                                                    "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"]
    config = json.loads((ck / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["model_type"] == "llama"
    assert config["tie_word_embeddings"] is True and config["torch_dtype"] == "float32"
    assert config["num_key_value_heads"] == args.n_kv_heads and config["rope_scaling"] is None
    assert json.loads((ck / "generation_config.json").read_text()) == {"bos_token_id": 0, "eos_token_id": 0}
    names = set(load_file(ck / "model.safetensors"))
    assert "lm_head.weight" not in names  # tied
    assert {"model.embed_tokens.weight", "model.norm.weight", "model.layers.1.self_attn.k_proj.weight",
            "model.layers.0.mlp.gate_proj.weight", "model.layers.0.post_attention_layernorm.weight"} <= names
    assert load_args(ck) == args
    # transformers' own config and tokenizer read it
    assert transformers.AutoConfig.from_pretrained(ck).num_hidden_layers == args.n_layers
    assert transformers.AutoTokenizer.from_pretrained(ck).eos_token == "<|endoftext|>"


def test_roundtrip_is_exact(tmp_path):
    model, args = tiny_model(seed=4, tie_embeddings=False)
    save_hf(model, args, tmp_path)
    loaded, loaded_args = load_hf(tmp_path)
    assert loaded_args == args
    for name, p in model.state_dict().items():
        assert torch.equal(p, loaded.state_dict()[name]), name
    x = torch.randint(0, args.vocab_size, (2, 16))
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_sharded_save_loads_in_transformers_and_back(tmp_path):
    torch.manual_seed(0)
    model, args = tiny_model(seed=9, tie_embeddings=False)
    save_hf(model, args, tmp_path, max_shard_bytes=200_000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 1 and files[0] == f"model-00001-of-{len(files):05d}.safetensors"
    assert not (tmp_path / "model.safetensors").exists()
    x = torch.randint(0, args.vocab_size, (2, 16))
    with torch.no_grad():
        assert (model(x) - hf_model(tmp_path)(x).logits).abs().max() <= 1e-4
        assert torch.equal(load_hf(tmp_path)[0](x), model(x))


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("sharded", [False, True])
def test_loads_folders_saved_by_transformers(tmp_path, tied, sharded):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                      rms_norm_eps=1e-6, rope_theta=50000.0, tie_word_embeddings=tied)
    hf = transformers.LlamaForCausalLM(config).eval()
    hf.save_pretrained(tmp_path, max_shard_size="40KB" if sharded else "5GB")
    assert (tmp_path / "model.safetensors.index.json").exists() == sharded
    model, args = load_hf(tmp_path)
    assert args.tie_embeddings == tied and args.n_kv_heads == 2 and args.norm_eps == 1e-6 and args.rope_theta == 50000.0
    x = torch.randint(0, 300, (2, 20))
    with torch.no_grad():
        assert (model(x) - hf(x).logits).abs().max() <= 1e-4


def test_compiled_and_checkpoint_wrapped_models_save_clean_names(tmp_path):
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    clean, args = tiny_model(seed=2)
    model, _ = tiny_model(seed=2)
    compiled = torch.compile(model, backend="eager")  # the wrapper adds `_orig_mod.`; the backend does not matter
    compiled(torch.randint(0, args.vocab_size, (1, 8)))
    assert all(k.startswith("_orig_mod.") for k in compiled.state_dict())
    save_hf(compiled, args, tmp_path / "compiled")
    # activation checkpointing wraps each block; parameter names then carry the wrapper
    for i, block in enumerate(model.layers):
        model.layers[i] = checkpoint_wrapper(block)
    named = dict(model.named_parameters())
    assert any("_checkpoint_wrapped_module" in k for k in named)
    save_hf(named, args, tmp_path / "wrapped")
    for folder in ("compiled", "wrapped"):
        names = set(load_file(tmp_path / folder / "model.safetensors"))
        assert all(n.startswith("model.") for n in names), names
        loaded, _ = load_hf(tmp_path / folder)
        for name, p in clean.state_dict().items():
            assert torch.equal(loaded.state_dict()[name], p), name


def test_load_state_dict_uses_llm360_names(tmp_path):
    model, args = tiny_model()
    save_hf(model.state_dict(), args, tmp_path)  # a bare state dict works too
    assert set(load_state_dict(tmp_path)) == set(model.state_dict())


# ---------------------------------------------------------------------------------------------
# bad input: one clear sentence each


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_hf(tmp_path / "nope")
    with pytest.raises(UserError, match="not a checkpoint: it has no config.json"):
        load_hf(tmp_path)


def test_not_llama_or_unsupported_config(tmp_path):
    model, args = tiny_model()
    save_hf(model, args, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    with pytest.raises(UserError, match="neither a llama nor a crystalcoder config"):
        load_hf(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**config, "rope_scaling": {"rope_type": "linear", "factor": 2.0}}))
    with pytest.raises(UserError, match="rope scaling"):
        load_hf(tmp_path)


def test_missing_unexpected_and_misshapen_tensors(tmp_path):
    model, args = tiny_model()
    save_hf(model, args, tmp_path)
    path = tmp_path / "model.safetensors"
    tensors = load_file(path)

    broken = dict(tensors)
    del broken["model.layers.1.mlp.up_proj.weight"]
    save_file(broken, path)
    with pytest.raises(UserError, match=r"missing tensor model\.layers\.1\.mlp\.up_proj\.weight"):
        load_hf(tmp_path)

    save_file({**tensors, "model.layers.7.self_attn.q_proj.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(UserError, match=r"unexpected tensor model\.layers\.7\.self_attn\.q_proj\.weight"):
        load_hf(tmp_path)

    save_file({**tensors, "vision_tower.weight": torch.zeros(2)}, path)
    with pytest.raises(UserError, match=r"unexpected tensor vision_tower\.weight"):
        load_hf(tmp_path)

    save_file({**tensors, "model.norm.weight": torch.ones(args.dim + 1)}, path)
    with pytest.raises(UserError, match=rf"model\.norm\.weight .* shape \({args.dim + 1},\) .* \({args.dim},\)"):
        load_hf(tmp_path)


def test_tokenizer_dir_without_tokenizer_is_an_error(tmp_path):
    model, args = tiny_model()
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no tokenizer files"):
        save_hf(model, args, tmp_path / "ck", tokenizer_dir=tmp_path / "empty")


def test_meta_built_model_is_not_needed_to_load(tmp_path):
    # loading never allocates a randomly initialized model first: parameters come from the file
    model, args = tiny_model()
    save_hf(model, args, tmp_path)
    loaded, _ = load_hf(tmp_path)
    assert isinstance(loaded, Llama) and not any(p.is_meta for p in loaded.parameters())
    assert not loaded.rope_cos.is_meta


def test_bf16_weights_save_as_bf16(tmp_path):
    model, args = tiny_model(seed=1)
    model = model.to(torch.bfloat16)
    save_hf(model, args, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["torch_dtype"] == "bfloat16"
    assert load_file(tmp_path / "model.safetensors")["model.norm.weight"].dtype == torch.bfloat16
    loaded, _ = load_hf(tmp_path, dtype=torch.bfloat16)
    for name, p in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], p), name
    x = torch.randint(0, args.vocab_size, (2, 16))
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_weight_file_problems(tmp_path):
    model, args = tiny_model()
    save_hf(model, args, tmp_path, max_shard_bytes=100_000)
    shard = sorted(tmp_path.glob("model-*.safetensors"))[-1]
    shard.unlink()
    with pytest.raises(UserError, match=f"lacks the weight file {shard.name}"):
        load_hf(tmp_path)
    for f in tmp_path.glob("model*"):
        f.unlink()
    (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(UserError, match="safetensors files only"):
        load_hf(tmp_path)


def test_trained_checkpoints_declare_their_context_and_end_of_text(tiny_run):
    """config.json says the tokenizer's end-of-text id, as does generation_config.json, so
    transformers' generate stops on it; the init checkpoint too. Older folders without it still load."""
    import transformers

    from llm360.config import load_run_config
    from llm360.train.trainer import run_training

    run_training(tiny_run, load_run_config(tiny_run))
    manifest = json.loads((tiny_run / "data" / "manifest.json").read_text())
    eos = manifest["tokenizer"]["eos_id"]
    for name in ("init", "ckpt_002"):
        folder = tiny_run / "checkpoints" / name
        config = json.loads((folder / "config.json").read_text())
        assert (config["eos_token_id"], config["bos_token_id"]) == (eos, None)
        assert json.loads((folder / "generation_config.json").read_text()) == {"eos_token_id": eos}

    # a model whose logits are all equal picks token 0 greedily: the end-of-text of llm360's tokenizers
    assert eos == 0
    folder = tiny_run / "checkpoints" / "ckpt_002"
    state = load_state_dict(folder)
    args = load_args(folder)
    key = "tok_embeddings.weight" if args.tie_embeddings else "output.weight"
    state[key] = torch.zeros_like(state[key])
    out = tiny_run / "flat"
    save_hf(state, args, out, tokenizer_dir=tiny_run / "data" / "tokenizer")
    hf = transformers.AutoModelForCausalLM.from_pretrained(out)
    ids = torch.tensor([[5, 6, 7]])
    generated = hf.generate(ids, max_new_tokens=6, do_sample=False)
    assert generated[0, 3:].tolist() == [eos]  # stopped at end-of-text, not after 6 tokens

    # a folder from before: no eos, the preset's context
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "eos_token_id": None, "max_position_embeddings": 512}))
    assert load_args(folder).max_seq_len == 512 and load_hf(folder)[0] is not None
