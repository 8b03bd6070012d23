"""Shared pieces of the model tests: a tiny byte-level BPE tokenizer and seeded tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from llm360.model.hf import save_hf
from llm360.model.llama import Llama, ModelArgs, model_args

EOS = "<|endoftext|>"


def docstrings() -> list[str]:
    """Some real English text that ships with Python."""
    import collections
    import json as json_mod
    import os
    import pathlib
    import textwrap

    texts = []
    for mod in (collections, json_mod, os, pathlib, textwrap):
        for name in sorted(dir(mod)):
            doc = getattr(getattr(mod, name), "__doc__", None)
            if isinstance(doc, str) and len(doc) > 40:
                texts.append(doc)
    return texts


def train_tokenizer(folder: Path, vocab_size: int = 400) -> Path:
    """Train a byte-level BPE on stdlib docstrings; writes folder/tokenizer.json (+ config files)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(docstrings(), trainer)
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": EOS, "bos_token": EOS, "model_max_length": 256}))
    (folder / "special_tokens_map.json").write_text(json.dumps({"eos_token": EOS, "bos_token": EOS}))
    return folder


def tiny_model(seed: int = 0, preset: str = "tiny", **overrides) -> tuple[Llama, ModelArgs]:
    args = model_args(preset, **overrides)
    model = Llama(args)
    model.init_weights(seed)
    return model.eval(), args


def export(model: Llama, args: ModelArgs, folder: Path, **kw) -> Path:
    save_hf(model, args, folder, **kw)
    return folder


def hf_model(folder: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
