"""The chat template against transformers: same ids, same assistant mask, deterministic token ids."""

from __future__ import annotations

import json

import pytest
from helpers_model import docstrings

from llm360.data.chat import Message
from llm360.data.chat_template import (
    CHAT_TEMPLATE,
    CHAT_TOKENS,
    encode_conversation,
    encode_prompt,
    render,
    write_chat_tokenizer,
)
from llm360.data.tokenizer import EOS_TOKEN, train_bpe, write_tokenizer_dir
from llm360.errors import UserError

CONVERSATIONS = [
    [{"role": "system", "content": "You answer in one line."},
     {"role": "user", "content": "What does len() return?"},
     {"role": "assistant", "content": "The number of items in a container."},
     {"role": "user", "content": "And for a str?\n"},
     {"role": "assistant", "content": " The number of code points, caf\u00e9 counts 4. "}],
    [{"role": "user", "content": "def f(x):\n    return x * 2"},
     {"role": "assistant", "content": "It doubles x."}],
]


@pytest.fixture(scope="module")
def chat_folder(tmp_path_factory):
    """A trained llm360 tokenizer folder, then the chat tokens and template added."""
    root = tmp_path_factory.mktemp("tok")
    tok = train_bpe(docstrings(), 400)
    tok.save(str(root / "plain.json"))
    write_tokenizer_dir(root / "plain.json", root / "plain", EOS_TOKEN, 256)
    ids = write_chat_tokenizer(root / "plain", root / "chat")
    return root, ids


def test_chat_tokens_are_appended_after_the_vocabulary_in_a_fixed_order(chat_folder):
    root, ids = chat_folder
    from tokenizers import Tokenizer

    plain = Tokenizer.from_file(str(root / "plain" / "tokenizer.json")).get_vocab_size()
    assert list(ids) == list(CHAT_TOKENS)
    assert list(ids.values()) == list(range(plain, plain + len(CHAT_TOKENS)))
    # adding again changes nothing, byte for byte
    again = write_chat_tokenizer(root / "chat", root / "chat2")
    assert again == ids
    assert (root / "chat2" / "tokenizer.json").read_bytes() == (root / "chat" / "tokenizer.json").read_bytes()
    config = json.loads((root / "chat" / "tokenizer_config.json").read_text())
    assert config["chat_template"] == CHAT_TEMPLATE and config["eos_token"] == EOS_TOKEN


@pytest.mark.parametrize("conv", CONVERSATIONS)
def test_ids_and_loss_mask_equal_transformers_apply_chat_template(chat_folder, conv):
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    root, ids = chat_folder
    hf = AutoTokenizer.from_pretrained(root / "chat")
    out = hf.apply_chat_template(conv, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    tok = Tokenizer.from_file(str(root / "chat" / "tokenizer.json"))
    got, mask = encode_conversation(tok, conv)
    assert got == out["input_ids"]
    assert mask == out["assistant_masks"]
    # the mask ends each assistant turn on <|end|> and holds nothing of the other turns
    assert sum(mask) > 0 and all(got[i] == ids["<|end|>"] for i in range(len(got) - 1) if mask[i] and not mask[i + 1])
    assert hf.decode(got) == render(conv)[0]

    prompt = conv[:-1]
    want = hf.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True, return_dict=False)
    assert encode_prompt(tok, prompt) == want
    assert encode_prompt(tok, [Message(**m) for m in prompt]) == want


def test_train_from_leaves_the_prompts_answers_out_of_the_loss(chat_folder):
    from tokenizers import Tokenizer

    root, _ = chat_folder
    tok = Tokenizer.from_file(str(root / "chat" / "tokenizer.json"))
    conv = CONVERSATIONS[0]
    ids, full = encode_conversation(tok, conv)
    _, last = encode_conversation(tok, conv, train_from=4)
    n_prompt = len(encode_prompt(tok, conv[:4]))
    assert ids[:n_prompt] == encode_prompt(tok, conv[:4])  # prompt ids are a prefix of prompt + answer
    assert last == [0] * n_prompt + full[n_prompt:]
    assert sum(last) < sum(full)


def test_a_tokenizer_without_the_chat_tokens_is_one_sentence(chat_folder):
    from tokenizers import Tokenizer

    root, _ = chat_folder
    tok = Tokenizer.from_file(str(root / "plain" / "tokenizer.json"))
    with pytest.raises(UserError, match="no chat tokens"):
        encode_conversation(tok, CONVERSATIONS[1])
