"""Packed and padded fine-tuning rows, document masking in the model, and grown embeddings."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers_model import tiny_model

from llm360.data.chat_rows import PAD_SEGMENT, pack_rows, pad_rows
from llm360.errors import UserError
from llm360.model.llama import grow_embeddings, segment_positions

PAD = 0


def conversation(n: int, seed: int, vocab: int = 500) -> tuple[list[int], list[int]]:
    """n token ids and a mask with a 'prompt' of n // 2 tokens (0) then an 'answer' (1)."""
    g = np.random.default_rng(seed)
    ids = g.integers(1, vocab, n).tolist()
    return ids, [0] * (n // 2) + [1] * (n - n // 2)


def test_first_fit_packing_in_record_order():
    encoded = [conversation(n, i) for i, n in enumerate([10, 6, 9, 13, 3, 40, 2])]
    rows = pack_rows(encoded, seq_len=15, pad_id=PAD)  # 16 tokens a row
    # 10 -> row 0; 6 -> row 0 (16); 9 -> row 1; 13 -> row 2; 3 -> row 1 (12); 40 too long; 2 -> row 1 (14)
    assert rows.placed == [(0, 0), (0, 10), (1, 0), (2, 0), (1, 9), None, (1, 12)]
    assert rows.too_long == [5]
    assert rows.tokens.shape == (3, 16) and rows.loss_mask.shape == (3, 15) and rows.segments.shape == (3, 16)
    assert rows.segments[1].tolist() == [0] * 9 + [1] * 3 + [2] * 2 + [PAD_SEGMENT] * 2
    for (ids, mask), where in zip(encoded, rows.placed):
        if where is None:
            continue
        r, c = where
        assert rows.tokens[r, c:c + len(ids)].tolist() == ids
        # the loss mask is aligned with targets: target row[j+1] at index j; a conversation's first
        # token is no target
        assert rows.loss_mask[r, c:c + len(ids) - 1].tolist() == mask[1:]
        if c > 0:
            assert rows.loss_mask[r, c - 1] == 0
    assert (rows.tokens[rows.segments == PAD_SEGMENT] == PAD).all()
    assert rows.loss_mask[rows.segments[:, 1:] == PAD_SEGMENT].sum() == 0
    # the same input gives the same rows
    again = pack_rows(encoded, seq_len=15, pad_id=PAD)
    assert all(np.array_equal(a, b) for a, b in zip(rows[:3], again[:3]))


def test_padding_puts_one_conversation_per_row():
    encoded = [conversation(n, i) for i, n in enumerate([5, 17, 16])]
    rows = pad_rows(encoded, seq_len=15, pad_id=PAD)
    assert rows.placed == [(0, 0), None, (1, 0)] and rows.too_long == [1]
    assert rows.tokens[0].tolist() == encoded[0][0] + [PAD] * 11
    assert rows.loss_mask[0].tolist() == encoded[0][1][1:] + [0] * 11
    assert rows.segments[0].tolist() == [0] * 5 + [PAD_SEGMENT] * 11
    assert rows.tokens[1].tolist() == encoded[2][0] and rows.loss_mask[1].tolist() == encoded[2][1][1:]


def test_segment_positions_restart_at_each_segment():
    segs = torch.tensor([[0, 0, 0, 1, 1, 2, -1, -1], [0, 0, 0, 0, 0, 0, 0, 0]])
    assert segment_positions(segs).tolist() == [[0, 1, 2, 0, 1, 0, 0, 1], list(range(8))]


@pytest.mark.parametrize("preset", ["tiny", "crystal-tiny"])
def test_a_packed_row_computes_each_conversation_as_if_it_were_alone(preset):
    model, args = tiny_model(seed=3, preset=preset, max_seq_len=64)
    encoded = [conversation(n, 10 + i, args.vocab_size) for i, n in enumerate([9, 14, 6])]
    rows = pack_rows(encoded, seq_len=31, pad_id=PAD)  # 9 + 14 + 6 = 29 tokens, 3 of padding
    assert rows.tokens.shape[0] == 1
    tokens = torch.from_numpy(rows.tokens).long()
    segments = torch.from_numpy(rows.segments).long()
    with torch.no_grad():
        packed = model(tokens[:, :-1], segments=segments[:, :-1])[0]
        for (ids, _), (_, col) in zip(encoded, rows.placed):
            alone = model(torch.tensor([ids]))[0]
            torch.testing.assert_close(packed[col:col + len(ids)], alone, rtol=0, atol=1e-5)
        # without segments the later conversations see the earlier ones: the test can fail
        leaky = model(tokens[:, :-1])[0]
        assert not torch.allclose(leaky[9:23], packed[9:23], atol=1e-3)
        # one segment over the whole row is plain causal attention
        whole = model(tokens[:, :-1], segments=torch.zeros_like(segments[:, :-1]))[0]
        torch.testing.assert_close(whole, leaky, rtol=0, atol=1e-5)


def test_padded_rows_score_their_conversation_as_alone():
    model, args = tiny_model(seed=4, max_seq_len=64)
    encoded = [conversation(n, 20 + i, args.vocab_size) for i, n in enumerate([7, 12])]
    rows = pad_rows(encoded, seq_len=15, pad_id=PAD)
    tokens, segments = torch.from_numpy(rows.tokens).long(), torch.from_numpy(rows.segments).long()
    with torch.no_grad():
        out = model(tokens[:, :-1], segments=segments[:, :-1])
        for r, (ids, _) in enumerate(encoded):
            alone = model(torch.tensor([ids]))[0]
            n = min(len(ids), 15)
            torch.testing.assert_close(out[r, :n], alone[:n], rtol=0, atol=1e-5)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("tied", [False, True])
def test_grown_embeddings_keep_old_rows_and_old_logits_and_are_seeded(tied):
    model, args = tiny_model(seed=5, tie_embeddings=tied)
    old_vocab = args.vocab_size
    tokens = torch.randint(0, old_vocab, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(tokens)
    old_emb = model.tok_embeddings.weight.detach().clone()
    grow_embeddings(model, old_vocab + 4, seed=7)
    assert model.args.vocab_size == old_vocab + 4
    assert model.tok_embeddings.weight.shape == (old_vocab + 4, args.dim)
    assert torch.equal(model.tok_embeddings.weight[:old_vocab], old_emb)
    with torch.no_grad():
        after = model(tokens)
    assert after.shape[-1] == old_vocab + 4
    torch.testing.assert_close(after[..., :old_vocab], before, rtol=0, atol=1e-6)
    # same seed, same rows; another seed, other rows; the new rows look like the old ones
    twin, _ = tiny_model(seed=5, tie_embeddings=tied)
    grow_embeddings(twin, old_vocab + 4, seed=7)
    other, _ = tiny_model(seed=5, tie_embeddings=tied)
    grow_embeddings(other, old_vocab + 4, seed=8)
    new = model.tok_embeddings.weight[old_vocab:]
    assert torch.equal(twin.tok_embeddings.weight[old_vocab:], new)
    assert not torch.equal(other.tok_embeddings.weight[old_vocab:], new)
    torch.testing.assert_close(new.std(), old_emb.std(), rtol=0.5, atol=0)
    if not tied:
        assert model.output.weight.shape == (old_vocab + 4, args.dim)
        assert torch.equal(twin.output.weight, model.output.weight)
        assert not torch.equal(model.output.weight[old_vocab:], new)
    # the grown model trains: gradients reach the new rows
    logits = model(torch.tensor([[old_vocab + 1, 3, old_vocab + 3]]))
    logits[0, :, old_vocab + 2].sum().backward()
    assert model.tok_embeddings.weight.grad[old_vocab + 1].abs().sum() > 0


def test_embeddings_never_shrink():
    model, args = tiny_model(seed=5)
    with pytest.raises(UserError, match="cannot shrink"):
        grow_embeddings(model, args.vocab_size - 1, seed=0)
