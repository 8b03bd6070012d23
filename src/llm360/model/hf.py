"""Checkpoints in the Hugging Face folder format: config.json, generation_config.json,
model.safetensors (or shards + model.safetensors.index.json) and a copy of the tokenizer files.

Two formats, chosen by the architecture (`llm360.model.args.checkpoint_format`):
- "llama", for RMSNorm models (LLaMA, Amber): a LlamaConfig and LlamaForCausalLM's tensor names.
  Such a folder loads with `transformers.AutoModelForCausalLM.from_pretrained(folder)` and with
  lm-evaluation-harness as it is, and `load_hf` reads folders written by transformers'
  `LlamaForCausalLM.save_pretrained` back.
- "crystalcoder", for LayerNorm models (CrystalCoder): LLM360's published CrystalCoder layout
  (GPT-2 names and keys, fused QKV, weights stored [in, out]) with its modeling code
  (`llm360.model.crystalcoder_hf`) copied in, so it loads with
  `from_pretrained(folder, trust_remote_code=True)`.
Weights are read and written with safetensors only.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import save_file

from llm360.errors import UserError
from llm360.model import crystalcoder_hf
from llm360.model.args import checkpoint_format
from llm360.model.llama import Llama, ModelArgs

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json")
# wrapper modules insert these into parameter names: torch.compile, activation checkpointing,
# DDP / FSDP1
WRAPPER_PARTS = {"_orig_mod", "_checkpoint_wrapped_module", "module", "_fsdp_wrapped_module"}
# old transformers versions saved the rotary inverse frequencies; they are recomputed anyway
IGNORED = re.compile(r"(model\.)?(layers\.\d+\.self_attn\.)?rotary_emb\.inv_freq")
CODE_FILES = tuple(crystalcoder_hf.HERE / f for f in crystalcoder_hf.FILES)


def clean_name(name: str) -> str:
    """Drop wrapper parts from a parameter name: `_orig_mod.layers.0._checkpoint_wrapped_module.x` -> `layers.0.x`."""
    return ".".join(part for part in name.split(".") if part not in WRAPPER_PARTS)


# llm360 name -> HF name inside layer N (model.layers.N. / layers.N.)
LAYER_NAMES = {
    "attention_norm.weight": "input_layernorm.weight",
    "attention.wq.weight": "self_attn.q_proj.weight",
    "attention.wk.weight": "self_attn.k_proj.weight",
    "attention.wv.weight": "self_attn.v_proj.weight",
    "attention.wo.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "feed_forward.w1.weight": "mlp.gate_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
}
def name_map(args: ModelArgs) -> dict[str, str]:
    """llm360 name -> HF Llama name for every tensor of this config, in model order."""
    names = {"tok_embeddings.weight": "model.embed_tokens.weight"}
    for i in range(args.n_layers):
        names |= {f"layers.{i}.{ours}": f"model.layers.{i}.{hf}" for ours, hf in LAYER_NAMES.items()}
    names["norm.weight"] = "model.norm.weight"
    if not args.tie_embeddings:
        names["output.weight"] = "lm_head.weight"
    return names


def llama_to_hf(state: dict[str, torch.Tensor], args: ModelArgs) -> dict[str, torch.Tensor]:
    return {hf: state[ours] for ours, hf in name_map(args).items()}


def llama_from_hf(tensors: dict[str, torch.Tensor], args: ModelArgs) -> dict[str, torch.Tensor]:
    return {ours: tensors[hf] for ours, hf in name_map(args).items()}


def llama_config(args: ModelArgs, dtype: torch.dtype, bos_id: int | None, eos_id: int | None) -> dict:
    """config.json of a LlamaConfig, readable by transformers 4.x (rope_theta) and 5.x (rope_parameters)."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": args.vocab_size,
        "hidden_size": args.dim,
        "intermediate_size": args.ffn_dim,
        "num_hidden_layers": args.n_layers,
        "num_attention_heads": args.n_heads,
        "num_key_value_heads": args.n_kv_heads,
        "head_dim": args.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": args.max_seq_len,
        "initializer_range": args.init_std,
        "rms_norm_eps": args.norm_eps,
        "rope_theta": args.rope_theta,
        "rope_scaling": None,
        "rope_parameters": {"rope_type": "default", "rope_theta": args.rope_theta},
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "pretraining_tp": 1,
        "tie_word_embeddings": args.tie_embeddings,
        "torch_dtype": str(dtype).removeprefix("torch."),
        "use_cache": True,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
    }


def llama_args(c: dict, path: Path) -> ModelArgs:
    """ModelArgs of a transformers LlamaConfig without rope scaling."""
    rope = c.get("rope_parameters") or {}
    if c.get("rope_scaling") or rope.get("rope_type", "default") != "default":
        raise UserError(f"{path} uses rope scaling {c.get('rope_scaling') or rope}, which llm360 does not support.")
    for key, ok in (("hidden_act", "silu"), ("attention_bias", False), ("mlp_bias", False)):
        if c.get(key, ok) != ok:
            raise UserError(f"{path} has {key}={c[key]!r}; llm360's Llama needs {key}={ok!r}.")
    heads = c["num_attention_heads"]
    args = ModelArgs(
        vocab_size=c["vocab_size"],
        dim=c["hidden_size"],
        n_layers=c["num_hidden_layers"],
        n_heads=heads,
        n_kv_heads=c.get("num_key_value_heads") or heads,
        ffn_dim=c["intermediate_size"],
        max_seq_len=c.get("max_position_embeddings", 2048),
        rope_theta=float(c.get("rope_theta", rope.get("rope_theta", 10000.0))),
        norm_eps=float(c.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(c.get("tie_word_embeddings", False)),
        init_std=float(c.get("initializer_range", 0.02)),
    )
    if c.get("head_dim") not in (None, args.head_dim):
        raise UserError(f"{path} has head_dim {c['head_dim']} but llm360 needs "
                        f"hidden_size / num_attention_heads = {args.head_dim}.")
    return args


# CrystalCoder: llm360 linear -> its Conv1D inside transformer.h.N (q, k and v are fused in attn.c_attn)
CRYSTAL_LINEARS = {"attention.wo": "attn.c_proj", "feed_forward.w3": "mlp.c_fc", "feed_forward.w1": "mlp.c_fc2",
                   "feed_forward.w2": "mlp.c_proj"}
CRYSTAL_NORMS = {"attention_norm": "ln_1", "ffn_norm": "ln_2"}


def crystal_to_hf(state: dict[str, torch.Tensor], args: ModelArgs) -> dict[str, torch.Tensor]:
    out = {"transformer.wte.weight": state["tok_embeddings.weight"]}
    for i in range(args.n_layers):
        ours, theirs = f"layers.{i}.", f"transformer.h.{i}."
        qkv = [f"{ours}attention.{w}" for w in ("wq", "wk", "wv")]
        out[theirs + "ln_1.weight"] = state[ours + "attention_norm.weight"]
        out[theirs + "ln_1.bias"] = state[ours + "attention_norm.bias"]
        out[theirs + "attn.c_attn.weight"] = torch.cat([state[f"{w}.weight"] for w in qkv]).T  # (D, 3D)
        out[theirs + "attn.c_attn.bias"] = torch.cat([state[f"{w}.bias"] for w in qkv])
        for norm, ln in CRYSTAL_NORMS.items():
            out[f"{theirs}{ln}.weight"] = state[f"{ours}{norm}.weight"]
            out[f"{theirs}{ln}.bias"] = state[f"{ours}{norm}.bias"]
        for linear, conv in CRYSTAL_LINEARS.items():
            out[f"{theirs}{conv}.weight"] = state[f"{ours}{linear}.weight"].T  # Conv1D: (in, out)
            out[f"{theirs}{conv}.bias"] = state[f"{ours}{linear}.bias"]
    out["transformer.ln_f.weight"], out["transformer.ln_f.bias"] = state["norm.weight"], state["norm.bias"]
    if not args.tie_embeddings:
        out["lm_head.weight"] = state["output.weight"]
    return out


def crystal_from_hf(tensors: dict[str, torch.Tensor], args: ModelArgs) -> dict[str, torch.Tensor]:
    # each parameter its own contiguous memory, not a view into the fused or transposed tensor
    own = lambda t: t.clone(memory_format=torch.contiguous_format)  # noqa: E731
    out = {"tok_embeddings.weight": tensors["transformer.wte.weight"]}
    for i in range(args.n_layers):
        ours, theirs = f"layers.{i}.", f"transformer.h.{i}."
        qkv = [f"{ours}attention.{w}" for w in ("wq", "wk", "wv")]
        for w, weight, bias in zip(qkv, tensors[theirs + "attn.c_attn.weight"].T.chunk(3),
                                   tensors[theirs + "attn.c_attn.bias"].chunk(3)):
            out[f"{w}.weight"], out[f"{w}.bias"] = own(weight), own(bias)
        for norm, ln in CRYSTAL_NORMS.items():
            out[f"{ours}{norm}.weight"] = tensors[f"{theirs}{ln}.weight"]
            out[f"{ours}{norm}.bias"] = tensors[f"{theirs}{ln}.bias"]
        for linear, conv in CRYSTAL_LINEARS.items():
            out[f"{ours}{linear}.weight"] = own(tensors[f"{theirs}{conv}.weight"].T)
            out[f"{ours}{linear}.bias"] = tensors[f"{theirs}{conv}.bias"]
    out["norm.weight"], out["norm.bias"] = tensors["transformer.ln_f.weight"], tensors["transformer.ln_f.bias"]
    if not args.tie_embeddings:
        out["output.weight"] = tensors["lm_head.weight"]
    return out


def crystal_config(args: ModelArgs, dtype: torch.dtype, bos_id: int | None, eos_id: int | None) -> dict:
    """config.json with the keys of LLM360's published CrystalCoder, and auto_map to the modeling
    code copied next to it. The logits' multiplier is mup_output_alpha * mup_width_scale."""
    return {
        "architectures": ["CrystalCoderLMHeadModel"],
        "model_type": "crystalcoder",
        "auto_map": {"AutoConfig": "configuration_crystalcoder.CrystalCoderConfig",
                     "AutoModelForCausalLM": "modeling_crystalcoder.CrystalCoderLMHeadModel"},
        "vocab_size": args.vocab_size,
        "n_embd": args.dim,
        "n_inner": args.ffn_dim,
        "n_layer": args.n_layers,
        "n_head": args.n_heads,
        "n_positions": args.max_seq_len,
        "rotary_dim": args.rope_dim,
        "rope_theta": args.rope_theta,
        "layer_norm_epsilon": args.norm_eps,
        "activation_function": "swiglu",
        "position_embedding_type": "rotary",
        "mup_embeddings_scale": args.embedding_scale,
        "mup_output_alpha": args.output_scale / args.hidden_lr_scale,
        "mup_width_scale": args.hidden_lr_scale,
        "mup_scale_qk_dot_by_d": args.attention_scale == "1/d",
        "initializer_range": args.init_std,
        "embedding_initializer_range": args.embedding_init_std,
        "tie_word_embeddings": args.tie_embeddings,
        "torch_dtype": str(dtype).removeprefix("torch."),
        "use_cache": False,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
    }


def crystal_args(c: dict, path: Path) -> ModelArgs:
    """ModelArgs of a CrystalCoder config.json (ours or LLM360's published one)."""
    for key, ok in (("activation_function", "swiglu"), ("position_embedding_type", "rotary")):
        if c.get(key, ok) != ok:
            raise UserError(f"{path} has {key}={c[key]!r}; llm360's CrystalCoder needs {key}={ok!r}.")
    width = float(c.get("mup_width_scale", 1.0))
    return ModelArgs(
        vocab_size=c["vocab_size"], dim=c["n_embd"], n_layers=c["n_layer"], n_heads=c["n_head"],
        n_kv_heads=c["n_head"], ffn_dim=c["n_inner"], max_seq_len=c.get("n_positions", 2048),
        rope_theta=float(c.get("rope_theta", 10000.0)), norm_eps=float(c.get("layer_norm_epsilon", 1e-5)),
        tie_embeddings=bool(c.get("tie_word_embeddings", True)), init_std=float(c.get("initializer_range", 0.02)),
        norm="layernorm", rotary_dim=c["rotary_dim"], rope_pairing="interleaved", bias=True,
        embedding_scale=float(c.get("mup_embeddings_scale", 1.0)),
        output_scale=float(c.get("mup_output_alpha", 1.0)) * width,
        attention_scale="1/d" if c.get("mup_scale_qk_dot_by_d") else "1/sqrt(d)", hidden_lr_scale=width,
        init="crystal", embedding_init_std=c.get("embedding_initializer_range"),
    )


@dataclass(frozen=True)
class Format:
    """One Hugging Face folder format: its config.json both ways, its tensors both ways (llm360
    names <-> its names, CPU tensors or meta ones), and the code files it ships."""
    config: Callable[[ModelArgs, torch.dtype, int | None, int | None], dict]
    args_of: Callable[[dict, Path], ModelArgs]
    to_hf: Callable[[dict[str, torch.Tensor], ModelArgs], dict[str, torch.Tensor]]
    from_hf: Callable[[dict[str, torch.Tensor], ModelArgs], dict[str, torch.Tensor]]
    code_files: tuple[Path, ...] = ()


FORMATS = {
    "llama": Format(llama_config, llama_args, llama_to_hf, llama_from_hf),
    "crystalcoder": Format(crystal_config, crystal_args, crystal_to_hf, crystal_from_hf, CODE_FILES),
}


def _meta_state(args: ModelArgs) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        return Llama(args).state_dict()


def to_hf_state_dict(state: dict[str, torch.Tensor], args: ModelArgs) -> dict[str, torch.Tensor]:
    """llm360 state dict (wrapper prefixes allowed) -> HF-named tensors on the CPU, in model order."""
    flat: dict[str, torch.Tensor] = {}
    for name, t in state.items():
        if hasattr(t, "full_tensor"):  # DTensor (FSDP2): gather the whole tensor
            t = t.full_tensor()
        flat[clean_name(name)] = t.detach()
    missing = [ours for ours in _meta_state(args) if ours not in flat]
    if missing:
        raise ValueError(f"state dict lacks {missing[0]} (and {len(missing) - 1} more) for a model of this config")
    tensors = FORMATS[checkpoint_format(args)].to_hf(flat, args)
    return {hf: t.to("cpu").contiguous() for hf, t in tensors.items()}


def from_hf_state_dict(tensors: dict[str, torch.Tensor], args: ModelArgs,
                       where: str = "the checkpoint") -> dict[str, torch.Tensor]:
    """HF-named tensors -> llm360 state dict, names and shapes checked against the config first."""
    tensors = {name: t for name, t in tensors.items() if not IGNORED.fullmatch(name)}
    if args.tie_embeddings:
        tensors.pop("lm_head.weight", None)  # some writers store the tied head too; it is the same tensor
    fmt = FORMATS[checkpoint_format(args)]
    expected = fmt.to_hf(_meta_state(args), args)  # the names and shapes this config has
    for hf, t in expected.items():
        if hf not in tensors:
            raise UserError(f"{where} is missing tensor {hf}.")
        if tuple(tensors[hf].shape) != tuple(t.shape):
            raise UserError(f"tensor {hf} in {where} has shape {tuple(tensors[hf].shape)} "
                            f"but config.json implies {tuple(t.shape)}.")
    for hf in tensors:
        if hf not in expected:
            raise UserError(f"{where} has unexpected tensor {hf}, which a model of its config.json does not have.")
    return fmt.from_hf(tensors, args)


def hf_config(args: ModelArgs, dtype: torch.dtype = torch.float32, bos_id: int | None = None,
              eos_id: int | None = None) -> dict:
    """config.json of this model in its checkpoint format."""
    return FORMATS[checkpoint_format(args)].config(args, dtype, bos_id, eos_id)


# --------------------------------------------------------------------------------------------
# saving


def save_hf(
    model: nn.Module | dict[str, torch.Tensor],
    args: ModelArgs,
    folder: str | os.PathLike,
    *,
    tokenizer_dir: str | os.PathLike | None = None,
    max_shard_bytes: int = 2 * 1024**3,
    bos_id: int | None = None,
    eos_id: int | None = None,
    dtype: torch.dtype | None = None,
) -> None:
    """Write `model` (a Llama, wrapped or not, or its state dict) as a Hugging Face folder, in
    the format of its architecture (see the module docstring). `model=None`: every file but the
    weights, which `dtype` describes (a sharded checkpoint streams them, train/checkpoint.py).

    Files larger than max_shard_bytes in total are split into model-0000i-of-0000N.safetensors
    with model.safetensors.index.json. The tokenizer files found in tokenizer_dir are copied.
    With FSDP2 (DTensor weights) every rank must call this: the full tensors are gathered.
    """
    fmt = FORMATS[checkpoint_format(args)]  # a model the format cannot hold stops before any file
    if tokenizer_dir is not None:  # so that generate (ours and transformers') stops on end-of-text
        declared_bos, declared_eos = special_token_ids(tokenizer_dir)
        bos_id = declared_bos if bos_id is None else bos_id
        eos_id = declared_eos if eos_id is None else eos_id
    state = model.state_dict() if isinstance(model, nn.Module) else model
    tensors = to_hf_state_dict(state, args) if state is not None else {}
    dtype = dtype or next(iter(tensors.values())).dtype  # the embeddings'

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _write_json(folder / "config.json", fmt.config(args, dtype, bos_id, eos_id))
    for code in fmt.code_files:
        shutil.copyfile(code, folder / code.name)
        _fsync(folder / code.name)
    gen = {k: v for k, v in (("bos_token_id", bos_id), ("eos_token_id", eos_id)) if v is not None}
    _write_json(folder / "generation_config.json", gen)

    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    if not tensors:
        pass
    elif len(shards) == 1:
        _write_safetensors(folder / "model.safetensors", shards[0])
    else:
        weight_map = {}
        for i, shard in enumerate(shards):
            file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            _write_safetensors(folder / file, shard)
            weight_map.update({name: file for name in shard})
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        _write_json(folder / "model.safetensors.index.json", index)

    if tokenizer_dir is not None:
        found = [f for f in TOKENIZER_FILES if (Path(tokenizer_dir) / f).is_file()]
        if not found:
            raise UserError(f"no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}) in {tokenizer_dir}.")
        for f in found:
            shutil.copyfile(Path(tokenizer_dir) / f, folder / f)
            _fsync(folder / f)


def special_token_ids(tokenizer_dir: str | os.PathLike) -> tuple[int | None, int | None]:
    """(bos id, eos id) that tokenizer_config.json (else special_tokens_map.json) declares, looked
    up in tokenizer.json; None for a token not declared or not in the vocabulary."""
    folder = Path(tokenizer_dir)
    declared: dict = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):  # the latter wins
        path = folder / name
        if path.is_file():
            declared.update({k: v for k, v in json.loads(path.read_text(encoding="utf-8")).items()
                             if k in ("bos_token", "eos_token") and v})
    if not declared or not (folder / "tokenizer.json").is_file():
        return None, None
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))

    def token_id(key: str) -> int | None:
        token = declared.get(key)
        token = token.get("content") if isinstance(token, dict) else token
        return tok.token_to_id(token) if isinstance(token, str) else None

    return token_id("bos_token"), token_id("eos_token")


def _write_json(path: Path, obj: dict) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def _write_safetensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    save_file(tensors, str(path), metadata={"format": "pt"})  # transformers wants format=pt
    _fsync(path)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------------
# loading


def load_args(folder: str | os.PathLike) -> ModelArgs:
    """ModelArgs from folder/config.json: ours, a transformers LlamaConfig without rope scaling,
    or LLM360's CrystalCoder config."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"checkpoint folder {folder} does not exist.")
    path = folder / "config.json"
    if not path.is_file():
        raise UserError(f"{folder} is not a checkpoint: it has no config.json.")
    try:
        c = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON ({e}).") from None
    fmt = FORMATS.get(c.get("model_type"))
    if fmt is None:
        raise UserError(f"{path} is neither a llama nor a crystalcoder config "
                        f"(model_type is {c.get('model_type')!r}).")
    try:
        return fmt.args_of(c, path)
    except KeyError as e:
        raise UserError(f"{path} lacks the key {e.args[0]!r} that a {c['model_type']} config needs.") from None


def _weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = sorted(set(weight_map.values()))
        for f in files:
            if not (folder / f).is_file():
                raise UserError(f"{folder} lacks the weight file {f} named in model.safetensors.index.json.")
        return [folder / f for f in files]
    if (folder / "model.safetensors").is_file():
        return [folder / "model.safetensors"]
    if (folder / "pytorch_model.bin").is_file():
        raise UserError(f"{folder} holds pytorch_model.bin; llm360 reads weights from .safetensors files only.")
    raise UserError(f"{folder} has no model.safetensors (nor model.safetensors.index.json).")


def load_state_dict(folder: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The weights of a HF folder (sharded or not, either format) as a llm360 state dict, checked
    against its config.json."""
    folder = Path(folder)
    args = load_args(folder)
    tensors: dict[str, torch.Tensor] = {}
    for file in _weight_files(folder):
        with safe_open(str(file), framework="pt", device=str(device)) as f:
            for name in f.keys():
                tensors[name] = f.get_tensor(name)
    return from_hf_state_dict(tensors, args, where=f"checkpoint {folder}")


def load_hf(folder: str | os.PathLike, *, device: str | torch.device = "cpu",
            dtype: torch.dtype = torch.float32) -> tuple[Llama, ModelArgs]:
    """The Llama stored in a HF folder, in eval mode, and its ModelArgs."""
    args = load_args(folder)
    state = load_state_dict(folder, device=device)
    with torch.device("meta"):  # no random init: the parameters come straight from the file
        model = Llama(args)
    model.load_state_dict({name: t.to(device=device, dtype=dtype) for name, t in state.items()}, assign=True)
    # the rotary tables are not in the file: build them on the device, in fp32 as at training
    model.init_rope(device)
    return model.eval(), args
