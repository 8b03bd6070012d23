"""Rows for fine-tuning: encoded conversations packed several to a row, or padded one to a row.

A row holds seq_len + 1 tokens, as in pretraining: the model reads inputs = row[:-1] and is
scored on targets = row[1:]. Next to the tokens, a row has

    loss_mask (seq_len,)      aligned with the targets: 1 where target row[j + 1] is a token the
                              model must learn (its conversation's encode mask is 1 there), 0
                              elsewhere (prompt, markers, padding, and the first token of every
                              conversation, which is never predicted from the one before it)
    segments  (seq_len + 1,)  aligned with the tokens: 0, 1, 2... the conversation each token
                              belongs to, in the order they were placed in the row, and -1 on
                              padding. The model takes segments[:-1] with inputs[:]: a token
                              attends only within its segment, positions restart at each one.

Packing is greedy first-fit in record order: each conversation goes into the first row with room
for it (a new row when none has), so the rows depend on nothing but the records and seq_len.
A conversation longer than seq_len + 1 tokens fits no row: it is reported in `too_long` and
left out, for the caller to count or stop on, as prepare does with its reasons.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

PAD_SEGMENT = -1


class Rows(NamedTuple):
    tokens: np.ndarray  # (R, seq_len + 1) int32
    loss_mask: np.ndarray  # (R, seq_len) uint8, aligned with targets = tokens[:, 1:]
    segments: np.ndarray  # (R, seq_len + 1) int32, -1 on padding
    placed: list[tuple[int, int] | None]  # per record: (row, first token's column), None if too long
    too_long: list[int]  # the records that fit no row, in record order


def pack_rows(encoded: list[tuple[list[int], list[int]]], seq_len: int, pad_id: int) -> Rows:
    """Pack (ids, loss_mask) conversations into rows of seq_len + 1 tokens, first fit in record
    order (see the module docstring for what each array means)."""
    width = seq_len + 1
    room = np.zeros(0, dtype=np.int64)  # free tokens left in each row
    placed: list[tuple[int, int] | None] = []
    for ids, _ in encoded:
        if len(ids) > width:
            placed.append(None)
            continue
        fits = np.flatnonzero(room >= len(ids))
        row = int(fits[0]) if fits.size else len(room)
        if row == len(room):
            room = np.append(room, width)
        placed.append((row, width - int(room[row])))
        room[row] -= len(ids)
    return _fill(encoded, placed, len(room), seq_len, pad_id)


def pad_rows(encoded: list[tuple[list[int], list[int]]], seq_len: int, pad_id: int) -> Rows:
    """One conversation per row, in record order, padded with `pad_id` (loss 0, segment -1)."""
    placed: list[tuple[int, int] | None] = []
    rows = 0
    for ids, _ in encoded:
        placed.append((rows, 0) if len(ids) <= seq_len + 1 else None)
        rows += placed[-1] is not None
    return _fill(encoded, placed, rows, seq_len, pad_id)


def _fill(encoded, placed, n_rows: int, seq_len: int, pad_id: int) -> Rows:
    width = seq_len + 1
    tokens = np.full((n_rows, width), pad_id, dtype=np.int32)
    targets_mask = np.zeros((n_rows, width), dtype=np.uint8)  # the encode mask at each token
    segments = np.full((n_rows, width), PAD_SEGMENT, dtype=np.int32)
    next_segment = np.zeros(n_rows, dtype=np.int32)
    for (ids, mask), where in zip(encoded, placed):
        if where is None:
            continue
        row, col = where
        tokens[row, col:col + len(ids)] = ids
        targets_mask[row, col:col + len(ids)] = mask
        # the first token is never a target of this conversation (it follows another one)
        targets_mask[row, col] = 0
        segments[row, col:col + len(ids)] = next_segment[row]
        next_segment[row] += 1
    too_long = [i for i, w in enumerate(placed) if w is None]
    return Rows(tokens, targets_mask[:, 1:].copy(), segments, placed, too_long)
