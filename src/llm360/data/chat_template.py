"""The chat template: how a conversation becomes tokens, and which of them carry the loss.

A conversation is rendered as

    <|system|>SYSTEM<|end|><|user|>QUESTION<|end|><|assistant|>ANSWER<|end|><|user|>...

with no other text between the markers (so no whitespace rule of any tokenizer can merge a
marker's neighbourhood differently in one place than another), and with `add_generation_prompt`
a final `<|assistant|>` for the model to answer after. There is no BOS: llm360's tokenizers add
none, and documents in pretraining were separated by EOS only.

The four markers (`CHAT_TOKENS`) are added to the tokenizer as special tokens, in that order,
after the existing vocabulary (ids vocab, vocab+1, ...), skipping any it already has; the model's
embedding grows to match (`llm360.model.llama.grow_embeddings`). The same rendering is stored as
the Jinja `chat_template` of tokenizer_config.json, so transformers'
`tokenizer.apply_chat_template` gives exactly the ids `encode_conversation` gives. Assistant
turns are wrapped in `{% generation %}` blocks, so transformers' `return_assistant_tokens_mask`
marks the same tokens as our loss mask.

The loss mask is 1 on an assistant turn's content and on the `<|end|>` that closes it (the model
must learn to stop), 0 on everything else: markers, system and user turns. A generating model
stops at `<|end|>`.
"""

from __future__ import annotations

import json
from pathlib import Path

from llm360.data.chat import ROLES, Message
from llm360.errors import UserError
from llm360.utils import atomic_write_text

ROLE_TOKENS = {role: f"<|{role}|>" for role in ROLES}
END_TOKEN = "<|end|>"
CHAT_TOKENS = (*ROLE_TOKENS.values(), END_TOKEN)  # the order their ids are given in

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('chat roles are system, user and assistant, not ' + message['role']) }}"
    "{% endif %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|assistant|>' }}{% generation %}{{ message['content'] + '<|end|>' }}{% endgeneration %}"
    "{% else %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


def add_chat_tokens(tok) -> dict[str, int]:
    """Add CHAT_TOKENS to a `tokenizers.Tokenizer` as special tokens where missing (after the
    vocabulary, in CHAT_TOKENS order, so the ids are deterministic); return their ids."""
    from tokenizers import AddedToken

    missing = [t for t in CHAT_TOKENS if tok.token_to_id(t) is None]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in missing])
    return {t: tok.token_to_id(t) for t in CHAT_TOKENS}


def write_chat_tokenizer(src: str | Path, out: str | Path) -> dict[str, int]:
    """Copy the tokenizer folder `src` (tokenizer.json, tokenizer_config.json,
    special_tokens_map.json) to `out` with the chat tokens added and `chat_template` set in
    tokenizer_config.json; return the chat tokens' ids. `out` may be `src`."""
    from tokenizers import Tokenizer

    src, out = Path(src), Path(out)
    if not (src / "tokenizer.json").is_file():
        raise UserError(f"{src}: no tokenizer.json there (a fast tokenizer is needed)")
    tok = Tokenizer.from_file(str(src / "tokenizer.json"))
    ids = add_chat_tokens(tok)
    config = _json(src / "tokenizer_config.json")
    config["chat_template"] = CHAT_TEMPLATE
    special = _json(src / "special_tokens_map.json")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "tokenizer.json", tok.to_str(pretty=True))
    atomic_write_text(out / "tokenizer_config.json", json.dumps(config, indent=2) + "\n")
    atomic_write_text(out / "special_tokens_map.json", json.dumps(special, indent=2) + "\n")
    return ids


def _json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e.msg})") from None


def render(messages, add_generation_prompt: bool = False, train_from: int = 0) -> tuple[str, list[tuple[int, int]]]:
    """(text as CHAT_TEMPLATE renders it, character spans that carry the loss): the content and
    closing `<|end|>` of each assistant turn from message index `train_from` on."""
    parts, spans, pos = [], [], 0
    for i, m in enumerate(_messages(messages)):
        head, body = ROLE_TOKENS[m.role], m.content + END_TOKEN
        if m.role == "assistant" and i >= train_from:
            spans.append((pos + len(head), pos + len(head) + len(body)))
        parts += [head, body]
        pos += len(head) + len(body)
    if add_generation_prompt:
        parts.append(ROLE_TOKENS["assistant"])
    return "".join(parts), spans


def encode_conversation(tok, messages, train_from: int = 0) -> tuple[list[int], list[int]]:
    """(ids, loss_mask) of a conversation with a `tokenizers.Tokenizer` holding the chat tokens:
    the ids of `apply_chat_template(messages, tokenize=True)`, and 1 on the tokens of assistant
    turns from message `train_from` on (DPO passes the prompt's length: only the answer counts)."""
    text, spans = render(messages, train_from=train_from)
    enc = _encode(tok, text)
    mask = [0] * len(enc.ids)
    k = 0
    for i, (start, end) in enumerate(enc.offsets):
        while k < len(spans) and spans[k][1] <= start:
            k += 1  # spans and tokens both run left to right
        mask[i] = int(k < len(spans) and spans[k][0] <= start and end <= spans[k][1])
    return enc.ids, mask


def encode_prompt(tok, messages) -> list[int]:
    """The ids of `apply_chat_template(messages, add_generation_prompt=True)`: the conversation so
    far and `<|assistant|>`, for generation or as a DPO prompt."""
    return _encode(tok, render(messages, add_generation_prompt=True)[0]).ids


def _encode(tok, text: str):
    missing = [t for t in CHAT_TOKENS if tok.token_to_id(t) is None]
    if missing:
        raise UserError(f"the tokenizer has no chat tokens {', '.join(missing)}; add them with write_chat_tokenizer")
    return tok.encode(text, add_special_tokens=False)


def _messages(messages) -> list[Message]:
    """Message objects from Messages or {"role", "content"} dicts (what transformers takes)."""
    return [m if isinstance(m, Message) else Message(m["role"], m["content"]) for m in messages]
