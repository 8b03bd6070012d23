"""Checkpoints in the Hugging Face folder format: config.json (a LlamaConfig), generation_config.json,
model.safetensors (or shards + model.safetensors.index.json) and a copy of the tokenizer files.

Such a folder loads with `transformers.AutoModelForCausalLM.from_pretrained(folder)` and with
lm-evaluation-harness as it is, and `load_hf` reads folders written by transformers'
`LlamaForCausalLM.save_pretrained` back. Weights are read and written with safetensors only.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import save_file

from llm360.errors import UserError
from llm360.model.llama import Llama, ModelArgs

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json")
# wrapper modules insert these into parameter names: torch.compile, activation checkpointing,
# DDP / FSDP1
WRAPPER_PARTS = {"_orig_mod", "_checkpoint_wrapped_module", "module", "_fsdp_wrapped_module"}
# old transformers versions saved the rotary inverse frequencies; they are recomputed anyway
IGNORED = re.compile(r"(model\.)?(layers\.\d+\.self_attn\.)?rotary_emb\.inv_freq")


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
    """llm360 name -> HF name for every tensor of this config, in model order."""
    names = {"tok_embeddings.weight": "model.embed_tokens.weight"}
    for i in range(args.n_layers):
        names |= {f"layers.{i}.{ours}": f"model.layers.{i}.{hf}" for ours, hf in LAYER_NAMES.items()}
    names["norm.weight"] = "model.norm.weight"
    if not args.tie_embeddings:
        names["output.weight"] = "lm_head.weight"
    return names


def to_hf_state_dict(state: dict[str, torch.Tensor], args: ModelArgs) -> dict[str, torch.Tensor]:
    """llm360 state dict (wrapper prefixes allowed) -> HF-named tensors on the CPU, in model order."""
    flat: dict[str, torch.Tensor] = {}
    for name, t in state.items():
        if hasattr(t, "full_tensor"):  # DTensor (FSDP2): gather the whole tensor
            t = t.full_tensor()
        flat[clean_name(name)] = t
    names = name_map(args)
    missing = [ours for ours in names if ours not in flat]
    if missing:
        raise ValueError(f"state dict lacks {missing[0]} (and {len(missing) - 1} more) for a Llama of this config")
    return {hf: flat[ours].detach().to("cpu").contiguous() for ours, hf in names.items()}


def from_hf_state_dict(tensors: dict[str, torch.Tensor], args: ModelArgs,
                       where: str = "the checkpoint") -> dict[str, torch.Tensor]:
    """HF-named tensors -> llm360 state dict, names and shapes checked against the config first."""
    tensors = {name: t for name, t in tensors.items() if not IGNORED.fullmatch(name)}
    if args.tie_embeddings:
        tensors.pop("lm_head.weight", None)  # some writers store the tied head too; it is the same tensor
    with torch.device("meta"):
        shapes = {name: tuple(p.shape) for name, p in Llama(args).state_dict().items()}
    names = name_map(args)
    for ours, hf in names.items():
        if hf not in tensors:
            raise UserError(f"{where} is missing tensor {hf}.")
        if tuple(tensors[hf].shape) != shapes[ours]:
            raise UserError(f"tensor {hf} in {where} has shape {tuple(tensors[hf].shape)} "
                            f"but config.json implies {shapes[ours]}.")
    known = set(names.values())
    for hf in tensors:
        if hf not in known:
            raise UserError(f"{where} has unexpected tensor {hf}, which a Llama of its config.json does not have.")
    return {ours: tensors[hf] for ours, hf in names.items()}


def hf_config(args: ModelArgs, dtype: torch.dtype = torch.float32, bos_id: int | None = None,
              eos_id: int | None = None) -> dict:
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
) -> None:
    """Write `model` (a Llama, wrapped or not, or its state dict) as a Hugging Face folder.

    Files larger than max_shard_bytes in total are split into model-0000i-of-0000N.safetensors
    with model.safetensors.index.json. The tokenizer files found in tokenizer_dir are copied.
    With FSDP2 (DTensor weights) every rank must call this: the full tensors are gathered.
    """
    state = model.state_dict() if isinstance(model, nn.Module) else model
    tensors = to_hf_state_dict(state, args)
    dtype = tensors["model.embed_tokens.weight"].dtype

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _write_json(folder / "config.json", hf_config(args, dtype, bos_id, eos_id))
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
    if len(shards) == 1:
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
    """ModelArgs from folder/config.json (ours or any transformers LlamaConfig without rope scaling)."""
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
    if c.get("model_type") != "llama":
        raise UserError(f"{path} is not a llama config (model_type is {c.get('model_type')!r}).")
    rope = c.get("rope_parameters") or {}
    if c.get("rope_scaling") or rope.get("rope_type", "default") != "default":
        raise UserError(f"{path} uses rope scaling {c.get('rope_scaling') or rope}, which llm360 does not support.")
    for key, ok in (("hidden_act", "silu"), ("attention_bias", False), ("mlp_bias", False)):
        if c.get(key, ok) != ok:
            raise UserError(f"{path} has {key}={c[key]!r}; llm360's Llama needs {key}={ok!r}.")
    try:
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
    except KeyError as e:
        raise UserError(f"{path} lacks the key {e.args[0]!r} that a llama config needs.") from None
    if c.get("head_dim") not in (None, args.head_dim):
        raise UserError(f"{path} has head_dim {c['head_dim']} but llm360 needs "
                        f"hidden_size / num_attention_heads = {args.head_dim}.")
    return args


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
    """The weights of a HF Llama folder (sharded or not) as a llm360 state dict, checked against
    its config.json."""
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
