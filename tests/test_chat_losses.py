"""Fine-tuning losses against independent oracles: transformers' masked causal-LM loss (SFT) and
TRL's DPOTrainer (the DPO loss, its gradients and its reward metrics), on the same weights."""

from __future__ import annotations


import pytest
import torch
from helpers_model import docstrings, export, hf_model, tiny_model

from llm360.data.chat_rows import pack_rows, pad_rows
from llm360.data.chat_template import encode_conversation, write_chat_tokenizer
from llm360.data.tokenizer import EOS_TOKEN, train_bpe, write_tokenizer_dir
from llm360.model.hf import name_map
from llm360.train.losses import dpo_sigmoid_loss, masked_cross_entropy_sum, reward_metrics, sequence_logprobs

CHATS = [
    [{"role": "system", "content": "Answer with code."}, {"role": "user", "content": "Reverse a list."},
     {"role": "assistant", "content": "items[::-1]"}, {"role": "user", "content": "In place?"},
     {"role": "assistant", "content": "items.reverse()"}],
    [{"role": "user", "content": "What is a tuple?"}, {"role": "assistant", "content": "An immutable sequence."}],
    [{"role": "user", "content": "Join words with spaces."}, {"role": "assistant", "content": "' '.join(words)"}],
]
PAIRS = [
    {"prompt": [{"role": "user", "content": "Sort a list."}],
     "chosen": [{"role": "assistant", "content": "sorted(items)"}],
     "rejected": [{"role": "assistant", "content": "items.pop()"}]},
    {"prompt": [{"role": "system", "content": "Be exact."}, {"role": "user", "content": "Length of a string?"}],
     "chosen": [{"role": "assistant", "content": "len(text), the number of code points"}],
     "rejected": [{"role": "assistant", "content": "text.count()"}]},
    {"prompt": [{"role": "user", "content": "Copy a dict."}, {"role": "assistant", "content": "Shallow?"},
                {"role": "user", "content": "Yes."}],
     "chosen": [{"role": "assistant", "content": "d.copy()"}],
     "rejected": [{"role": "assistant", "content": "d"}]},
]


@pytest.fixture(scope="module")
def chat_tok(tmp_path_factory):
    from tokenizers import Tokenizer

    root = tmp_path_factory.mktemp("tok")
    train_bpe(docstrings(), 400).save(str(root / "plain.json"))
    write_tokenizer_dir(root / "plain.json", root / "plain", EOS_TOKEN, 128)
    write_chat_tokenizer(root / "plain", root / "chat")
    return root / "chat", Tokenizer.from_file(str(root / "chat" / "tokenizer.json"))


def models(tmp_path, vocab: int, seed: int):
    """An llm360 tiny model and the same weights in transformers."""
    model, args = tiny_model(seed=seed, vocab_size=vocab, max_seq_len=128)
    return model, args, hf_model(export(model, args, tmp_path / f"hf{seed}"))


def as_tensors(rows):
    return (torch.from_numpy(rows.tokens).long(), torch.from_numpy(rows.loss_mask).long(),
            torch.from_numpy(rows.segments).long())


@pytest.mark.parametrize("packed", [False, True])
def test_masked_sft_loss_equals_transformers_loss_with_ignored_labels(tmp_path, chat_tok, packed):
    folder, tok = chat_tok
    model, args, hf = models(tmp_path, tok.get_vocab_size(), seed=1)
    encoded = [encode_conversation(tok, c) for c in CHATS]
    rows = (pack_rows if packed else pad_rows)(encoded, seq_len=127, pad_id=0)
    tokens, mask, segments = as_tensors(rows)
    with torch.no_grad():
        logits = model(tokens[:, :-1], segments=segments[:, :-1])
        total, count = masked_cross_entropy_sum(logits, tokens[:, 1:], mask)
        # the oracle: each conversation alone, labels -100 off the assistant tokens; HF shifts them
        want_total, want_count = 0.0, 0
        for ids, m in encoded:
            labels = torch.tensor([[t if keep else -100 for t, keep in zip(ids, m)]])
            n = int(sum(m[1:]))
            want_total += hf(torch.tensor([ids]), labels=labels).loss.item() * n
            want_count += n
    assert count.item() == want_count > 0
    assert total.item() == pytest.approx(want_total, rel=1e-5)


def trl_trainer(tmp_path, folder, policy, reference, beta: float):
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    config = DPOConfig(output_dir=str(tmp_path / "trl"), beta=beta, report_to="none", use_cpu=True,
                       per_device_train_batch_size=len(PAIRS), max_length=None, precompute_ref_log_probs=False,
                       dataset_num_proc=None, seed=0, bf16=False)
    data = Dataset.from_list(PAIRS)
    return DPOTrainer(model=policy, ref_model=reference, args=config, train_dataset=data,
                      processing_class=AutoTokenizer.from_pretrained(folder))


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_dpo_loss_gradients_and_rewards_equal_trl(tmp_path, chat_tok, beta):
    pytest.importorskip("trl")
    folder, tok = chat_tok
    policy, args, hf_policy = models(tmp_path, tok.get_vocab_size(), seed=2)
    reference, _, hf_reference = models(tmp_path, tok.get_vocab_size(), seed=3)
    trainer = trl_trainer(tmp_path, folder, hf_policy, hf_reference, beta)

    # our rows: prompt + answer, the loss on the answer only; chosen rows first, then rejected
    encoded = [encode_conversation(tok, p["prompt"] + p[kind], train_from=len(p["prompt"]))
               for kind in ("chosen", "rejected") for p in PAIRS]
    for (ids, mask), example in zip(encoded, trainer.train_dataset):  # TRL tokenized the same ids
        assert ids == example["prompt_ids"] + example["chosen_ids"]
        assert mask == [0] * len(example["prompt_ids"]) + [1] * len(example["chosen_ids"])
    tokens, mask, segments = as_tensors(pad_rows(encoded, seq_len=127, pad_id=0))
    with torch.no_grad():
        ref = sequence_logprobs(reference(tokens[:, :-1], segments=segments[:, :-1]), tokens[:, 1:], mask)
    logps = sequence_logprobs(policy.train()(tokens[:, :-1], segments=segments[:, :-1]), tokens[:, 1:], mask)
    n = len(PAIRS)
    loss, chosen_rewards, rejected_rewards = dpo_sigmoid_loss(logps[:n], logps[n:], ref[:n], ref[n:], beta)
    loss.backward()

    # TRL: its collator on its tokenized examples, its loss through its trainer, the same weights
    inputs = trainer.data_collator([trainer.train_dataset[i] for i in range(n)])
    hf_policy.train()
    want = trainer.compute_loss(hf_policy, inputs)
    want.backward()
    assert loss.item() == pytest.approx(want.item(), abs=1e-5)
    names = name_map(args)
    hf_params = dict(hf_policy.named_parameters())
    for ours, p in policy.named_parameters():
        torch.testing.assert_close(p.grad, hf_params[names[ours]].grad, rtol=0, atol=1e-5, msg=ours)
    logged = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    metrics = reward_metrics(chosen_rewards, rejected_rewards)
    assert metrics["chosen_reward"] == pytest.approx(logged["rewards/chosen"], abs=1e-5)
    assert metrics["rejected_reward"] == pytest.approx(logged["rewards/rejected"], abs=1e-5)
    assert metrics["reward_margin"] == pytest.approx(logged["rewards/margins"], abs=1e-5)
    assert metrics["reward_accuracy"] == pytest.approx(logged["rewards/accuracies"])


def test_dpo_loss_by_hand():
    pc, pr = torch.tensor([-3.0, -5.0]), torch.tensor([-4.0, -2.0])
    rc, rr = torch.tensor([-3.5, -5.0]), torch.tensor([-3.5, -3.0])
    loss, cr, rj = dpo_sigmoid_loss(pc, pr, rc, rr, beta=0.2)
    # pair 0: ratios 0.5 and -0.5, margin 0.2; pair 1: ratios 0 and 1, margin -0.2
    torch.testing.assert_close(cr, torch.tensor([0.1, 0.0]))
    torch.testing.assert_close(rj, torch.tensor([-0.1, 0.2]))
    want = (torch.log1p(torch.exp(torch.tensor(-0.2))) + torch.log1p(torch.exp(torch.tensor(0.2)))) / 2
    torch.testing.assert_close(loss, want)
    m = reward_metrics(cr, rj)
    assert m["reward_accuracy"] == 0.5 and m["reward_margin"] == pytest.approx(0.0, abs=1e-7)
    total, _, _ = dpo_sigmoid_loss(pc, pr, rc, rr, beta=0.2, reduction="sum")
    torch.testing.assert_close(total, 2 * want)
