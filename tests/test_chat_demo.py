"""The demo chat data from the standard library: deterministic, and every record reads back."""

from __future__ import annotations

from collections import Counter

from llm360.data.chat import read_conversations, read_preferences
from llm360.data.chat_demo import demo_functions, write_chat_demo


def test_demo_sets_are_deterministic_per_seed_and_read_back_whole(tmp_path):
    a = write_chat_demo(tmp_path / "a", seed=1)
    b = write_chat_demo(tmp_path / "b", seed=1)
    c = write_chat_demo(tmp_path / "c", seed=2)
    for key in ("sft", "preferences"):
        assert a[key].read_bytes() == b[key].read_bytes()
    assert a["sft"].read_bytes() == c["sft"].read_bytes()  # the seed draws only the rejected answers
    assert a["preferences"].read_bytes() != c["preferences"].read_bytes()
    n = len(demo_functions())
    assert 200 <= n <= 2000
    convs, skipped = read_conversations(a["sft"], strict=True)
    pairs, skipped_pairs = read_preferences(a["preferences"], strict=True)
    assert len(convs) == len(pairs) == n and skipped == skipped_pairs == Counter()
    for conv, pair in zip(convs, pairs):
        assert conv.messages[0].content == pair.prompt[0].content
        assert conv.messages[1] == pair.chosen[0] and pair.rejected != pair.chosen
        assert conv.messages[1].content.lstrip().startswith(("def ", "async def "))
