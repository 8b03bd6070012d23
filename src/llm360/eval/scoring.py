"""Scores: multiple-choice accuracy and held-out perplexity / bits per byte of one model.

Multiple choice (as lm-evaluation-harness 0.4): each choice's score is the summed log-likelihood
of its continuation given its context, tokenized as lm-eval does (`encode_request`). acc picks
the highest score, acc_norm the highest score divided by the choice's length in characters; the
first of equal scores wins (numpy argmax). Standard errors are sample std / sqrt(n), as lm-eval.

The choices of a question share their context, so `loglikelihoods` runs each distinct context
once into a KV cache and then all its continuations as a batch on top of it: the same numbers as
`llm360.model.generate.score_tokens` (within float rounding), at a fraction of the work when
contexts are long (few-shot prompts). Pairs that lm-eval would truncate on the left (context +
continuation longer than the model context) go through `score_tokens` as they are.

Held-out data: rows of seq_len + 1 tokens (inputs row[:-1], targets row[1:]) never trained on.
loss is the mean next-token cross-entropy (nats) over all target tokens of a source, ppl its
exp, and bpb = (summed loss in nats) / ln 2 / (UTF-8 bytes of the target text), the bytes
counted by decoding each row's target tokens with the run's tokenizer (special tokens such as
the end-of-document token decode to no text, so they add no bytes but their loss counts).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from llm360.model.generate import encode_request, left_pad, prefix_token, score_tokens

Progress = Callable[[int], None] | None


def _device(model) -> torch.device:
    return next(model.parameters()).device


# ---------------------------------------------------------------------------------------------
# log-likelihoods


def encode_requests(tokenizer, requests: list[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
    """(context tokens, continuation tokens) of each text pair, as lm-eval's HF model makes them."""
    prefix = prefix_token(tokenizer) if any(c == "" for c, _ in requests) else None
    return [encode_request(tokenizer, c, x, prefix) for c, x in requests]


@torch.inference_mode()
def loglikelihoods(model, pairs: list[tuple[list[int], list[int]]], batch_size: int = 32,
                   progress: Progress = None) -> list[tuple[float, bool]]:
    """(sum of log p(continuation | context), greedy?) per token pair: score_tokens' numbers,
    computing each distinct context once."""
    max_len = model.args.max_seq_len
    results: list[tuple[float, bool] | None] = [None] * len(pairs)
    groups: dict[tuple[int, ...], list[int]] = {}
    alone = []
    for i, (ctx, cont) in enumerate(pairs):
        if not cont:
            results[i] = (0.0, True)
        elif ctx and len(ctx) + len(cont) <= max_len + 1:  # no left truncation
            groups.setdefault(tuple(ctx), []).append(i)
        else:
            alone.append(i)
    if alone:
        for i, r in zip(alone, score_tokens(model, [pairs[i] for i in alone], batch_size=batch_size)):
            results[i] = r
        if progress:
            progress(len(alone))

    # longest context first; a batch holds at most batch_size continuation rows and its longest
    # context plus its longest continuation input must fit the model context
    order = sorted(groups.items(), key=lambda kv: -len(kv[0]))
    batch: list[tuple[tuple[int, ...], list[int]]] = []
    rows = longest_ctx = longest_cont = 0
    for ctx, members in order:
        for start in range(0, len(members), batch_size):  # a question with > batch_size choices
            part = members[start:start + batch_size]
            cont_in = max(len(pairs[i][1]) for i in part) - 1
            if batch and (rows + len(part) > batch_size
                          or max(longest_ctx, len(ctx)) + max(longest_cont, cont_in) > max_len):
                _score_batch(model, pairs, batch, results)
                if progress:
                    progress(rows)
                batch, rows, longest_ctx, longest_cont = [], 0, 0, 0
            batch.append((ctx, part))
            rows += len(part)
            longest_ctx, longest_cont = max(longest_ctx, len(ctx)), max(longest_cont, cont_in)
    if batch:
        _score_batch(model, pairs, batch, results)
        if progress:
            progress(rows)
    return results  # type: ignore[return-value]


def _score_batch(model, pairs, batch, results) -> None:
    """One batch of contexts (left padded) and then their continuations (right padded)."""
    device = _device(model)
    G = len(batch)
    L = max(len(ctx) for ctx, _ in batch)
    members = [i for _, part in batch for i in part]
    group_of = torch.tensor([g for g, (_, part) in enumerate(batch) for _ in part], device=device)  # (R,)
    R = len(members)
    T = max(len(pairs[i][1]) for i in members) - 1  # continuation tokens fed (all but the last)

    tokens, pad, key_mask, positions = left_pad([ctx for ctx, _ in batch], T, device)  # (G, L), (G,), ...
    padded = key_mask is not None

    cache = model.new_cache(max(G, R), L + T)
    first = model(tokens, cache=cache, start_pos=0, positions=positions,
                  key_mask=None if key_mask is None else key_mask[:, :L], last_only=True)[:, 0]  # (G, V)
    first = first[group_of]  # (R, V): the prediction of each continuation's first token
    if T > 0:
        # every continuation row starts from a copy of its context's keys and values
        for layer in range(len(cache.k)):
            cache.k[layer][:R, :, :L] = cache.k[layer][:G, :, :L][group_of]
            cache.v[layer][:R, :, :L] = cache.v[layer][:G, :, :L][group_of]
        conts = torch.zeros(R, T, dtype=torch.long, device=device)
        for r, i in enumerate(members):
            cont = pairs[i][1][:-1]
            if cont:
                conts[r, :len(cont)] = torch.tensor(cont, dtype=torch.long)
        row_pad = pad[group_of]  # (R,)
        row_positions = row_mask = None
        if padded:
            row_positions = (L - row_pad)[:, None] + torch.arange(T, device=device)[None]  # (R, T)
            row_mask = key_mask[group_of]  # (R, L + T)
        rest = model(conts, cache=cache, start_pos=L, positions=row_positions, key_mask=row_mask)  # (R, T, V)
    for r, i in enumerate(members):
        cont = pairs[i][1]
        logits = first[r:r + 1] if len(cont) == 1 else torch.cat([first[r:r + 1], rest[r, :len(cont) - 1]])
        logprobs = F.log_softmax(logits.float(), dim=-1)  # (c, V)
        target = torch.tensor(cont, dtype=torch.long, device=device)
        results[i] = (logprobs.gather(-1, target[:, None]).sum().item(),
                      bool((logprobs.argmax(-1) == target).all()))


# ---------------------------------------------------------------------------------------------
# multiple choice


def mean_stderr(values: list[float]) -> float | None:
    """Sample standard deviation / sqrt(n) (lm-eval's mean_stderr); None below 2 values."""
    n = len(values)
    if n < 2:
        return None
    mu = sum(values) / n
    return math.sqrt(sum((x - mu) ** 2 for x in values) / (n - 1)) / math.sqrt(n)


def choose(lls: list[float], norm_lengths: list[int]) -> tuple[int, int]:
    """(acc's choice, acc_norm's choice): the first argmax, as numpy."""
    pred = int(np.argmax(np.array(lls)))
    pred_norm = int(np.argmax(np.array(lls) / np.array(norm_lengths, dtype=np.float64)))
    return pred, pred_norm


def score_questions(model, tokenizer, questions, batch_size: int = 32, progress: Progress = None) -> list[dict]:
    """Per question: its id, the log-likelihood of each choice, and the choices of acc / acc_norm."""
    requests = [r for q in questions for r in q.requests]
    scores = loglikelihoods(model, encode_requests(tokenizer, requests), batch_size, progress)
    out, k = [], 0
    for q in questions:
        lls = [s for s, _ in scores[k:k + len(q.requests)]]
        k += len(q.requests)
        pred, pred_norm = choose(lls, [max(n, 1) for n in q.norm_lengths])
        out.append({"id": q.id, "label": q.label, "lls": lls, "pred": pred, "pred_norm": pred_norm,
                    "acc": float(pred == q.label), "acc_norm": float(pred_norm == q.label)})
    return out


def mc_metrics(per_question: list[dict]) -> dict[str, dict]:
    """acc and acc_norm: {metric: {value, stderr, n}}."""
    out = {}
    for metric in ("acc", "acc_norm"):
        values = [q[metric] for q in per_question]
        out[metric] = {"value": sum(values) / len(values), "stderr": mean_stderr(values), "n": len(values)}
    return out


# ---------------------------------------------------------------------------------------------
# held-out data

LOGITS_BUDGET = 1 << 28  # bytes of fp32 logits per forward when scoring held-out rows


@torch.inference_mode()
def row_losses(model, rows: np.ndarray, batch_size: int = 32, progress: Progress = None) -> np.ndarray:
    """Summed next-token loss (nats) of each row [rows, seq_len + 1], float64 (rows,)."""
    device = _device(model)
    R, T = rows.shape[0], rows.shape[1] - 1
    per_batch = max(1, min(batch_size, LOGITS_BUDGET // max(1, T * model.args.vocab_size * 4)))
    out = np.zeros(R, dtype=np.float64)
    for b in range(0, R, per_batch):
        x = torch.from_numpy(np.asarray(rows[b:b + per_batch], dtype=np.int64)).to(device)  # (B, T + 1)
        logits = model(x[:, :-1])  # (B, T, V)
        nll = F.cross_entropy(logits.transpose(1, 2), x[:, 1:], reduction="none")  # (B, T)
        out[b:b + len(x)] = nll.double().sum(1).cpu().numpy()
        if progress:
            progress(len(x))
    return out


def target_bytes(tokenizer, rows: np.ndarray) -> int:
    """UTF-8 bytes of the decoded target tokens (row[1:]) of every row, special tokens skipped."""
    texts = tokenizer.decode_batch([r[1:].tolist() for r in np.asarray(rows)], skip_special_tokens=True)
    return sum(len(t.encode("utf-8")) for t in texts)


def heldout_metrics(losses: np.ndarray, tokens_per_row: int, n_bytes: int) -> dict[str, dict]:
    """loss, ppl and bpb of held-out rows from their summed losses; the standard error of loss is
    that of the per-row mean loss, carried to ppl and bpb by the delta method."""
    R = len(losses)
    total = float(losses.sum())
    loss = total / (R * tokens_per_row)
    se = mean_stderr(list(losses / tokens_per_row))
    ppl = math.exp(loss)
    to_bpb = R * tokens_per_row / (math.log(2) * n_bytes) if n_bytes else float("nan")
    return {
        "loss": {"value": loss, "stderr": se, "n": R},
        "ppl": {"value": ppl, "stderr": None if se is None else ppl * se, "n": R},
        "bpb": {"value": loss * to_bpb, "stderr": None if se is None else se * to_bpb, "n": R},
    }
