"""Reading chat data: every form people have, compressed files, and bad records counted or stopped."""

from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path

import pytest

from llm360.data.chat import Message, read_conversations, read_preferences
from llm360.errors import UserError

M = Message


def write(path: Path, lines: list, compress: str = "") -> Path:
    """Lines as JSONL; a str line is written as it is (broken records)."""
    data = "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines).encode("utf-8")
    if compress == "gz":
        data = gzip.compress(data)
    elif compress == "zst":
        data = pytest.importorskip("zstandard").ZstdCompressor().compress(data)
    path.write_bytes(data)
    return path


GOOD_CHATS = [
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                  {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"},
                  {"role": "assistant", "content": "Bye."}]},
    {"conversations": [{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"}]},
    {"prompt": "Name a colour.", "response": "Blue."},
]
EXPECTED_CHATS = [
    [M("system", "Be brief."), M("user", "Hi"), M("assistant", "Hello."), M("user", "Bye"), M("assistant", "Bye.")],
    [M("user", "2+2?"), M("assistant", "4")],
    [M("user", "Name a colour."), M("assistant", "Blue.")],
]


@pytest.mark.parametrize("compress", ["", "gz", "zst"])
def test_every_conversation_form_reads_into_messages(tmp_path, compress):
    path = write(tmp_path / f"chat.jsonl{'.' + compress if compress else ''}", GOOD_CHATS, compress)
    convs, skipped = read_conversations(path)
    assert [c.messages for c in convs] == EXPECTED_CHATS
    assert [c.line for c in convs] == [1, 2, 3]
    assert skipped == Counter()


BAD_CHATS = [
    ("{not json", "invalid_json"),
    ([1, 2], "invalid_json"),
    ({"text": "pretraining text"}, "unknown_form"),
    ({"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]}, "unknown_role"),
    ({"conversations": [{"from": "bot", "value": "x"}]}, "unknown_role"),
    ({"messages": [{"role": "user", "content": "only a question"}]}, "no_assistant"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "  "}]}, "empty_content"),
    ({"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "a"}]}, "bad_message"),
    ({"messages": []}, "bad_message"),
    ("", "empty"),
]


def test_bad_conversations_are_counted_per_reason(tmp_path):
    lines = [GOOD_CHATS[0], *(bad for bad, _ in BAD_CHATS), GOOD_CHATS[2]]
    path = write(tmp_path / "chat.jsonl", lines)
    convs, skipped = read_conversations(path)
    assert [c.line for c in convs] == [1, len(lines)]
    assert skipped == Counter(reason for _, reason in BAD_CHATS)


@pytest.mark.parametrize("bad, reason", BAD_CHATS[:-1])
def test_strict_stops_on_the_first_bad_record_naming_its_line(tmp_path, bad, reason):
    path = write(tmp_path / "chat.jsonl", [GOOD_CHATS[1], bad, GOOD_CHATS[2]])
    with pytest.raises(UserError, match=rf"^{path}:2: ") as err:
        read_conversations(path, strict=True)
    assert "\n" not in str(err.value)


def test_strict_passes_blank_lines_and_a_corrupt_gzip_is_unreadable(tmp_path):
    path = write(tmp_path / "chat.jsonl", [GOOD_CHATS[1], "", GOOD_CHATS[2]])
    convs, skipped = read_conversations(path, strict=True)
    assert len(convs) == 2 and skipped == Counter(empty=1)
    whole = gzip.compress(("\n".join(json.dumps(GOOD_CHATS[1]) for _ in range(2000)) + "\n").encode())
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(whole[: len(whole) // 2])
    convs, skipped = read_conversations(cut)
    assert skipped == Counter(unreadable=1) and len(convs) > 0
    with pytest.raises(UserError, match="cannot read on"):
        read_conversations(cut, strict=True)
    with pytest.raises(UserError, match="is not a file"):
        read_conversations(tmp_path / "missing.jsonl")


def test_preference_forms_strings_lists_and_the_implicit_prompt(tmp_path):
    lines = [
        {"prompt": "Say hi", "chosen": "Hi!", "rejected": "No."},
        {"prompt": [{"role": "system", "content": "Polite."}, {"role": "user", "content": "Say hi"}],
         "chosen": [{"role": "assistant", "content": "Hi!"}], "rejected": [{"role": "assistant", "content": "No."}]},
        {"chosen": [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "Hi!"}],
         "rejected": [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "No."}]},
    ]
    pairs, skipped = read_preferences(write(tmp_path / "pref.jsonl.gz", lines, "gz"))
    assert skipped == Counter()
    assert [p.prompt for p in pairs] == [[M("user", "Say hi")],
                                         [M("system", "Polite."), M("user", "Say hi")],
                                         [M("user", "Say hi")]]
    assert all(p.chosen == [M("assistant", "Hi!")] and p.rejected == [M("assistant", "No.")] for p in pairs)


BAD_PAIRS = [
    ({"prompt": "q", "chosen": "same", "rejected": "same"}, "same_pair"),
    ({"prompt": "q", "chosen": "a"}, "unknown_form"),
    ({"prompt": "  ", "chosen": "a", "rejected": "b"}, "empty_content"),
    ({"prompt": [{"role": "assistant", "content": "q"}], "chosen": "a", "rejected": "b"}, "bad_prompt"),
    ({"prompt": "q", "chosen": [{"role": "user", "content": "a"}], "rejected": "b"}, "bad_completion"),
    ({"prompt": "q", "chosen": "a", "rejected": [{"role": "wizard", "content": "b"}]}, "unknown_role"),
    ({"chosen": "a", "rejected": "b"}, "unknown_form"),
    ({"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
      "rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}, "same_pair"),
]


def test_bad_pairs_are_counted_or_stop_under_strict(tmp_path):
    good = {"prompt": "q", "chosen": "a", "rejected": "b"}
    path = write(tmp_path / "pref.jsonl", [good, *(bad for bad, _ in BAD_PAIRS), good])
    pairs, skipped = read_preferences(path)
    assert [p.line for p in pairs] == [1, len(BAD_PAIRS) + 2]
    assert skipped == Counter(reason for _, reason in BAD_PAIRS)
    with pytest.raises(UserError, match=rf"^{path}:2: chosen and rejected are the same$"):
        read_preferences(path, strict=True)


def test_content_is_cleaned_to_nfc_like_pretraining_text(tmp_path):
    decomposed = "cafe\u0301"
    convs, _ = read_conversations(write(tmp_path / "c.jsonl", [{"prompt": decomposed, "response": "ok"}]))
    assert convs[0].messages[0].content == "caf\u00e9"
