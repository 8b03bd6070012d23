"""The tokenizer: a byte-level BPE trained on a seeded sample of the sources, or an existing one.

Training is deterministic: the same sample text in the same order gives the same tokenizer.json,
byte for byte (HF `tokenizers` breaks merge ties by the pair itself). The sample is defined so
that every shard of a sharded prepare can draw it alone (`sample_plan`):

- sources share `tokenizer.sample_chars` equally, in config order; a source with less text than
  its share gives all it has and the rest passes to the sources after it;
- within a source, units (files, modules...) are read in a seeded order (`seeded_rng(seed,
  "tokenizer-sample", SOURCE)`), documents in their order inside a unit, until the share is
  reached; the last document is cut at the share.

The tokenizer written to RUN/data/tokenizer loads with `tokenizers.Tokenizer.from_file` and with
`transformers.AutoTokenizer.from_pretrained` (as PreTrainedTokenizerFast). It adds no BOS and no
EOS on its own: prepare appends EOS after every document, evaluation scores raw text.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from llm360.data.fim import FIM_TOKENS
from llm360.errors import UserError

EOS_TOKEN = "<|endoftext|>"
KNOWN_EOS = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "<|eos|>", "<|im_end|>", "[SEP]")


def train_bpe(texts: list[str], vocab_size: int, fim: bool = False):
    """A byte-level BPE with `EOS_TOKEN` as id 0, trained on `texts` in order; with `fim`, the
    FIM tokens are ids 1-3 (within `vocab_size`)."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        trainers,
    )

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()  # prepare cleans to NFC; raw text at eval time gets the same
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN, *(FIM_TOKENS if fim else ())],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer, length=len(texts))
    return tok


def resolve_existing(path: str | Path) -> tuple[Path, dict]:
    """(tokenizer.json path, {"eos_token", "config"}) of an existing tokenizer file or folder."""
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"tokenizer.path {path} does not exist")
    folder = path if path.is_dir() else path.parent
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.exists():
        raise UserError(
            f"tokenizer.path {path}: no tokenizer.json there (a fast tokenizer is needed; save one "
            f"with transformers' tokenizer.save_pretrained to get it)"
        )
    config = {}
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        if path.is_dir() and (folder / name).exists():
            try:
                config[name] = json.loads((folder / name).read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise UserError(f"{folder / name}: not valid JSON ({e.msg})") from None
    return file, config


def find_eos(tok, config: dict, where: str) -> tuple[str, int]:
    """The EOS token: from tokenizer_config / special_tokens_map, else a well-known name."""
    declared = None
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        value = config.get(name, {}).get("eos_token")
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str) and value:
            declared = value
            break
    candidates = [declared] if declared else list(KNOWN_EOS)
    for token in candidates:
        tid = tok.token_to_id(token)
        if tid is not None:
            return token, tid
    if declared:
        raise UserError(f"{where}: its eos_token {declared!r} is not in the vocabulary")
    raise UserError(
        f"{where}: no EOS token found; declare eos_token in tokenizer_config.json or use a "
        f"tokenizer with one of {', '.join(KNOWN_EOS)}"
    )


def load_existing(path: str | Path):
    """(Tokenizer, tokenizer.json path, eos_token, eos_id) of `tokenizer.path`."""
    from tokenizers import Tokenizer

    file, config = resolve_existing(path)
    try:
        tok = Tokenizer.from_file(str(file))
    except Exception as e:
        raise UserError(f"{file}: not a tokenizers tokenizer.json ({e})") from None
    eos, eos_id = find_eos(tok, config, str(path))
    return tok, file, eos, eos_id


def add_fim_tokens(tok) -> dict[str, int]:
    """Add StarCoder's FIM tokens as special tokens where missing (after the vocabulary, in
    FIM_TOKENS order, so the ids are deterministic); return their ids."""
    from tokenizers import AddedToken

    missing = [t for t in FIM_TOKENS if tok.token_to_id(t) is None]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in missing])
    return {t: tok.token_to_id(t) for t in FIM_TOKENS}


def write_tokenizer_dir(tokenizer_json: str | Path, out: Path, eos_token: str, seq_len: int) -> None:
    """RUN/data/tokenizer: tokenizer.json as given + the two small files transformers reads."""
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(tokenizer_json, out / "tokenizer.json")
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": eos_token,
        "bos_token": None,
        "unk_token": None,
        "pad_token": None,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": seq_len,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    (out / "special_tokens_map.json").write_text(json.dumps({"eos_token": eos_token}, indent=2) + "\n", encoding="utf-8")
