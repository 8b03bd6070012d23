"""Generation and log-likelihood scoring with a Llama.

generate: batched decoding with a static KV cache. Prompts of different lengths share a batch by
left padding: padded keys are masked out and each row's rotary positions start at 0 at its first
real token, so every row decodes exactly as it would alone (and as transformers does).

score_tokens / score_requests: the log-likelihood of a continuation given a context, tokenized
and truncated as lm-evaluation-harness 0.4 does for Hugging Face models, so numbers are
comparable with lm-eval runs on the exported checkpoint.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from llm360.errors import UserError
from llm360.model.hf import load_hf
from llm360.rundir import CHECKSUMS_FILE, checksum_problems

# special tokens lm-eval would use as the context of an empty-context request (BOS, else EOS)
_PREFIX_CANDIDATES = ("<s>", "<|begin_of_text|>", "<bos>", "<|bos|>", "<|endoftext|>", "</s>", "<eos>", "<|eos|>")


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.inference_mode()
def generate(
    model,
    prompts: list[list[int]],
    max_new_tokens: int,
    *,
    temperature: float = 0.0,
    top_k: int | None = None,
    seed: int | None = None,
    eos_id: int | None = None,
    batch_size: int = 64,
) -> list[list[int]]:
    """New tokens for each prompt, greedy unless temperature > 0.

    A row that produces eos_id stops there (the eos is kept as its last token). Sampling with a
    seed is reproducible for the same prompts, batch size and device.
    """
    args = model.args
    for i, p in enumerate(prompts):
        if not p:
            raise UserError(f"prompt {i} is empty: generation needs at least one prompt token.")
        if len(p) + max_new_tokens > args.max_seq_len:
            raise UserError(f"prompt {i} has {len(p)} tokens; with {max_new_tokens} new tokens that exceeds "
                            f"the model context of {args.max_seq_len} tokens.")
    if max_new_tokens <= 0:
        return [[] for _ in prompts]
    device = _device(model)
    gen = None
    if temperature > 0 and seed is not None:
        gen = torch.Generator(device=device).manual_seed(seed)

    # longest first, so rows of similar length share a batch and padding stays small
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    results: list[list[int]] = [[] for _ in prompts]
    for b in range(0, len(order), batch_size):
        idx = order[b:b + batch_size]
        out = _generate_batch(model, [prompts[i] for i in idx], max_new_tokens, temperature, top_k, gen, eos_id)
        for i, row in zip(idx, out):
            results[i] = row
    return results


def left_pad(prompts: list[list[int]], extra: int, device):
    """Prompts of different lengths as one left-padded batch, for decoding `extra` more positions:
    tokens (B, L), pad tokens per row (B,), and when any row is padded, the key mask (B, L + extra)
    that hides the pad keys and the positions (B, L) that count from each row's first real token;
    else None, None."""
    L = max(len(p) for p in prompts)
    pad = torch.tensor([L - len(p) for p in prompts], device=device)  # (B,)
    tokens = torch.zeros(len(prompts), L, dtype=torch.long, device=device)
    for r, p in enumerate(prompts):
        tokens[r, L - len(p):] = torch.tensor(p, dtype=torch.long)
    if not bool(pad.any()):
        return tokens, pad, None, None
    key_mask = torch.arange(L + extra, device=device)[None] >= pad[:, None]  # (B, L + extra)
    positions = (torch.arange(L, device=device)[None] - pad[:, None]).clamp(min=0)  # (B, L)
    return tokens, pad, key_mask, positions


def _generate_batch(model, prompts, max_new_tokens, temperature, top_k, gen, eos_id) -> list[list[int]]:
    device = _device(model)
    B, L = len(prompts), max(len(p) for p in prompts)
    tokens, pad, key_mask, positions = left_pad(prompts, max_new_tokens, device)
    padded = key_mask is not None

    cache = model.new_cache(B, L + max_new_tokens)
    logits = model(tokens, cache=cache, start_pos=0, positions=positions,
                   key_mask=None if key_mask is None else key_mask[:, :L], last_only=True)
    new = torch.empty(B, max_new_tokens, dtype=torch.long, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    for t in range(max_new_tokens):
        nxt = _pick(logits[:, -1], temperature, top_k, gen)  # (B,)
        new[:, t] = nxt
        if eos_id is not None:
            done |= nxt == eos_id
            if bool(done.all()):
                new = new[:, :t + 1]
                break
        if t == max_new_tokens - 1:
            break
        pos = L + t  # cache position of the token fed now
        logits = model(nxt[:, None], cache=cache, start_pos=pos,
                       positions=None if not padded else (pos - pad)[:, None],
                       key_mask=None if key_mask is None else key_mask[:, :pos + 1], last_only=True)

    rows = new.tolist()
    if eos_id is not None:
        rows = [row[:row.index(eos_id) + 1] if eos_id in row else row for row in rows]
    return rows


def _pick(logits: torch.Tensor, temperature: float, top_k: int | None, gen) -> torch.Tensor:
    """Next token (B,) from logits (B, V): argmax, or a sample at temperature with top-k."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = F.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=gen).squeeze(-1)


# --------------------------------------------------------------------------------------------
# scoring


@torch.inference_mode()
def score_tokens(model, pairs: list[tuple[list[int], list[int]]], batch_size: int = 32) -> list[tuple[float, bool]]:
    """(sum of log p(continuation | context), whether greedy decoding gives the continuation)
    for each (context tokens, continuation tokens) pair, in the order given.

    As lm-eval: the sequence context + continuation keeps its last max_seq_len + 1 tokens and the
    model reads all but the last; rows are batched longest first and padded on the right (no mask
    needed: attention is causal and padding comes after every scored position).
    """
    max_len = model.args.max_seq_len
    inputs, conts = [], []
    for i, (ctx, cont) in enumerate(pairs):
        if not ctx:
            raise UserError(f"request {i} has an empty context; give at least one token (e.g. BOS).")
        if len(cont) > max_len:
            raise UserError(f"request {i} has a continuation of {len(cont)} tokens, "
                            f"more than the model context of {max_len}.")
        inputs.append((list(ctx) + list(cont))[-(max_len + 1):][:-1])
        conts.append(list(cont))

    device = _device(model)
    results: list[tuple[float, bool]] = [(0.0, True)] * len(pairs)
    order = sorted((i for i in range(len(pairs)) if conts[i]), key=lambda i: -len(inputs[i]))
    for b in range(0, len(order), batch_size):
        idx = order[b:b + batch_size]
        T = len(inputs[idx[0]])
        batch = torch.zeros(len(idx), T, dtype=torch.long, device=device)
        for r, i in enumerate(idx):
            batch[r, :len(inputs[i])] = torch.tensor(inputs[i], dtype=torch.long)
        logits = model(batch)  # (B, T, V)
        for r, i in enumerate(idx):
            n, c = len(inputs[i]), len(conts[i])
            logprobs = F.log_softmax(logits[r, n - c:n].float(), dim=-1)  # (c, V)
            target = torch.tensor(conts[i], dtype=torch.long, device=device)
            total = logprobs.gather(-1, target[:, None]).sum().item()
            greedy = bool((logprobs.argmax(-1) == target).all())
            results[i] = (total, greedy)
    return results


def load_tokenizer(folder: str | Path):
    """The `tokenizers.Tokenizer` in folder/tokenizer.json."""
    from tokenizers import Tokenizer

    path = Path(folder) / "tokenizer.json"
    if not path.is_file():
        raise UserError(f"{folder} has no tokenizer.json.")
    return Tokenizer.from_file(str(path))


def _encode(tokenizer, text: str) -> list[int]:
    enc = tokenizer.encode(text, add_special_tokens=False)
    return list(enc.ids if hasattr(enc, "ids") else enc)  # tokenizers.Tokenizer or a HF tokenizer


def encode_request(tokenizer, context: str, continuation: str,
                   prefix_token_id: int | None = None) -> tuple[list[int], list[int]]:
    """Context and continuation tokens as lm-evaluation-harness 0.4 makes them for HF models."""
    if context == "":
        if prefix_token_id is None:
            raise UserError("a request has an empty context and the tokenizer has no BOS/EOS token to stand in for it.")
        return [prefix_token_id], _encode(tokenizer, continuation)
    # trailing whitespace belongs to the continuation: "Answer:" + " yes", not "Answer: " + "yes"
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole = _encode(tokenizer, context + continuation)
    ctx = _encode(tokenizer, context)
    return ctx, whole[len(ctx):]


def prefix_token(tokenizer) -> int | None:
    """BOS if the tokenizer has one, else EOS (lm-eval's prefix token), by the usual names."""
    lookup = getattr(tokenizer, "token_to_id", None) or getattr(tokenizer, "convert_tokens_to_ids", None)
    for name in _PREFIX_CANDIDATES:
        tid = lookup(name)
        if tid is not None and tid != getattr(tokenizer, "unk_token_id", None):
            return tid
    return None


def score_requests(model, tokenizer, requests: list[tuple[str, str]], *, batch_size: int = 32,
                   prefix_token_id: int | None = None) -> list[tuple[float, bool]]:
    """(log-likelihood, is_greedy) of each (context, continuation) text pair, as lm-eval's
    loglikelihood. An empty context is replaced by prefix_token_id (default: BOS, else EOS)."""
    if prefix_token_id is None and any(ctx == "" for ctx, _ in requests):
        prefix_token_id = prefix_token(tokenizer)
    pairs = [encode_request(tokenizer, ctx, cont, prefix_token_id) for ctx, cont in requests]
    return score_tokens(model, pairs, batch_size=batch_size)


# --------------------------------------------------------------------------------------------
# command line


def _warn_if_damaged(folder: Path) -> None:
    """A checkpoint of a run carries CHECKSUMS.sha256: say so when its files do not match it (a
    plain Hugging Face folder has none, and nothing to check)."""
    if not (folder / CHECKSUMS_FILE).is_file():
        return
    found = checksum_problems(folder)
    if found:
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        print(f"llm360 generate: warning: {folder} does not match its {CHECKSUMS_FILE}: {found[0]}{more}; "
              "the output may not be that of the checkpoint", file=sys.stderr)


def cli_generate(args) -> int:
    """`llm360 generate CHECKPOINT --prompt TEXT`: print the prompt and its continuation."""
    _warn_if_damaged(Path(args.checkpoint))
    tokenizer = load_tokenizer(args.checkpoint)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, margs = load_hf(args.checkpoint, device=device)
    ids = tokenizer.encode(args.prompt).ids
    eos_id = None
    for name in ("generation_config.json", "config.json"):
        path = Path(args.checkpoint) / name
        if eos_id is None and path.is_file():
            eos_id = json.loads(path.read_text()).get("eos_token_id")
    if isinstance(eos_id, list):
        eos_id = eos_id[0] if eos_id else None
    if not ids:
        start = prefix_token(tokenizer)
        if start is None:
            raise UserError("the prompt is empty and the tokenizer has no BOS/EOS token to start from.")
        ids = [start]
    max_new = 64 if getattr(args, "max_new_tokens", None) is None else args.max_new_tokens
    temperature = getattr(args, "temperature", None) or 0.0
    new = generate(model, [ids], max_new, temperature=temperature, top_k=getattr(args, "top_k", None),
                   seed=getattr(args, "seed", None), eos_id=eos_id)[0]
    completion = tokenizer.decode(new)
    if getattr(args, "json", False):
        print(json.dumps({"prompt": args.prompt, "completion": completion, "tokens": new}, ensure_ascii=False))
    else:
        print(args.prompt + completion)
    return 0
