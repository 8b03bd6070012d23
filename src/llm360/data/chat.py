"""Chat data: conversations for supervised fine-tuning and preference pairs for DPO, read from JSONL.

Files are JSONL, plain or compressed (.gz, .zst), one record per line. A record is one of:

    {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}
    {"conversations": [{"from": "human"|"user"|"gpt"|"assistant"|"system", "value": "..."}, ...]}
    {"prompt": "...", "response": "..."}                     (one user turn, one assistant turn)
    {"prompt": P, "chosen": C, "rejected": R}                (a preference pair)
    {"chosen": [messages], "rejected": [messages]}           (a pair whose prompt is the shared start)

In a preference pair, P is a string (one user turn) or a message list; C and R are strings (one
assistant turn) or lists of assistant messages. Without `prompt`, chosen and rejected are whole
conversations and the prompt is the messages they share at the start (TRL's "implicit prompt").

Texts are cleaned as pretraining documents are (`sources.clean`: Unicode NFC), nothing else.

A record that cannot be used is skipped and counted under its reason, or, under `strict`, the
first one stops with UserError "PATH:LINE: what is wrong". Reasons:

    unreadable       the file cannot be read past some point (corrupt gzip or zstd)
    decode_error     a line that is not UTF-8
    invalid_json     a line that does not parse, or is not a JSON object
    unknown_form     an object in none of the forms above (for this reader)
    bad_message      a message that is not an object with a string role and string content
    unknown_role     a role (or `from`) that is not one of the names above
    empty_content    a message whose content is empty or whitespace only
    no_assistant     a conversation with no assistant turn (nothing to learn)
    bad_prompt       a pair's prompt that is empty or does not end with a user turn
    bad_completion   a pair's chosen or rejected that is empty or holds a turn not the assistant's
    same_pair        a pair whose chosen equals its rejected (no preference to learn)
    empty            a blank line (counted, never stops `strict`: JSONL files often end in one)
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from llm360.data.sources import clean, open_jsonl
from llm360.errors import UserError

ROLES = ("system", "user", "assistant")
# the `conversations` form (ShareGPT) names roles its own way
FROM_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
REASONS = ("unreadable", "decode_error", "invalid_json", "unknown_form", "bad_message", "unknown_role",
           "empty_content", "no_assistant", "bad_prompt", "bad_completion", "same_pair", "empty")
NOT_STRICT = ("empty",)  # reasons `strict` does not stop on


@dataclass(frozen=True)
class Message:
    role: str  # system, user or assistant
    content: str


@dataclass
class Conversation:
    """One conversation for SFT; `line` is its 1-based line in the file (provenance PATH:LINE)."""

    messages: list[Message]
    line: int = 0


@dataclass
class PreferencePair:
    """One DPO example: the prompt's messages, then the chosen or the rejected assistant turns."""

    prompt: list[Message]
    chosen: list[Message]
    rejected: list[Message]
    line: int = 0


@dataclass
class Skip:
    """A record that was not used: why (one of REASONS) and what exactly is wrong."""

    line: int
    reason: str
    what: str = field(default="")


class _Bad(Exception):
    def __init__(self, reason: str, what: str):
        super().__init__(what)
        self.reason, self.what = reason, what


# ---------------------------------------------------------------------------------------------
# public readers


def read_conversations(path: str | Path, strict: bool = False) -> tuple[list[Conversation], Counter]:
    """Every usable conversation of a chat JSONL file in file order, and a Counter of the skipped
    records' reasons; under `strict` the first skipped record (blank lines aside) raises UserError."""
    return _collect(path, strict, conversation_of)


def read_preferences(path: str | Path, strict: bool = False) -> tuple[list[PreferencePair], Counter]:
    """Every usable preference pair of a JSONL file in file order, and a Counter of the skipped
    records' reasons; under `strict` the first skipped record (blank lines aside) raises UserError."""
    return _collect(path, strict, preference_of)


def iter_records(path: str | Path, parse) -> Iterator[Conversation | PreferencePair | Skip]:
    """`parse(obj)` of each line's JSON object, or a Skip, in file order (lines 1-based)."""
    path = str(path)
    if not Path(path).is_file():
        raise UserError(f"{path} is not a file")
    line = 0
    try:
        with open_jsonl(path) as f:
            for raw in f:
                line += 1
                yield _record(raw, line, parse)
    except UserError:
        raise
    except Exception as e:  # corrupt or truncated compression (OSError, EOFError, zlib/zstd errors)
        yield Skip(line + 1, "unreadable", f"cannot read on ({type(e).__name__}: {e})")


def _collect(path, strict: bool, parse) -> tuple[list, Counter]:
    kept, skipped = [], Counter()
    for rec in iter_records(path, parse):
        if isinstance(rec, Skip):
            if strict and rec.reason not in NOT_STRICT:
                raise UserError(f"{path}:{rec.line}: {rec.what}")
            skipped[rec.reason] += 1
        else:
            kept.append(rec)
    return kept, skipped


def _record(raw: bytes, line: int, parse):
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return Skip(line, "decode_error", f"not UTF-8 ({e.reason} at byte {e.start})")
    if line == 1:
        text = text.removeprefix("\ufeff")  # a byte-order mark opening the file
    if not text.strip():
        return Skip(line, "empty", "empty line")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        return Skip(line, "invalid_json", f"invalid JSON ({e.msg}, column {e.colno})")
    if not isinstance(obj, dict):
        return Skip(line, "invalid_json", f"a JSON {type(obj).__name__}, not an object")
    try:
        rec = parse(obj)
    except _Bad as bad:
        return Skip(line, bad.reason, bad.what)
    rec.line = line
    return rec


# ---------------------------------------------------------------------------------------------
# records -> conversations and pairs


def conversation_of(obj: dict) -> Conversation:
    """The Conversation of one JSON record (`messages`, `conversations` or `prompt`/`response`)."""
    if "messages" in obj:
        messages = _messages(obj["messages"], "messages", "role", "content", {r: r for r in ROLES})
    elif "conversations" in obj:
        messages = _messages(obj["conversations"], "conversations", "from", "value", FROM_ROLES)
    elif "prompt" in obj and "response" in obj:
        messages = [_message("user", obj["prompt"], "prompt"), _message("assistant", obj["response"], "response")]
    else:
        raise _Bad("unknown_form", f"a record with keys {sorted(obj)[:6]}, none of messages, conversations "
                                   "or prompt/response")
    if not any(m.role == "assistant" for m in messages):
        raise _Bad("no_assistant", "a conversation with no assistant turn")
    return Conversation(messages)


def preference_of(obj: dict) -> PreferencePair:
    """The PreferencePair of one JSON record (`prompt`/`chosen`/`rejected`, or the implicit prompt)."""
    if "chosen" not in obj or "rejected" not in obj:
        raise _Bad("unknown_form", f"a record with keys {sorted(obj)[:6]}, not prompt/chosen/rejected")
    if "prompt" in obj:
        prompt = _turns(obj["prompt"], "prompt", "user")
        chosen = _turns(obj["chosen"], "chosen", "assistant")
        rejected = _turns(obj["rejected"], "rejected", "assistant")
    else:
        prompt, chosen, rejected = _split_shared_prompt(obj["chosen"], obj["rejected"])
    if not prompt or prompt[-1].role != "user":
        raise _Bad("bad_prompt", "a prompt that does not end with a user turn")
    for name, turns in (("chosen", chosen), ("rejected", rejected)):
        if not turns or any(m.role != "assistant" for m in turns):
            raise _Bad("bad_completion", f"{name} holds a turn that is not the assistant's")
    if chosen == rejected:
        raise _Bad("same_pair", "chosen and rejected are the same")
    return PreferencePair(prompt, chosen, rejected)


def _turns(value, key: str, role: str) -> list[Message]:
    """A string (one turn of `role`) or a `messages` list."""
    if isinstance(value, str):
        return [_message(role, value, key)]
    return _messages(value, key, "role", "content", {r: r for r in ROLES})


def _split_shared_prompt(chosen, rejected) -> tuple[list[Message], list[Message], list[Message]]:
    if not isinstance(chosen, list) or not isinstance(rejected, list):
        raise _Bad("unknown_form", "chosen and rejected without a prompt must both be message lists")
    c = _messages(chosen, "chosen", "role", "content", {r: r for r in ROLES})
    r = _messages(rejected, "rejected", "role", "content", {r: r for r in ROLES})
    shared = 0
    while shared < min(len(c), len(r)) and c[shared] == r[shared]:
        shared += 1
    # the completion starts at the last assistant turn of the shared start, if any is shared
    while shared > 0 and c[shared - 1].role == "assistant":
        shared -= 1
    return c[:shared], c[shared:], r[shared:]


def _messages(value, key: str, role_key: str, text_key: str, names: dict[str, str]) -> list[Message]:
    if not isinstance(value, list) or not value:
        raise _Bad("bad_message", f"{key} is not a non-empty list of messages")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get(role_key), str) or not isinstance(m.get(text_key), str):
            raise _Bad("bad_message", f"{key}[{i}] is not an object with string {role_key!r} and {text_key!r}")
        role = names.get(m[role_key])
        if role is None:
            raise _Bad("unknown_role", f"{key}[{i}] has {role_key} {m[role_key]!r}, not one of {', '.join(names)}")
        out.append(_message(role, m[text_key], f"{key}[{i}]"))
    return out


def _message(role: str, content, where: str) -> Message:
    if not isinstance(content, str):
        raise _Bad("bad_message", f"{where} is a {type(content).__name__}, not a string")
    if not content.strip():
        raise _Bad("empty_content", f"{where} is empty")
    return Message(role, clean(content))
